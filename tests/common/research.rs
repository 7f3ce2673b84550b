//! A generator of one patient's research study, written with dicom-object: a CT series and the
//! objects that refer to it (Comprehensive SR, RT Structure Set, Segmentation, Grayscale Softcopy
//! Presentation State), a 12-lead ECG, an Enhanced MR, a Secondary Capture and an encapsulated
//! PDF. PHI is planted in every place such objects have it: names at every depth, identifiers and
//! their digit runs in free text, original UIDs in references, original dates in per-frame
//! groups and content items.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dicom_core::header::Header;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use super::corpus::{put, CT_IMAGE, EXPLICIT_LE};

pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
pub const RT_STRUCTURE_SET: &str = "1.2.840.10008.5.1.4.1.1.481.3";
pub const SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.4";
pub const GSPS: &str = "1.2.840.10008.5.1.4.1.1.11.1";
pub const TWELVE_LEAD_ECG: &str = "1.2.840.10008.5.1.4.1.1.9.1.1";
pub const ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.1";
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const ENCAPSULATED_PDF: &str = "1.2.840.10008.5.1.4.1.1.104.1";
/// Detached Study Management, the class RT Referenced Study items name.
const STUDY_COMPONENT: &str = "1.2.840.10008.3.1.2.3.1";

pub const PATIENT_NAME: &str = "VANDERBERG^JOHANNA^MARIA";
pub const PATIENT_ID: &str = "MRN00482913";
pub const OTHER_ID: &str = "OPI-77120934";
pub const OTHER_ID_IN_SEQUENCE: &str = "XID-55501928";
pub const ISSUER: &str = "ZIEKENHUIS_NOORD";
pub const ACCESSION: &str = "ACC90817263";
pub const STUDY_ID: &str = "ST4417";
pub const REQUESTED_PROCEDURE_ID: &str = "RP66120934";
pub const REFERRING: &str = "GELLEMEYER^PIETER";
pub const OPERATOR: &str = "COURTIER^ANNA";
pub const PERFORMING: &str = "DRAKENBURG^KEES";
pub const VERIFIER: &str = "ALTHUIZEN^MARIEKE";
pub const OBSERVER: &str = "OBSERVERSLOOT^HENK";
pub const CREATOR: &str = "PRESENTERHUIS^WIM";
pub const INSTITUTION: &str = "Ziekenhuis Noord Amsterdam";
pub const STUDY_DATE: &str = "20210314";
pub const BIRTH_DATE: &str = "19580312";
/// Every original UID starts with this.
pub const UID_PREFIX: &str = "1.2.999.888.";

/// Strings that must not be anywhere in an output file: name parts (matched ignoring case),
/// identifiers and their digit runs, dates, the UID prefix.
pub fn planted_phi() -> Vec<String> {
    let mut v: Vec<String> = [PATIENT_NAME, REFERRING, OPERATOR, PERFORMING, VERIFIER, OBSERVER, CREATOR]
        .iter()
        .flat_map(|n| n.split('^'))
        .map(str::to_string)
        .collect();
    v.extend(
        [
            PATIENT_ID,
            "00482913",
            "004-829-13",
            OTHER_ID,
            "77120934",
            OTHER_ID_IN_SEQUENCE,
            "55501928",
            ISSUER,
            ACCESSION,
            "90817263",
            STUDY_ID,
            REQUESTED_PROCEDURE_ID,
            "66120934",
            "Ziekenhuis",
            STUDY_DATE,
            BIRTH_DATE,
            "20210315",
            UID_PREFIX,
        ]
        .map(str::to_string),
    );
    v
}

fn uid(kind: &str) -> String {
    // Digits only: kinds are spelled as numbers below so every UID is valid.
    format!("{UID_PREFIX}{kind}")
}
pub fn study_uid() -> String {
    uid("1")
}
pub fn frame_of_reference_uid() -> String {
    uid("2")
}
pub fn ct_series_uid() -> String {
    uid("3.1")
}
pub fn ct_uid(n: u32) -> String {
    uid(&format!("4.{n}"))
}
/// CT images in the study.
pub const CT_IMAGES: u32 = 2;

type Element = DataElement<InMemDicomObject>;

