//! The PS3.15 Annex E options a profile script is applied with (`project.profile_options`).
//!
//! A profile script (root `<script profile="ps3.15-basic">`) carries the Basic Profile column of
//! PS3.15 Table E.1-1. The options change single rows at run time, so switching one needs no new
//! script: each option here names the rows it retains or cleans (PS3.15 Table E.1-1's option
//! columns, as CTP's PS3.15 option scripts list them, plus the RT and waveform descriptions the
//! Clean Descriptors column covers). What "clean" means is the engine's safety net: kept free text
//! is scrubbed of every name and identifier in the instance, dates are shifted, UIDs mapped.

use dicom_core::{Tag, VR};
use serde::{Deserialize, Serialize};

use super::rules::Op;

/// The options, each on or off. `Default` is this gateway's shipped choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileOptions {
    /// Dates shifted by the patient's offset (the index's), times kept (CID 7050 113107).
    pub retain_modified_dates: bool,
    /// Descriptions and comments kept and scrubbed (113105).
    pub clean_descriptors: bool,
    /// SR content trees and acquisition context kept, their items cleaned (113104).
    pub clean_structured_content: bool,
    /// Presentation-state graphic annotations kept, their text scrubbed (113103).
    pub clean_graphics: bool,
    /// Sex, size, weight, age (rounded) and the like kept (113108).
    pub retain_patient_characteristics: bool,
    /// Station names, device serial numbers and the like kept (113109).
    pub retain_device_identity: bool,
    /// Not implemented: private attributes are always removed, so `true` is refused by the config.
    pub retain_safe_private: bool,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            retain_modified_dates: true,
            clean_descriptors: true,
            clean_structured_content: true,
            clean_graphics: true,
            retain_patient_characteristics: true,
            retain_device_identity: false,
            retain_safe_private: false,
        }
    }
}

/// A code of PS3.16 CID 7050 (De-identification Method), scheme DCM.
pub type MethodCode = (&'static str, &'static str);

pub const BASIC_PROFILE: MethodCode = ("113100", "Basic Application Confidentiality Profile");
const CLEAN_GRAPHICS: MethodCode = ("113103", "Clean Graphics Option");
const CLEAN_STRUCTURED_CONTENT: MethodCode = ("113104", "Clean Structured Content Option");
const CLEAN_DESCRIPTORS: MethodCode = ("113105", "Clean Descriptors Option");
pub const RETAIN_MODIFIED_DATES: MethodCode =
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option");
pub const RETAIN_PATIENT_CHARACTERISTICS: MethodCode = ("113108", "Retain Patient Characteristics Option");
const RETAIN_DEVICE_IDENTITY: MethodCode = ("113109", "Retain Device Identity Option");

/// Birth date and time stay as the Basic Profile says (emptied): PS3.15 gives them no option.
const BIRTH: [Tag; 2] = [Tag(0x0010, 0x0030), Tag(0x0010, 0x0032)];

/// Descriptions, comments and labels (Clean Descriptors column, and the RT labels below).
const DESCRIPTORS: &[u32] = &[
    0x0008_1030,
    0x0008_103E,
    0x0008_1080,
    0x0008_1084,
    0x0008_2111,
    0x0008_4000,
    0x0010_2000,
    0x0010_2110,
    0x0010_2180,
    0x0010_21B0,
    0x0010_4000,
    0x0018_0010,
    0x0018_1030,
    0x0018_1400,
    0x0018_4000,
    0x0018_9424,
    0x0018_A003,
    0x0020_4000,
    0x0020_9158,
    0x0032_1030,
    0x0032_1060,
    0x0032_1066,
    0x0032_1070,
    0x0032_4000,
    0x0038_0040,
    0x0038_0062,
    0x0038_0500,
    0x0038_4000,
    0x0040_0007,
    0x0040_0254,
    0x0040_0275,
    0x0040_0280,
    0x0040_1002,
    0x0040_1400,
    0x0040_2001,
    0x0040_2400,
    0x4008_010B,
    0x4008_0115,
    0x4008_0300,
    0x4008_4000,
    0x3006_0004,
    0x3006_0006,
    0x3006_0028,
    0x3006_0038,
    0x3006_0085,
    0x3006_0088,
    0x300A_0003,
    0x300A_0004,
    0x300A_000E,
    0x300A_0016,
    0x300A_0072,
    0x300A_00C3,
    0x300A_00DD,
    0x300A_0196,
    0x300A_01A6,
    0x300A_01B2,
    0x300A_02EB,
    0x003A_0020,
    0x003A_0203,
    0x003A_020C,
    0x003A_0329,
    0x003A_032B,
    // Labels research names structures and plans by; Basic empties or replaces them.
    0x3006_0002,
    0x3006_0026,
    0x3006_0085,
    0x300A_0002,
];

/// SR content trees and acquisition context (Clean Structured Content column).
const STRUCTURED_CONTENT: &[u32] = &[0x0040_A730, 0x0040_0555];

/// Presentation-state annotations (Clean Graphics column).
const GRAPHICS: &[u32] = &[0x0070_0001, 0x0070_0006];

/// Retain Patient Characteristics column; the age is kept rounded.
const PATIENT_CHARACTERISTICS: &[u32] = &[
    0x0010_0040,
    0x0010_1010,
    0x0010_1020,
    0x0010_1030,
    0x0010_2110,
    0x0010_2160,
    0x0010_21A0,
    0x0010_21C0,
    0x0010_2203,
    0x0038_0050,
    0x0038_0500,
    0x0040_0012,
];
use dicom_dictionary_std::tags::PATIENT_AGE;

