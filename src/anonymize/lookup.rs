//! CTP lookup tables: pre-assigned pseudonyms from a Java properties file, one
//! `keytype/original=replacement` per line (`ptid/MRN123=TRIAL-001`, `dateoffset/MRN123=-42`).
//!
//! RSNA's Anonymizer 19 and CTP's DicomAnonymizer use them for clinical trials whose subject IDs
//! and date offsets are assigned before the images exist. The table maps PHI to pseudonyms, so
//! nothing from it ever goes into a message or a log: errors name line numbers and key types the
//! script uses, never a key or a value.
//!
//! Unlike `java.util.Properties` (which keeps the last of two equal keys silently) the table is
//! checked whole at start: a duplicate key, a line without `keytype/`, an empty replacement, a
//! date offset that is not a whole number of days, a PatientID mapped to itself or two PatientIDs
//! sharing one pseudonym are each an error with its line, and the node does not start.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use java_properties::{LineContent, PropertiesIter};

use super::rules::Lookups;
pub use super::rules::{DATE_OFFSET, PATIENT_ID};
/// Longest pseudonym for PatientID (LO) and PatientName (PN component group).
const MAX_PATIENT_ID: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot read lookup table {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("lookup table {path}:\n  {}", problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
    #[error("the anonymizer script looks up {} in a lookup table, but project.lookup_table is not set", keytypes.join(", "))]
    Unset { keytypes: Vec<String> },
    #[error("lookup table {path} has no entries of key type {}, which the anonymizer script looks up: every instance would be quarantined", keytypes.join(", "))]
    Uncovered { path: String, keytypes: Vec<String> },
}

/// The checked table: per key type, original (trimmed) to replacement (trimmed), and the line
/// each entry came from.
#[derive(Default)]
pub struct LookupTable {
    entries: HashMap<String, HashMap<String, Entry>>,
}

struct Entry {
    value: String,
    line: usize,
}

/// Its contents are PHI: debug output shows the key types and sizes only.
impl std::fmt::Debug for LookupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<(&str, usize)> = self.entries.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        f.debug_struct("LookupTable").field("entries_per_keytype", &sizes).finish()
    }
}

impl LookupTable {
    /// The table a script needs: loaded and checked when `path` is set, with an entry of every
    /// key type the script looks up; an error when the script looks something up and no table is
    /// set. `None` when the script looks nothing up.
    pub fn for_script(path: Option<&Path>, lookups: &Lookups) -> Result<Option<LookupTable>, LookupError> {
        let keytypes = lookups.keytypes();
        let Some(path) = path else {
            return match keytypes.is_empty() {
                true => Ok(None),
                false => Err(LookupError::Unset { keytypes: keytypes.into_iter().collect() }),
            };
        };
        let table = LookupTable::load(path)?;
        let missing = table.missing(&keytypes);
        if !missing.is_empty() {
            return Err(LookupError::Uncovered { path: path.display().to_string(), keytypes: missing });
        }
        if keytypes.is_empty() {
            tracing::warn!(path = %path.display(), "project.lookup_table is set, but the anonymizer script has no @lookup rule: the table is not used");
        }
        // Counts per key type only: the entries are PHI.
        tracing::info!(path = %path.display(), entries = ?table.sizes(), "lookup table loaded");
        Ok(Some(table))
    }

    pub fn load(path: &Path) -> Result<LookupTable, LookupError> {
        let bytes = std::fs::read(path)
            .map_err(|source| LookupError::Read { path: path.display().to_string(), source })?;
        LookupTable::parse(&bytes)
            .map_err(|problems| LookupError::Invalid { path: path.display().to_string(), problems })
    }

