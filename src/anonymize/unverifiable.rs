//! Content the engine cannot check for PHI, and the project's policy for it
//! (`project.unverifiable`).
//!
//! An encapsulated document (PDF, CDA, STL, ...) carries its own text, which the header rules
//! cannot reach. (Text in pixels is read by the pixel stage, `pixels`; an image it cannot read
//! follows this same policy.)

use serde::{Deserialize, Serialize};

use crate::dicom::DataSet;

use super::profile::tags;

/// What happens to an instance with unverifiable content. None of them is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unverifiable {
    /// Not archived; kept in quarantine under `Unverifiable_Content` for someone to review, and
    /// the sender gets a failure status (so it knows the instance did not arrive).
    #[default]
    Quarantine,
    /// Not archived, on purpose: a data manager who chose this wants such objects out of the
    /// study. The content cannot be cut out of the instance (the document and the pixel data
    /// are Type 1), so the whole instance stays out; it is kept in the same quarantine directory
    /// (nothing is deleted, design §4) and the log line says "removed by policy".
    Remove,
    /// Archived as it is, with one log line per instance.
    Keep,
}

/// What in `ds` cannot be checked; `None` when nothing.
pub fn find(ds: &DataSet<'_>) -> Option<&'static str> {
    ds.get(tags::ENCAPSULATED_DOCUMENT).is_some().then_some("encapsulated document (0042,0011)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::VR;

    #[test]
    fn documents_are_unverifiable_and_burned_in_annotation_is_left_to_the_pixel_stage() {
        let mut ds = DataSet::default();
        assert_eq!(find(&ds), None);
        ds.put_text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
        assert_eq!(find(&ds), None);
        let mut doc = DataSet::default();
        doc.put_text(tags::ENCAPSULATED_DOCUMENT, VR::OB, "%PDF");
        assert!(find(&doc).is_some_and(|w| w.contains("encapsulated document")));
    }
}
