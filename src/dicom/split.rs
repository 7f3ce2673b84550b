//! Find where the pixel data of a large data set lies in a file, reading element headers only, so
//! that everything around it can be anonymized in memory while the pixels are copied file to file.
//!
//! Headers are decoded by the strict reader's [`decode_header`], and every length is checked against
//! its container here too (the file, a sequence, an item). What lies before and after the pixel data
//! is then parsed by the strict reader itself, so this scan only has to find the span honestly.

use std::io::{self, BufReader, Read, Seek, SeekFrom};

use dicom_core::VR;

use super::read::{
    decode_header, tag_str, Header, ReadError, ITEM, ITEM_END, MAX_DEPTH, SEQUENCE_END, UNDEFINED,
};
use super::syntax::Encoding;

use dicom_dictionary_std::tags::PIXEL_DATA;

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
    /// The file could not be read: the node's problem, not the sender's.
    #[error("cannot read the spilled data set: {0}")]
    Io(#[from] io::Error),
    /// The bytes do not form a data set: the sender's problem.
    #[error("data set does not parse: {0}")]
    Malformed(#[from] ReadError),
}

/// Locate the top-level Pixel Data element of the data set that fills `file` from `offset` on
/// (`None`: there is none). The span is in file offsets.
pub fn locate_pixel_data<R: Read + Seek>(
    file: R,
    offset: u64,
    enc: Encoding,
) -> Result<Option<PixelSpan>, SplitError> {
    let mut r = Scanner { r: BufReader::with_capacity(64 * 1024, file), enc, pos: offset };
    let len = r.r.seek(SeekFrom::End(0))?;
    r.r.seek(SeekFrom::Start(offset))?;
    loop {
        let start = r.pos;
        if start + 8 > len {
            return Ok(None);
        }
        let h = r.header(len)?;
        if h.tag > PIXEL_DATA {
            return Ok(None);
        }
        r.skip_value(h, len, 0)?;
        if h.tag == PIXEL_DATA {
            return Ok(Some(PixelSpan { start, end: r.pos }));
        }
    }
}

struct Scanner<R> {
    r: BufReader<R>,
    enc: Encoding,
    /// Where the reader is in the file: counted here, so no length is trusted to seek.
    pos: u64,
}

impl<R: Read + Seek> Scanner<R> {
    fn truncated(&self, what: &str, needed: u64, end: u64) -> SplitError {
        SplitError::Malformed(ReadError::Truncated {
            offset: self.pos as usize,
            what: what.to_string(),
            needed,
            available: end.saturating_sub(self.pos) as usize,
        })
    }

    /// The next header, which must lie before `end`.
    fn header(&mut self, end: u64) -> Result<Header, SplitError> {
        let mut b = [0u8; 12];
        let room = end.saturating_sub(self.pos);
        if room < 8 {
            return Err(self.truncated("element header", 8, end));
        }
        self.r.read_exact(&mut b[..8])?;
        let h = match decode_header(&b[..8], self.enc, self.pos as usize)? {
            Some(h) => h,
            // An explicit VR with a 32-bit length: four more bytes.
            None if room >= 12 => {
                self.r.read_exact(&mut b[8..])?;
                decode_header(&b, self.enc, self.pos as usize)?
                    .ok_or_else(|| self.truncated("element header", 12, end))?
            }
            None => return Err(self.truncated("element header", 12, end)),
        };
        self.pos += h.size as u64;
        Ok(h)
    }

    /// Skip `n` bytes that must lie before `end`.
    fn skip(&mut self, n: u64, end: u64, what: &str) -> Result<(), SplitError> {
        if n > end.saturating_sub(self.pos) {
            return Err(self.truncated(what, n, end));
        }
        self.r.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }

    /// Skip the value of the element whose header was just read; it must end before `end`.
    fn skip_value(&mut self, h: Header, end: u64, depth: usize) -> Result<(), SplitError> {
        let sequence = h.vr == VR::SQ || (h.vr == VR::UN && h.len == UNDEFINED);
        if h.len != UNDEFINED && !sequence {
            return self.skip(h.len as u64, end, "element value");
        }
        if h.len == UNDEFINED && !sequence && !matches!(h.vr, VR::OB | VR::OW) {
            return Err(ReadError::UndefinedLength { tag: tag_str(h.tag), offset: self.pos as usize }.into());
        }
        if depth > MAX_DEPTH {
            return Err(ReadError::TooDeep.into());
        }
        let seq_end = if h.len == UNDEFINED {
            end
        } else {
            if h.len as u64 > end.saturating_sub(self.pos) {
                return Err(self.truncated("sequence", h.len as u64, end));
            }
            self.pos + h.len as u64
        };
        let outer = self.enc;
        if h.vr == VR::UN {
            self.enc = Encoding::IMPLICIT_LE;
        }
        // Items (or fragments) until the sequence delimiter or the sequence's end.
        loop {
            if h.len != UNDEFINED && self.pos == seq_end {
                break;
            }
            let at = self.pos as usize;
            let item = self.header(seq_end)?;
            if item.tag == SEQUENCE_END && h.len == UNDEFINED {
                break;
            }
            if item.tag != ITEM || (item.len == UNDEFINED && !sequence) {
                let expected = if sequence { "a sequence item" } else { "a pixel data fragment" };
                return Err(ReadError::Unexpected { found: tag_str(item.tag), offset: at, expected }.into());
            }
            if item.len != UNDEFINED {
                self.skip(item.len as u64, seq_end, "sequence item")?;
                continue;
            }
            // An undefined-length item: elements until the item delimiter.
            loop {
                let e = self.header(seq_end)?;
                if e.tag == ITEM_END {
                    break;
                }
                self.skip_value(e, seq_end, depth + 1)?;
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
        let span = locate_pixel_data(Cursor::new(b), 0, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(span, Some(PixelSpan { start, end }));
    }
}