fn text(g: u16, e: u16, vr: VR, v: &str) -> Element {
    DataElement::new(Tag(g, e), vr, PrimitiveValue::from(v))
}
fn us(g: u16, e: u16, v: u16) -> Element {
    DataElement::new(Tag(g, e), VR::US, PrimitiveValue::from(v))
}
fn item(elements: Vec<Element>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}
fn seq(g: u16, e: u16, items: Vec<InMemDicomObject>) -> Element {
    DataElement::new(Tag(g, e), VR::SQ, DataSetSequence::from(items))
}
fn code(g: u16, e: u16, value: &str, scheme: &str, meaning: &str) -> Element {
    seq(
        g,
        e,
        vec![item(vec![
            text(0x0008, 0x0100, VR::SH, value),
            text(0x0008, 0x0102, VR::SH, scheme),
            text(0x0008, 0x0104, VR::LO, meaning),
        ])],
    )
}
fn sop_ref(class: &str, instance: &str) -> InMemDicomObject {
    item(vec![text(0x0008, 0x1150, VR::UI, class), text(0x0008, 0x1155, VR::UI, instance)])
}

/// Patient, study, series, equipment and SOP common attributes every object shares.
fn common(
    class: &str,
    sop: &str,
    series: &str,
    modality: &str,
    series_no: u32,
    description: &str,
) -> Vec<Element> {
    vec![
        text(0x0008, 0x0005, VR::CS, "ISO_IR 100"),
        text(0x0008, 0x0012, VR::DA, STUDY_DATE),
        text(0x0008, 0x0013, VR::TM, "093000"),
        text(0x0008, 0x0016, VR::UI, class),
        text(0x0008, 0x0018, VR::UI, sop),
        text(0x0008, 0x0020, VR::DA, STUDY_DATE),
        text(0x0008, 0x0021, VR::DA, STUDY_DATE),
        text(0x0008, 0x0023, VR::DA, STUDY_DATE),
        text(0x0008, 0x0030, VR::TM, "093000"),
        text(0x0008, 0x0031, VR::TM, "093500"),
        text(0x0008, 0x0033, VR::TM, "094000"),
        text(0x0008, 0x0050, VR::SH, ACCESSION),
        text(0x0008, 0x0060, VR::CS, modality),
        text(0x0008, 0x0070, VR::LO, "ACME Medical"),
        text(0x0008, 0x0080, VR::LO, INSTITUTION),
        text(0x0008, 0x0090, VR::PN, REFERRING),
        text(0x0008, 0x1030, VR::LO, "CT THORAX verwezen door dr. Gellemeyer"),
        text(0x0008, 0x103E, VR::LO, description),
        text(0x0008, 0x1050, VR::PN, PERFORMING),
        text(0x0008, 0x1070, VR::PN, OPERATOR),
        text(0x0008, 0x1090, VR::LO, "Scanner 3000"),
        text(0x0010, 0x0010, VR::PN, PATIENT_NAME),
        text(0x0010, 0x0020, VR::LO, PATIENT_ID),
        text(0x0010, 0x0021, VR::LO, ISSUER),
        text(0x0010, 0x0030, VR::DA, BIRTH_DATE),
        text(0x0010, 0x0040, VR::CS, "F"),
        text(0x0010, 0x1000, VR::LO, OTHER_ID),
        seq(
            0x0010,
            0x1002,
            vec![item(vec![
                text(0x0010, 0x0020, VR::LO, OTHER_ID_IN_SEQUENCE),
                text(0x0010, 0x0022, VR::CS, "TEXT"),
            ])],
        ),
        text(0x0010, 0x1010, VR::AS, "063Y"),
        text(0x0018, 0x1000, VR::LO, "SN-448812"),
        text(0x0018, 0x1020, VR::LO, "1.0"),
        text(0x0020, 0x000D, VR::UI, &study_uid()),
        text(0x0020, 0x000E, VR::UI, series),
        text(0x0020, 0x0010, VR::SH, STUDY_ID),
        text(0x0020, 0x0011, VR::IS, &series_no.to_string()),
        text(0x0020, 0x0013, VR::IS, "1"),
        text(0x0020, 0x0060, VR::CS, ""),
        seq(
            0x0040,
            0x0275,
            vec![item(vec![
                text(0x0040, 0x0009, VR::SH, "SPS0482913"),
                text(0x0040, 0x1001, VR::SH, REQUESTED_PROCEDURE_ID),
            ])],
        ),
    ]
}

