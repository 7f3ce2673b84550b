//! Pull studies from a PACS into this node (RSNA's Query Server): Study Root C-FIND to list what a
//! selection names, then a C-MOVE of each study to our own AE title, a few at a time. The
//! instances arrive at our SCP like any others, so they are anonymized and committed by the same
//! pipeline; the C-MOVE's final response comes after the last of them was acknowledged, so the
//! index is complete for a study the moment its move ends.
//!
//! Study values (UIDs, accessions, patient IDs) are PHI: they go into the returned rows, which the
//! command prints on stdout and writes as CSV, and never into a log line. Logs name a study by
//! its position in the run and, once it has arrived, by its pseudonym.

mod find;
mod moves;
mod receiver;
mod report;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use find::Study;
pub use receiver::{receiver, Receiver};
pub use report::{table, write_csv, Outcome, StudyReport};

use crate::config::DicomPeer;
use crate::index::{IndexError, Presence};
use crate::scu::{status_meaning, Association, ScuError};

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error(transparent)]
    Scu(#[from] ScuError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("--study-date {0:?}: expected YYYYMMDD-YYYYMMDD, YYYYMMDD, YYYYMMDD- or -YYYYMMDD")]
    BadDate(String),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file's content is PHI: the message names the file only.
    #[error("{0}: expected one patient ID on one line")]
    NotOnePatientId(String),
    #[error("{0}")]
    Receiver(String),
}

/// Which studies to pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Accessions(Vec<String>),
    PatientId(String),
    StudyUid(String),
    /// A DICOM date range: `FROM-TO`, `FROM-`, `-TO` or one date.
    StudyDate(String),
}

impl Selection {
    /// Accession numbers from a file: one per line (or the first CSV column); blank lines and
    /// lines starting with `#` are skipped, as is a header named AccessionNumber.
    pub fn accessions_from(path: &Path) -> Result<Selection, RetrieveError> {
        let text = read(path)?;
        let mut list: Vec<String> = Vec::new();
        for line in text.lines() {
            let first = line.split([',', ';', '\t']).next().unwrap_or("").trim().trim_matches('"');
            if first.is_empty() || first.starts_with('#') || first.eq_ignore_ascii_case("AccessionNumber") {
                continue;
            }
            if !list.iter().any(|a| a == first) {
                list.push(first.to_string());
            }
        }
        Ok(Selection::Accessions(list))
    }

    /// A patient ID from a file rather than the command line, where it would be in the process
    /// list and the shell history: the file's one line, surrounding whitespace trimmed.
    pub fn patient_id_from(path: &Path) -> Result<Selection, RetrieveError> {
        let text = read(path)?;
        let id = text.trim();
        if id.is_empty() || id.contains(['\n', '\r']) {
            return Err(RetrieveError::NotOnePatientId(path.display().to_string()));
        }
        Ok(Selection::PatientId(id.to_string()))
    }

    /// A study date range, checked before it reaches the PACS.
    pub fn study_date(range: &str) -> Result<Selection, RetrieveError> {
        let date = |d: &str| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit());
        let ok = match range.split_once('-') {
            Some((from, to)) => {
                (from.is_empty() || date(from)) && (to.is_empty() || date(to)) && range.len() > 1
            }
            None => date(range),
        };
        if ok {
            Ok(Selection::StudyDate(range.to_string()))
        } else {
            Err(RetrieveError::BadDate(range.to_string()))
        }
    }

    /// The queries to send: one per accession, else one.
    fn queries(&self, modality: &str) -> Vec<(String, find::StudyKeys)> {
        let keys = |f: &dyn Fn(&mut find::StudyKeys)| {
            let mut k = find::StudyKeys { modality: modality.to_string(), ..Default::default() };
            f(&mut k);
            k
        };
        match self {
            Selection::Accessions(list) => {
                list.iter().map(|a| (a.clone(), keys(&|k| k.accession = a.clone()))).collect()
            }
            Selection::PatientId(id) => vec![(id.clone(), keys(&|k| k.patient_id = id.clone()))],
            Selection::StudyUid(uid) => vec![(uid.clone(), keys(&|k| k.study_uid = uid.clone()))],
            Selection::StudyDate(range) => vec![(range.clone(), keys(&|k| k.study_date = range.clone()))],
        }
    }
}

