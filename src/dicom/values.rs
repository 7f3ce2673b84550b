//! The last check before a data set leaves: every text value holds only bytes its VR allows, and
//! no binary value holds the elements that should have followed it.
//!
//! A kept value with a NUL or a control byte in it is not text a device wrote: it is what a lying
//! length makes of the elements after it (headers, then a removed patient name). A binary value
//! (US, UL, OB, ...) cannot be judged by its bytes, but a lie there has a shape: from some even
//! offset to its very end the value parses as a chain of element headers and values. Either is a
//! data fault. A value longer than its VR allows is what real devices do write; it is kept, and its
//! tag reported once so the free-text scrub can be seen to apply to it.

use dicom_core::{Tag, VR};

use super::element::{trim_padding, DataSet, Value};
use super::read::{decode_header, in_dictionary, tag_str, UNDEFINED};
use super::syntax::Encoding;

const ESC: u8 = 0x1B;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValueError {
    #[error("{tag} ({vr}) holds byte 0x{byte:02X}, which its VR does not allow")]
    Forbidden { tag: String, vr: &'static str, byte: u8 },
    #[error("{tag} ({vr}) ends in what parses as element headers at byte {at} of its value")]
    Swallowed { tag: String, vr: &'static str, at: usize },
    #[error("{tag} has VR {found} where the standard defines {expected}")]
    VrMismatch { tag: String, found: &'static str, expected: &'static str },
}

/// Every standard attribute at every depth must carry the VR the standard gives it (or one of the
/// same family, or UN). The anonymizer decides by VR what a value is (a date to shift, a name to
/// replace, text to scrub, a time to keep): a Study Description sent as CS, or a Patient's Address
/// sent as TM, would otherwise pass as something that needs no cleaning.
pub fn check_vrs(ds: &DataSet<'_>) -> Result<(), ValueError> {
    use dicom_core::dictionary::{DataDictionary, VirtualVr};
    for e in &ds.elements {
        if let Value::Items(items) = &e.value {
            items.iter().try_for_each(check_vrs)?;
        }
        if e.tag.0 % 2 == 1 || e.tag.1 == 0 || e.vr == VR::UN {
            continue;
        }
        let Some(defined) = dicom_dictionary_std::StandardDataDictionary.by_tag(e.tag).map(|d| d.vr) else {
            continue;
        };
        // The attributes whose VR depends on context may take any of theirs, and nothing else.
        let allowed: &[VR] = match defined {
            VirtualVr::Exact(vr) => &[vr],
            VirtualVr::Xs => &[VR::US, VR::SS],
            VirtualVr::Ox | VirtualVr::Px => &[VR::OB, VR::OW],
            VirtualVr::Lt => &[VR::US, VR::SS, VR::OW],
            // A kind this dictionary version does not know yet: nothing to hold the VR to.
            _ => continue,
        };
        if !allowed.iter().any(|&vr| vr == e.vr || family(vr).is_some_and(|f| family(e.vr) == Some(f))) {
            let expected = allowed.first().map_or("?", |vr| VR::to_string(*vr));
            return Err(ValueError::VrMismatch { tag: tag_str(e.tag), found: e.vr.to_string(), expected });
        }
    }
    Ok(())
}

/// VRs that are handled alike, so a writer's choice between them changes nothing downstream.
fn family(vr: VR) -> Option<u8> {
    Some(match vr {
        VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::UC => 0,
        VR::OB | VR::OW => 1,
        VR::US | VR::SS => 2,
        VR::UL | VR::SL => 3,
        VR::DS | VR::IS => 4,
        _ => return None,
    })
}

/// Repair, at every depth, the values real devices send that only look wrong, before anything
/// reads them: a text attribute in another text VR gets its dictionary VR back (so the rule for
/// what it is applies: a PN rule to Operators' Name sent as LO), and control bytes a text value's
/// VR does not allow become spaces (then the value is scrubbed like any other). A text value
/// that ends in what parses as the elements that should have followed it is no device's text but
/// the elements a lying length swallowed: that is a fault, never repaired. Elements that never
/// leave (private ones, see [`never_kept`]) are neither repaired nor judged.
pub fn repair_values(ds: &mut DataSet<'_>, enc: Encoding) -> Result<(), ValueError> {
    for e in &mut ds.elements {
        if never_kept(e.tag) {
            continue;
        }
        let b = match &mut e.value {
            Value::Items(items) => {
                items.iter_mut().try_for_each(|item| repair_values(item, enc))?;
                continue;
            }
            Value::Fragments(_) => continue,
            Value::Bytes(b) => b,
        };
        if let Some(defined) = text_vr_instead(e.tag, e.vr, b.len()) {
            e.vr = defined;
        }
        let Some(rule) = rule(e.vr) else { continue };
        if let Some(at) = header_in_text(e.tag, b, enc) {
            return Err(ValueError::Swallowed { tag: tag_str(e.tag), vr: e.vr.to_string(), at });
        }
        let (start, end) = padding_bounds(b);
        if b[start..end].iter().any(|&c| rule.forbids(c)) {
            for c in &mut b.to_mut()[start..end] {
                if rule.forbids(*c) {
                    *c = b' ';
                }
            }
        }
    }
    Ok(())
}

/// Elements that never leave whatever the rules say: private ones (their values cannot be
/// checked), group lengths (stale once values change), command elements and file meta (they
/// belong elsewhere than in a data set) and item padding.
pub fn never_kept(tag: Tag) -> bool {
    tag.0 % 2 == 1 || tag.1 == 0 || tag.0 == 0x0000 || tag.0 == 0x0002 || tag == Tag(0xFFFC, 0xFFFC)
}

/// Where the value between its padding starts and ends (see [`trim_padding`]).
fn padding_bounds(b: &[u8]) -> (usize, usize) {
    let value = trim_padding(b);
    let start = value.as_ptr() as usize - b.as_ptr() as usize;
    (start, start + value.len())
}

/// Character string VRs: their values are text, so a writer's choice between them changes what
/// the value is taken for, never how it is stored.
fn is_string_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::ST
            | VR::TM
            | VR::UC
            | VR::UI
            | VR::UR
            | VR::UT
    )
}

