//! `anonymize`: files and folders from disk through the same pipeline as the node, on all cores.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::dicom::is_part10;
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
            Ok(Some(size)) => {
                s.anonymized += 1;
                s.bytes += size;
            }
            Ok(None) => s.skipped_non_dicom += 1,
            Err(f) => s.failed.entry(f.0).or_default().push(f.1),
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    summary.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// `Ok(Some(size))` stored, `Ok(None)` skipped as not DICOM, `Err` failed (and quarantined when
/// the file is at fault).
fn one(pipeline: &Pipeline, input: &Input) -> Result<Option<u64>, (String, Failure)> {
    let failure = |detail: String, quarantined| Failure { input: input.path.clone(), detail, quarantined };
    if !input.named && !looks_like_part10(&input.path) {
        return Ok(None);
    }
    let source = input.path.display().to_string();
    match pipeline.process_file(&input.path, &source) {
        Outcome::Stored(stored) => {
            tracing::debug!(sop = %stored.keys.sop_uid, size = stored.size, "stored");
            Ok(Some(stored.size))
        }
        Outcome::Quarantined { reason, detail, path } => {
            // The log names the reason only: an input path can itself carry a patient's name.
            tracing::warn!(%reason, "instance quarantined");
            Err((reason.to_string(), failure(detail, Some(path))))
        }
        Outcome::Refused(detail) | Outcome::Failed { detail, .. } => {
            tracing::error!("instance not stored: this machine failed (disk, index or a limit)");
            Err(("Not_Stored".into(), failure(detail, None)))
        }
    }
}

/// A file met while walking a folder is skipped unless it starts like a Part 10 file.
fn looks_like_part10(path: &Path) -> bool {
    let mut start = Vec::with_capacity(132);
    std::fs::File::open(path).and_then(|f| f.take(132).read_to_end(&mut start)).is_ok() && is_part10(&start)
}

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
            Outcome::Refused(detail) | Outcome::Failed { detail, .. } => {
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
