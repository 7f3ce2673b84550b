//! `anonymize`: files and folders from disk through the same pipeline as the node, on all cores.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::dicom::{is_part10, media_storage_sop_class, MEDIA_STORAGE_DIRECTORY};
use crate::pipeline::{Outcome, Pipeline};
use crate::queue::{Quarantine, Reason};

/// One input file, and whether the user named it (a named file that is not DICOM is a failure; one
/// met while walking a folder is skipped).
struct Input {
    path: PathBuf,
    named: bool,
}

/// What a run did, for the summary and the exit code.
#[derive(Debug, Default)]
pub struct Summary {
    pub anonymized: usize,
    pub bytes: u64,
    pub skipped_non_dicom: usize,
    /// DICOMDIR files (every patient CD has one): an index of the medium, no instance.
    pub skipped_dicomdir: usize,
    /// Per kind of failure (a quarantine reason, or "Not_Stored" when this machine failed): the
    /// input file, what went wrong and where the quarantined copy is.
    pub failed: BTreeMap<String, Vec<Failure>>,
}

#[derive(Debug)]
pub struct Failure {
    pub input: PathBuf,
    pub detail: String,
    pub quarantined: Option<PathBuf>,
}

impl Summary {
    pub fn failures(&self) -> usize {
        self.failed.values().map(Vec::len).sum()
    }
}

/// Collect the files under `inputs`, then anonymize them in parallel.
pub fn run(pipeline: &Pipeline, inputs: &[PathBuf]) -> Summary {
    let files = collect(inputs);
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files ({per_sec}, eta {eta})",
        )
        .expect("the template is a literal"),
    );
    let summary = Mutex::new(Summary::default());
    files.par_iter().for_each(|input| {
        let outcome = one(pipeline, input);
        let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(Done::Stored(size)) => {
                s.anonymized += 1;
                s.bytes += size;
            }
            Ok(Done::NotDicom) => s.skipped_non_dicom += 1,
            Ok(Done::Dicomdir) => s.skipped_dicomdir += 1,
            Err(f) => s.failed.entry(f.0).or_default().push(f.1),
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    summary.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// What became of one input that did not fail.
enum Done {
    /// Stored, this many bytes.
    Stored(u64),
    /// Skipped: met while walking a folder and not DICOM.
    NotDicom,
    /// Skipped: a DICOMDIR, named or met while walking.
    Dicomdir,
}

/// `Err`: failed (and quarantined when the file is at fault).
fn one(pipeline: &Pipeline, input: &Input) -> Result<Done, (String, Failure)> {
    let failure = |detail: String, quarantined| Failure { input: input.path.clone(), detail, quarantined };
    let head = head_of(&input.path);
    if !input.named && !is_part10(&head) {
        return Ok(Done::NotDicom);
    }
    if media_storage_sop_class(&head).as_deref() == Some(MEDIA_STORAGE_DIRECTORY) {
        return Ok(Done::Dicomdir);
    }
    let source = input.path.display().to_string();
    match pipeline.process_file(&input.path, &source) {
        Outcome::Stored(stored) => {
            tracing::debug!(sop = %stored.keys.sop_uid, size = stored.size, "stored");
            Ok(Done::Stored(stored.size))
        }
        Outcome::Quarantined { reason, detail, path } => {
            // The log names the reason only: an input path can itself carry a patient's name.
            tracing::warn!(%reason, "instance quarantined");
            Err((reason.to_string(), failure(detail, Some(path))))
        }
        Outcome::Refused(detail) | Outcome::Conflict(detail) | Outcome::Failed { detail, .. } => {
            tracing::error!("instance not stored: this machine failed (disk, index or a limit)");
            Err(("Not_Stored".into(), failure(detail, None)))
        }
    }
}

/// The beginning of a file: enough for the preamble and a usual meta group, which say whether it
/// is a Part 10 file and which kind. Empty when it cannot be read (the pipeline then says why).
fn head_of(path: &Path) -> Vec<u8> {
    let mut start = Vec::with_capacity(HEAD);
    let _ = std::fs::File::open(path).and_then(|f| f.take(HEAD as u64).read_to_end(&mut start));
    start
}

/// How much of a file [`head_of`] reads.
const HEAD: usize = 4096;

fn collect(inputs: &[PathBuf]) -> Vec<Input> {
    let mut files = Vec::new();
    for path in inputs {
        if path.is_dir() {
            for entry in walkdir::WalkDir::new(path).sort_by_file_name().into_iter().filter_map(Result::ok) {
                if entry.file_type().is_file() {
                    files.push(Input { path: entry.into_path(), named: false });
                }
            }
        } else {
            files.push(Input { path: path.clone(), named: true });
        }
    }
    files
}

/// What `quarantine retry` did.
#[derive(Debug, Default)]
pub struct Retried {
    /// Stored this time, and taken out of the quarantine.
    pub stored: usize,
    /// Held again: the reason it is held under now, per instance.
    pub held: Vec<(String, String)>,
    /// Not tried to the end: this machine failed (disk, index, a limit); still held as before.
    pub failed: Vec<String>,
    /// Not tried: found after a crash in anonymized form, so only the sender can send it again.
    pub orphans: usize,
}

/// Run every held instance (of `reason`, when given) through `pipeline` again. One stored, or held
/// again under a new entry, leaves its old entry; one this machine failed on stays as it was.
pub fn retry(pipeline: &Pipeline, quarantine: &Quarantine, reason: Option<&str>) -> std::io::Result<Retried> {
    let held = quarantine.list(reason)?;
    let bar = ProgressBar::new(held.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} held instances")
            .expect("the template is a literal"),
    );
    let mut done = Retried::default();
    for h in &held {
        // Already anonymized: its original is with the sender, who has to send it again.
        if h.reason == Reason::OrphanAfterCrash.dir_name() {
            done.orphans += 1;
            bar.inc(1);
            continue;
        }
        let source = if h.source.is_empty() { h.file.display().to_string() } else { h.source.clone() };
        let outcome = pipeline.process_file(&h.file, &source);
        let release = match outcome {
            Outcome::Stored(_) => {
                done.stored += 1;
                true
            }
            Outcome::Quarantined { reason, detail, .. } => {
                done.held.push((reason.to_string(), detail));
                true
            }
            Outcome::Refused(detail) | Outcome::Conflict(detail) | Outcome::Failed { detail, .. } => {
                done.failed.push(detail);
                false
            }
        };
        if release {
            quarantine.release(h)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(done)
}