/// The dictionary's text VR for a standard attribute that arrived as another text VR, when a
/// value of `len` bytes fits its header.
fn text_vr_instead(tag: Tag, vr: VR, len: usize) -> Option<VR> {
    use dicom_core::dictionary::{DataDictionary, VirtualVr};
    if tag.0 % 2 == 1 || tag.1 == 0 || !is_string_vr(vr) {
        return None;
    }
    let Some(VirtualVr::Exact(defined)) =
        dicom_dictionary_std::StandardDataDictionary.by_tag(tag).map(|d| d.vr)
    else {
        return None;
    };
    let fits = super::read::has_long_length(defined) || len <= 0xFFFF;
    (defined != vr && is_string_vr(defined) && fits).then_some(defined)
}

/// The first offset (any, odd ones included: text has no alignment) in the text value of `tag`
/// from which it ends in the elements a lying length swallowed (see [`trailing_elements`]). Text
/// that holds no control byte cannot hold such a header (its small group and length numbers are
/// NULs and control bytes), and text that does (a line break, an `IS` after it) is still text
/// unless a header stands where the elements after `tag` would, and they reach the value's end.
fn header_in_text(tag: Tag, value: &[u8], enc: Encoding) -> Option<usize> {
    if !value.iter().any(|&c| c < 0x20 && c != ESC) {
        return None;
    }
    trailing_elements(tag, value, enc, 1)
}

/// Check every value at every depth of a data set in `enc`. Returns the tags whose values are longer
/// than their VR allows (kept as they are).
pub fn check_values(ds: &DataSet<'_>, enc: Encoding) -> Result<Vec<Tag>, ValueError> {
    let mut over_long = Vec::new();
    walk(ds, enc, &mut over_long)?;
    over_long.sort();
    over_long.dedup();
    Ok(over_long)
}

