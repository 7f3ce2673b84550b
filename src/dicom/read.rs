//! Parse a data set from a byte buffer without copying values and without trusting lengths.
//!
//! This is the one strict reader every path goes through (network, spilled, inflated, offline, file
//! meta): every element and item lies wholly inside its parent, defined-length items add up to their
//! sequence's length, undefined lengths end with their delimiter inside the parent, and no value runs
//! past its container. A lying length is an error here, never a reason to read the next element as
//! part of this one: that is how a patient's name would end up inside a "kept" value.

use std::borrow::Cow;

use dicom_core::dictionary::{DataDictionary, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::element::{DataSet, Element, Value};
use super::syntax::Encoding;

pub(crate) const UNDEFINED: u32 = 0xFFFF_FFFF;
pub(crate) const ITEM: Tag = Tag(0xFFFE, 0xE000);
pub(crate) const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
pub(crate) const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);

/// Sequences nest a few levels in real objects; a hostile file could nest until the stack breaks.
pub(crate) const MAX_DEPTH: usize = 48;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    #[error("data set truncated at offset {offset}: {what} needs {needed} bytes, {available} left in its container")]
    Truncated { offset: usize, what: String, needed: u64, available: usize },
    #[error("element {tag} at offset {offset} has an invalid VR {vr:?}")]
    BadVr { tag: String, offset: usize, vr: [u8; 2] },
    #[error("element {tag} at offset {offset} has undefined length but is not a sequence or pixel data")]
    UndefinedLength { tag: String, offset: usize },
    #[error("unexpected {found} at offset {offset} (expected {expected})")]
    Unexpected { found: String, offset: usize, expected: &'static str },
    #[error("element {tag} appears twice in one data set (offset {offset})")]
    Duplicate { tag: String, offset: usize },
    #[error("sequences nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

pub(crate) fn tag_str(t: Tag) -> String {
    format!("({:04X},{:04X})", t.0, t.1)
}

/// One element header as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub tag: Tag,
    pub vr: VR,
    pub len: u32,
    /// Bytes the header itself takes: 8, or 12 for explicit VRs with a 32-bit length.
    pub size: usize,
}

/// Two bytes as a number in the byte order of `enc`.
fn u16_in(enc: Encoding, v: [u8; 2]) -> u16 {
    if enc.big_endian {
        u16::from_be_bytes(v)
    } else {
        u16::from_le_bytes(v)
    }
}

