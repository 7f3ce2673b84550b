//! `index migrate --to postgres`: a node's SQLite index copied whole into an empty PostgreSQL
//! schema, in one transaction: mappings and the patient counter (the same patient keeps the same
//! pseudonym, and numbering goes on where it stopped), audit, upload and export states. The
//! instances become the migrating node's, whose disk holds their files.

use std::path::Path;

use super::db::{args, Db, DbError, Location, Value};
use super::{Index, IndexError};

/// Each table as SQLite is read and PostgreSQL is written; ids keep their values, so that the
/// export queues (which follow `instances.rowid`) and the audit's order carry over.
const TABLES: &[(&str, &str, &str)] = &[
    (
        "meta",
        "SELECT key, value FROM meta",
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ),
    (
        "patients",
        "SELECT patient_id, anon_patient_id, patient_name, sex, birth_date, created_at FROM patients",
        "INSERT INTO patients(patient_id, anon_patient_id, patient_name, sex, birth_date, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (patient_id) DO NOTHING",
    ),
    (
        "studies",
        "SELECT study_uid, anon_study_uid, patient_id, accession, anon_accession, date_offset, study_date, source
         FROM studies",
        "INSERT INTO studies(study_uid, anon_study_uid, patient_id, accession, anon_accession, date_offset,
                             study_date, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    ),
    (
        "series",
        "SELECT series_uid, anon_series_uid, study_uid, modality FROM series",
        "INSERT INTO series(series_uid, anon_series_uid, study_uid, modality) VALUES (?1, ?2, ?3, ?4)",
    ),
    (
        "instances",
        "SELECT rowid, sop_uid, anon_sop_uid, series_uid, sop_class_uid, path, size, state, stored_at, attempts,
                last_error, next_try, etag, uploaded_at, generation, digest FROM instances ORDER BY rowid",
        "INSERT INTO instances(rowid, sop_uid, anon_sop_uid, series_uid, sop_class_uid, path, size, state,
                               stored_at, attempts, last_error, next_try, etag, uploaded_at, generation, digest,
                               node)
         OVERRIDING SYSTEM VALUE
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    ),
    (
        "audit",
        "SELECT id, at, association, calling_ae, peer, anon_study_uid, anon_series_uid, anon_sop_uid, status,
                reason, bytes, pixels FROM audit ORDER BY id",
        "INSERT INTO audit(id, at, association, calling_ae, peer, anon_study_uid, anon_series_uid, anon_sop_uid,
                           status, reason, bytes, pixels)
         OVERRIDING SYSTEM VALUE VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    ),
    (
        "seen_phrases",
        "SELECT patient_id, kind, phrase FROM seen_phrases",
        "INSERT INTO seen_phrases(patient_id, kind, phrase) VALUES (?1, ?2, ?3)",
    ),
    ("uid_map", "SELECT phi_uid, anon_uid FROM uid_map", "INSERT INTO uid_map(phi_uid, anon_uid) VALUES (?1, ?2)"),
    (
        "deliveries",
        "SELECT destination, anon_sop_uid, instance_rowid, state, attempts, last_error, next_try, sent_at
         FROM deliveries",
        "INSERT INTO deliveries(destination, anon_sop_uid, instance_rowid, state, attempts, last_error, next_try,
                                sent_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    ),
];

/// What the database holds besides the default patient: a migration copies into nothing else.
const HELD: &str =
    "SELECT (SELECT COUNT(*) FROM patients WHERE patient_id <> '') + (SELECT COUNT(*) FROM studies)
                         + (SELECT COUNT(*) FROM instances) + (SELECT COUNT(*) FROM audit)
                         + (SELECT COUNT(*) FROM uid_map)";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the target is not PostgreSQL: set index.backend: postgres (with index.url_env or index.url_file) in the configuration, then migrate")]
    NotPostgres,
    #[error("{0} already holds an archive ({1} rows): a migration copies into an empty schema only; nothing was copied")]
    NotEmpty(String, u64),
    #[error("no SQLite index at {0}")]
    NoSource(String),
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl Index {
    /// Copy the SQLite index at `source` into this PostgreSQL index (the caller checks that it is
    /// one: `MigrateError::NotPostgres`), which must be empty; the
    /// instances become this node's. `progress` hears each table's name and row count as it is
    /// done. All or nothing: one transaction. Returns the rows copied per table.
    pub fn import_sqlite(
        &self,
        source: &Path,
        mut progress: impl FnMut(&str, u64) + Send + 'static,
    ) -> Result<Vec<(&'static str, u64)>, MigrateError> {
        if !source.exists() {
            return Err(MigrateError::NoSource(source.display().to_string()));
        }
        let (source, target_name, node) = (source.to_path_buf(), self.location().to_string(), self.node());
        self.call(move |to| {
            let held: u64 = to.query_one(HELD, args![])?.get(0)?;
            if held > 0 {
                return Ok(Err(MigrateError::NotEmpty(target_name, held)));
            }
            let mut from = Db::reader(&Location::Sqlite(source))?;
            let mut copied = Vec::new();
            for (table, select, insert) in TABLES {
                let mut n = 0;
                from.query_each(select, args![], |row| -> Result<(), DbError> {
                    let mut values = row.into_values();
                    if *table == "instances" {
                        values.push(Value::from(&node));
                    }
                    to.execute(insert, &values)?;
                    n += 1;
                    Ok(())
                })?;
                progress(table, n);
                copied.push((*table, n));
            }
            // New rows continue after the copied ids.
            to.batch(
                "SELECT setval(pg_get_serial_sequence('instances', 'rowid'), COALESCE(MAX(rowid), 0) + 1, false)
                 FROM instances;
                 SELECT setval(pg_get_serial_sequence('audit', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM audit",
            )?;
            Ok(Ok(copied))
        })?
    }
}