fn walk(ds: &DataSet<'_>, enc: Encoding, over_long: &mut Vec<Tag>) -> Result<(), ValueError> {
    for e in &ds.elements {
        match &e.value {
            Value::Items(items) => items.iter().try_for_each(|item| walk(item, enc, over_long))?,
            Value::Bytes(b) => {
                let Some(rule) = rule(e.vr) else {
                    if let Some(at) = trailing_elements(e.tag, b, enc, 2) {
                        return Err(ValueError::Swallowed { tag: tag_str(e.tag), vr: e.vr.to_string(), at });
                    }
                    continue;
                };
                // Padding (a trailing NUL on UIs, spaces elsewhere) is not part of the value.
                let value = trim_padding(b);
                if let Some(&byte) = value.iter().find(|&&c| rule.forbids(c)) {
                    return Err(ValueError::Forbidden { tag: tag_str(e.tag), vr: e.vr.to_string(), byte });
                }
                if let Some(max) = rule.max_len {
                    let split = if rule.multivalued {
                        value.split(|&c| c == b'\\').map(<[u8]>::len).max().unwrap_or(0)
                    } else {
                        value.len()
                    };
                    if split > max {
                        over_long.push(e.tag);
                    }
                }
            }
            Value::Fragments(_) => {}
        }
    }
    Ok(())
}

/// Where, if anywhere, the value of `tag` ends in elements it should have been followed by: the
/// first offset (a multiple of `step`: 2 for binary values, 1 for text) from which element headers
/// and their values follow one another to the value's end (or to fewer than 8 bytes before it: a
/// lie may end inside a header), in a chain of which at least one element is plausible where it
/// stands. A sequence or item of undefined length is entered, so its delimiters chain too.
/// Computed backwards in one pass, so the cost is linear in the value's size. Pixel Data is left
/// out: nothing but padding may follow it, and large pixel data is copied file to file unread, so
/// checking it would make the answer depend on size.
fn trailing_elements(tag: Tag, value: &[u8], enc: Encoding, step: usize) -> Option<usize> {
    if tag.0 == 0x7FE0 || value.len() < 8 {
        return None;
    }
    /// From this offset a chain reaches the end; `PLAUSIBLE`: and one of its elements is plausible.
    const CHAIN: u8 = 1;
    const PLAUSIBLE: u8 = 2;
    let header = |at: usize| match decode_header(&value[at..], enc, at) {
        Ok(Some(h)) if enc.explicit_vr || h.tag.0 == 0xFFFE || in_dictionary(h.tag) => Some(h),
        _ => None,
    };
    let end = value.len();
    let mut reach = vec![0u8; end / step + 1];
    for at in (0..=(end - 8) / step).rev().map(|k| step * k) {
        let Some(h) = header(at) else { continue };
        let next = if h.len == UNDEFINED {
            // Only a container may have an undefined length; its content follows its header.
            let container =
                if h.tag.0 == 0xFFFE { h.tag.1 == 0xE000 } else { matches!(h.vr, VR::SQ | VR::UN) };
            if !container {
                continue;
            }
            at + h.size
        } else {
            match at.checked_add(h.size).and_then(|n| n.checked_add(h.len as usize)) {
                Some(n) => n,
                None => continue,
            }
        };
        let own = if plausible_after(tag, &h, enc) { PLAUSIBLE } else { CHAIN };
        reach[at / step] = match next {
            // Up to 7 bytes may follow the last element: too few for another header.
            n if n <= end && end - n < 8 => own,
            n if n < end && n % step == 0 && reach[n / step] != 0 => reach[n / step].max(own),
            _ => 0,
        };
    }
    (0..end / step).map(|k| step * k).find(|&at| reach[at / step] == PLAUSIBLE)
}

