//! The PHI index schema. Original values live only here (and in quarantine).

/// Columns added after the first release, with their declarations, for indexes created before.
pub const ADDED_INSTANCE_COLUMNS: &[(&str, &str)] = &[
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("last_error", "TEXT"),
    ("next_try", "TEXT"),
    ("etag", "TEXT"),
    ("uploaded_at", "TEXT"),
    ("generation", "INTEGER NOT NULL DEFAULT 0"),
    ("digest", "TEXT"),
    ("node", "TEXT NOT NULL DEFAULT ''"),
];

/// Columns added to `audit` since its first version.
pub const ADDED_AUDIT_COLUMNS: &[(&str, &str)] = &[("pixels", "TEXT")];

pub const SCHEMA: &str = r#"
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = ON;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS patients (
    patient_id      TEXT PRIMARY KEY,          -- stripped PHI PatientID; '' is the default patient
    anon_patient_id TEXT NOT NULL UNIQUE,
    patient_name    TEXT,
    sex             TEXT,
    birth_date      TEXT,
    created_at      TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS studies (
    study_uid      TEXT PRIMARY KEY,
    anon_study_uid TEXT NOT NULL,
    patient_id     TEXT NOT NULL REFERENCES patients(patient_id),
    accession      TEXT,
    anon_accession TEXT,
    date_offset    INTEGER,                    -- NULL: no PatientID, dates became 20000101
    study_date     TEXT,
    source         TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS series (
    series_uid      TEXT PRIMARY KEY,
    anon_series_uid TEXT NOT NULL,
    study_uid       TEXT NOT NULL REFERENCES studies(study_uid),
    modality        TEXT
);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_uid);

CREATE TABLE IF NOT EXISTS instances (
    sop_uid       TEXT PRIMARY KEY,
    anon_sop_uid  TEXT NOT NULL,
    series_uid    TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid TEXT NOT NULL,
    path          TEXT NOT NULL,               -- relative to the public directory
    size          INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT 'queued',   -- queued, uploading, uploaded, failed
    stored_at     TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    next_try      TEXT,                             -- failed: not before this time
    etag          TEXT,
    uploaded_at   TEXT,
    generation    INTEGER NOT NULL DEFAULT 0,       -- grows with each re-send that changed the file
    digest        TEXT,                             -- SHA-256 of the anonymized file (hex)
    node          TEXT NOT NULL DEFAULT ''          -- the node that stored it: '' in a node's own index
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_by_state ON instances(state, stored_at);
CREATE INDEX IF NOT EXISTS instances_by_anon ON instances(anon_sop_uid);
CREATE INDEX IF NOT EXISTS instances_by_path ON instances(path);

-- The audit trail: one row per instance outcome at the SCP. Anonymized UIDs, our status and
-- reason, the peer's AE title and address; no PHI.
CREATE TABLE IF NOT EXISTS audit (
    id              INTEGER PRIMARY KEY,
    at              TEXT NOT NULL,
    association     TEXT NOT NULL,
    calling_ae      TEXT NOT NULL,
    peer            TEXT NOT NULL,
    anon_study_uid  TEXT,                      -- NULL unless stored
    anon_series_uid TEXT,
    anon_sop_uid    TEXT,
    status          TEXT NOT NULL,             -- the C-STORE response status, 0xNNNN
    reason          TEXT,                      -- the quarantine reason, when quarantined
    bytes           INTEGER NOT NULL,          -- data set bytes received
    pixels          TEXT                       -- what was masked in the pixels: counts, never words
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit(at);

-- Every UID replaced, at any depth. No UNIQUE on anon_uid: mappings are deterministic, and a UID
-- first met nested in a sequence must not block the same UID arriving later as a study (RSNA bug).
-- WITHOUT ROWID: the rows live in the primary key's own tree, so each new UID writes one page,
-- not two, and is stored once (indexes made before keep their rowid table, which works the same).
-- Person names (raw PN values, kind 0), whereabouts (institutions, addresses, telephone numbers,
-- kind 1) and institutions (names and addresses, kind 2) every stored instance stated, by patient:
-- the scrub looks for kinds 0 and 1 in the free text of the patient's other instances, and for
-- kind 2 in every instance's, which may not state them themselves.
CREATE TABLE IF NOT EXISTS seen_phrases (
    patient_id TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    phrase     BLOB NOT NULL,
    PRIMARY KEY (patient_id, kind, phrase)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS uid_map (
    phi_uid  TEXT PRIMARY KEY,
    anon_uid TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// The version of [`PG_SCHEMA`]; a database with a higher one was made by a newer node.
pub const PG_VERSION: i64 = 1;

/// Made first, so that the version can be read before anything else.
pub const PG_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)";

/// The same tables in PostgreSQL: integers are `BIGINT` (what the code reads and writes), blobs
/// `BYTEA`, and `instances` and `audit` get the ascending ids SQLite gives every row: `rowid` is
/// the order in which instances were stored (their batches commit one after another), and what a
/// destination's queue follows.
pub const PG_SCHEMA: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE patients (
    patient_id      TEXT PRIMARY KEY,
    anon_patient_id TEXT NOT NULL UNIQUE,
    patient_name    TEXT,
    sex             TEXT,
    birth_date      TEXT,
    created_at      TEXT NOT NULL
);

CREATE TABLE studies (
    study_uid      TEXT PRIMARY KEY,
    anon_study_uid TEXT NOT NULL,
    patient_id     TEXT NOT NULL REFERENCES patients(patient_id),
    accession      TEXT,
    anon_accession TEXT,
    date_offset    BIGINT,
    study_date     TEXT,
    source         TEXT NOT NULL
);

CREATE TABLE series (
    series_uid      TEXT PRIMARY KEY,
    anon_series_uid TEXT NOT NULL,
    study_uid       TEXT NOT NULL REFERENCES studies(study_uid),
    modality        TEXT
);
CREATE INDEX series_by_study ON series(study_uid);

CREATE TABLE instances (
    rowid         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    sop_uid       TEXT PRIMARY KEY,
    anon_sop_uid  TEXT NOT NULL,
    series_uid    TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid TEXT NOT NULL,
    path          TEXT NOT NULL,
    size          BIGINT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'queued',
    stored_at     TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT,
    next_try      TEXT,
    etag          TEXT,
    uploaded_at   TEXT,
    generation    BIGINT NOT NULL DEFAULT 0,
    digest        TEXT,
    node          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX instances_by_series ON instances(series_uid);
CREATE INDEX instances_by_state ON instances(node, state, stored_at);
CREATE INDEX instances_by_anon ON instances(anon_sop_uid);
CREATE INDEX instances_by_path ON instances(path);

CREATE TABLE audit (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              TEXT NOT NULL,
    association     TEXT NOT NULL,
    calling_ae      TEXT NOT NULL,
    peer            TEXT NOT NULL,
    anon_study_uid  TEXT,
    anon_series_uid TEXT,
    anon_sop_uid    TEXT,
    status          TEXT NOT NULL,
    reason          TEXT,
    bytes           BIGINT NOT NULL,
    pixels          TEXT
);
CREATE INDEX audit_by_time ON audit(at);

CREATE TABLE seen_phrases (
    patient_id TEXT NOT NULL,
    kind       BIGINT NOT NULL,
    phrase     BYTEA NOT NULL,
    PRIMARY KEY (patient_id, kind, phrase)
);

CREATE TABLE uid_map (
    phi_uid  TEXT PRIMARY KEY,
    anon_uid TEXT NOT NULL
);

CREATE TABLE deliveries (
    destination    TEXT NOT NULL,
    anon_sop_uid   TEXT NOT NULL,
    instance_rowid BIGINT NOT NULL,
    state          TEXT NOT NULL DEFAULT 'queued',
    attempts       BIGINT NOT NULL DEFAULT 0,
    last_error     TEXT,
    next_try       TEXT,
    sent_at        TEXT,
    PRIMARY KEY (destination, anon_sop_uid)
);
CREATE INDEX deliveries_by_state ON deliveries(destination, state, instance_rowid);
CREATE INDEX deliveries_by_rowid ON deliveries(destination, instance_rowid);
"#;

/// The advisory lock of a project's schema: held by a node while it makes the schema, and by
/// each write batch while it runs.
pub fn lock_key(schema: &str) -> String {
    format!("hashtext({})", super::db::quote_literal(schema))
}