    /// Parse and check `bytes`; `Err` lists every problem, each with its line.
    pub fn parse(bytes: &[u8]) -> Result<LookupTable, Vec<String>> {
        // Java reads properties as ISO-8859-1, editors write UTF-8: only the bytes both agree
        // on are accepted as they are, anything else must be UTF-8 (or a \uXXXX escape).
        if let Err(e) = std::str::from_utf8(bytes) {
            let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
            return Err(vec![format!(
                "line {line}: not UTF-8; save the file as UTF-8 (or write the character as \\uXXXX)"
            )]);
        }
        let mut table = LookupTable::default();
        let mut problems = Vec::new();
        for line in PropertiesIter::new_with_encoding(bytes, encoding_rs::UTF_8) {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    // The crate's messages describe the escape, never the text around it.
                    let at = e.line_number().map_or_else(String::new, |n| format!("line {n}: "));
                    problems.push(format!("{at}{e}"));
                    break;
                }
            };
            let number = line.line_number();
            if let LineContent::KVPair(key, value) = line.consume_content() {
                if let Err(p) = table.insert(&key, &value, number) {
                    problems.push(format!("line {number}: {p}"));
                }
            }
        }
        problems.extend(table.shared_patient_ids());
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    fn insert(&mut self, key: &str, value: &str, line: usize) -> Result<(), String> {
        let Some((keytype, original)) = key.split_once('/') else {
            return Err("expected keytype/original=replacement (like ptid/<PatientID>=<subject ID>)".into());
        };
        let (keytype, original, value) = (keytype.trim(), original.trim(), value.trim());
        if keytype.is_empty() || original.is_empty() {
            return Err("the key type and the original value before '=' must not be empty".into());
        }
        if value.is_empty() {
            return Err("the replacement after '=' is empty".into());
        }
        if value.starts_with('@') {
            return Err("a replacement that refers to another entry (@keytype/key) is not supported".into());
        }
        if keytype == DATE_OFFSET && parse_offset(value).is_none() {
            return Err("a dateoffset must be a whole number of days, like 42 or -365".into());
        }
        if keytype == PATIENT_ID {
            if value == original {
                return Err("maps a PatientID to itself: the original would be archived".into());
            }
            // Written into PatientID and PatientName of instances in any character set: ASCII
            // is the one repertoire they all share.
            if value.len() > MAX_PATIENT_ID
                || value.contains('\\')
                || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            {
                return Err(format!(
                    "a ptid replacement must be at most {MAX_PATIENT_ID} printable ASCII characters, without '\\'"
                ));
            }
            // It names the patient's directory in public/ and in the upload keys.
            if let Err(why) = crate::path_component::component(value) {
                return Err(format!("a ptid replacement names a directory, and this one {why}"));
            }
        }
        let entries = self.entries.entry(keytype.to_string()).or_default();
        if let Some(first) = entries.get(original) {
            return Err(format!("duplicates the key on line {}", first.line));
        }
        entries.insert(original.to_string(), Entry { value: value.to_string(), line });
        Ok(())
    }

    /// Two PatientIDs with one pseudonym: the PHI index keeps one PatientID per pseudonym, and a
    /// trial that merged two records should say so by fixing the table, not by accident.
    fn shared_patient_ids(&self) -> Vec<String> {
        let Some(ids) = self.entries.get(PATIENT_ID) else { return Vec::new() };
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut lines: Vec<(usize, usize)> = Vec::new();
        for entry in ids.values() {
            match first.get(entry.value.as_str()) {
                Some(&other) => lines.push((other.min(entry.line), other.max(entry.line))),
                None => {
                    first.insert(&entry.value, entry.line);
                }
            }
        }
        lines.sort();
        lines
            .into_iter()
            .map(|(a, b)| {
                format!("line {b}: gives the same ptid replacement as line {a} to another PatientID")
            })
            .collect()
    }

    /// The replacement of `original` under `keytype` (both trimmed, as CTP compares them).
    pub fn get(&self, keytype: &str, original: &str) -> Option<&str> {
        self.entries.get(keytype)?.get(original.trim()).map(|e| e.value.as_str())
    }

    /// A date offset; checked at load, so a present entry always parses.
    pub fn offset(&self, keytype: &str, original: &str) -> Option<i32> {
        self.get(keytype, original).and_then(parse_offset)
    }

    /// Key types the script uses that have no entry: every instance would be quarantined.
    pub fn missing(&self, used: &BTreeSet<String>) -> Vec<String> {
        used.iter().filter(|k| !self.entries.contains_key(*k)).cloned().collect()
    }

    /// Entries per key type, for the start-up log line (counts only).
    pub fn sizes(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self.entries.iter().map(|(k, e)| (k.clone(), e.len())).collect();
        v.sort();
        v
    }
}

