//! Parse a data set from a byte buffer without copying values and without trusting lengths.

use std::borrow::Cow;

use dicom_core::dictionary::{DataDictionary, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::element::{DataSet, Element, Value};
use super::syntax::Encoding;

const UNDEFINED: u32 = 0xFFFF_FFFF;
pub(crate) const ITEM: Tag = Tag(0xFFFE, 0xE000);
pub(crate) const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
pub(crate) const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);

/// Sequences nest a few levels in real objects; a hostile file could nest until the stack breaks.
const MAX_DEPTH: usize = 48;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    #[error("data set truncated at offset {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated { offset: usize, what: String, needed: u64, available: usize },
    #[error("element {tag} at offset {offset} has an invalid VR {vr:?}")]
    BadVr { tag: String, offset: usize, vr: [u8; 2] },
    #[error("element {tag} at offset {offset} has undefined length but is not a sequence or pixel data")]
    UndefinedLength { tag: String, offset: usize },
    #[error("unexpected {found} at offset {offset} (expected {expected})")]
    Unexpected { found: String, offset: usize, expected: &'static str },
    #[error("sequences nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

pub(crate) fn tag_str(t: Tag) -> String {
    format!("({:04X},{:04X})", t.0, t.1)
}

/// Read a whole data set that fills `buf`. Trailing zero padding after the last element is ignored.
pub fn read_dataset(buf: &[u8], enc: Encoding) -> Result<DataSet<'_>, ReadError> {
    let mut r = Reader { buf, pos: 0, enc, depth: 0 };
    let ds = r.elements_until(buf.len(), None)?;
    Ok(ds)
}

