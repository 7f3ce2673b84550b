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
    digest        TEXT                              -- SHA-256 of the anonymized file (hex)
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
