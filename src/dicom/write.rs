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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::dicom::read_dataset;
    use crate::dicom::Element;

    fn bytes(tag: (u16, u16), vr: VR, v: &[u8]) -> Element<'static> {
        Element { tag: Tag(tag.0, tag.1), vr, value: Value::Bytes(Cow::Owned(v.to_vec())) }
    }

    fn items(tag: (u16, u16), items: Vec<DataSet<'static>>) -> Element<'static> {
        Element { tag: Tag(tag.0, tag.1), vr: VR::SQ, value: Value::Items(items) }
    }

    fn set(elements: Vec<Element<'static>>) -> DataSet<'static> {
        DataSet { elements }
    }

    fn written(ds: &DataSet<'_>, enc: Encoding) -> Vec<u8> {
        let mut out = Vec::new();
        write_dataset(ds, enc, &mut out).unwrap();
        out
    }

    /// Every VR here is the dictionary's, so implicit VR reads back the same elements too.
    fn sample() -> DataSet<'static> {
        let reference = set(vec![
            bytes((0x0008, 0x1150), VR::UI, b"1.2.840.10008.5.1.4.1.1.2\0"),
            bytes((0x0008, 0x1155), VR::UI, b"1.2.3.4\0"),
        ]);
        let nested = set(vec![
            bytes((0x0008, 0x0100), VR::SH, b"T-D1100 "),
            items((0x0008, 0x2218), vec![set(vec![bytes((0x0008, 0x0104), VR::LO, b"Head")])]),
        ]);
        set(vec![
            bytes((0x0008, 0x0060), VR::CS, b"CT"),
            items((0x0008, 0x1140), vec![reference, set(vec![])]),
            bytes((0x0010, 0x0010), VR::PN, b"DOE^JOHN"),
            bytes((0x0028, 0x0010), VR::US, &[0x00, 0x02]),
            items((0x0040, 0x0260), vec![nested]),
            items((0x0040, 0x0275), vec![]),
            bytes((0x7FE0, 0x0010), VR::OW, &[1, 2, 3, 4, 5, 6]),
        ])
    }

    #[test]
    fn a_data_set_written_reads_back_as_the_same_elements_in_each_encoding() {
        let ds = sample();
        for enc in [Encoding::EXPLICIT_LE, Encoding::IMPLICIT_LE, Encoding::EXPLICIT_BE] {
            let out = written(&ds, enc);
            let back = read_dataset(&out, enc).unwrap();
            assert_eq!(back, ds, "{enc:?}");
            // And what was read writes out as the same bytes.
            assert_eq!(written(&back, enc), out, "{enc:?}");
        }
    }

    #[test]
    fn sequences_and_items_have_undefined_lengths_and_their_delimiters() {
        let item = set(vec![bytes((0x0008, 0x1155), VR::UI, b"1.2\0")]);
        let ds = set(vec![items((0x0008, 0x1140), vec![item])]);
        let mut want = vec![0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        want.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        want.extend([0x08, 0x00, 0x55, 0x11, b'U', b'I', 4, 0]);
        want.extend(b"1.2\0");
        want.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        want.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(written(&ds, Encoding::EXPLICIT_LE), want);

        // Implicit VR: no VR, a 32-bit undefined length; an empty sequence is its delimiter only.
        let ds = set(vec![items((0x0008, 0x1140), vec![])]);
        let mut want = vec![0x08, 0x00, 0x40, 0x11, 0xFF, 0xFF, 0xFF, 0xFF];
        want.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(written(&ds, Encoding::IMPLICIT_LE), want);
    }

    #[test]
    fn encapsulated_fragments_are_items_of_their_own_length_then_a_delimiter() {
        let pixels = Element {
            tag: Tag(0x7FE0, 0x0010),
            vr: VR::OB,
            value: Value::Fragments(vec![Cow::Owned(vec![]), Cow::Owned(vec![0xFF, 0xD8, 0xFF, 0xD9])]),
        };
        let ds = set(vec![pixels]);
        let out = written(&ds, Encoding::EXPLICIT_LE);
        let mut want = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        want.extend([0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        want.extend([0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 0xFF, 0xD8, 0xFF, 0xD9]);
        want.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(out, want);
        assert_eq!(read_dataset(&out, Encoding::EXPLICIT_LE).unwrap(), ds);
    }

    #[test]
    fn big_endian_puts_every_number_of_a_header_in_big_endian() {
        let ds = set(vec![
            bytes((0x0028, 0x0010), VR::US, &[0x02, 0x00]),
            bytes((0x7FE0, 0x0010), VR::OW, &[1, 2]),
        ]);
        let mut want = vec![0x00, 0x28, 0x00, 0x10, b'U', b'S', 0x00, 0x02, 0x02, 0x00];
        want.extend([0x7F, 0xE0, 0x00, 0x10, b'O', b'W', 0, 0, 0x00, 0x00, 0x00, 0x02, 1, 2]);
        assert_eq!(written(&ds, Encoding::EXPLICIT_BE), want);
    }

    #[test]
    fn a_value_too_long_for_a_16_bit_length_is_an_error_naming_its_tag() {
        let long = vec![b'A'; 0x1_0000];
        let ds =
            set(vec![bytes((0x0010, 0x0010), VR::PN, b"DOE^J "), bytes((0x0010, 0x4000), VR::LO, &long)]);
        let mut out = Vec::new();
        match write_dataset(&ds, Encoding::EXPLICIT_LE, &mut out) {
            Err(e @ WriteError::TooLong { .. }) => {
                let WriteError::TooLong { tag, vr, len } = &e else { unreachable!() };
                assert_eq!((tag.as_str(), *vr, *len), ("(0010,4000)", "LO", 0x1_0000));
                assert!(e.to_string().contains("(0010,4000)"), "{e}");
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        // One byte less fits; a VR with a 32-bit length, or implicit VR, holds any of them.
        let fits = set(vec![bytes((0x0010, 0x4000), VR::LO, &long[1..])]);
        assert_eq!(written(&fits, Encoding::EXPLICIT_LE).len(), 8 + 0xFFFF);
        let ut = set(vec![bytes((0x0010, 0x4000), VR::UT, &long)]);
        assert_eq!(written(&ut, Encoding::EXPLICIT_LE).len(), 12 + 0x1_0000);
        assert_eq!(written(&ds, Encoding::IMPLICIT_LE).len(), 8 + 6 + 8 + 0x1_0000);
    }

    #[test]
    fn a_failing_writer_is_an_io_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        match write_dataset(&sample(), Encoding::EXPLICIT_LE, &mut Full) {
            Err(WriteError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::StorageFull),
            other => panic!("expected Io, got {other:?}"),
        }
    }
}
