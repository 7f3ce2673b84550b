//! Which images are read for burned-in text: those whose kind commonly carries it (every one of
//! them), and volumes by sample (text is rare there, but real).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::dicom::DataSet;

use super::super::profile::tags;

use dicom_dictionary_std::tags::{COLUMNS, CONVERSION_TYPE, IMAGE_TYPE, ROWS};

/// Modalities whose images commonly carry text in their pixels: ultrasound, projection X-ray
/// (labels), angiography and fluoroscopy (overlays), photographs and endoscopy, other.
pub const AT_RISK_MODALITIES: &[&str] = &[
    "US", "IVUS", "XA", "RF", "CR", "DX", "MG", "IO", "PX", "XC", "ES", "OP", "GM", "SM", "OT", "SC", "DOC",
];

/// SOP classes that carry text (each with the classes under it: `.7` covers `.7.4`) whatever their Modality says: ultrasound, every
/// secondary capture, X-ray angiography and fluoroscopy, CR/DX/MG, visible light.
pub const AT_RISK_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.6",    // Ultrasound (and multi-frame, enhanced)
    "1.2.840.10008.5.1.4.1.1.3",    // Ultrasound multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.7",    // Secondary Capture, all of them
    "1.2.840.10008.5.1.4.1.1.12",   // XA, RF, enhanced, 3D
    "1.2.840.10008.5.1.4.1.1.1",    // CR (.1), DX/MG/IO (.1.1, .1.2, .1.3)
    "1.2.840.10008.5.1.4.1.1.77.1", // Visible light: endoscopy, microscopy, photographs, video
];

/// Why an image is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Risk {
    /// Read in full: its kind carries text, or the header says it does.
    AtRisk(String),
    /// A volume (CT, MR, PT, NM, ...): read by sample.
    Volume,
}

/// Sort an image. `modalities` and `classes` are the project's lists.
pub fn classify(ds: &DataSet<'_>, modalities: &[String], classes: &[String]) -> Risk {
    let text = |tag| ds.text(tag).unwrap_or_default().trim();
    if text(tags::BURNED_IN_ANNOTATION).eq_ignore_ascii_case("YES") {
        return Risk::AtRisk("BurnedInAnnotation is YES".into());
    }
    if !text(CONVERSION_TYPE).is_empty() {
        return Risk::AtRisk("a converted image (ConversionType)".into());
    }
    let modality = text(tags::MODALITY);
    if modalities.iter().any(|m| m.eq_ignore_ascii_case(modality)) {
        return Risk::AtRisk(format!("Modality {modality}"));
    }
    let class = text(tags::SOP_CLASS_UID);
    let under = |c: &str| class.strip_prefix(c).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
    if classes.iter().any(|c| under(c)) {
        return Risk::AtRisk("its SOP class".into());
    }
    Risk::Volume
}

/// What the first image of a series looked like, and whether any image of it had text.
#[derive(Debug, Clone)]
struct Seen {
    shape: String,
    text: bool,
}

/// The volumes sampled so far, by original series UID. Kept in memory: after a restart the
/// first image of each series is read again, which costs time, never safety.
#[derive(Default)]
pub struct Sampler {
    series: Mutex<HashMap<String, Seen>>,
}

/// More series than this are forgotten at once rather than grow without bound.
const REMEMBERED: usize = 100_000;

impl Sampler {
    /// Whether this image of `series` is read: the first of its series, one whose image type or
    /// size differs from the first's (a localizer, a dose screen), and every one of a series in
    /// which text was found.
    pub fn wants(&self, ds: &DataSet<'_>, series: &str) -> bool {
        let shape = shape(ds);
        let mut seen = self.series.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(series) {
            Some(s) => s.text || s.shape != shape,
            None => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(series.to_string(), Seen { shape, text: false });
                true
            }
        }
    }

    /// What [`Sampler::wants`] would answer, without counting the image as seen.
    pub fn would_want(&self, ds: &DataSet<'_>, series: &str) -> bool {
        let seen = self.series.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(series).is_none_or(|s| s.text || s.shape != shape(ds))
    }

    /// Text was found in an image of `series`: read every later one.
    pub fn found_text(&self, series: &str) {
        let mut seen = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get_mut(series) {
            s.text = true;
        }
    }
}

fn shape(ds: &DataSet<'_>) -> String {
    let bytes = |tag| ds.bytes(tag).map(<[u8]>::to_vec).unwrap_or_default();
    format!("{}|{:?}|{:?}", ds.text(IMAGE_TYPE).unwrap_or_default().trim(), bytes(ROWS), bytes(COLUMNS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::VR;

    fn owned(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn image(modality: &str, class: &str) -> DataSet<'static> {
        let mut ds = DataSet::default();
        ds.put_text(tags::MODALITY, VR::CS, modality);
        ds.put_text(tags::SOP_CLASS_UID, VR::UI, class);
        ds
    }

    #[test]
    fn ultrasound_captures_and_headers_that_admit_text_are_at_risk() {
        let (m, c) = (owned(AT_RISK_MODALITIES), owned(AT_RISK_CLASSES));
        assert!(matches!(classify(&image("US", "1.2.840.10008.5.1.4.1.1.6.1"), &m, &c), Risk::AtRisk(_)));
        // A secondary capture of a CT dose screen says CT.
        assert!(matches!(classify(&image("CT", "1.2.840.10008.5.1.4.1.1.7"), &m, &c), Risk::AtRisk(_)));
        assert!(matches!(classify(&image("CT", "1.2.840.10008.5.1.4.1.1.7.4"), &m, &c), Risk::AtRisk(_)));
        assert_eq!(classify(&image("CT", "1.2.840.10008.5.1.4.1.1.2"), &m, &c), Risk::Volume);
        // .1.1 is DX; .1.2 (CT) must not match the CR prefix .1.1.
        assert!(matches!(classify(&image("", "1.2.840.10008.5.1.4.1.1.1.1"), &m, &c), Risk::AtRisk(_)));
        assert_eq!(classify(&image("MR", "1.2.840.10008.5.1.4.1.1.4"), &m, &c), Risk::Volume);
        let mut ds = image("CT", "1.2.840.10008.5.1.4.1.1.2");
        ds.put_text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
        assert!(matches!(classify(&ds, &m, &c), Risk::AtRisk(_)));
    }

    #[test]
    fn volumes_are_sampled_first_image_odd_shapes_and_series_with_text() {
        let sampler = Sampler::default();
        let mut axial = image("CT", "1.2.840.10008.5.1.4.1.1.2");
        axial.put_text(IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL");
        let mut localizer = axial.clone();
        localizer.put_text(IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\LOCALIZER");
        assert!(sampler.wants(&axial, "s1"));
        assert!(!sampler.wants(&axial, "s1"));
        assert!(sampler.wants(&localizer, "s1"));
        assert!(sampler.wants(&axial, "s2"));
        sampler.found_text("s1");
        assert!(sampler.wants(&axial, "s1"));
    }
}
