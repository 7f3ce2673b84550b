//! What a start puts right after a crash, and what it refuses to start on.
//!
//! An instance is committed to the index, then renamed into `public/`, then flushed with both
//! (see `durability`). A crash between those steps leaves one of three things behind:
//! - a temp file in `public/`: removed;
//! - an index row whose file never reached `public/`: forgotten (never acknowledged);
//! - a file in `public/` without its row, when the rename reached the disk and the index's
//!   write-ahead log did not (a power cut): never acknowledged either, but its bytes are an
//!   anonymized instance, so it is kept in quarantine as `Orphan_After_Crash` for review.
//!
//! At most one instance per association is between commit and acknowledgement, so a crash leaves
//! at most `scp.max_associations` files without rows. More than that means the index is older
//! than its files: `index.db` restored without its `-wal`, a zeroed log, a lost index. Those files
//! were acknowledged; their rows held the patients' pseudonyms, and starting would hand a known
//! patient a second pseudonym and a new patient a number already on another patient's folder.
//! So the start stops and names the fix, and lists the files. The other way round, more rows than
//! that without their file means `public/` is not what the index was written with (not mounted,
//! another directory): the start stops before it forgets anything.
//!
//! Whatever else happens, a patient number already on a folder in `public/` is never handed out
//! again: the counter is raised past every number found there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::index::{Index, IndexError};
use crate::queue::{Quarantine, Reason, Spool};

/// What a start put right.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Temp files removed from `public/`.
    pub temp_files: usize,
    /// Rows of instances whose file never reached `public/`, forgotten.
    pub forgotten_rows: usize,
    /// Files without a row, moved to quarantine as `Orphan_After_Crash`.
    pub orphans: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error(
        "the index {index} is older than the files in {public}: {unindexed} anonymized instances there have no \
         row (a crash leaves at most {bound}), so it lost what it knew of them, and of their patients' pseudonyms. \
         Restore index.db together with its index.db-wal from the same moment (a copy made by `index backup` is \
         complete on its own) and start again; if the log is lost for good, move the files listed in {list} out \
         of {public} and have their studies sent again"
    )]
    Stale { index: String, public: String, unindexed: usize, bound: usize, list: String },
    #[error(
        "{missing} instances the index holds for delivery have no file in {public} (a crash leaves at most \
         {bound}): is the storage mounted, and is storage.dir the directory this index was written with? \
         Nothing was changed"
    )]
    Missing { public: String, missing: usize, bound: usize },
}

/// Compare `public/` (the spool's root) with the index and put right what a crash left.
/// `in_flight` is how many instances can be between commit and acknowledgement at once; `site_id`
/// names the patient folders whose numbers are reserved.
pub fn recover(
    spool: &Spool,
    index: &Index,
    quarantine: &Quarantine,
    index_path: &Path,
    in_flight: usize,
    site_id: &str,
) -> Result<Recovered, RecoveryError> {
    let public = spool.root();
    let temp_files = spool.sweep();
    let forgotten_rows = index.forget_unpublished(public, in_flight)?.map_err(|missing| {
        RecoveryError::Missing { public: public.display().to_string(), missing, bound: in_flight }
    })?;
    index.reserve_patient_numbers(highest_patient_number(public, site_id))?;

    let known: HashSet<String> = index.paths()?.into_iter().collect();
    let unindexed: Vec<PathBuf> = instance_files(public)
        .into_iter()
        .filter(|rel| !known.contains(rel.to_string_lossy().as_ref()))
        .collect();
    if unindexed.len() > in_flight {
        let list = index_path.with_extension("unindexed.txt");
        let text: String = unindexed.iter().map(|p| format!("{}\n", p.display())).collect();
        std::fs::write(&list, text).map_err(|source| RecoveryError::Io {
            what: "write",
            path: list.display().to_string(),
            source,
        })?;
        return Err(RecoveryError::Stale {
            index: index_path.display().to_string(),
            public: public.display().to_string(),
            unindexed: unindexed.len(),
            bound: in_flight,
            list: list.display().to_string(),
        });
    }
    for rel in &unindexed {
        let path = public.join(rel);
        let detail = "in public/ without an index row after a crash: it was never acknowledged; \
                      the sender still has it (this is its anonymized form)";
        quarantine
            .put_with(Reason::OrphanAfterCrash, detail, &rel.display().to_string(), |f| {
                std::io::copy(&mut std::fs::File::open(&path)?, f).map(drop)
            })
            .and_then(|_| std::fs::remove_file(&path))
            .map_err(|source| RecoveryError::Io {
                what: "move to quarantine",
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(Recovered { temp_files, forgotten_rows, orphans: unindexed.len() })
}

/// Every instance file under `public`, relative to it, as the index records paths.
fn instance_files(public: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(public)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "dcm"))
        .filter_map(|e| e.path().strip_prefix(public).ok().map(Path::to_path_buf))
        .collect()
}

/// The highest `<site>-NNNNNN` patient folder number in `public`; 0 if none.
fn highest_patient_number(public: &Path, site_id: &str) -> u64 {
    let prefix = format!("{site_id}-");
    std::fs::read_dir(public)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let number = name.to_str()?.strip_prefix(&prefix)?;
            number.bytes().all(|b| b.is_ascii_digit()).then(|| number.parse().ok()).flatten()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_numbers_are_read_from_this_sites_folders_only() {
        let d = tempfile::tempdir().unwrap();
        for name in ["99-000007", "99-000012", "99-abc", "98-000044", "99-000003"] {
            std::fs::create_dir(d.path().join(name)).unwrap();
        }
        assert_eq!(highest_patient_number(d.path(), "99"), 12);
        assert_eq!(highest_patient_number(d.path(), "97"), 0);
        assert_eq!(highest_patient_number(&d.path().join("absent"), "99"), 0);
    }
}