/// RSNA's rounding of ages (`@round(this,5)`), kept so both scripts agree.
const AGE_ROUNDING: u32 = 5;

/// Retain Device Identity column.
const DEVICE_IDENTITY: &[u32] = &[
    0x0008_1010,
    0x0018_1000,
    0x0018_1002,
    0x0018_1004,
    0x0018_1005,
    0x0018_1007,
    0x0018_1008,
    0x0018_700A,
    0x0032_1020,
    0x0032_1021,
    0x0040_0001,
    0x0040_0010,
    0x0040_0011,
    0x0040_0241,
    0x0040_0242,
    0x0040_0248,
    0x0040_4025,
    0x0040_4027,
    0x0040_4030,
];

/// A description, comment or label (the Clean Descriptors column and the RT labels).
pub fn is_descriptor(tag: Tag) -> bool {
    listed(DESCRIPTORS, tag)
}

/// Whether `tag` is on `list`, tags written as `0xGGGG_EEEE`.
pub(super) fn listed(list: &[u32], tag: Tag) -> bool {
    list.contains(&((u32::from(tag.0) << 16) | u32::from(tag.1)))
}

impl ProfileOptions {
    /// The operation an option puts in place of the Basic Profile's `op` for this element; `None`
    /// keeps `op`. Options only ever keep (with the safety net) or shift what Basic would remove,
    /// empty or replace by a dummy.
    pub fn replace(&self, tag: Tag, vr: VR, op: Option<&Op>) -> Option<Op> {
        let basic_hides = matches!(op, None | Some(Op::Remove | Op::Empty | Op::Dummy));
        if !basic_hides {
            return None;
        }
        if self.retain_patient_characteristics && listed(PATIENT_CHARACTERISTICS, tag) {
            return Some(if tag == PATIENT_AGE { Op::Round(AGE_ROUNDING) } else { Op::Keep });
        }
        let keep = (self.clean_descriptors && listed(DESCRIPTORS, tag))
            || (self.clean_structured_content && listed(STRUCTURED_CONTENT, tag))
            || (self.clean_graphics && listed(GRAPHICS, tag))
            || (self.retain_device_identity && listed(DEVICE_IDENTITY, tag));
        if keep {
            return Some(Op::Keep);
        }
        // Without the option a content tree or an annotation cannot be kept: nothing cleans it.
        if (!self.clean_structured_content && listed(STRUCTURED_CONTENT, tag))
            || (!self.clean_graphics && listed(GRAPHICS, tag))
        {
            return Some(Op::Remove);
        }
        // By the dictionary's word, not the file's: a tag the standard does not define is no date,
        // whatever VR its writer gave it.
        if self.retain_modified_dates && !BIRTH.contains(&tag) && crate::dicom::in_dictionary(tag) {
            return match vr {
                VR::DA | VR::DT => Some(Op::HashDate),
                // Whole-day shifts leave the time of day as it was: PS3.15's "modified" dates.
                VR::TM => Some(Op::Keep),
                _ => None,
            };
        }
        None
    }

    /// The CID 7050 codes for (0012,0064): the Basic Profile and exactly the options applied.
    pub fn codes(&self) -> Vec<MethodCode> {
        [
            (true, BASIC_PROFILE),
            (self.clean_graphics, CLEAN_GRAPHICS),
            (self.clean_structured_content, CLEAN_STRUCTURED_CONTENT),
            (self.clean_descriptors, CLEAN_DESCRIPTORS),
            (self.retain_modified_dates, RETAIN_MODIFIED_DATES),
            (self.retain_patient_characteristics, RETAIN_PATIENT_CHARACTERISTICS),
            (self.retain_device_identity, RETAIN_DEVICE_IDENTITY),
        ]
        .into_iter()
        .filter_map(|(on, code)| on.then_some(code))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_list_exactly_the_options_applied() {
        let codes: Vec<&str> = ProfileOptions::default().codes().iter().map(|c| c.0).collect();
        assert_eq!(codes, ["113100", "113103", "113104", "113105", "113107", "113108"]);
        let none = ProfileOptions {
            retain_modified_dates: false,
            clean_descriptors: false,
            clean_structured_content: false,
            clean_graphics: false,
            retain_patient_characteristics: false,
            retain_device_identity: true,
            retain_safe_private: false,
        };
        let codes: Vec<&str> = none.codes().iter().map(|c| c.0).collect();
        assert_eq!(codes, ["113100", "113109"]);
    }

    #[test]
    fn options_retain_what_basic_would_hide_and_nothing_else() {
        let o = ProfileOptions::default();
        let study_date = Tag(0x0008, 0x0020);
        assert_eq!(o.replace(study_date, VR::DA, Some(&Op::Empty)), Some(Op::HashDate));
        assert_eq!(o.replace(Tag(0x0010, 0x0030), VR::DA, Some(&Op::Empty)), None, "birth date stays empty");
        assert_eq!(o.replace(Tag(0x0008, 0x1030), VR::LO, Some(&Op::Remove)), Some(Op::Keep));
        assert_eq!(o.replace(PATIENT_AGE, VR::AS, Some(&Op::Remove)), Some(Op::Round(5)));
        assert_eq!(o.replace(Tag(0x0008, 0x1010), VR::SH, Some(&Op::Remove)), None, "device identity off");
        assert_eq!(o.replace(Tag(0x0008, 0x0018), VR::UI, Some(&Op::Uid)), None);
        let off = ProfileOptions { clean_structured_content: false, ..o };
        assert_eq!(off.replace(Tag(0x0040, 0xA730), VR::SQ, Some(&Op::Dummy)), Some(Op::Remove));
    }
}
