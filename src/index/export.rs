//! The PHI lookup table as CSV, in RSNA's twelve columns, one row per study.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::db::{args, Db, DbError, Location};

const HEADER: [&str; 12] = [
    "ANON-PatientID",
    "ANON-PatientName",
    "PHI-PatientName",
    "PHI-PatientID",
    "DateOffset",
    "PHI-StudyDate",
    "ANON-AccNo",
    "PHI-AccNo",
    "ANON-StudyUID",
    "PHI-StudyUID",
    "Series",
    "Instances",
];

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("PHI index {path}: {source}")]
    Index { path: String, source: DbError },
    #[error("PHI index: {0}")]
    Db(#[from] DbError),
    /// `index backup` copies a SQLite file; PostgreSQL has its own tools for that.
    #[error("{0} is in PostgreSQL: back it up with pg_dump (or the server's own backups), which know its consistency rules")]
    NotAFile(String),
    #[error("cannot write {path}: {source}")]
    Csv { path: String, source: csv::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// A consistent copy of the whole index in one file (`VACUUM INTO`): complete on its own, with no
/// `-wal` beside it, taken while a node keeps writing. Refuses to overwrite `out`. Returns its size.
pub fn backup(index: &Location, out: &Path) -> Result<u64, ExportError> {
    let Location::Sqlite(index) = index else { return Err(ExportError::NotAFile(index.to_string())) };
    let db_err = |source: rusqlite::Error| ExportError::Index {
        path: index.display().to_string(),
        source: source.into(),
    };
    let conn = Connection::open_with_flags(index, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db_err)?;
    let write_err = |source| ExportError::Write { path: out.display().to_string(), source };
    let target = out.to_str().ok_or_else(|| db_err(rusqlite::Error::InvalidPath(out.to_path_buf())))?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(db_err)?;
    // VACUUM INTO does not sync what it wrote: a backup is only one once it is on the disk.
    let file = std::fs::File::open(out).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(file.metadata().map_err(write_err)?.len())
}

/// Write the lookup table; returns the number of studies. Reads through its own read-only
/// connection, so a running node keeps writing meanwhile.
pub fn export_csv(index: &Location, out: &Path) -> Result<usize, ExportError> {
    let db_err = |source| ExportError::Index { path: index.to_string(), source };
    let csv_err = |source| ExportError::Csv { path: out.display().to_string(), source };
    let mut conn = Db::reader(index).map_err(db_err)?;
    let file = crate::file_modes::private_file(out).map_err(|e| csv_err(e.into()))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(HEADER).map_err(csv_err)?;
    let mut n = 0;
    conn.query_each(
        "SELECT p.anon_patient_id, p.patient_name, p.patient_id, s.date_offset, s.study_date,
                s.anon_accession, s.accession, s.anon_study_uid, s.study_uid,
                (SELECT COUNT(*) FROM series se WHERE se.study_uid = s.study_uid),
                (SELECT COUNT(*) FROM instances i JOIN series se ON i.series_uid = se.series_uid
                  WHERE se.study_uid = s.study_uid)
         FROM studies s JOIN patients p ON p.patient_id = s.patient_id
         ORDER BY p.anon_patient_id, s.study_uid",
        args![],
        |r| -> Result<(), ExportError> {
            let text = |i| r.get::<Option<String>>(i).map(Option::unwrap_or_default).map_err(db_err);
            let number = |i| {
                r.get::<Option<i64>>(i).map(|v| v.map(|v| v.to_string()).unwrap_or_default()).map_err(db_err)
            };
            let anon_id = text(0)?;
            let record = [
                anon_id.clone(),
                anon_id,
                text(1)?,
                text(2)?,
                number(3)?,
                text(4)?,
                text(5)?,
                text(6)?,
                text(7)?,
                text(8)?,
                number(9)?,
                number(10)?,
            ];
            w.write_record(record.iter().map(|c| spreadsheet_safe(c))).map_err(csv_err)?;
            n += 1;
            Ok(())
        },
    )?;
    w.flush().map_err(|e| csv_err(e.into()))?;
    Ok(n)
}

/// A cell as a spreadsheet will show it, not run it: values from senders (a patient name, an AE
/// title) that start like a formula get a leading apostrophe (OWASP "CSV injection").
pub(crate) fn spreadsheet_safe(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cell_that_starts_like_a_formula_is_shown_not_run() {
        assert_eq!(super::spreadsheet_safe("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(super::spreadsheet_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(super::spreadsheet_safe("DOE^JOHN"), "DOE^JOHN");
    }
}
