//! `anonymize`: files and folders from disk through the same pipeline as the node, on all cores.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::dicom::Part10Error;
use crate::pipeline::{InstanceError, Pipeline};
use crate::queue::Reason;

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
    /// Per reason: the input file, what went wrong and where the quarantined copy is.
    pub failed: BTreeMap<Reason, Vec<Failure>>,
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

/// `Ok(Some(size))` stored, `Ok(None)` skipped as not DICOM, `Err` failed (and quarantined).
fn one(pipeline: &Pipeline, input: &Input) -> Result<Option<u64>, (Reason, Failure)> {
    let source = input.path.display().to_string();
    let bytes = match std::fs::read(&input.path) {
        Ok(b) => b,
        Err(e) => {
            let failure =
                Failure { input: input.path.clone(), detail: format!("cannot read: {e}"), quarantined: None };
            return Err((Reason::Unreadable, failure));
        }
    };
    match pipeline.process_file(&bytes, &source) {
        Ok(stored) => {
            tracing::debug!(sop = %stored.keys.sop_uid, size = stored.size, "stored");
            Ok(Some(stored.size))
        }
        Err(InstanceError::Unreadable(Part10Error::NotDicom)) if !input.named => Ok(None),
        Err(e) => {
            // Offline, an environment failure is recorded as a storage error.
            let reason = e.reason().unwrap_or(Reason::StorageError);
            let detail = e.to_string();
            let quarantined = pipeline.quarantine().put(reason, &detail, &source, &bytes);
            if let Err(q) = &quarantined {
                tracing::error!(%reason, error = %q, "cannot quarantine a failed instance");
            }
            // The log names the reason only: an input path can itself carry a patient's name.
            tracing::warn!(%reason, "instance quarantined");
            Err((reason, Failure { input: input.path.clone(), detail, quarantined: quarantined.ok() }))
        }
    }
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
