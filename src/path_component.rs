//! Names that come from data or tables (a pseudonym, a UID, a lookup table's subject ID, a
//! Cognito `sub`) and become one step of a path: the spool's `<patient>/<study>/<series>/<sop>.dcm`
//! and the S3 key built from it. Each must be one normal component, so that no value can climb out
//! of `public/` or the project's key prefix, hide a file (`.x` is what the spool's temp files look
//! like, swept at start) or cut a path short in a C library (NUL).

/// Why a value cannot be a path component. Never holds the value: it may be PHI (a subject ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    #[error("is empty")]
    Empty,
    #[error("holds a path separator ('/' or '\\')")]
    Separator,
    #[error("starts with '.'")]
    LeadingDot,
    #[error("holds a NUL or control character")]
    Control,
}

/// `value` when it is one normal path component (and one S3 key segment): not empty, no `/` or
/// `\` (the key replaces one by the other), not starting with `.` (so neither `.` nor `..`), no
/// NUL or other control character.
pub fn component(value: &str) -> Result<&str, ComponentError> {
    if value.is_empty() {
        Err(ComponentError::Empty)
    } else if value.contains(['/', '\\']) {
        Err(ComponentError::Separator)
    } else if value.starts_with('.') {
        Err(ComponentError::LeadingDot)
    } else if value.chars().any(char::is_control) {
        Err(ComponentError::Control)
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_normal_component_passes() {
        for ok in ["TRIAL-001", "1.2.840.113619.2.1", "A B", "x..y", "Müller"] {
            assert_eq!(component(ok), Ok(ok));
        }
        for (bad, why) in [
            ("", ComponentError::Empty),
            ("..", ComponentError::LeadingDot),
            (".", ComponentError::LeadingDot),
            (".hidden", ComponentError::LeadingDot),
            ("../../etc", ComponentError::Separator),
            ("a/b", ComponentError::Separator),
            ("/abs", ComponentError::Separator),
            ("a\\b", ComponentError::Separator),
            ("a\0b", ComponentError::Control),
            ("a\nb", ComponentError::Control),
        ] {
            assert_eq!(component(bad), Err(why), "{bad:?}");
        }
    }
}
