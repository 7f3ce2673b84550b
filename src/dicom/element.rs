//! The in-memory shape of a data set: elements in tag order whose values borrow the input.

use std::borrow::Cow;

use dicom_core::{Tag, VR};

/// One data set (the top level or a sequence item): elements sorted by tag, as DICOM requires.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSet<'a> {
    pub elements: Vec<Element<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Element<'a> {
    pub tag: Tag,
    pub vr: VR,
    pub value: Value<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// A primitive value exactly as encoded (padding included, byte order of the transfer syntax).
    Bytes(Cow<'a, [u8]>),
    /// A sequence (SQ) with its items.
    Items(Vec<DataSet<'a>>),
    /// Encapsulated pixel data: the basic offset table first, then each fragment, untouched.
    Fragments(Vec<Cow<'a, [u8]>>),
}

impl<'a> DataSet<'a> {
    pub fn get(&self, tag: Tag) -> Option<&Element<'a>> {
        self.position(tag).ok().map(|i| &self.elements[i])
    }

    /// The raw bytes of a primitive element, if present.
    pub fn bytes(&self, tag: Tag) -> Option<&[u8]> {
        match &self.get(tag)?.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A text value with DICOM padding (trailing spaces and NULs, leading spaces) removed.
    /// `None` when absent or not valid UTF-8 (callers that must see every byte use `bytes`).
    pub fn text(&self, tag: Tag) -> Option<&str> {
        self.bytes(tag).and_then(|b| std::str::from_utf8(trim_padding(b)).ok())
    }

    /// Insert or replace an element, keeping tag order.
    pub fn put(&mut self, element: Element<'a>) {
        match self.position(element.tag) {
            Ok(i) => self.elements[i] = element,
            Err(i) => self.elements.insert(i, element),
        }
    }

    /// Set a text element to `text`, padded to even length as its VR requires.
    pub fn put_text(&mut self, tag: Tag, vr: VR, text: &str) {
        self.put(Element {
            tag,
            vr,
            value: Value::Bytes(Cow::Owned(pad_text(vr, text.as_bytes().to_vec()))),
        });
    }

    fn position(&self, tag: Tag) -> Result<usize, usize> {
        self.elements.binary_search_by(|e| e.tag.cmp(&tag))
    }
}

/// Strip the padding DICOM allows around a text value: trailing spaces and NULs, leading spaces.
pub fn trim_padding(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != b' ' && c != 0).map_or(0, |i| i + 1);
    let start = b[..end].iter().position(|&c| c != b' ').unwrap_or(end);
    &b[start..end]
}

/// Pad a value to even length: UIs with NUL, other text with a space (PS3.5 §6.2).
pub fn pad_text(vr: VR, mut v: Vec<u8>) -> Vec<u8> {
    if v.len() % 2 == 1 {
        v.push(if vr == VR::UI { 0 } else { b' ' });
    }
    v
}