/// Read the leading elements of `buf` while `keep(tag)` holds; returns them and where they stop.
/// Used for the Part 10 file meta group, which always comes first.
pub(crate) fn read_prefix(
    buf: &[u8],
    enc: Encoding,
    keep: impl Fn(Tag) -> bool,
) -> Result<(DataSet<'_>, usize), ReadError> {
    let mut r = Reader { buf, pos: 0, enc, depth: 0 };
    let mut ds = DataSet::default();
    while r.pos + 4 <= buf.len() && keep(r.peek_tag()) {
        let e = r.element()?;
        ds.elements.push(e);
    }
    Ok((ds, r.pos))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    enc: Encoding,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn need(&self, n: u64, what: &str) -> Result<(), ReadError> {
        let available = self.buf.len() - self.pos;
        if n > available as u64 {
            return Err(ReadError::Truncated {
                offset: self.pos,
                what: what.to_string(),
                needed: n,
                available,
            });
        }
        Ok(())
    }

    fn u16(&mut self) -> u16 {
        let b = [self.buf[self.pos], self.buf[self.pos + 1]];
        self.pos += 2;
        if self.enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&mut self) -> u32 {
        let b = [self.buf[self.pos], self.buf[self.pos + 1], self.buf[self.pos + 2], self.buf[self.pos + 3]];
        self.pos += 4;
        if self.enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn peek_tag(&self) -> Tag {
        let mut copy = Reader { buf: self.buf, pos: self.pos, enc: self.enc, depth: 0 };
        Tag(copy.u16(), copy.u16())
    }

    fn take(&mut self, len: u32, what: impl Fn() -> String) -> Result<&'a [u8], ReadError> {
        self.need(len as u64, &what())?;
        let v = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(v)
    }

    /// Elements until `end`, or until the item delimiter when `end` is the buffer end and the
    /// item has undefined length (`delimited`).
    fn elements_until(&mut self, end: usize, delimited: Option<()>) -> Result<DataSet<'a>, ReadError> {
        let mut ds = DataSet::default();
        loop {
            if self.pos >= end {
                if delimited.is_some() {
                    self.need(8, "item delimitation item")?;
                }
                return Ok(ds);
            }
            if delimited.is_none() && end - self.pos < 8 && self.buf[self.pos..end].iter().all(|&b| b == 0) {
                // Some writers pad the data set with a few zero bytes; nothing to read there.
                self.pos = end;
                return Ok(ds);
            }
            self.need(8, "element header")?;
            if self.peek_tag() == ITEM_END {
                if delimited.is_some() {
                    self.pos += 8;
                    return Ok(ds);
                }
                return Err(ReadError::Unexpected {
                    found: "item delimitation item".into(),
                    offset: self.pos,
                    expected: "an element",
                });
            }
            let e = self.element()?;
            // Tag order is required by PS3.5 §7.1; a stray unsorted element is sorted in rather
            // than trusted to be last, so lookups by binary search stay correct.
            match ds.elements.last() {
                Some(last) if last.tag >= e.tag => ds.put(e),
                _ => ds.elements.push(e),
            }
        }
    }

    fn element(&mut self) -> Result<Element<'a>, ReadError> {
        let start = self.pos;
        self.need(8, "element header")?;
        let tag = Tag(self.u16(), self.u16());
        let (vr, len) = if self.enc.explicit_vr && tag.0 != 0xFFFE {
            let code = [self.buf[self.pos], self.buf[self.pos + 1]];
            self.pos += 2;
            let vr = VR::from_binary(code).ok_or(ReadError::BadVr {
                tag: tag_str(tag),
                offset: start,
                vr: code,
            })?;
            let len = if has_long_length(vr) {
                self.need(6, "element length")?;
                self.pos += 2;
                self.u32()
            } else {
                self.u16() as u32
            };
            (vr, len)
        } else {
            (implicit_vr(tag), self.u32())
        };

        let value = if vr == VR::SQ || (vr == VR::UN && len == UNDEFINED) {
            // An undefined-length UN is a sequence whose content is Implicit VR LE (PS3.5 §6.2.2).
            let inner = if vr == VR::UN { Encoding::IMPLICIT_LE } else { self.enc };
            Value::Items(self.items(len, inner)?)
        } else if len == UNDEFINED {
            if !matches!(vr, VR::OB | VR::OW) {
                return Err(ReadError::UndefinedLength { tag: tag_str(tag), offset: start });
            }
            Value::Fragments(self.fragments()?)
        } else {
            Value::Bytes(Cow::Borrowed(self.take(len, || format!("value of {}", tag_str(tag)))?))
        };
        let vr = if matches!(value, Value::Items(_)) { VR::SQ } else { vr };
        Ok(Element { tag, vr, value })
    }

    fn items(&mut self, len: u32, inner: Encoding) -> Result<Vec<DataSet<'a>>, ReadError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ReadError::TooDeep);
        }
        let outer = self.enc;
        self.enc = inner;
        let end = if len == UNDEFINED {
            None
        } else {
            self.need(len as u64, "sequence")?;
            Some(self.pos + len as usize)
        };
        let mut items = Vec::new();
        loop {
            match end {
                Some(end) if self.pos >= end => break,
                _ => {}
            }
            self.need(8, "item header")?;
            let at = self.pos;
            let tag = Tag(self.u16(), self.u16());
            let item_len = self.u32();
            if tag == SEQUENCE_END && end.is_none() {
                break;
            }
            if tag != ITEM {
                return Err(ReadError::Unexpected {
                    found: tag_str(tag),
                    offset: at,
                    expected: "a sequence item",
                });
            }
            let item = if item_len == UNDEFINED {
                self.elements_until(self.buf.len(), Some(()))?
            } else {
                self.need(item_len as u64, "sequence item")?;
                let item_end = self.pos + item_len as usize;
                self.elements_until(item_end, None)?
            };
            items.push(item);
        }
        self.enc = outer;
        self.depth -= 1;
        Ok(items)
    }

    fn fragments(&mut self) -> Result<Vec<Cow<'a, [u8]>>, ReadError> {
        let mut out = Vec::new();
        loop {
            self.need(8, "fragment header")?;
            let at = self.pos;
            let tag = Tag(self.u16(), self.u16());
            let len = self.u32();
            if tag == SEQUENCE_END {
                return Ok(out);
            }
            if tag != ITEM || len == UNDEFINED {
                return Err(ReadError::Unexpected {
                    found: tag_str(tag),
                    offset: at,
                    expected: "a pixel data fragment",
                });
            }
            out.push(Cow::Borrowed(self.take(len, || "pixel data fragment".to_string())?));
        }
    }
}