/// A signed whole number of days (`42`, `-365`, `+7`); the range of a DA keeps it far from
/// overflow (a shift past year 9999 empties the date).
fn parse_offset(value: &str) -> Option<i32> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> String {
        LookupTable::parse(text.as_bytes()).unwrap_err().join("\n")
    }

    #[test]
    fn entries_are_found_by_key_type_and_trimmed_original() {
        let t = LookupTable::parse(
            b"# LookupTable.properties\nptid/MRN1=TRIAL-001\nptid/MRN2 : TRIAL-002\n\
              dateoffset/MRN1=-42\ndateoffset/MRN2=+7\nsite/General\\ Hospital=SITE-A\n",
        )
        .unwrap();
        assert_eq!(t.get(PATIENT_ID, " MRN1 "), Some("TRIAL-001"));
        assert_eq!(t.get(PATIENT_ID, "MRN2"), Some("TRIAL-002"));
        assert_eq!(t.offset(DATE_OFFSET, "MRN1"), Some(-42));
        assert_eq!(t.offset(DATE_OFFSET, "MRN2"), Some(7));
        assert_eq!(t.get("site", "General Hospital"), Some("SITE-A"));
        assert_eq!(t.get(PATIENT_ID, "MRN3"), None);
        assert_eq!(t.get("other", "MRN1"), None);
        let used = BTreeSet::from(["ptid".to_string(), "accession".to_string()]);
        assert_eq!(t.missing(&used), vec!["accession".to_string()]);
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_without_the_values() {
        let text = "ptid/MRN1=TRIAL-001\n\
                    MRN2=TRIAL-002\n\
                    ptid/MRN1=TRIAL-003\n\
                    dateoffset/MRN1=ten\n\
                    dateoffset/MRN2=1.5\n\
                    ptid/MRN4=\n\
                    ptid/MRN5=MRN5\n\
                    ptid/MRN6=TRIAL-001\n\
                    ptid/MRN7=@ptid/MRN1\n\
                    ptid/MRN8=PROBAND-\\u00dc1\n\
                    ptid/MRN9=../../etc\n\
                    ptid/MRN10=..\n\
                    ptid/MRN11=SITE/001\n";
        let p = problems(text);
        for expected in [
            "line 2: expected keytype/",
            "line 3: duplicates the key on line 1",
            "line 4: a dateoffset must be a whole number",
            "line 5: a dateoffset must be a whole number",
            "line 6: the replacement after '=' is empty",
            "line 7: maps a PatientID to itself",
            "line 8: gives the same ptid replacement as line 1",
            "line 9: a replacement that refers to another entry",
            "line 10: a ptid replacement must be at most 64 printable ASCII",
            "line 11: a ptid replacement names a directory, and this one holds a path separator",
            "line 12: a ptid replacement names a directory, and this one starts with '.'",
            "line 13: a ptid replacement names a directory, and this one holds a path separator",
        ] {
            assert!(p.contains(expected), "{expected:?} missing from:\n{p}");
        }
        for phi in ["MRN1", "MRN2", "MRN5", "TRIAL-001", "ten", "etc", "SITE/001"] {
            assert!(!p.contains(phi), "{phi} in the message:\n{p}");
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_with_the_line() {
        let p = LookupTable::parse(b"ptid/A=B\nptid/M\xfcller=C\n").unwrap_err().join("\n");
        assert!(p.contains("line 2: not UTF-8"), "{p}");
        let p = problems("ptid/A=\\u00zz\n");
        assert!(p.contains("line 1"), "{p}");
    }

    #[test]
    fn debug_output_holds_no_entry() {
        let t = LookupTable::parse(b"ptid/MRN1=TRIAL-001\n").unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("MRN1") && !shown.contains("TRIAL-001") && shown.contains("ptid"), "{shown}");
    }
}
