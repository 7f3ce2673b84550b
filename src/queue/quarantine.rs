//! Instances that cannot be archived, kept with the reason. Nothing is ever deleted for failing.
//!
//! `<dir>/<Reason>/<time>-<pid>-<n>.dcm` holds the instance as received (they carry PHI, which is why
//! this lives under `private/`), and a `.json` beside it says what went wrong, when and from where.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

/// Why an instance was quarantined; the names are RSNA's directory names where RSNA has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Not a DICOM Part 10 file.
    NotDicom,
    /// DICOM, but the data set does not parse (truncated, bad lengths, bad VRs).
    Unreadable,
    /// SOP Class, SOP Instance, Study or Series UID missing.
    MissingAttributes,
    /// PatientName or PatientID is not valid in its character set, or a kept text value holds
    /// bytes its VR forbids.
    InvalidText,
    /// Contradicts the index (a study under two patients, ...).
    IntegrityConflict,
    /// A kept value does not fit its VR once anonymized (a UI list grown past 64 KiB).
    CannotEncode,
    /// Processing this input met a bug; it is kept so the bug can be found and the instance re-run.
    ProcessingError,
    /// Content the anonymizer cannot check (encapsulated document, burned-in annotation).
    Unverifiable,
    /// A value the script looks up (a PatientID, mostly) has no entry in the lookup table.
    LookupMiss,
    /// An image that may carry burned-in text whose pixels could not be read (a syntax we do
    /// not decode, no OCR engine, the engine failing or running out of time).
    PixelUnverified,
    /// Burned-in text that spells the instance's PHI was still readable after masking.
    BurnedInText,
}

impl Reason {
    pub fn dir_name(self) -> &'static str {
        match self {
            Reason::NotDicom => "Invalid_DICOM",
            Reason::Unreadable => "DICOM_Read_Error",
            Reason::MissingAttributes => "Missing_Attributes",
            Reason::InvalidText => "Invalid_Text",
            Reason::IntegrityConflict => "Capture_PHI_Error",
            Reason::CannotEncode => "Encode_Error",
            Reason::ProcessingError => "Processing_Error",
            Reason::Unverifiable => "Unverifiable_Content",
            Reason::LookupMiss => "Lookup_Miss",
            Reason::PixelUnverified => "Pixel_Unverified",
            Reason::BurnedInText => "Burned_In_Text",
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
    next: AtomicU64,
}

#[derive(serde::Serialize)]
struct Sidecar<'a> {
    reason: &'a str,
    detail: &'a str,
    source: &'a str,
    time: String,
    size: u64,
}

impl Quarantine {
    pub fn new(dir: &Path) -> Quarantine {
        Quarantine { dir: dir.to_path_buf(), next: AtomicU64::new(0) }
    }

    /// Keep a file's bytes with the reason; returns the stored file.
    pub fn put(&self, reason: Reason, detail: &str, source: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        self.put_with(reason, detail, source, |f| f.write_all(bytes))
    }

    /// Keep what `write` writes with the reason; returns the stored file. Names are time and
    /// sequence, so nothing already in quarantine is ever overwritten.
    pub fn put_with(
        &self,
        reason: Reason,
        detail: &str,
        source: &str,
        write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
    ) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(reason.dir_name());
        fs::create_dir_all(&dir)?;
        let now = chrono::Utc::now();
        let name = format!(
            "{}-{}-{}",
            now.format("%Y%m%dT%H%M%S%.6f"),
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let file = dir.join(format!("{name}.dcm"));
        let mut f = fs::File::create(&file)?;
        write(&mut f)?;
        f.sync_all()?;
        let size = f.metadata()?.len();
        let sidecar = Sidecar { reason: reason.dir_name(), detail, source, time: now.to_rfc3339(), size };
        let json = serde_json::to_vec_pretty(&sidecar).map_err(std::io::Error::other)?;
        let mut j = fs::File::create(dir.join(format!("{name}.json")))?;
        j.write_all(&json)?;
        j.sync_all()?;
        Ok(file)
    }
}