/// A selection file, whole.
fn read(path: &Path) -> Result<String, RetrieveError> {
    std::fs::read_to_string(path)
        .map_err(|source| RetrieveError::Read { path: path.display().to_string(), source })
}

/// One run of `retrieve`.
pub struct Request {
    pub pacs: DicomPeer,
    /// Our AE title: calling AE title, and the move destination.
    pub ae_title: String,
    pub selection: Selection,
    pub modality: Option<String>,
    /// Move studies whose instances are all in the index already.
    pub again: bool,
    /// List what would be moved; move nothing.
    pub dry_run: bool,
    /// Moves at once.
    pub moves: usize,
    /// For the association and every response.
    pub timeout: Duration,
}

/// Find, check against the index, move. One row per study found and per accession that matched
/// nothing. An unreachable PACS or a failed C-FIND is an error: nothing was moved.
pub async fn run(
    request: Request,
    index: &crate::index::Location,
) -> Result<Vec<StudyReport>, RetrieveError> {
    let pacs = request.pacs.label();
    let contexts = [crate::scu::find::context()];
    let mut assoc = Association::open(&request.pacs, &request.ae_title, &contexts, request.timeout).await?;
    let listed = list(&mut assoc, &request).await;
    let rows = match listed {
        Ok(rows) => rows,
        Err(e) => {
            assoc.abort().await;
            return Err(e);
        }
    };
    info!(%pacs, studies = rows.iter().filter(|r| r.study.is_some()).count(), "studies found");
    if request.dry_run {
        assoc.release().await;
        // What the PACS does not hold stays "not found": the real run would fail on it too.
        let dry = |r: StudyReport| match r.outcome {
            Outcome::Pending => r.with_outcome(Outcome::DryRun),
            _ => r,
        };
        return Ok(rows.into_iter().map(dry).collect());
    }
    let presence = Presence::open(index)?;
    let mut rows = rows;
    for row in rows.iter_mut() {
        let Some(study) = row.study.clone() else { continue };
        let held = match &presence {
            Some(p) => p.instances_of_study(&study.study_uid)?,
            None => 0,
        };
        if held == 0 {
            continue;
        }
        // Held in part or whole: count exactly which of the PACS's instances we have.
        let sops = find::instances(&mut assoc, &study.study_uid).await?;
        let present = presence.as_ref().map(|p| p.held(&sops)).transpose()?.unwrap_or(0);
        row.found = Some(sops.len() as u64);
        row.present_before = present;
        if !sops.is_empty() && present == sops.len() as u64 && !request.again {
            row.outcome = Outcome::Skipped;
        }
    }
    assoc.release().await;
    let rows = move_all(&request, rows).await;
    // Read the index afresh: what arrived, and under which pseudonym.
    let presence = Presence::open(index)?;
    let mut rows = rows;
    if let Some(p) = &presence {
        for row in rows.iter_mut() {
            if let Some(study) = &row.study {
                row.in_index = p.instances_of_study(&study.study_uid)?;
                row.anon_study_uid = p.anon_study_uid(&study.study_uid)?;
            }
        }
    }
    for row in rows.iter_mut() {
        missing_from_index(row);
    }
    for (i, row) in rows.iter().enumerate() {
        let anon = row.anon_study_uid.as_deref().unwrap_or("-");
        info!(%pacs, study = i + 1, anon_study_uid = anon, outcome = row.outcome.label(), moved = row.moved, failed = row.failed, in_index = row.in_index, "study done");
    }
    Ok(rows)
}

