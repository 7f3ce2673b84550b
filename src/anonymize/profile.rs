//! Facts from PS3.15 (Attribute Confidentiality Profiles) and PS3.16 that the engine writes or
//! relies on, kept as data.

use dicom_core::{Tag, VR};

/// Every UID registered in PS3.6 (SOP classes, transfer syntaxes, coding schemes, frames of
/// reference the standard defines) lives under the DICOM root: such a UID identifies no one.
pub const DICOM_UID_ROOT: &str = "1.2.840.10008.";

pub fn is_registered_uid(uid: &str) -> bool {
    uid.starts_with(DICOM_UID_ROOT)
}

/// De-identification Method Code Sequence entries (PS3.16 CID 7050) for what we do.
pub const METHOD_CODES: [(&str, &str); 3] = [
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
];

/// VRs whose kept values are free text a person may have typed a name into.
pub fn is_free_text(vr: VR) -> bool {
    matches!(vr, VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::UC)
}

pub mod tags {
    use super::Tag;
    pub const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);
    pub const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
    pub const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
    pub const STUDY_DATE: Tag = Tag(0x0008, 0x0020);
    pub const ACCESSION_NUMBER: Tag = Tag(0x0008, 0x0050);
    pub const MODALITY: Tag = Tag(0x0008, 0x0060);
    pub const CODE_VALUE: Tag = Tag(0x0008, 0x0100);
    pub const CODING_SCHEME_DESIGNATOR: Tag = Tag(0x0008, 0x0102);
    pub const CODE_MEANING: Tag = Tag(0x0008, 0x0104);
    pub const PATIENT_NAME: Tag = Tag(0x0010, 0x0010);
    pub const PATIENT_ID: Tag = Tag(0x0010, 0x0020);
    pub const PATIENT_BIRTH_DATE: Tag = Tag(0x0010, 0x0030);
    pub const PATIENT_SEX: Tag = Tag(0x0010, 0x0040);
    pub const OTHER_PATIENT_IDS: Tag = Tag(0x0010, 0x1000);
    pub const PATIENT_IDENTITY_REMOVED: Tag = Tag(0x0012, 0x0062);
    pub const DEIDENTIFICATION_METHOD: Tag = Tag(0x0012, 0x0063);
    pub const DEIDENTIFICATION_METHOD_CODES: Tag = Tag(0x0012, 0x0064);
    pub const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);
    pub const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
    pub const LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED: Tag = Tag(0x0028, 0x0303);
    pub const ITEM_PADDING: Tag = Tag(0xFFFC, 0xFFFC);
    /// RSNA's private block: creator `RSNA` in (0013,0010), site id and project name after it.
    pub const RSNA_CREATOR: Tag = Tag(0x0013, 0x0010);
    pub const RSNA_SITE_ID: Tag = Tag(0x0013, 0x1001);
    pub const RSNA_PROJECT_NAME: Tag = Tag(0x0013, 0x1003);
}
