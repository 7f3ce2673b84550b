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
    /// An anonymized file found in `public/` without its index row after a crash: never
    /// acknowledged, kept for review. It is anonymized already, so it is never retried.
    OrphanAfterCrash,
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
            Reason::OrphanAfterCrash => "Orphan_After_Crash",
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

/// One instance in quarantine, as its sidecar describes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Held {
    pub reason: String,
    pub detail: String,
    pub source: String,
    pub time: String,
    pub size: u64,
    /// The instance as it came.
    #[serde(skip)]
    pub file: PathBuf,
}

impl Quarantine {
    pub fn new(dir: &Path) -> Quarantine {
        Quarantine { dir: dir.to_path_buf(), next: AtomicU64::new(0) }
    }

    /// Every held instance (whose reason directory is `reason`, when given), oldest first. A file
    /// without a readable sidecar is listed with what can be said of it.
    pub fn list(&self, reason: Option<&str>) -> std::io::Result<Vec<Held>> {
        let mut held = Vec::new();
        let dirs = match fs::read_dir(&self.dir) {
            Ok(dirs) => dirs,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(held),
            Err(e) => return Err(e),
        };
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            if !dir.path().is_dir() || reason.is_some_and(|r| !r.eq_ignore_ascii_case(&name)) {
                continue;
            }
            for entry in fs::read_dir(dir.path())?.flatten() {
                let file = entry.path();
                if file.extension().is_none_or(|e| e != "dcm") {
                    continue;
                }
                let sidecar = fs::read(file.with_extension("json")).ok();
                let described = sidecar.and_then(|j| serde_json::from_slice::<Held>(&j).ok());
                held.push(match described {
                    Some(h) => Held { file, ..h },
                    None => Held {
                        reason: name.clone(),
                        detail: "(no readable sidecar)".into(),
                        source: String::new(),
                        time: String::new(),
                        size: entry.metadata().map_or(0, |m| m.len()),
                        file,
                    },
                });
            }
        }
        held.sort_by(|a, b| (&a.time, &a.file).cmp(&(&b.time, &b.file)));
        Ok(held)
    }

    /// Take a held instance out (it was stored, or held again under a new entry).
    pub fn release(&self, held: &Held) -> std::io::Result<()> {
        fs::remove_file(&held.file)?;
        match fs::remove_file(held.file.with_extension("json")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
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
        crate::file_modes::private_dir(&dir)?;
        let now = chrono::Utc::now();
        let name = format!(
            "{}-{}-{}",
            now.format("%Y%m%dT%H%M%S%.6f"),
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let file = dir.join(format!("{name}.dcm"));
        let mut f = crate::file_modes::private_file(&file)?;
        write(&mut f)?;
        f.sync_all()?;
        let size = f.metadata()?.len();
        let sidecar = Sidecar { reason: reason.dir_name(), detail, source, time: now.to_rfc3339(), size };
        let json = serde_json::to_vec_pretty(&sidecar).map_err(std::io::Error::other)?;
        let mut j = crate::file_modes::private_file(&dir.join(format!("{name}.json")))?;
        j.write_all(&json)?;
        j.sync_all()?;
        // The files' names, and the reason's directory itself (made by its first instance), are
        // entries of their directories: durable only once those are synced too.
        fs::File::open(&dir)?.sync_all()?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(file)
    }
}