/// Image Pixel and plane attributes of a small 16-bit image.
fn pixels(rows: u16, frames: u32) -> Vec<Element> {
    let words: Vec<u16> =
        (0..u32::from(rows) * u32::from(rows) * frames).map(|i| (i % 4096) as u16).collect();
    let mut v = vec![
        us(0x0028, 0x0002, 1),
        text(0x0028, 0x0004, VR::CS, "MONOCHROME2"),
        us(0x0028, 0x0010, rows),
        us(0x0028, 0x0011, rows),
        us(0x0028, 0x0100, 16),
        us(0x0028, 0x0101, 12),
        us(0x0028, 0x0102, 11),
        us(0x0028, 0x0103, 0),
        DataElement::new(Tag(0x7FE0, 0x0010), VR::OW, PrimitiveValue::U16(words.into())),
    ];
    if frames > 1 {
        v.push(text(0x0028, 0x0008, VR::IS, &frames.to_string()));
    }
    v
}

/// Shared Functional Groups: pixel measures and plane orientation of every frame.
fn shared_groups(slice_thickness: &str) -> Element {
    let measures =
        vec![text(0x0028, 0x0030, VR::DS, "0.5\\0.5"), text(0x0018, 0x0050, VR::DS, slice_thickness)];
    let orientation = vec![text(0x0020, 0x0037, VR::DS, "1\\0\\0\\0\\1\\0")];
    seq(
        0x5200,
        0x9229,
        vec![item(vec![
            seq(0x0028, 0x9110, vec![item(measures)]),
            seq(0x0020, 0x9116, vec![item(orientation)]),
        ])],
    )
}

fn file(elements: Vec<Element>) -> Vec<u8> {
    let o = InMemDicomObject::from_element_iter(elements);
    let class = o.element(Tag(0x0008, 0x0016)).unwrap().to_str().unwrap().to_string();
    let sop = o.element(Tag(0x0008, 0x0018)).unwrap().to_str().unwrap().to_string();
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(EXPLICIT_LE)
        .media_storage_sop_class_uid(class.trim_end_matches('\0'))
        .media_storage_sop_instance_uid(sop.trim_end_matches('\0'))
        .implementation_class_uid("1.2.999.1")
        .build()
        .expect("complete meta");
    let mut out = Vec::new();
    o.with_exact_meta(meta).write_all(&mut out).expect("dicom-object writes the instance");
    out
}

