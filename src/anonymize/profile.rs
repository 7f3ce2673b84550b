//! Facts from PS3.15 (Attribute Confidentiality Profiles) and PS3.16 that the engine writes or
//! relies on, kept as data.

use dicom_core::{Tag, VR};

use super::options::{
    listed, MethodCode, BASIC_PROFILE, RETAIN_MODIFIED_DATES, RETAIN_PATIENT_CHARACTERISTICS,
};

/// Every UID registered in PS3.6 (SOP classes, transfer syntaxes, coding schemes, frames of
/// reference the standard defines) lives under the DICOM root: such a UID identifies no one.
pub const DICOM_UID_ROOT: &str = "1.2.840.10008.";

pub fn is_registered_uid(uid: &str) -> bool {
    uid.starts_with(DICOM_UID_ROOT)
}

/// De-identification Method Code Sequence entries (PS3.16 CID 7050) the RSNA-derived script was
/// written for (the profile scripts list their options instead: see `options`).
pub const RSNA_METHOD_CODES: [MethodCode; 3] =
    [BASIC_PROFILE, RETAIN_MODIFIED_DATES, RETAIN_PATIENT_CHARACTERISTICS];

/// Attributes whose UIDs name kinds of things (SOP classes, transfer syntaxes, coding schemes,
/// mapping resources), never an instance: kept as they are even when a vendor registered them
/// outside the DICOM root.
const CLASS_UID_TAGS: [u32; 14] = [
    0x0002_0002,
    0x0002_0010,
    0x0004_1510,
    0x0004_1512,
    0x0004_151A,
    0x0008_0016,
    0x0008_001A,
    0x0008_001B,
    0x0008_0062,
    0x0008_010C,
    0x0008_0117,
    0x0008_0118,
    0x0008_1150,
    0x0400_0010,
];

/// Identifiers of the patient, the visit, the order and the procedure, and their issuers.
const IDENTIFIER_TAGS: [u32; 16] = [
    0x0010_0020,
    0x0010_0021,
    0x0010_1000,
    0x0010_1090,
    0x0008_0050,
    0x0020_0010,
    0x0032_0012,
    0x0040_1001,
    0x0040_0009,
    0x0040_0253,
    0x0040_2016,
    0x0040_2017,
    0x0038_0010,
    0x0038_0400,
    0x0040_0031,
    0x0040_0032,
];

pub fn is_identifier(tag: Tag) -> bool {
    listed(&IDENTIFIER_TAGS, tag)
}

/// Where the patient was seen and how to reach them or their physician: institutions,
/// addresses and telephone numbers. Not identifiers, but people type them into comments and
/// descriptions just the same. (Department names are not here: "Neuro" or "Breast" are words a
/// study needs.)
const WHEREABOUTS_TAGS: [u32; 12] = [
    0x0008_0080,
    0x0008_0081,
    0x0008_0092,
    0x0008_0094,
    0x0010_1040,
    0x0040_1102,
    0x0040_1103,
    0x0040_1104,
    0x0040_2010,
    0x0010_2154,
    0x0010_2155,
    0x0040_0243,
];

pub fn is_whereabouts(tag: Tag) -> bool {
    listed(&WHEREABOUTS_TAGS, tag)
}

/// Institution Name and Address: the site's, not the patient's.
pub fn is_institution(tag: Tag) -> bool {
    listed(&[0x0008_0080, 0x0008_0081], tag)
}

/// Coded values that are no CS: code values and designators of code sequences, and the
/// manufacturer and model the profile keeps. A vendor's or a coding scheme's token in them is
/// meaning, not prose: masking a word of them writes another code.
const CODED_TAGS: [u32; 9] = [
    0x0008_0070,
    0x0008_0100,
    0x0008_0102,
    0x0008_0103,
    0x0008_0105,
    0x0008_010F,
    0x0008_0119,
    0x0008_0120,
    0x0008_1090,
];

pub fn is_coded(tag: Tag) -> bool {
    listed(&CODED_TAGS, tag)
}

/// Sequences the profile empties (Z) that some IOD makes Type 2, so that zero items are valid
/// there: the performed procedure step reference (SR Document Series module), specimen
/// identification and preparation (Specimen module), acquisition context (Acquisition Context
/// module), the verifying observer's code (SR Document General module). Every other emptied
/// sequence is Type 3 wherever it occurs, and is removed instead.
const TYPE2_SEQUENCES: [u32; 6] =
    [0x0008_1111, 0x0040_0513, 0x0040_0555, 0x0040_0562, 0x0040_0610, 0x0040_A088];

pub fn may_be_empty(tag: Tag) -> bool {
    listed(&TYPE2_SEQUENCES, tag)
}

/// Type 1C attributes and the attribute whose value their condition is: when the profile removes
/// or empties the second, the first must go (PS3.3 C.7.1.1: Responsible Person Role is required
/// if Responsible Person is present and has a value).
pub const CONDITIONAL: &[(Tag, Tag)] = &[(Tag(0x0010, 0x2298), tags::RESPONSIBLE_PERSON)];

pub fn names_a_class(tag: Tag) -> bool {
    listed(&CLASS_UID_TAGS, tag)
}

/// The value PS3.15 action D writes: "a non-zero length value that may be a dummy value and
/// consistent with the VR". `None` for VRs without a text form (numbers and bulk data), which
/// the engine keeps or empties itself.
pub fn dummy(vr: VR) -> Option<&'static str> {
    Some(match vr {
        VR::PN | VR::AE | VR::CS | VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::UC => "ANONYMIZED",
        VR::DA => super::transform::DEFAULT_DATE,
        VR::DT => "20000101000000",
        VR::TM => "000000",
        VR::AS => "000Y",
        VR::IS | VR::DS => "0",
        _ => return None,
    })
}

/// VRs whose kept values are free text a person may have typed a name into.
pub fn is_free_text(vr: VR) -> bool {
    matches!(vr, VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::UC)
}

pub mod tags {
    use super::Tag;
    pub use dicom_dictionary_std::tags::{
        ACCESSION_NUMBER, BURNED_IN_ANNOTATION, CODE_MEANING, CODE_VALUE, CODING_SCHEME_DESIGNATOR,
        DEIDENTIFICATION_METHOD, ENCAPSULATED_DOCUMENT, LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, MODALITY,
        PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_IDENTITY_REMOVED, PATIENT_NAME, PATIENT_SEX,
        PATIENT_SPECIES_DESCRIPTION, REFERENCED_SOP_INSTANCE_UID, RESPONSIBLE_ORGANIZATION,
        RESPONSIBLE_PERSON, SERIES_INSTANCE_UID, SOP_CLASS_UID, SOP_INSTANCE_UID, SPECIFIC_CHARACTER_SET,
        STUDY_DATE, STUDY_INSTANCE_UID,
    };

    pub const PATIENT_SPECIES_CODES: Tag = Tag(0x0010, 0x2202);
    pub const OTHER_PATIENT_IDS: Tag = Tag(0x0010, 0x1000);
    pub const DEIDENTIFICATION_METHOD_CODES: Tag = Tag(0x0012, 0x0064);
    pub const ITEM_PADDING: Tag = Tag(0xFFFC, 0xFFFC);
    /// RSNA's private block: creator `RSNA` in (0013,0010), site id and project name after it.
    pub const RSNA_CREATOR: Tag = Tag(0x0013, 0x0010);
    pub const RSNA_SITE_ID: Tag = Tag(0x0013, 0x1001);
    pub const RSNA_PROJECT_NAME: Tag = Tag(0x0013, 0x1003);
}
