//! Encode a data set. Sequences and items are written with undefined length so that nothing has to
//! be measured twice; primitive values go out exactly as they are held.

use std::io::{self, Write};

use dicom_core::{Tag, VR};

use super::element::{DataSet, Value};
use super::read::{has_long_length, tag_str, ITEM, ITEM_END, SEQUENCE_END, UNDEFINED};
use super::syntax::Encoding;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("value of {tag} is {len} bytes, more than its VR {vr} can hold in explicit VR")]
    TooLong { tag: String, vr: &'static str, len: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn write_dataset(ds: &DataSet<'_>, enc: Encoding, out: &mut impl Write) -> Result<(), WriteError> {
    let mut w = Writer { out, enc };
    w.dataset(ds)
}

struct Writer<'w, W: Write> {
    out: &'w mut W,
    enc: Encoding,
}

impl<W: Write> Writer<'_, W> {
    fn u16(&mut self, v: u16) -> io::Result<()> {
        self.out.write_all(&if self.enc.big_endian { v.to_be_bytes() } else { v.to_le_bytes() })
    }

    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.out.write_all(&if self.enc.big_endian { v.to_be_bytes() } else { v.to_le_bytes() })
    }

    fn marker(&mut self, tag: Tag, len: u32) -> io::Result<()> {
        self.u16(tag.0)?;
        self.u16(tag.1)?;
        self.u32(len)
    }

    fn header(&mut self, tag: Tag, vr: VR, len: u32) -> Result<(), WriteError> {
        self.u16(tag.0)?;
        self.u16(tag.1)?;
        if self.enc.explicit_vr {
            self.out.write_all(&vr.to_bytes())?;
            if has_long_length(vr) {
                self.out.write_all(&[0, 0])?;
                self.u32(len)?;
            } else {
                let short = u16::try_from(len).map_err(|_| WriteError::TooLong {
                    tag: tag_str(tag),
                    vr: vr.to_string(),
                    len: len as usize,
                })?;
                self.u16(short)?;
            }
        } else {
            self.u32(len)?;
        }
        Ok(())
    }

    fn dataset(&mut self, ds: &DataSet<'_>) -> Result<(), WriteError> {
        for e in &ds.elements {
            match &e.value {
                Value::Bytes(b) => {
                    let len = u32::try_from(b.len()).map_err(|_| WriteError::TooLong {
                        tag: tag_str(e.tag),
                        vr: e.vr.to_string(),
                        len: b.len(),
                    })?;
                    self.header(e.tag, e.vr, len)?;
                    self.out.write_all(b)?;
                }
                Value::Items(items) => {
                    self.header(e.tag, VR::SQ, UNDEFINED)?;
                    for item in items {
                        self.marker(ITEM, UNDEFINED)?;
                        self.dataset(item)?;
                        self.marker(ITEM_END, 0)?;
                    }
                    self.marker(SEQUENCE_END, 0)?;
                }
                Value::Fragments(fragments) => {
                    self.header(e.tag, e.vr, UNDEFINED)?;
                    for f in fragments {
                        self.marker(ITEM, f.len() as u32)?;
                        self.out.write_all(f)?;
                    }
                    self.marker(SEQUENCE_END, 0)?;
                }
            }
        }
        Ok(())
    }
}