fn ct(n: u32) -> Vec<u8> {
    let mut v = common(CT_IMAGE, &ct_uid(n), &ct_series_uid(), "CT", 1, "CT series 1 op Courtier");
    v.extend([
        text(0x0008, 0x0008, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
        text(0x0008, 0x0022, VR::DA, STUDY_DATE),
        text(0x0008, 0x0032, VR::TM, "093500"),
        text(0x0018, 0x0050, VR::DS, "1.25"),
        text(0x0018, 0x0060, VR::DS, "120"),
        text(0x0018, 0x5100, VR::CS, "HFS"),
        text(0x0020, 0x0012, VR::IS, "1"),
        text(0x0020, 0x0020, VR::CS, "L\\P"),
        text(0x0020, 0x0032, VR::DS, &format!("0\\0\\{n}")),
        text(0x0020, 0x0037, VR::DS, "1\\0\\0\\0\\1\\0"),
        text(0x0020, 0x0052, VR::UI, &frame_of_reference_uid()),
        text(0x0020, 0x1040, VR::LO, ""),
        text(0x0020, 0x4000, VR::LT, "Recon 2 (00482913), ref 004-829-13"),
        text(0x0028, 0x0030, VR::DS, "0.5\\0.5"),
        text(0x0028, 0x1052, VR::DS, "-1024"),
        text(0x0028, 0x1053, VR::DS, "1"),
    ]);
    v.extend(pixels(8, 1));
    // Instance numbers tell the two images apart.
    v.retain(|e| e.tag() != Tag(0x0020, 0x0013));
    v.push(text(0x0020, 0x0013, VR::IS, &n.to_string()));
    file(v)
}

fn content_item(
    relationship: &str,
    value_type: &str,
    concept: (&str, &str),
    mut value: Vec<Element>,
) -> InMemDicomObject {
    let mut v = vec![
        text(0x0040, 0xA010, VR::CS, relationship),
        text(0x0040, 0xA040, VR::CS, value_type),
        code(0x0040, 0xA043, concept.0, "DCM", concept.1),
    ];
    v.append(&mut value);
    item(v)
}

fn sr() -> Vec<u8> {
    let mut v = common(COMPREHENSIVE_SR, &uid("5.1"), &uid("3.5"), "SR", 5, "Report for Vanderberg");
    let evidence = seq(
        0x0040,
        0xA375,
        vec![item(vec![
            text(0x0020, 0x000D, VR::UI, &study_uid()),
            seq(
                0x0008,
                0x1115,
                vec![item(vec![
                    text(0x0020, 0x000E, VR::UI, &ct_series_uid()),
                    seq(0x0008, 0x1199, (1..=CT_IMAGES).map(|n| sop_ref(CT_IMAGE, &ct_uid(n))).collect()),
                ])],
            ),
        ])],
    );
    let tree = vec![
        content_item(
            "CONTAINS",
            "TEXT",
            ("121071", "Finding"),
            vec![text(
                0x0040,
                0xA160,
                VR::UT,
                "Discussed with Dr Drakenburg; patient Vanderberg (MRN00482913) stable",
            )],
        ),
        content_item(
            "CONTAINS",
            "PNAME",
            ("121008", "Person Observer Name"),
            vec![text(0x0040, 0xA123, VR::PN, OBSERVER)],
        ),
        content_item(
            "CONTAINS",
            "DATE",
            ("111060", "Study Date"),
            vec![text(0x0040, 0xA121, VR::DA, STUDY_DATE)],
        ),
        content_item(
            "CONTAINS",
            "UIDREF",
            ("121018", "Procedure Study Instance UID"),
            vec![text(0x0040, 0xA124, VR::UI, &study_uid())],
        ),
        content_item(
            "CONTAINS",
            "IMAGE",
            ("121200", "Illustration of ROI"),
            vec![seq(0x0008, 0x1199, vec![sop_ref(CT_IMAGE, &ct_uid(1))])],
        ),
    ];
    v.extend([
        text(0x0040, 0xA491, VR::CS, "COMPLETE"),
        text(0x0040, 0xA493, VR::CS, "VERIFIED"),
        seq(
            0x0040,
            0xA073,
            vec![item(vec![
                text(0x0040, 0xA027, VR::LO, INSTITUTION),
                text(0x0040, 0xA030, VR::DT, "20210315101500"),
                text(0x0040, 0xA075, VR::PN, VERIFIER),
                seq(0x0040, 0xA088, vec![]),
            ])],
        ),
        seq(0x0040, 0xA372, vec![]),
        seq(0x0008, 0x1111, vec![]),
        evidence,
        text(0x0040, 0xA040, VR::CS, "CONTAINER"),
        code(0x0040, 0xA043, "18748-4", "LN", "Diagnostic Imaging Report"),
        text(0x0040, 0xA050, VR::CS, "SEPARATE"),
        seq(0x0040, 0xA730, tree),
    ]);
    file(v)
}

fn rtstruct() -> Vec<u8> {
    let mut v = common(RT_STRUCTURE_SET, &uid("5.2"), &uid("3.2"), "RTSTRUCT", 2, "Contours by Courtier");
    let contour_images = || (1..=CT_IMAGES).map(|n| sop_ref(CT_IMAGE, &ct_uid(n))).collect::<Vec<_>>();
    v.extend([
        text(0x3006, 0x0002, VR::SH, "GTV Vanderberg"),
        text(0x0020, 0x0052, VR::UI, &frame_of_reference_uid()),
        text(0x0020, 0x1040, VR::LO, ""),
        text(0x3006, 0x0004, VR::LO, "Plan for Johanna"),
        text(0x3006, 0x0008, VR::DA, STUDY_DATE),
        text(0x3006, 0x0009, VR::TM, "100000"),
        seq(
            0x3006,
            0x0010,
            vec![item(vec![
                text(0x0020, 0x0052, VR::UI, &frame_of_reference_uid()),
                seq(
                    0x3006,
                    0x0012,
                    vec![item(vec![
                        text(0x0008, 0x1150, VR::UI, STUDY_COMPONENT),
                        text(0x0008, 0x1155, VR::UI, &study_uid()),
                        seq(
                            0x3006,
                            0x0014,
                            vec![item(vec![
                                text(0x0020, 0x000E, VR::UI, &ct_series_uid()),
                                seq(0x3006, 0x0016, contour_images()),
                            ])],
                        ),
                    ])],
                ),
            ])],
        ),
        seq(
            0x3006,
            0x0020,
            vec![item(vec![
                text(0x3006, 0x0022, VR::IS, "1"),
                text(0x3006, 0x0024, VR::UI, &frame_of_reference_uid()),
                text(0x3006, 0x0026, VR::LO, "GTV"),
                text(0x3006, 0x0036, VR::CS, "MANUAL"),
            ])],
        ),
        seq(
            0x3006,
            0x0039,
            vec![item(vec![
                DataElement::new(Tag(0x3006, 0x002A), VR::IS, PrimitiveValue::from("255\\0\\0")),
                seq(
                    0x3006,
                    0x0040,
                    vec![item(vec![
                        seq(0x3006, 0x0016, vec![sop_ref(CT_IMAGE, &ct_uid(1))]),
                        text(0x3006, 0x0042, VR::CS, "CLOSED_PLANAR"),
                        text(0x3006, 0x0046, VR::IS, "3"),
                        text(0x3006, 0x0050, VR::DS, "0\\0\\1\\2\\0\\1\\2\\2\\1"),
                    ])],
                ),
                text(0x3006, 0x0084, VR::IS, "1"),
            ])],
        ),
        seq(
            0x3006,
            0x0080,
            vec![item(vec![
                text(0x3006, 0x0082, VR::IS, "1"),
                text(0x3006, 0x0084, VR::IS, "1"),
                text(0x3006, 0x00A4, VR::CS, "GTV"),
                text(0x3006, 0x00A6, VR::PN, OPERATOR),
            ])],
        ),
    ]);
    file(v)
}

/// A Dimension Index item: the attribute that indexes frames and the sequence it lives in.
fn dimension(pointer: Tag, group: Tag) -> InMemDicomObject {
    let at = |tag, value: Tag| DataElement::new(tag, VR::AT, PrimitiveValue::Tags(vec![value].into()));
    item(vec![
        text(0x0020, 0x9164, VR::UI, &uid("6.1")),
        at(Tag(0x0020, 0x9165), pointer),
        at(Tag(0x0020, 0x9167), group),
    ])
}

fn seg() -> Vec<u8> {
    let mut v = common(SEGMENTATION, &uid("5.3"), &uid("3.3"), "SEG", 3, "Segmentation of Vanderberg");
    let frames = CT_IMAGES;
    let per_frame = (1..=frames)
        .map(|n| {
            item(vec![
                seq(
                    0x0008,
                    0x9124,
                    vec![item(vec![
                        seq(
                            0x0008,
                            0x2112,
                            vec![item(vec![
                                text(0x0008, 0x1150, VR::UI, CT_IMAGE),
                                text(0x0008, 0x1155, VR::UI, &ct_uid(n)),
                                code(
                                    0x0040,
                                    0xA170,
                                    "121322",
                                    "DCM",
                                    "Source image for image processing operation",
                                ),
                            ])],
                        ),
                        code(0x0008, 0x9215, "113076", "DCM", "Segmentation"),
                    ])],
                ),
                seq(
                    0x0020,
                    0x9111,
                    vec![item(vec![DataElement::new(
                        Tag(0x0020, 0x9157),
                        VR::UL,
                        PrimitiveValue::U32(vec![1u32, n].into()),
                    )])],
                ),
                seq(0x0020, 0x9113, vec![item(vec![text(0x0020, 0x0032, VR::DS, &format!("0\\0\\{n}"))])]),
                seq(0x0062, 0x000A, vec![item(vec![us(0x0062, 0x000B, 1)])]),
            ])
        })
        .collect();
    let bits: Vec<u8> = vec![0b1010_0101; 8 * frames as usize];
    v.extend([
        text(0x0008, 0x0008, VR::CS, "DERIVED\\PRIMARY"),
        text(0x0008, 0x1090, VR::LO, "Scanner 3000"),
        text(0x0018, 0x1020, VR::LO, "1.0"),
        text(0x0020, 0x0052, VR::UI, &frame_of_reference_uid()),
        text(0x0020, 0x1040, VR::LO, ""),
        seq(0x0020, 0x9221, vec![item(vec![text(0x0020, 0x9164, VR::UI, &uid("6.1"))])]),
        seq(
            0x0020,
            0x9222,
            vec![
                dimension(Tag(0x0062, 0x000B), Tag(0x0062, 0x000A)),
                dimension(Tag(0x0020, 0x0032), Tag(0x0020, 0x9113)),
            ],
        ),
        us(0x0028, 0x0002, 1),
        text(0x0028, 0x0004, VR::CS, "MONOCHROME2"),
        text(0x0028, 0x0008, VR::IS, &frames.to_string()),
        us(0x0028, 0x0010, 8),
        us(0x0028, 0x0011, 8),
        us(0x0028, 0x0100, 1),
        us(0x0028, 0x0101, 1),
        us(0x0028, 0x0102, 0),
        us(0x0028, 0x0103, 0),
        text(0x0028, 0x2110, VR::CS, "00"),
        text(0x0062, 0x0001, VR::CS, "BINARY"),
        seq(
            0x0062,
            0x0002,
            vec![item(vec![
                us(0x0062, 0x0004, 1),
                text(0x0062, 0x0005, VR::LO, "Tumour"),
                text(0x0062, 0x0008, VR::CS, "MANUAL"),
                code(0x0062, 0x0003, "49755003", "SCT", "Morphologically Abnormal Structure"),
                code(0x0062, 0x000F, "4147007", "SCT", "Mass"),
            ])],
        ),
        text(0x0070, 0x0080, VR::CS, "TUMOUR"),
        text(0x0070, 0x0081, VR::LO, "Drawn by Courtier"),
        text(0x0070, 0x0084, VR::PN, OPERATOR),
        shared_groups("1.25"),
        seq(0x5200, 0x9230, per_frame),
        seq(
            0x0008,
            0x1115,
            vec![item(vec![
                text(0x0020, 0x000E, VR::UI, &ct_series_uid()),
                seq(0x0008, 0x114A, (1..=CT_IMAGES).map(|n| sop_ref(CT_IMAGE, &ct_uid(n))).collect()),
            ])],
        ),
        DataElement::new(Tag(0x7FE0, 0x0010), VR::OB, PrimitiveValue::from(bits)),
    ]);
    file(v)
}

fn gsps() -> Vec<u8> {
    let mut v = common(GSPS, &uid("5.4"), &uid("3.4"), "PR", 4, "Annotations by Presenterhuis");
    let images = || (1..=CT_IMAGES).map(|n| sop_ref(CT_IMAGE, &ct_uid(n))).collect::<Vec<_>>();
    v.extend([
        text(0x0070, 0x0080, VR::CS, "ANNOTATIONS"),
        text(0x0070, 0x0081, VR::LO, "Measurements for Vanderberg"),
        text(0x0070, 0x0082, VR::DA, STUDY_DATE),
        text(0x0070, 0x0083, VR::TM, "101500"),
        text(0x0070, 0x0084, VR::PN, CREATOR),
        seq(
            0x0008,
            0x1115,
            vec![item(vec![text(0x0020, 0x000E, VR::UI, &ct_series_uid()), seq(0x0008, 0x1140, images())])],
        ),
        seq(
            0x0070,
            0x0001,
            vec![item(vec![
                seq(0x0008, 0x1140, images()),
                text(0x0070, 0x0002, VR::CS, "TEXT"),
                seq(
                    0x0070,
                    0x0008,
                    vec![item(vec![
                        text(
                            0x0070,
                            0x0006,
                            VR::ST,
                            "Lesion of Vanderberg JOHANNA for dr. Gellemeyer (MRN00482913)",
                        ),
                        text(0x0070, 0x0004, VR::CS, "PIXEL"),
                        DataElement::new(
                            Tag(0x0070, 0x0014),
                            VR::FL,
                            PrimitiveValue::F32(vec![2.0f32, 2.0].into()),
                        ),
                        text(0x0070, 0x0015, VR::CS, "N"),
                    ])],
                ),
            ])],
        ),
        seq(
            0x0070,
            0x0060,
            vec![item(vec![text(0x0070, 0x0002, VR::CS, "TEXT"), text(0x0070, 0x0062, VR::IS, "1")])],
        ),
        seq(
            0x0070,
            0x005A,
            vec![item(vec![
                seq(0x0008, 0x1140, images()),
                DataElement::new(Tag(0x0070, 0x0052), VR::SL, PrimitiveValue::I32(vec![1, 1].into())),
                DataElement::new(Tag(0x0070, 0x0053), VR::SL, PrimitiveValue::I32(vec![8, 8].into())),
                text(0x0070, 0x0100, VR::CS, "SCALE TO FIT"),
            ])],
        ),
        text(0x0070, 0x0041, VR::CS, "N"),
        us(0x0070, 0x0042, 0),
        text(0x2050, 0x0020, VR::CS, "IDENTITY"),
    ]);
    file(v)
}

fn ecg() -> Vec<u8> {
    let mut v = common(TWELVE_LEAD_ECG, &uid("5.6"), &uid("3.6"), "ECG", 6, "ECG of Vanderberg");
    let leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"];
    let codes = [
        "5.6.3-9-1",
        "5.6.3-9-2",
        "5.6.3-9-61",
        "5.6.3-9-62",
        "5.6.3-9-63",
        "5.6.3-9-64",
        "5.6.3-9-3",
        "5.6.3-9-4",
        "5.6.3-9-5",
        "5.6.3-9-6",
        "5.6.3-9-7",
        "5.6.3-9-8",
    ];
    let channels = leads
        .iter()
        .zip(codes)
        .map(|(lead, c)| {
            item(vec![
                text(0x003A, 0x0203, VR::SH, &format!("Lead {lead}")),
                code(0x003A, 0x0208, c, "SCPECG", &format!("Lead {lead}")),
                text(0x003A, 0x0210, VR::DS, "1"),
                code(0x003A, 0x0211, "uV", "UCUM", "microvolt"),
                text(0x003A, 0x0212, VR::DS, "1"),
                text(0x003A, 0x0213, VR::DS, "0"),
                text(0x003A, 0x0214, VR::DS, "0"),
                text(0x003A, 0x0215, VR::DS, "0.05"),
                us(0x003A, 0x021A, 16),
            ])
        })
        .collect();
    let samples = 100u32;
    let data: Vec<u16> = (0..samples * 12).map(|i| (i % 200) as u16).collect();
    v.extend([
        text(0x0008, 0x002A, VR::DT, "20210314093000"),
        seq(0x0040, 0x0555, vec![]),
        seq(
            0x5400,
            0x0100,
            vec![item(vec![
                text(0x003A, 0x0004, VR::CS, "ORIGINAL"),
                us(0x003A, 0x0005, 12),
                DataElement::new(Tag(0x003A, 0x0010), VR::UL, PrimitiveValue::from(samples)),
                text(0x003A, 0x001A, VR::DS, "500"),
                text(0x003A, 0x0020, VR::SH, "RHYTHM"),
                seq(0x003A, 0x0200, channels),
                us(0x5400, 0x1004, 16),
                text(0x5400, 0x1006, VR::CS, "SS"),
                DataElement::new(Tag(0x5400, 0x1010), VR::OW, PrimitiveValue::U16(data.into())),
            ])],
        ),
    ]);
    file(v)
}

fn enhanced_mr() -> Vec<u8> {
    let mut v = common(ENHANCED_MR, &uid("5.7"), &uid("3.7"), "MR", 7, "MR by Courtier");
    let frames = 2u32;
    let per_frame = (1..=frames)
        .map(|n| {
            item(vec![
                seq(
                    0x0020,
                    0x9111,
                    vec![item(vec![
                        text(0x0018, 0x9074, VR::DT, &format!("2021031409300{n}")),
                        text(0x0018, 0x9151, VR::DT, &format!("2021031409300{n}")),
                        DataElement::new(Tag(0x0018, 0x9220), VR::FD, PrimitiveValue::F64(vec![10.0].into())),
                        DataElement::new(
                            Tag(0x0020, 0x9157),
                            VR::UL,
                            PrimitiveValue::U32(vec![1u32, n].into()),
                        ),
                        text(0x0020, 0x9056, VR::SH, "1"),
                        DataElement::new(Tag(0x0020, 0x9057), VR::UL, PrimitiveValue::from(n)),
                    ])],
                ),
                seq(0x0020, 0x9113, vec![item(vec![text(0x0020, 0x0032, VR::DS, &format!("0\\0\\{n}"))])]),
            ])
        })
        .collect();
    v.extend([
        text(0x0008, 0x0008, VR::CS, "ORIGINAL\\PRIMARY\\M\\NONE"),
        text(0x0008, 0x002A, VR::DT, "20210314093000"),
        text(0x0008, 0x9205, VR::CS, "MONOCHROME"),
        text(0x0008, 0x9206, VR::CS, "VOLUME"),
        text(0x0008, 0x9207, VR::CS, "NONE"),
        text(0x0008, 0x9208, VR::CS, "MAGNITUDE"),
        text(0x0008, 0x9209, VR::CS, "T1"),
        text(0x0018, 0x0087, VR::DS, "3"),
        text(0x0018, 0x9004, VR::CS, "RESEARCH"),
        text(0x0018, 0x9005, VR::SH, "T1 MPRAGE"),
        text(0x0018, 0x9008, VR::CS, "GRADIENT"),
        text(0x0018, 0x9011, VR::CS, "NO"),
        text(0x0018, 0x9012, VR::CS, "NO"),
        text(0x0018, 0x9014, VR::CS, "NO"),
        text(0x0018, 0x9015, VR::CS, "NO"),
        text(0x0018, 0x9017, VR::CS, "NONE"),
        text(0x0018, 0x9018, VR::CS, "NO"),
        text(0x0018, 0x9024, VR::CS, "NO"),
        text(0x0018, 0x9025, VR::CS, "NONE"),
        text(0x0018, 0x9026, VR::CS, "NONE"),
        text(0x0018, 0x9027, VR::CS, "NO"),
        text(0x0018, 0x9028, VR::CS, "NO"),
        text(0x0018, 0x9029, VR::CS, "NO"),
        text(0x0018, 0x9032, VR::CS, "CARTESIAN"),
        text(0x0018, 0x9033, VR::CS, "NO"),
        text(0x0018, 0x9034, VR::CS, "NONE"),
        text(0x0018, 0x9100, VR::CS, "1H"),
        text(0x0018, 0x9174, VR::CS, "IEC"),
        text(0x0020, 0x0052, VR::UI, &uid("2.7")),
        text(0x0020, 0x1040, VR::LO, ""),
        text(0x0028, 0x0301, VR::CS, "NO"),
        text(0x0028, 0x2110, VR::CS, "00"),
        text(0x0028, 0x1052, VR::DS, "0"),
        text(0x0028, 0x1053, VR::DS, "1"),
        text(0x0028, 0x1054, VR::LO, "US"),
        text(0x0028, 0x1050, VR::DS, "500"),
        text(0x0028, 0x1051, VR::DS, "1000"),
        text(0x2050, 0x0020, VR::CS, "IDENTITY"),
        shared_groups("1"),
        seq(0x5200, 0x9230, per_frame),
    ]);
    v.extend(pixels(8, frames));
    file(v)
}

fn secondary_capture() -> Vec<u8> {
    let mut v = common(SECONDARY_CAPTURE, &uid("5.8"), &uid("3.8"), "OT", 8, "Screenshot for Vanderberg");
    v.extend([
        text(0x0008, 0x0064, VR::CS, "WSD"),
        text(0x0018, 0x1012, VR::DA, STUDY_DATE),
        text(0x0018, 0x1014, VR::TM, "101000"),
        text(0x0020, 0x0020, VR::CS, "L\\P"),
        text(0x0028, 0x0301, VR::CS, "NO"),
    ]);
    v.extend(pixels(8, 1));
    file(v)
}

fn pdf() -> Vec<u8> {
    let mut v = common(ENCAPSULATED_PDF, &uid("5.9"), &uid("3.9"), "DOC", 9, "Referral letter");
    let doc = b"%PDF-1.4\n% Referral for VANDERBERG JOHANNA MRN00482913\n%%EOF\n".to_vec();
    v.extend([
        text(0x0008, 0x0064, VR::CS, "WSD"),
        text(0x0008, 0x002A, VR::DT, "20210314093000"),
        text(0x0028, 0x0301, VR::CS, "YES"),
        text(0x0042, 0x0010, VR::ST, "Referral"),
        seq(0x0040, 0xA043, vec![]),
        text(0x0042, 0x0012, VR::LO, "application/pdf"),
        DataElement::new(Tag(0x0042, 0x0011), VR::OB, PrimitiveValue::from(doc)),
    ]);
    file(v)
}

/// Write the study into `dir`; returns the files, the PDF last.
pub fn study(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=CT_IMAGES).map(|n| put(dir, &format!("ct{n}.dcm"), &ct(n))).collect();
    for (name, bytes) in [
        ("sr.dcm", sr()),
        ("rtstruct.dcm", rtstruct()),
        ("seg.dcm", seg()),
        ("gsps.dcm", gsps()),
        ("ecg.dcm", ecg()),
        ("emr.dcm", enhanced_mr()),
        ("sc.dcm", secondary_capture()),
        ("pdf.dcm", pdf()),
    ] {
        files.push(put(dir, name, &bytes));
    }
    files
}