/// Explicit VRs whose length field is 32 bits, preceded by two reserved bytes (PS3.5 Table 7.1-1).
pub(crate) fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// The VR of an implicit-VR element, from the standard dictionary. Context-dependent VRs take the
/// form that keeps the bytes intact (OW, US); unknown and private tags are UN.
pub(crate) fn implicit_vr(tag: Tag) -> VR {
    if tag.0 == 0xFFFE {
        return VR::UN;
    }
    if tag.0 % 2 == 1 && tag.1 >= 0x0010 && tag.1 <= 0x00FF {
        return VR::LO; // private creator
    }
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr) {
        Some(VirtualVr::Exact(vr)) => vr,
        Some(VirtualVr::Xs) => VR::US,
        Some(_) => VR::OW,
        None => VR::UN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::{write_dataset, Value};

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(tag.0.to_le_bytes());
        b.extend(tag.1.to_le_bytes());
        b.extend(vr);
        b.extend((value.len() as u16).to_le_bytes());
        b.extend(value);
        b
    }

    #[test]
    fn a_round_trip_keeps_every_byte_of_defined_length_primitives() {
        let mut buf = explicit((0x0008, 0x0005), b"CS", b"ISO_IR 100");
        buf.extend(explicit((0x0010, 0x0010), b"PN", b"M\xdcLLER^J\xdcRGEN "));
        buf.extend(explicit((0x0010, 0x0020), b"LO", b"ODD"));
        let ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        let mut out = Vec::new();
        write_dataset(&ds, Encoding::EXPLICIT_LE, &mut out).unwrap();
        assert_eq!(out, buf);
    }

    #[test]
    fn a_declared_length_beyond_the_buffer_is_an_error_not_an_allocation() {
        let mut buf = explicit((0x0010, 0x0010), b"PN", b"DOE^J ");
        buf.extend([0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2]);
        match read_dataset(&buf, Encoding::EXPLICIT_LE) {
            Err(ReadError::Truncated { needed, .. }) => assert_eq!(needed, 0xFFFF_FFF0),
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn hostile_nesting_stops_at_the_depth_limit() {
        // SQ (undefined) > item (undefined) > SQ > item > ... without end.
        let mut buf = Vec::new();
        for _ in 0..200 {
            buf.extend([0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            buf.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        assert_eq!(read_dataset(&buf, Encoding::EXPLICIT_LE), Err(ReadError::TooDeep));
    }

    #[test]
    fn implicit_vr_takes_the_dictionary_vr_and_reads_nested_items() {
        let mut buf = Vec::new();
        // (0008,1140) SQ, undefined length, one item with (0008,1155) UI.
        buf.extend([0x08, 0x00, 0x40, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]);
        buf.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        buf.extend([0x08, 0x00, 0x55, 0x11, 4, 0, 0, 0]);
        buf.extend(b"1.2\0");
        buf.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        buf.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let ds = read_dataset(&buf, Encoding::IMPLICIT_LE).unwrap();
        let Value::Items(items) = &ds.elements[0].value else { panic!("not a sequence") };
        assert_eq!(items[0].elements[0].vr, VR::UI);
        assert_eq!(items[0].text(Tag(0x0008, 0x1155)), Some("1.2"));
        let mut out = Vec::new();
        write_dataset(&ds, Encoding::IMPLICIT_LE, &mut out).unwrap();
        assert_eq!(out, buf, "undefined lengths are written as read");
    }
}