/// A move the PACS completed whose instances this index does not hold went somewhere else: a
/// node that answers as our AE title on our port but writes another archive. That is a failure,
/// whatever the PACS said.
fn missing_from_index(row: &mut StudyReport) {
    if row.outcome == Outcome::Moved && row.moved > 0 && row.in_index < row.moved {
        row.outcome = Outcome::Failed(format!(
            "moved {} but {} in this index: the node that received them is not this config's (another storage dir answers on scp.port)",
            row.moved, row.in_index
        ));
    }
}

/// Every study the selection names, in the order asked, each once.
async fn list(assoc: &mut Association, request: &Request) -> Result<Vec<StudyReport>, RetrieveError> {
    let modality = request.modality.clone().unwrap_or_default();
    let mut rows: Vec<StudyReport> = Vec::new();
    for (asked, keys) in request.selection.queries(&modality) {
        let studies = find::studies(assoc, &keys).await?;
        if studies.is_empty() {
            rows.push(StudyReport::new(asked, None).with_outcome(Outcome::NotFound));
            continue;
        }
        for study in studies {
            if rows.iter().any(|r| r.study.as_ref().is_some_and(|s| s.study_uid == study.study_uid)) {
                continue;
            }
            rows.push(StudyReport::new(asked.clone(), Some(study)));
        }
    }
    Ok(rows)
}

/// Move every study still to move, `request.moves` at a time, with a bar each and one overall.
async fn move_all(request: &Request, rows: Vec<StudyReport>) -> Vec<StudyReport> {
    let to_move: Vec<usize> =
        rows.iter().enumerate().filter(|(_, r)| r.outcome == Outcome::Pending).map(|(i, _)| i).collect();
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = bars.add(ProgressBar::new(to_move.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} studies {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    overall.set_prefix("retrieve");
    let slots = Arc::new(Semaphore::new(request.moves.max(1)));
    let mut set = JoinSet::new();
    let total = rows.len();
    for &i in &to_move {
        let study = rows[i].study.clone().expect("only found studies are pending");
        let (pacs, calling, timeout) = (request.pacs.clone(), request.ae_title.clone(), request.timeout);
        let (slots, bars, overall) = (slots.clone(), bars.clone(), overall.clone());
        set.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _slot = slots.acquire_owned().await.expect("semaphore open");
            let bar = bars.insert_before(&overall, ProgressBar::new(study.instances.unwrap_or(0)));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} instances {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("study {}/{total}", i + 1));
            let result = moves::move_study(&pacs, &calling, &calling, &study.study_uid, timeout, |c| {
                let done =
                    [c.completed, c.failed, c.warning].iter().map(|v| u64::from(v.unwrap_or(0))).sum::<u64>();
                if let Some(remaining) = c.remaining {
                    bar.set_length(done + u64::from(remaining));
                }
                bar.set_position(done);
                bar.set_message(format!("failed {}", c.failed.unwrap_or(0)));
            })
            .await;
            bar.finish_and_clear();
            overall.inc(1);
            (i, result)
        });
    }
    let mut rows = rows;
    while let Some(joined) = set.join_next().await {
        let Ok((i, result)) = joined else { continue };
        let row = &mut rows[i];
        match result {
            Ok(m) => {
                row.moved = m.completed;
                row.failed = m.failed;
                row.warnings = m.warning;
                if row.found.is_none() {
                    row.found = Some(m.completed + m.failed + m.warning);
                }
                row.outcome = match m.status {
                    0x0000 if m.failed == 0 => Outcome::Moved,
                    status => {
                        warn!(pacs = %request.pacs.label(), study = i + 1, status = format!("0x{status:04X}"), meaning = status_meaning(status), failed = m.failed, "C-MOVE did not complete");
                        Outcome::Failed(format!("C-MOVE status 0x{status:04X} ({})", status_meaning(status)))
                    }
                };
            }
            Err(e) => {
                warn!(study = i + 1, error = %e, "C-MOVE failed");
                row.outcome = Outcome::Failed(e.to_string());
            }
        }
    }
    overall.finish_and_clear();
    rows
}