/// Decode the element header at the start of `b` (at most 12 bytes are looked at). `Ok(None)`: `b`
/// is too short to hold it. Shared by the in-memory reader and the spill scanner, so both read the
/// same header the same way.
pub(crate) fn decode_header(b: &[u8], enc: Encoding, offset: usize) -> Result<Option<Header>, ReadError> {
    let u16_at = |i: usize| u16_in(enc, [b[i], b[i + 1]]);
    let u32_at = |i: usize| {
        let v = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if enc.big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    if b.len() < 8 {
        return Ok(None);
    }
    let tag = Tag(u16_at(0), u16_at(2));
    if !enc.explicit_vr || tag.0 == 0xFFFE {
        return Ok(Some(Header { tag, vr: implicit_vr(tag), len: u32_at(4), size: 8 }));
    }
    let code = [b[4], b[5]];
    let vr = VR::from_binary(code).ok_or(ReadError::BadVr { tag: tag_str(tag), offset, vr: code })?;
    if !has_long_length(vr) {
        return Ok(Some(Header { tag, vr, len: u16_at(6) as u32, size: 8 }));
    }
    if b.len() < 12 {
        return Ok(None);
    }
    Ok(Some(Header { tag, vr, len: u32_at(8), size: 12 }))
}

/// Read a whole data set that fills `buf`. Trailing zero padding after the last element is ignored.
pub fn read_dataset(buf: &[u8], enc: Encoding) -> Result<DataSet<'_>, ReadError> {
    let mut r = Reader { buf, pos: 0, enc, depth: 0 };
    r.elements(buf.len(), false)
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
    // The tag decides before the VR is read: what follows the meta group may be implicit VR.
    while let Some(b) = buf.get(r.pos..r.pos + 4) {
        if !keep(Tag(u16_in(enc, [b[0], b[1]]), u16_in(enc, [b[2], b[3]]))) {
            break;
        }
        let e = r.element(buf.len())?;
        if ds.elements.last().is_some_and(|last| last.tag >= e.tag) {
            return Err(ReadError::Unexpected {
                found: tag_str(e.tag),
                offset: r.pos,
                expected: "ascending tags",
            });
        }
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
    /// `n` more bytes must lie before `end`, the end of the current container.
    fn need(&self, n: u64, end: usize, what: &str) -> Result<(), ReadError> {
        self.need_with(n, end, || what.to_string())
    }

    /// As [`Reader::need`], with the name made only when it is needed: the error is rare, and
    /// naming an element formats its tag.
    fn need_with(&self, n: u64, end: usize, what: impl FnOnce() -> String) -> Result<(), ReadError> {
        let available = end.saturating_sub(self.pos);
        if n > available as u64 {
            return Err(ReadError::Truncated { offset: self.pos, what: what(), needed: n, available });
        }
        Ok(())
    }

    fn header(&mut self, end: usize) -> Result<Header, ReadError> {
        let at = self.pos;
        match decode_header(&self.buf[at..end], self.enc, at)? {
            Some(h) => {
                self.pos += h.size;
                Ok(h)
            }
            None => Err(ReadError::Truncated {
                offset: at,
                what: "element header".into(),
                needed: 8,
                available: end - at,
            }),
        }
    }

    fn take(&mut self, len: u32, end: usize, what: impl FnOnce() -> String) -> Result<&'a [u8], ReadError> {
        self.need_with(len as u64, end, what)?;
        let v = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(v)
    }

    /// The elements of a data set that ends at `end`, or at its item delimiter (`delimited`), which
    /// must then lie before `end`. Sorting is done once at the end, so any order costs n·log n.
    fn elements(&mut self, end: usize, delimited: bool) -> Result<DataSet<'a>, ReadError> {
        let mut ds = DataSet::default();
        let mut sorted = true;
        loop {
            if self.pos >= end {
                if delimited {
                    self.need(8, end, "item delimitation item")?;
                }
                break;
            }
            if !delimited && end - self.pos < 8 && self.buf[self.pos..end].iter().all(|&b| b == 0) {
                // Some writers pad the data set with a few zero bytes; nothing to read there.
                self.pos = end;
                break;
            }
            let at = self.pos;
            let e = self.element(end)?;
            if e.tag == ITEM_END {
                if delimited {
                    break;
                }
                return Err(ReadError::Unexpected {
                    found: "item delimitation item".into(),
                    offset: at,
                    expected: "an element",
                });
            }
            if let Some(last) = ds.elements.last() {
                if last.tag == e.tag {
                    return Err(ReadError::Duplicate { tag: tag_str(e.tag), offset: at });
                }
                sorted &= last.tag < e.tag;
            }
            ds.elements.push(e);
        }
        if !sorted {
            // Tag order is required by PS3.5 §7.1; a stray unsorted element is sorted in rather than
            // trusted to be last, so lookups by binary search stay correct. A tag seen twice is
            // ambiguous (which PatientID is the patient's?), so it is refused.
            ds.elements.sort_by_key(|e| e.tag);
            if let Some(w) = ds.elements.windows(2).find(|w| w[0].tag == w[1].tag) {
                return Err(ReadError::Duplicate { tag: tag_str(w[0].tag), offset: 0 });
            }
        }
        Ok(ds)
    }

    /// One element that must lie wholly before `end`. An item delimiter comes back as an element
    /// with that tag and no value, for the caller to judge.
    fn element(&mut self, end: usize) -> Result<Element<'a>, ReadError> {
        let start = self.pos;
        let Header { tag, vr, len, .. } = self.header(end)?;
        if tag == ITEM_END {
            if len != 0 {
                return Err(ReadError::Unexpected {
                    found: "item delimiter with a length".into(),
                    offset: start,
                    expected: "length 0",
                });
            }
            return Ok(Element { tag, vr: VR::UN, value: Value::Bytes(Cow::Borrowed(&[])) });
        }
        if tag.0 == 0xFFFE {
            return Err(ReadError::Unexpected { found: tag_str(tag), offset: start, expected: "an element" });
        }
        let known = if vr == VR::UN { dictionary_vr(tag) } else { None };
        let value = if vr == VR::SQ || (vr == VR::UN && len == UNDEFINED) {
            // An undefined-length UN is a sequence whose content is Implicit VR LE (PS3.5 §6.2.2).
            let inner = if vr == VR::UN { Encoding::IMPLICIT_LE } else { self.enc };
            Value::Items(self.items(len, end, inner)?)
        } else if known == Some(VR::SQ) {
            // A sequence whose VR a node lost: its items, in Implicit VR LE, are read so that the
            // rules see inside. Bytes that are no items stay UN, which the engine never keeps.
            self.need_with(len as u64, end, || format!("value of {}", tag_str(tag)))?;
            let (pos, depth, enc) = (self.pos, self.depth, self.enc);
            match self.items(len, end, Encoding::IMPLICIT_LE) {
                Ok(items) => Value::Items(items),
                Err(ReadError::TooDeep) => return Err(ReadError::TooDeep),
                Err(_) => {
                    (self.pos, self.depth, self.enc) = (pos, depth, enc);
                    Value::Bytes(Cow::Borrowed(self.take(len, end, || format!("value of {}", tag_str(tag)))?))
                }
            }
        } else if len == UNDEFINED {
            if !matches!(vr, VR::OB | VR::OW) {
                return Err(ReadError::UndefinedLength { tag: tag_str(tag), offset: start });
            }
            Value::Fragments(self.fragments(end)?)
        } else {
            Value::Bytes(Cow::Borrowed(self.take(len, end, || format!("value of {}", tag_str(tag)))?))
        };
        let vr = match (&value, known) {
            (Value::Items(_), _) => VR::SQ,
            // A UN value of a standard attribute is that attribute's value in the byte order of
            // the transfer syntax (PS3.5 §6.2.2): it is given its VR back, so that the rules
            // and the safety net treat it for what it is, when its length fits that VR's header.
            (Value::Bytes(b), Some(known))
                if known != VR::SQ
                    && !self.enc.big_endian
                    && (has_long_length(known) || b.len() <= 0xFFFF) =>
            {
                known
            }
            _ => vr,
        };
        Ok(Element { tag, vr, value })
    }

    /// The items of a sequence of length `len` inside a container ending at `parent_end`.
    fn items(&mut self, len: u32, parent_end: usize, inner: Encoding) -> Result<Vec<DataSet<'a>>, ReadError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ReadError::TooDeep);
        }
        let outer = self.enc;
        self.enc = inner;
        let defined = len != UNDEFINED;
        let end = if defined {
            self.need(len as u64, parent_end, "sequence")?;
            self.pos + len as usize
        } else {
            parent_end
        };
        let mut items = Vec::new();
        loop {
            if defined && self.pos == end {
                break;
            }
            self.need(8, end, "item header")?;
            let at = self.pos;
            let h = self.header(end)?;
            if h.tag == SEQUENCE_END && !defined {
                if h.len != 0 {
                    return Err(ReadError::Unexpected {
                        found: "sequence delimiter with a length".into(),
                        offset: at,
                        expected: "length 0",
                    });
                }
                break;
            }
            if h.tag != ITEM {
                return Err(ReadError::Unexpected {
                    found: tag_str(h.tag),
                    offset: at,
                    expected: "a sequence item",
                });
            }
            let item = if h.len == UNDEFINED {
                self.elements(end, true)?
            } else {
                self.need(h.len as u64, end, "sequence item")?;
                let item_end = self.pos + h.len as usize;
                self.elements(item_end, false)?
            };
            items.push(item);
        }
        self.enc = outer;
        self.depth -= 1;
        Ok(items)
    }

    /// Encapsulated pixel data fragments, up to the sequence delimiter, inside `end`.
    fn fragments(&mut self, end: usize) -> Result<Vec<Cow<'a, [u8]>>, ReadError> {
        let mut out = Vec::new();
        loop {
            let at = self.pos;
            let h = self.header(end)?;
            if h.tag == SEQUENCE_END {
                return Ok(out);
            }
            if h.tag != ITEM || h.len == UNDEFINED {
                return Err(ReadError::Unexpected {
                    found: tag_str(h.tag),
                    offset: at,
                    expected: "a pixel data fragment",
                });
            }
            out.push(Cow::Borrowed(self.take(h.len, end, || "pixel data fragment".to_string())?));
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

/// Whether the standard dictionary defines `tag` (repeating groups included).
pub fn in_dictionary(tag: Tag) -> bool {
    StandardDataDictionary.by_tag(tag).is_some()
}

/// The VR the standard dictionary gives a public `tag`, when it gives exactly one.
fn dictionary_vr(tag: Tag) -> Option<VR> {
    if tag.0 % 2 == 1 {
        return None;
    }
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr) {
        Some(VirtualVr::Exact(vr)) if vr != VR::UN => Some(vr),
        _ => None,
    }
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
pub(crate) mod tests {
    use super::*;
    use crate::dicom::{write_dataset, Value};

    /// An explicit VR little endian element with a 16-bit length.
    pub(crate) fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
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

    /// An implicit VR little endian element.
    fn implicit(tag: (u16, u16), value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(tag.0.to_le_bytes());
        b.extend(tag.1.to_le_bytes());
        b.extend((value.len() as u32).to_le_bytes());
        b.extend(value);
        b
    }

    /// A UN element as explicit VR writes it (reserved bytes, 32-bit length).
    fn un(tag: (u16, u16), value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(tag.0.to_le_bytes());
        b.extend(tag.1.to_le_bytes());
        b.extend(b"UN\0\0");
        b.extend((value.len() as u32).to_le_bytes());
        b.extend(value);
        b
    }

    #[test]
    fn a_un_sequence_of_defined_length_is_read_as_items_and_a_un_attribute_gets_its_vr() {
        // RequestAttributesSequence whose VR a node lost: one defined-length item, Implicit VR LE.
        let inner =
            [implicit((0x0008, 0x0050), b"ACC90817"), implicit((0x0010, 0x0010), b"DOE^JOHN")].concat();
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend((inner.len() as u32).to_le_bytes());
        item.extend(&inner);
        let mut buf = un((0x0008, 0x1030), b"CT HEAD ");
        buf.extend(un((0x0040, 0x0275), &item));
        let ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(ds.elements[0].vr, VR::LO, "a UN description is a description");
        let Value::Items(items) = &ds.elements[1].value else { panic!("not read as a sequence") };
        assert_eq!(ds.elements[1].vr, VR::SQ);
        assert_eq!(items[0].get(Tag(0x0010, 0x0010)).map(|e| e.vr), Some(VR::PN));
        assert_eq!(items[0].text(Tag(0x0010, 0x0010)), Some("DOE^JOHN"));
        // Bytes that are no items stay UN (the engine removes them), and the rest is read on.
        let mut buf = un((0x0040, 0x0275), b"DOE^JOHN");
        buf.extend(explicit((0x0040, 0x0280), b"ST", b"OK"));
        let ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(ds.elements[0].vr, VR::UN);
        assert_eq!(ds.elements[1].value, Value::Bytes(Cow::Borrowed(b"OK")));
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
