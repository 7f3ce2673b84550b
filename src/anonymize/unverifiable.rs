//! Content the engine cannot check for PHI, and the project's policy for it
//! (`project.unverifiable`).
//!
//! An encapsulated document (PDF, CDA, STL, ...) carries its own text, and an image that declares
//! BurnedInAnnotation YES carries text in its pixels; the header rules cannot reach either.

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
    if ds.get(tags::ENCAPSULATED_DOCUMENT).is_some() {
        return Some("encapsulated document (0042,0011)");
    }
    let burned_in = ds.text(tags::BURNED_IN_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("YES"));
    burned_in.then_some("BurnedInAnnotation (0028,0301) is YES")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::VR;

    #[test]
    fn documents_and_burned_in_annotation_are_unverifiable() {
        let mut ds = DataSet::default();
        assert_eq!(find(&ds), None);
        ds.put_text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
        assert_eq!(find(&ds), None);
        ds.put_text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
        assert!(find(&ds).is_some_and(|w| w.contains("BurnedInAnnotation")));
        let mut doc = DataSet::default();
        doc.put_text(tags::ENCAPSULATED_DOCUMENT, VR::OB, "%PDF");
        assert!(find(&doc).is_some_and(|w| w.contains("encapsulated document")));
    }
}
