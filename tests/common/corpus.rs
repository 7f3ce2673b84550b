//! A generator of PHI-laden instances, written with dicom-object (an independent writer, so our
//! reader is tested against someone else's bytes). Also used by `examples/make-corpus.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const MR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
pub const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// One synthetic patient with PHI everywhere a real one has it.
#[derive(Clone)]
pub struct Patient {
    pub name: &'static str,
    pub id: &'static str,
    pub birth_date: &'static str,
    pub charset: Option<&'static str>,
    /// The name's bytes as they go on the wire (differs from `name` for non-UTF-8 charsets).
    pub name_bytes: Option<Vec<u8>>,
}

pub fn smith() -> Patient {
    Patient {
        name: "SMITH^ELIZABETH",
        id: "MRN12345",
        birth_date: "19610203",
        charset: None,
        name_bytes: None,
    }
}

pub fn yamada() -> Patient {
    Patient {
        name: "山田^太郎=やまだ^たろう",
        id: "JP-556677",
        birth_date: "19700707",
        charset: Some("ISO_IR 192"),
        name_bytes: None,
    }
}

pub fn mueller() -> Patient {
    Patient {
        name: "MÜLLER^JÜRGEN",
        id: "DE-998877",
        birth_date: "19550505",
        charset: Some("ISO_IR 100"),
        name_bytes: Some(b"M\xdcLLER^J\xdcRGEN".to_vec()),
    }
}

/// How an instance is laid out.
#[derive(Clone)]
pub struct Shape {
    pub transfer_syntax: &'static str,
    pub frames: u32,
    pub rows: u16,
    pub study: u32,
    pub series: u32,
    pub instance: u32,
    pub accession: &'static str,
    pub study_date: &'static str,
    /// "CT" or "MR": picks the SOP class too.
    pub modality: &'static str,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            transfer_syntax: EXPLICIT_LE,
            frames: 1,
            rows: 16,
            study: 1,
            series: 1,
            instance: 1,
            accession: "ACC7654321",
            study_date: "20220101",
            modality: "CT",
        }
    }
}

/// PHI strings that must not appear in any output (besides the patient's own).
pub const OTHER_PHI: &[&str] = &[
    "HOUSE^GREGORY",
    "WILSON^JAMES",
    "CUDDY^LISA",
    "Springfield General",
    "12 Elm Street",
    "CTSTATION7",
    "SN-448812",
    "ACC7654321",
    "STUDY42",
    "Private SMITH note",
    "overlay of SMITH",
    "curve ELIZABETH",
    "OTHERID777",
    "Dr. Chase",
    "1.2.999.777.", // every original UID starts with this
];

pub fn uid(kind: u32, p: &Patient, shape: &Shape, n: u32) -> String {
    let pid: u32 = p.id.bytes().map(u32::from).sum();
    format!("1.2.999.777.{pid}.{}.{kind}.{n}", shape.study)
}

fn text(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

pub fn sop_class(shape: &Shape) -> &'static str {
    if shape.modality == "MR" {
        MR_IMAGE
    } else {
        CT_IMAGE
    }
}

/// The original SOP Instance UID of the instance `instance` makes.
pub fn sop_uid(p: &Patient, shape: &Shape) -> String {
    uid(3, p, shape, shape.series * 1000 + shape.instance)
}

