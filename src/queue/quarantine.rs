//! Instances that cannot be archived, kept with the reason. Nothing is ever deleted for failing.
//!
//! `<dir>/<Reason>/<sha256 prefix>.dcm` holds the bytes as received (they carry PHI, which is why
//! this lives under `private/`), and a `.json` beside it says what went wrong, when and from where.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why an instance was quarantined; the names are RSNA's directory names where RSNA has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Not a DICOM Part 10 file.
    NotDicom,
    /// DICOM, but the data set does not parse (truncated, bad lengths, bad VRs).
    Unreadable,
    /// SOP Class, SOP Instance, Study or Series UID missing.
    MissingAttributes,
    /// PatientName or PatientID is not valid in its character set.
    InvalidText,
    /// Contradicts the index (a study under two patients, ...).
    IntegrityConflict,
    /// The anonymized file could not be written.
    StorageError,
}

impl Reason {
    pub fn dir_name(self) -> &'static str {
        match self {
            Reason::NotDicom => "Invalid_DICOM",
            Reason::Unreadable => "DICOM_Read_Error",
            Reason::MissingAttributes => "Missing_Attributes",
            Reason::InvalidText => "Invalid_Text",
            Reason::IntegrityConflict => "Capture_PHI_Error",
            Reason::StorageError => "Storage_Error",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

pub struct Quarantine {
    dir: PathBuf,
}

#[derive(serde::Serialize)]
struct Sidecar<'a> {
    reason: &'a str,
    detail: &'a str,
    source: &'a str,
    time: String,
    size: usize,
}

impl Quarantine {
    pub fn new(dir: &Path) -> Quarantine {
        Quarantine { dir: dir.to_path_buf() }
    }

    /// Keep `bytes` with the reason; returns the stored file. Named by content hash, so the same
    /// bad file sent twice is kept once.
    pub fn put(&self, reason: Reason, detail: &str, source: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(reason.dir_name());
        fs::create_dir_all(&dir)?;
        let name = hex::encode(&Sha256::digest(bytes)[..8]);
        let file = dir.join(format!("{name}.dcm"));
        write_synced(&file, bytes)?;
        let sidecar = Sidecar {
            reason: reason.dir_name(),
            detail,
            source,
            time: chrono::Utc::now().to_rfc3339(),
            size: bytes.len(),
        };
        let json = serde_json::to_vec_pretty(&sidecar).map_err(std::io::Error::other)?;
        write_synced(&dir.join(format!("{name}.json")), &json)?;
        Ok(file)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
