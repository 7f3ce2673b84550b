//! Find where the pixel data of a large data set lies in a file, reading element headers only, so
//! that everything around it can be anonymized in memory while the pixels are copied file to file.

use std::io::{self, BufReader, Read, Seek, SeekFrom};

use dicom_core::{Tag, VR};

use super::read::{has_long_length, implicit_vr, ITEM, ITEM_END, SEQUENCE_END};
use super::syntax::Encoding;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const MAX_DEPTH: usize = 48;

/// Byte ranges of a data set split around its top-level Pixel Data element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelSpan {
    /// Where the Pixel Data element (its header) starts: the end of everything before it.
    pub start: u64,
    /// Where the element, fragments and delimiter included, ends.
    pub end: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("cannot read the data set: {0}")]
    Io(#[from] io::Error),
    #[error("element {0} has an invalid explicit VR")]
    BadVr(String),
    #[error("sequences nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Locate the top-level Pixel Data element of the data set filling `file` (`None`: there is none).
pub fn locate_pixel_data<R: Read + Seek>(file: R, enc: Encoding) -> Result<Option<PixelSpan>, SplitError> {
    let mut r = Scanner { r: BufReader::with_capacity(64 * 1024, file), enc };
    let len = r.r.seek(SeekFrom::End(0))?;
    r.r.seek(SeekFrom::Start(0))?;
    loop {
        let start = r.r.stream_position()?;
        if start + 8 > len {
            return Ok(None);
        }
        let (tag, vr, value_len) = r.header()?;
        if tag == PIXEL_DATA {
            r.skip_value(vr, value_len, 0)?;
            return Ok(Some(PixelSpan { start, end: r.r.stream_position()? }));
        }
        if tag > PIXEL_DATA {
            return Ok(None);
        }
        r.skip_value(vr, value_len, 0)?;
    }
}

struct Scanner<R> {
    r: BufReader<R>,
    enc: Encoding,
}

impl<R: Read + Seek> Scanner<R> {
    fn u16(&mut self) -> io::Result<u16> {
        let mut b = [0; 2];
        self.r.read_exact(&mut b)?;
        Ok(if self.enc.big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.r.read_exact(&mut b)?;
        Ok(if self.enc.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    }

    fn header(&mut self) -> Result<(Tag, VR, u32), SplitError> {
        let tag = Tag(self.u16()?, self.u16()?);
        if !self.enc.explicit_vr || tag.0 == 0xFFFE {
            return Ok((tag, implicit_vr(tag), self.u32()?));
        }
        let mut code = [0; 2];
        self.r.read_exact(&mut code)?;
        let vr = VR::from_binary(code)
            .ok_or_else(|| SplitError::BadVr(format!("({:04X},{:04X})", tag.0, tag.1)))?;
        let len = if has_long_length(vr) {
            self.u16()?;
            self.u32()?
        } else {
            self.u16()? as u32
        };
        Ok((tag, vr, len))
    }

    fn skip(&mut self, n: u32) -> io::Result<()> {
        self.r.seek_relative(n as i64)
    }

    fn skip_value(&mut self, vr: VR, len: u32, depth: usize) -> Result<(), SplitError> {
        if len != UNDEFINED {
            return Ok(self.skip(len)?);
        }
        if depth > MAX_DEPTH {
            return Err(SplitError::TooDeep);
        }
        let nested = vr == VR::SQ || vr == VR::UN;
        let outer = self.enc;
        if vr == VR::UN {
            self.enc = Encoding::IMPLICIT_LE;
        }
        // Items (or fragments) until the sequence delimiter.
        loop {
            let tag = Tag(self.u16()?, self.u16()?);
            let item_len = self.u32()?;
            if tag == SEQUENCE_END {
                break;
            }
            if tag != ITEM {
                return Err(SplitError::Io(io::Error::new(io::ErrorKind::InvalidData, "expected an item")));
            }
            if item_len != UNDEFINED || !nested {
                self.skip(item_len)?;
                continue;
            }
            // An undefined-length item: elements until the item delimiter.
            loop {
                let (tag, vr, len) = self.header()?;
                if tag == ITEM_END {
                    break;
                }
                self.skip_value(vr, len, depth + 1)?;
            }
        }
        self.enc = outer;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn finds_pixel_data_after_an_undefined_length_sequence() {
        let mut b = Vec::new();
        b.extend([0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        b.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        b.extend([0x08, 0x00, 0x55, 0x11, b'U', b'I', 4, 0]);
        b.extend(b"1.2\0");
        b.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let start = b.len() as u64;
        b.extend([0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]);
        let end = b.len() as u64;
        b.extend([0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 0]);
        let span = locate_pixel_data(Cursor::new(b), Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(span, Some(PixelSpan { start, end }));
    }
}