/// Whether an element with header `h` could have followed the element `tag` in a data set: its
/// tag comes after `tag` (which rules out the zero group, so the bytes of a 0.0, and the groups
/// before it) and is an item tag, a standard attribute (in explicit VR, with a VR the standard
/// gives it, or UN) or, in explicit VR, a private creator (LO) or private element.
fn plausible_after(tag: Tag, h: &super::read::Header, enc: Encoding) -> bool {
    use dicom_core::dictionary::{DataDictionary, VirtualVr};
    if h.tag <= tag {
        return false;
    }
    if h.tag.0 == 0xFFFE {
        return matches!(h.tag.1, 0xE000 | 0xE00D | 0xE0DD);
    }
    if h.tag.0 % 2 == 1 {
        // In implicit VR a private header is any eight bytes: nothing to judge it by.
        return enc.explicit_vr
            && (matches!(h.tag.1, 0x0010..=0x00FF) && matches!(h.vr, VR::LO | VR::UN) || h.tag.1 >= 0x1000);
    }
    let Some(defined) = dicom_dictionary_std::StandardDataDictionary.by_tag(h.tag).map(|d| d.vr) else {
        return false;
    };
    if !enc.explicit_vr || h.vr == VR::UN {
        return true;
    }
    match defined {
        VirtualVr::Exact(vr) => vr == h.vr || family(vr).is_some_and(|f| family(h.vr) == Some(f)),
        VirtualVr::Xs => matches!(h.vr, VR::US | VR::SS),
        VirtualVr::Ox | VirtualVr::Px => matches!(h.vr, VR::OB | VR::OW),
        VirtualVr::Lt => matches!(h.vr, VR::US | VR::SS | VR::OW),
        _ => true,
    }
}

struct Rule {
    /// CR, LF, FF and TAB are allowed (ST, LT, UT).
    multiline: bool,
    /// `\` separates values, each limited to `max_len`.
    multivalued: bool,
    /// In bytes; PN's limit is per component group and SH/LO's in characters, so this is the
    /// single-byte reading, which is what a log line needs.
    max_len: Option<usize>,
}

impl Rule {
    /// A control byte the VR does not allow (ESC is the start of a character set switch).
    fn forbids(&self, c: u8) -> bool {
        c < 0x20 && c != ESC && !(self.multiline && matches!(c, b'\r' | b'\n' | 0x0C | b'\t'))
    }
}

