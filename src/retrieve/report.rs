//! The per-study report of a retrieve: a table on stdout and a CSV file. Both hold PHI (what was
//! asked for and the PACS's study values), like the index export; logs never see them.

use std::path::Path;

use super::find::Study;

/// What became of one study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Found, not yet moved.
    Pending,
    /// Moved: every sub-operation completed.
    Moved,
    /// Every instance was in the index already (and `--again` was not given).
    Skipped,
    /// The query matched nothing on the PACS.
    NotFound,
    /// `--dry-run`: would be moved.
    DryRun,
    /// The move failed, in part or whole: the PACS status or the network error (no PHI).
    Failed(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Moved => "moved",
            Outcome::Skipped => "already present",
            Outcome::NotFound => "not found",
            Outcome::DryRun => "would move",
            Outcome::Failed(_) => "failed",
        }
    }

    /// Whether the run should exit non-zero for this study.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::NotFound)
    }
}

/// One study's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyReport {
    /// What was asked for: the accession number, patient ID, study UID or date range.
    pub asked: String,
    /// `None` when the query matched nothing.
    pub study: Option<Study>,
    /// Instances the PACS holds, when known.
    pub found: Option<u64>,
    /// Of those, already in the index before the move.
    pub present_before: u64,
    pub moved: u64,
    pub warnings: u64,
    pub failed: u64,
    /// Instances of the study in the index after the run.
    pub in_index: u64,
    pub anon_study_uid: Option<String>,
    pub outcome: Outcome,
}

impl StudyReport {
    pub fn new(asked: String, study: Option<Study>) -> StudyReport {
        let found = study.as_ref().and_then(|s| s.instances);
        StudyReport {
            asked,
            study,
            found,
            present_before: 0,
            moved: 0,
            warnings: 0,
            failed: 0,
            in_index: 0,
            anon_study_uid: None,
            outcome: Outcome::Pending,
        }
    }

    pub fn with_outcome(mut self, outcome: Outcome) -> StudyReport {
        self.outcome = outcome;
        self
    }

    fn fields(&self) -> [String; 14] {
        let s = self.study.clone().unwrap_or_default();
        let detail = match &self.outcome {
            Outcome::Failed(why) => why.clone(),
            _ => String::new(),
        };
        [
            self.asked.clone(),
            s.accession,
            s.patient_id,
            s.study_date,
            s.modalities,
            s.study_uid,
            self.found.map(|n| n.to_string()).unwrap_or_default(),
            self.present_before.to_string(),
            self.moved.to_string(),
            self.warnings.to_string(),
            self.failed.to_string(),
            self.in_index.to_string(),
            self.anon_study_uid.clone().unwrap_or_default(),
            if detail.is_empty() {
                self.outcome.label().to_string()
            } else {
                format!("{}: {detail}", self.outcome.label())
            },
        ]
    }
}

const HEADER: [&str; 14] = [
    "asked",
    "accession",
    "patient_id",
    "study_date",
    "modalities",
    "study_uid",
    "found",
    "already_present",
    "moved",
    "warnings",
    "failed",
    "in_index",
    "anon_study_uid",
    "outcome",
];

/// The report as CSV, one row per study.
pub fn write_csv(rows: &[StudyReport], path: &Path) -> Result<(), csv::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::file_modes::missing_dirs(dir)?;
    }
    let mut w = csv::Writer::from_writer(crate::file_modes::private_file(path)?);
    w.write_record(HEADER)?;
    for row in rows {
        w.write_record(row.fields())?;
    }
    w.flush()?;
    Ok(())
}

/// The report as a table for stdout.
pub fn table(rows: &[StudyReport]) -> String {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let s = row.study.clone().unwrap_or_default();
        let found = row.found.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        let what = match &row.outcome {
            Outcome::Failed(why) => format!("failed: {why}"),
            o => o.label().to_string(),
        };
        out.push_str(&format!(
            "{:>3}. {} | accession {} | patient {} | date {} | {} | found {found}, already present {}, moved {}, warnings {}, failed {}, in index {} | {what}\n",
            i + 1,
            row.asked,
            dash(&s.accession),
            dash(&s.patient_id),
            dash(&s.study_date),
            dash(&s.study_uid),
            row.present_before,
            row.moved,
            row.warnings,
            row.failed,
            row.in_index,
        ));
    }
    out
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