/// A CT or MR instance carrying PHI in every place the issue lists.
pub fn instance(p: &Patient, shape: &Shape) -> Vec<u8> {
    let study_uid = uid(1, p, shape, 0);
    let series_uid = uid(2, p, shape, shape.series);
    let sop_uid = sop_uid(p, shape);
    let for_uid = uid(4, p, shape, 0);
    let mut o = InMemDicomObject::new_empty();
    if let Some(cs) = p.charset {
        o.put(text(Tag(0x0008, 0x0005), VR::CS, cs));
    }
    let name = match &p.name_bytes {
        Some(b) => DataElement::new(Tag(0x0010, 0x0010), VR::PN, PrimitiveValue::from(b.clone())),
        None => text(Tag(0x0010, 0x0010), VR::PN, p.name),
    };
    for e in [
        text(Tag(0x0008, 0x0008), VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
        text(Tag(0x0008, 0x0012), VR::DA, shape.study_date),
        text(Tag(0x0008, 0x0013), VR::TM, "101010"),
        text(Tag(0x0008, 0x0016), VR::UI, sop_class(shape)),
        text(Tag(0x0008, 0x0018), VR::UI, &sop_uid),
        text(Tag(0x0008, 0x0020), VR::DA, shape.study_date),
        text(Tag(0x0008, 0x0021), VR::DA, shape.study_date),
        text(Tag(0x0008, 0x0022), VR::DA, shape.study_date),
        text(Tag(0x0008, 0x0023), VR::DA, shape.study_date),
        text(Tag(0x0008, 0x002A), VR::DT, "20220101123000.5"),
        text(Tag(0x0008, 0x0030), VR::TM, "101010"),
        text(Tag(0x0008, 0x0031), VR::TM, "101010"),
        text(Tag(0x0008, 0x0032), VR::TM, "101010"),
        text(Tag(0x0008, 0x0033), VR::TM, "101010"),
        text(Tag(0x0008, 0x0050), VR::SH, shape.accession),
        text(Tag(0x0008, 0x0060), VR::CS, shape.modality),
        text(Tag(0x0008, 0x0070), VR::LO, "ACME Medical"),
        text(Tag(0x0008, 0x0080), VR::LO, "Springfield General"),
        text(Tag(0x0008, 0x0081), VR::ST, "12 Elm Street, Springfield"),
        text(Tag(0x0008, 0x0090), VR::PN, "HOUSE^GREGORY"),
        text(Tag(0x0008, 0x1010), VR::SH, "CTSTATION7"),
        text(Tag(0x0008, 0x1030), VR::LO, &format!("CT CHEST for {}", p.name.replace('^', " "))),
        text(Tag(0x0008, 0x103E), VR::LO, &format!("AXIAL {}", p.id)),
        text(Tag(0x0008, 0x1050), VR::PN, "WILSON^JAMES"),
        text(Tag(0x0008, 0x1070), VR::PN, "CUDDY^LISA"),
        text(Tag(0x0008, 0x1090), VR::LO, "Scanner 3000"),
        name,
        text(Tag(0x0010, 0x0020), VR::LO, p.id),
        text(Tag(0x0010, 0x0030), VR::DA, p.birth_date),
        text(Tag(0x0010, 0x0040), VR::CS, "F"),
        text(Tag(0x0010, 0x1000), VR::LO, "OTHERID777"),
        text(Tag(0x0010, 0x1010), VR::AS, "047Y"),
        text(Tag(0x0010, 0x1040), VR::LO, "12 Elm Street"),
        text(Tag(0x0018, 0x0050), VR::DS, "1.25"),
        text(Tag(0x0018, 0x0060), VR::DS, "120"),
        text(Tag(0x0018, 0x1000), VR::LO, "SN-448812"),
        text(Tag(0x0018, 0x5100), VR::CS, "HFS"),
        text(Tag(0x0020, 0x000D), VR::UI, &study_uid),
        text(Tag(0x0020, 0x000E), VR::UI, &series_uid),
        text(Tag(0x0020, 0x0010), VR::SH, "STUDY42"),
        text(Tag(0x0020, 0x0011), VR::IS, &shape.series.to_string()),
        text(Tag(0x0020, 0x0012), VR::IS, "1"),
        text(Tag(0x0020, 0x0013), VR::IS, &shape.instance.to_string()),
        text(Tag(0x0020, 0x0020), VR::CS, "L\\P"),
        text(Tag(0x0020, 0x0032), VR::DS, "0\\0\\0"),
        text(Tag(0x0020, 0x0037), VR::DS, "1\\0\\0\\0\\1\\0"),
        text(Tag(0x0020, 0x0052), VR::UI, &for_uid),
        text(Tag(0x0020, 0x1040), VR::LO, ""),
        text(Tag(0x0020, 0x4000), VR::LT, "Dr. Chase reviewed"),
        DataElement::new(Tag(0x0028, 0x0002), VR::US, PrimitiveValue::from(1u16)),
        text(Tag(0x0028, 0x0004), VR::CS, "MONOCHROME2"),
        DataElement::new(Tag(0x0028, 0x0010), VR::US, PrimitiveValue::from(shape.rows)),
        DataElement::new(Tag(0x0028, 0x0011), VR::US, PrimitiveValue::from(shape.rows)),
        text(Tag(0x0028, 0x0030), VR::DS, "0.5\\0.5"),
        DataElement::new(Tag(0x0028, 0x0100), VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(Tag(0x0028, 0x0101), VR::US, PrimitiveValue::from(12u16)),
        DataElement::new(Tag(0x0028, 0x0102), VR::US, PrimitiveValue::from(11u16)),
        DataElement::new(Tag(0x0028, 0x0103), VR::US, PrimitiveValue::from(0u16)),
        text(Tag(0x0028, 0x1050), VR::DS, "40"),
        text(Tag(0x0028, 0x1051), VR::DS, "400"),
        text(Tag(0x0028, 0x1052), VR::DS, "-1024"),
        text(Tag(0x0028, 0x1053), VR::DS, "1"),
        // Private block with PHI, and a private sequence with more inside.
        text(Tag(0x0009, 0x0010), VR::LO, "ACME 1.1"),
        text(Tag(0x0009, 0x1001), VR::LO, "Private SMITH note"),
        seq(Tag(0x0009, 0x1002), vec![item(vec![text(Tag(0x0010, 0x0010), VR::PN, p.name)])]),
        // Overlay and curve (retired) carrying text.
        DataElement::new(Tag(0x6000, 0x0010), VR::US, PrimitiveValue::from(shape.rows)),
        DataElement::new(Tag(0x6000, 0x0011), VR::US, PrimitiveValue::from(shape.rows)),
        text(Tag(0x6000, 0x0022), VR::LO, "overlay of SMITH"),
        text(Tag(0x5000, 0x2500), VR::LO, "curve ELIZABETH"),
        // A kept sequence with nested PN, UI, DA and DT.
        seq(
            Tag(0x0008, 0x1140),
            vec![item(vec![
                text(Tag(0x0008, 0x0020), VR::DA, shape.study_date),
                text(Tag(0x0008, 0x002A), VR::DT, "20220101123000"),
                text(Tag(0x0008, 0x0090), VR::PN, "HOUSE^GREGORY"),
                text(Tag(0x0008, 0x1150), VR::UI, CT_IMAGE),
                text(Tag(0x0008, 0x1155), VR::UI, &uid(5, p, shape, 1)),
                text(Tag(0x0010, 0x0010), VR::PN, p.name),
                text(Tag(0x0020, 0x0052), VR::UI, &for_uid),
                text(Tag(0x3006, 0x0024), VR::UI, &uid(6, p, shape, 1)),
            ])],
        ),
        // A coded sequence: its codes must survive.
        seq(
            Tag(0x0008, 0x2218),
            vec![item(vec![
                text(Tag(0x0008, 0x0100), VR::SH, "T-D3000"),
                text(Tag(0x0008, 0x0102), VR::SH, "SRT"),
                text(Tag(0x0008, 0x0104), VR::LO, "Chest"),
            ])],
        ),
    ] {
        o.put(e);
    }
    if shape.frames > 1 {
        o.put(text(Tag(0x0028, 0x0008), VR::IS, &shape.frames.to_string()));
    }
    o.put(pixel_data(shape));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(shape.transfer_syntax)
        .media_storage_sop_class_uid(sop_class(shape))
        .media_storage_sop_instance_uid(&sop_uid)
        .implementation_class_uid("1.2.999.1")
        .build()
        .expect("complete meta");
    let file = o.with_exact_meta(meta);
    let mut out = Vec::new();
    file.write_all(&mut out).expect("dicom-object writes the instance");
    out
}

/// Recognisable pixel bytes, so a test can find them unchanged in the output.
pub fn pixel_bytes(shape: &Shape, frame: u32) -> Vec<u8> {
    let n = shape.rows as usize * shape.rows as usize * 2;
    let seed = frame * 13 + shape.series * 101 + shape.instance * 37 + shape.study * 7 + shape.frames * 3;
    let mut x = 0x9E37_79B9u32 ^ seed.wrapping_mul(0x85EB_CA6B);
    (0..n)
        .map(|_| {
            // xorshift32: distinct, non-periodic bytes per instance and frame.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn pixel_data(shape: &Shape) -> DataElement<InMemDicomObject> {
    if shape.transfer_syntax == JPEG_BASELINE {
        let fragments: Vec<Vec<u8>> = (0..shape.frames)
            .map(|f| {
                let mut b = vec![0xFF, 0xD8];
                b.extend(pixel_bytes(shape, f).into_iter().take(200));
                b.extend([0xFF, 0xD9]);
                b
            })
            .collect();
        return DataElement::new(
            Tag(0x7FE0, 0x0010),
            VR::OB,
            PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
        );
    }
    let bytes: Vec<u8> = (0..shape.frames).flat_map(|f| pixel_bytes(shape, f)).collect();
    let words: Vec<u16> = bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    DataElement::new(Tag(0x7FE0, 0x0010), VR::OW, PrimitiveValue::U16(words.into()))
}

/// Write `bytes` to `dir/name`, creating `dir`.
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Every PHI string planted for `p`: the other PHI, the patient's ID, birth date, name and each
/// name part (as written and in lower case).
pub fn phi_strings(p: &Patient) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = OTHER_PHI.iter().map(|s| s.as_bytes().to_vec()).collect();
    v.push(p.id.as_bytes().to_vec());
    v.push(p.birth_date.as_bytes().to_vec());
    v.extend(name_strings(p));
    v
}

/// The patient's raw name and its parts.
pub fn name_strings(p: &Patient) -> Vec<Vec<u8>> {
    let raw_name = p.name_bytes.clone().unwrap_or_else(|| p.name.as_bytes().to_vec());
    let mut v = vec![raw_name.clone()];
    for part in raw_name.split(|&b| b == b'^' || b == b'=') {
        v.push(part.to_vec());
        v.push(part.to_ascii_lowercase());
    }
    v
}