fn rule(vr: VR) -> Option<Rule> {
    let (multiline, multivalued, max_len) = match vr {
        VR::AE => (false, true, Some(16)),
        VR::AS => (false, true, Some(4)),
        VR::CS => (false, true, Some(16)),
        VR::DA => (false, true, Some(8)),
        VR::DS => (false, true, Some(16)),
        VR::DT => (false, true, Some(26)),
        VR::IS => (false, true, Some(12)),
        VR::LO => (false, true, Some(64)),
        VR::PN => (false, true, Some(3 * 64 + 2)),
        VR::SH => (false, true, Some(16)),
        VR::TM => (false, true, Some(14)),
        VR::UI => (false, true, Some(64)),
        VR::UC => (false, true, None),
        VR::ST => (true, false, Some(1024)),
        VR::LT => (true, false, Some(10240)),
        VR::UT | VR::UR => (vr == VR::UT, false, None),
        _ => return None,
    };
    Some(Rule { multiline, multivalued, max_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::read::tests::explicit as one;
    use crate::dicom::{read_dataset, Element, Encoding};

    #[test]
    fn element_headers_inside_a_kept_value_are_a_fault() {
        let mut manufacturer = b"ACME".to_vec();
        manufacturer.extend([0x10, 0x00, 0x10, 0x00, b'P', b'N', 8, 0]);
        manufacturer.extend(b"DOE^JOHN");
        let buf = one((0x0008, 0x0070), b"LO", &manufacturer);
        let ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        let err = check_values(&ds, Encoding::EXPLICIT_LE).unwrap_err();
        let ValueError::Forbidden { tag, byte, .. } = err else { panic!("{err:?}") };
        assert_eq!((tag.as_str(), byte), ("(0008,0070)", 0x10));
        // Nor does the repair take them for a device's control bytes.
        let mut ds = ds;
        let err = repair_values(&mut ds, Encoding::EXPLICIT_LE).unwrap_err();
        assert_eq!(err, ValueError::Swallowed { tag: "(0008,0070)".into(), vr: "LO", at: 4 });
        let mut ds = DataSet::default();
        let implicit = [&b"ACME"[..], &[0x10, 0, 0x10, 0, 8, 0, 0, 0], b"DOE^JOHN"].concat();
        ds.elements =
            vec![Element { tag: Tag(0x0008, 0x0070), vr: VR::LO, value: Value::Bytes(implicit.into()) }];
        assert!(repair_values(&mut ds, Encoding::IMPLICIT_LE).is_err());
    }

    /// A value of 0.0 in Implicit VR reads as a (0000,0000) header of length 0.
    #[test]
    fn zero_floats_in_implicit_vr_are_numbers_not_headers() {
        let implicit = |tag: (u16, u16), value: &[u8]| {
            let mut b = [tag.0.to_le_bytes(), tag.1.to_le_bytes()].concat();
            b.extend((value.len() as u32).to_le_bytes());
            b.extend(value);
            b
        };
        let mut buf = implicit((0x0018, 0x9087), &[0; 8]); // DiffusionBValue 0
        buf.extend(implicit((0x0018, 0x9089), &[0; 24])); // DiffusionGradientOrientation 0\0\0
        buf.extend(implicit((0x0070, 0x0022), &[0; 16])); // GraphicData 0\0\0\0
        let ds = read_dataset(&buf, Encoding::IMPLICIT_LE).unwrap();
        assert_eq!(check_values(&ds, Encoding::IMPLICIT_LE), Ok(vec![]));
    }

    #[test]
    fn control_bytes_in_text_are_replaced_and_a_text_vr_swapped_for_another_is_given_back() {
        let mut buf = one((0x0008, 0x1070), b"LO", b"SMITH^ANNA");
        buf.extend(one((0x0032, 0x1030), b"LO", b"PAIN\r\nDOE "));
        buf.extend(one((0x4008, 0x010B), b"ST", b"line\r\nnext"));
        let mut ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        repair_values(&mut ds, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(ds.elements[0].vr, VR::PN, "Operators' Name is a person's name whatever VR it came in");
        assert_eq!(ds.text(Tag(0x0032, 0x1030)), Some("PAIN  DOE"));
        assert_eq!(ds.text(Tag(0x4008, 0x010B)), Some("line\r\nnext"), "ST allows line breaks");
        assert_eq!(check_values(&ds, Encoding::EXPLICIT_LE), Ok(vec![]));
    }

    #[test]
    fn padding_escapes_and_multiline_text_pass_and_over_long_values_are_reported() {
        let mut buf = one((0x0008, 0x0018), b"UI", b"1.2.3\0");
        buf.extend(one((0x0010, 0x0010), b"PN", b"\x1b$BF|K\\\x1b(B "));
        buf.extend(one((0x0010, 0x4000), b"LT", b"line one\r\nline two\t"));
        buf.extend(one((0x0018, 0x1030), b"LO", &[b'x'; 80]));
        let ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(check_values(&ds, Encoding::EXPLICIT_LE), Ok(vec![Tag(0x0018, 0x1030)]));
        let bad = one((0x0008, 0x1030), b"LO", b"CT\r\nCHEST");
        let ds = read_dataset(&bad, Encoding::EXPLICIT_LE).unwrap();
        let err = check_values(&ds, Encoding::EXPLICIT_LE).unwrap_err();
        assert!(
            matches!(err, ValueError::Forbidden { byte: b'\r', .. }),
            "LO allows no line breaks: {err:?}"
        );
    }

    #[test]
    fn a_vr_the_standard_does_not_give_the_attribute_is_a_fault() {
        let cs = one((0x0008, 0x1030), b"CS", b"DOE JOHN");
        let ds = read_dataset(&cs, Encoding::EXPLICIT_LE).unwrap();
        assert!(matches!(check_vrs(&ds), Err(ValueError::VrMismatch { found: "CS", expected: "LO", .. })));
        let tm = one((0x0010, 0x1040), b"TM", b"PLANTA 12 Main St ");
        let ds = read_dataset(&tm, Encoding::EXPLICIT_LE).unwrap();
        assert!(check_vrs(&ds).is_err());
        // An attribute whose VR depends on context takes one of its own, not any.
        let xs = one((0x0028, 0x0106), b"LO", b"DOE JOHN");
        let ds = read_dataset(&xs, Encoding::EXPLICIT_LE).unwrap();
        assert!(check_vrs(&ds).is_err());
        let xs = one((0x0028, 0x0106), b"SS", &[0, 0]);
        let ds = read_dataset(&xs, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(check_vrs(&ds), Ok(()));
        // The same family, UN, private and unknown tags pass.
        let mut ok = one((0x0008, 0x1030), b"SH", b"CT HEAD ");
        ok.extend(one((0x0009, 0x1001), b"DA", b"20200101"));
        ok.extend(one((0x0018, 0x0050), b"IS", b"1 "));
        let ds = read_dataset(&ok, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(check_vrs(&ds), Ok(()));
    }

    #[test]
    fn a_binary_value_that_swallowed_the_elements_after_it_is_a_fault() {
        let mut rows = 512u16.to_le_bytes().to_vec();
        rows.extend(one((0x0028, 0x0011), b"US", &512u16.to_le_bytes()));
        rows.extend(one((0x6000, 0x0022), b"LO", b"overlay of SMITH"));
        let lie = one((0x0028, 0x0010), b"US", &rows);
        let ds = read_dataset(&lie, Encoding::EXPLICIT_LE).unwrap();
        let err = check_values(&ds, Encoding::EXPLICIT_LE).unwrap_err();
        assert_eq!(err, ValueError::Swallowed { tag: "(0028,0010)".into(), vr: "US", at: 2 });
        // A chain of private elements and a chain followed by a few bytes are caught too.
        for tail in [
            [one((0x0029, 0x0010), b"LO", b"ACME"), one((0x0029, 0x1001), b"LO", b"DOE^JOHN")].concat(),
            [one((0x0032, 0x1030), b"LO", b"DOE^JOHN"), vec![0xAB, 0xCD]].concat(),
        ] {
            let mut value = 512u16.to_le_bytes().to_vec();
            value.extend(&tail);
            let lie = one((0x0028, 0x0010), b"US", &value);
            let ds = read_dataset(&lie, Encoding::EXPLICIT_LE).unwrap();
            assert!(check_values(&ds, Encoding::EXPLICIT_LE).is_err(), "{tail:?}");
        }
        // Elements that could not have followed the value (tags before its own) are not looked for.
        let mut value = 512u16.to_le_bytes().to_vec();
        value.extend(one((0x0008, 0x0090), b"PN", b"DOE^JOHN"));
        let early = one((0x0028, 0x0010), b"US", &value);
        let ds = read_dataset(&early, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(check_values(&ds, Encoding::EXPLICIT_LE), Ok(vec![]));
        // Pixel data is not judged: its size must not change the answer.
        let mut pixels = lie.clone();
        pixels[0..4].copy_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
        let ds = read_dataset(&pixels, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(check_values(&ds, Encoding::EXPLICIT_LE), Ok(vec![]));
        // Honest binary values pass, long ones included.
        let lut: Vec<u8> = (0..4096u16).flat_map(|v| (v * 7).to_le_bytes()).collect();
        let mut ok = one((0x0028, 0x0010), b"US", &512u16.to_le_bytes());
        ok.extend(one((0x0028, 0x3006), b"US", &[]));
        let ds = read_dataset(&ok, Encoding::EXPLICIT_LE).unwrap();
        assert_eq!(check_values(&ds, Encoding::EXPLICIT_LE), Ok(vec![]));
        let mut ds = ds;
        ds.elements[1].value = Value::Bytes(lut.into());
        assert_eq!(check_values(&ds, Encoding::EXPLICIT_LE), Ok(vec![]));
    }

    /// An explicit VR element with a 32-bit length (UT, OB, ...).
    fn long(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut b = [tag.0.to_le_bytes(), tag.1.to_le_bytes()].concat();
        b.extend(vr);
        b.extend([0, 0]);
        b.extend((value.len() as u32).to_le_bytes());
        b.extend(value);
        b
    }

    /// Issue 19, class 5: real devices' text that reads as a header where no element could stand.
    /// deid-data's ultrasounds hold AdditionalPatientHistory "...diagnoses\rRIS COMMENTS-...", whose
    /// "es\rRIS C" reads in explicit VR as a private (7365,520D) IS of length 17184; pydicom's
    /// examples_ybr_color.dcm holds a private UT of XML whose "117.DAT</Cli" reads as a
    /// (3131,2E37) DA of length 15444 that fits the value but is followed by more XML.
    #[test]
    fn text_that_reads_as_a_header_where_no_element_could_stand_is_text() {
        let history = b"multiple diagnoses\rRIS COMMENTS- Q53.21-Abdominal testis, bilateral;; \
                        Z13.820-Encounter for screening for osteoporosis;; ;";
        let mut xml =
            b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\" standalone=\"yes\"?>\r\n<Clip>\r\n".to_vec();
        xml.extend(
            b"  <ClipDataPath>\\Storage Card\\var\\patient\\S0002171\\C0016117.DAT</ClipDataPath>\r\n",
        );
        while xml.len() < 20_000 {
            xml.extend(
                b"    <Item><FrameOffset>3480</FrameOffset><FrameLength>85420</FrameLength></Item>\r\n",
            );
        }
        xml.extend(b"</Clip>\r\n ");
        for (tag, vr, value) in [
            ((0x0010, 0x21B0), b"LT", &history[..]),
            ((0x0010, 0x21B0), b"LT", b"test\rRIS COMMENTS-"),
            ((0x0040, 0xA160), b"UT", &xml),
        ] {
            let mut buf = one((0x0010, 0x0020), b"LO", b"ID1 ");
            buf.extend(if vr == b"UT" { long(tag, vr, value) } else { one(tag, vr, value) });
            let mut ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
            assert_eq!(repair_values(&mut ds, Encoding::EXPLICIT_LE), Ok(()), "{tag:04X?}");
            assert_eq!(ds.elements[1].value, Value::Bytes(value.into()), "kept as it came");
            assert_eq!(check_values(&ds, Encoding::EXPLICIT_LE), Ok(vec![]));
        }
        // A private value is removed whatever it holds: it is not judged, even when it holds the
        // elements that should have followed it.
        let mut lie = b"XML".to_vec();
        lie.extend(one((0x0019, 0x1051), b"LO", b"DOE^JOHN"));
        for value in [&xml, &lie] {
            let buf = long((0x0019, 0x1050), b"UT", value);
            let mut ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
            assert_eq!(repair_values(&mut ds, Encoding::EXPLICIT_LE), Ok(()));
        }
        // The same lie in a public value is caught, and so is one that ends inside a header.
        let mut lie = b"History\r".to_vec();
        lie.extend(one((0x0010, 0x21C0), b"US", &[4, 0]));
        lie.extend(one((0x0010, 0x4000), b"LT", b"DOE^JOHN"));
        let buf = one((0x0010, 0x21B0), b"LT", &lie);
        let mut ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        let err = repair_values(&mut ds, Encoding::EXPLICIT_LE).unwrap_err();
        assert_eq!(err, ValueError::Swallowed { tag: "(0010,21B0)".into(), vr: "LT", at: 8 });
        lie.extend([0x20, 0x00, 0x0D, 0x00]);
        let buf = one((0x0010, 0x21B0), b"LT", &lie);
        let mut ds = read_dataset(&buf, Encoding::EXPLICIT_LE).unwrap();
        assert!(repair_values(&mut ds, Encoding::EXPLICIT_LE).is_err());
    }
}
