//! The persistent PHI index (SQLite, WAL): patients, studies, series, instances and the UID map.
//!
//! One write connection, shared by combining: a caller queues its request and takes the
//! connection; whoever holds it runs everything queued by then in one transaction (group commit),
//! so under load many requests share a commit, and alone a caller runs its own on its own thread,
//! with no hand-off to a writer thread and back. Each caller gets its answer after the commit.

mod audit;
pub mod db;
mod deliveries;
mod export;
mod migrate;
mod presence;
mod queue;
mod schema;
mod stats;

use std::any::Any;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::anonymize::Identity;
use db::{args, Db, DbError, Value};

pub use audit::{export_audit, export_mapping, AuditRecord, Caller, PATIENT_ID_MAPPING, UID_MAPPING};
pub use db::Location;
pub use deliveries::{Delivery, DeliveryRecord, DestinationStatus};
pub use export::{backup, export_csv, ExportError};
pub use migrate::MigrateError;
pub use presence::Presence;
pub use queue::{Pending, QueueStatus, StuckItem};
pub use stats::{Counts, Reader};

/// Patient pseudonyms remembered in memory; past this many the memory starts again empty.
const KNOWN_PATIENTS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The instance contradicts what the index already knows: a quarantine reason.
    #[error("integrity conflict: {0}")]
    Conflict(String),
    #[error("the index at {path} belongs to site {stored:?}, but project.site_id is {configured:?}; site ids cannot change")]
    SiteMismatch { path: String, stored: String, configured: String },
    #[error("the index at {path} was built with another project secret (fingerprint {stored}, the configured secret's is {configured}): every patient, study and UID would get new pseudonyms and the archive would split in two. Configure the secret this index was built with, or give a new archive a new storage directory")]
    SecretMismatch { path: String, stored: String, configured: String },
    #[error("the index at {path} has schema version {found}; this node knows versions up to {known}: a newer node made it")]
    NewerSchema { path: String, found: i64, known: i64 },
    #[error("PHI index: {0}")]
    Db(#[from] DbError),
    #[error("cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("the PHI index writer has stopped")]
    Closed,
    /// A bug met while running a request; only that request fails.
    #[error("internal error in a PHI index request: {0}")]
    Panicked(String),
}

impl From<rusqlite::Error> for IndexError {
    fn from(e: rusqlite::Error) -> Self {
        IndexError::Db(e.into())
    }
}

/// What the index records about an instance's patient, study and series before it is anonymized:
/// the instance's [`Identity`] (through `Deref`) and the pseudonyms of its study and series.
#[derive(Debug, Clone)]
pub struct Capture {
    pub original: Identity,
    /// `Some` in keyed mode (stateless pseudonym); `None` lets the index number the patient.
    pub anon_patient_id: Option<String>,
    pub anon_study_uid: String,
    pub anon_accession: Option<String>,
    pub date_offset: Option<i32>,
    /// Where the instance came from: a file path or `AE@address`.
    pub source: String,
    pub anon_series_uid: String,
    /// What the instance states that other instances' free text may name; recorded at commit.
    pub phrases: Phrases,
}

impl std::ops::Deref for Capture {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        &self.original
    }
}

/// What an instance states that other instances' free text may name, as raw values: person
/// names and whereabouts (institutions, addresses, telephone numbers) of its patient, and the
/// institutions (names and addresses) of the site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phrases {
    pub names: Vec<Vec<u8>>,
    pub places: Vec<Vec<u8>>,
    pub institutions: Vec<Vec<u8>>,
}

/// Rows of `seen_phrases` by kind.
const NAME: i64 = 0;
const PLACE: i64 = 1;
const INSTITUTION: i64 = 2;

/// An instance whose anonymized file is durable, with every UID it mapped.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub sop_uid: String,
    pub anon_sop_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub path: String,
    pub size: u64,
    /// SHA-256 of the anonymized file, in hex.
    pub digest: String,
    pub uid_map: Vec<(String, String)>,
}

/// A unit of work: runs inside a batch transaction and says whether it succeeded; its reply goes
/// out once the batch has committed (or failed to). A batch that cannot run (the database is
/// unreachable) gives each of its jobs the error instead of the connection.
type Job = Box<dyn FnOnce(Result<&mut Db, &DbError>) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Option<&DbError>) + Send>;

/// A handle on the index; clone it freely.
#[derive(Clone)]
pub struct Index {
    writer: Arc<Writer>,
    site_id: String,
    /// Committed patient pseudonyms (PHI PatientID to pseudonym). A mapping never changes once
    /// committed, so this is never stale, even with other nodes writing; it spares an instance
    /// of a known patient the round trip that would otherwise have to precede its anonymization.
    known_patients: Arc<Mutex<HashMap<String, String>>>,
    /// What earlier instances stated (see [`Index::seen`]).
    phrases: Arc<Phrasebook>,
}

/// Where [`Index::seen`] finds what earlier instances stated.
enum Phrasebook {
    /// A node's own index: the names and places recorded for each patient asked about, and the
    /// site's institutions, read once at open; kept up to date by this node's commits.
    Remembered(Mutex<Seen>),
    /// A shared database, where other nodes add phrases this one would not hear of: read each
    /// time, on a session of its own, outside the writer's batches and their lock.
    Shared { session: Mutex<Db>, location: Box<Location> },
}

#[derive(Default)]
struct Seen {
    /// By PHI PatientID: names, places.
    patients: HashMap<String, [Vec<Vec<u8>>; 2]>,
    institutions: Vec<Vec<u8>>,
}

/// The write side, shared by every handle; closed when the last handle goes.
struct Writer {
    /// Requests waiting for the next batch.
    queue: Mutex<Vec<Job>>,
    /// Whoever holds it runs the queued requests.
    conn: Mutex<Db>,
    /// Where to connect again when PostgreSQL closed the connection (a restart, a failover).
    location: Location,
    /// Dropped with the writer: the checkpoint thread (SQLite) then stops.
    _stop_checkpoints: Option<mpsc::Sender<()>>,
}

/// The last handle closes the index: everything in the WAL goes into `index.db`, and the WAL is
/// cut to nothing, so a copy of `index.db` alone made after a clean stop is the whole index.
impl Drop for Writer {
    fn drop(&mut self) {
        let Db::Sqlite(conn) = self.conn.get_mut().unwrap_or_else(|p| p.into_inner()) else { return };
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
            Ok(0) => {}
            Ok(_) => tracing::warn!(
                "the index's last checkpoint was blocked by a reader; index.db needs its -wal file"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "the index's last checkpoint failed; index.db needs its -wal file")
            }
        }
    }
}

impl Writer {
    /// Run queued requests until none is left, unless another thread is doing it: that one then
    /// takes ours too. Whoever lets go of the connection looks at the queue once more, so a
    /// request queued just as a batch ended is never left behind.
    fn combine(&self) {
        loop {
            let mut conn = match self.conn.try_lock() {
                Ok(conn) => conn,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                let batch = std::mem::take(&mut *lock(&self.queue));
                if batch.is_empty() {
                    break;
                }
                run_batch(&mut conn, &self.location, batch);
            }
            drop(conn);
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}

/// The text a panic carried, if it carried one.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// A lock whose holder panicked still guards consistent data: SQLite rolled back what it did.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Identity of the project the index belongs to, checked every time it opens.
#[derive(Debug, Clone)]
pub struct Owner {
    pub site_id: String,
    /// The pseudonym of the patient with no PatientID.
    pub default_patient_id: String,
    /// Keyed pseudonyms: the fingerprint of the project secret they are made with.
    pub secret_fingerprint: Option<String>,
}

impl Owner {
    /// The owner for a site: the default patient is `<site>-000000` in both pseudonym modes.
    pub fn for_site(site_id: &str) -> Owner {
        Owner {
            site_id: site_id.to_string(),
            default_patient_id: crate::anonymize::Rsna::numbered_patient_id(site_id, 0),
            secret_fingerprint: None,
        }
    }

    /// The owner for a site whose pseudonyms are keyed with `secret`.
    pub fn keyed(site_id: &str, secret: &[u8]) -> Owner {
        Owner {
            secret_fingerprint: Some(crate::anonymize::Keyed::fingerprint(secret)),
            ..Owner::for_site(site_id)
        }
    }
}

/// The writer checkpoints itself once the WAL holds this many pages (4 MiB of 4 KiB pages).
const WAL_PAGES: i64 = 1000;
/// A WAL that has grown past this is truncated back to it when it starts over.
const WAL_BYTES_KEPT: i64 = 16 << 20;

/// How often the WAL is copied back into the database, off the writer's path.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Index {
    /// Open, creating it if need be, the SQLite index at `path`.
    pub fn open(path: &Path, owner: &Owner) -> Result<Index, IndexError> {
        Index::open_at(&Location::Sqlite(path.to_path_buf()), owner)
    }

    /// Open, creating or migrating its schema if need be, the index at `location`.
    pub fn open_at(location: &Location, owner: &Owner) -> Result<Index, IndexError> {
        let (mut conn, stop_checkpoints) = match location {
            Location::Sqlite(path) => open_sqlite(path, owner)?,
            Location::Postgres { url, schema, tls, .. } => {
                (open_postgres(Db::postgres(url, schema, tls.as_ref())?, schema, owner, location)?, None)
            }
        };
        let phrases = match location {
            Location::Postgres { .. } => Phrasebook::Shared {
                session: Mutex::new(Db::reader(location)?),
                location: Box::new(location.clone()),
            },
            Location::Sqlite(_) => {
                let institutions = phrases_of_kind(&mut conn, INSTITUTION)?;
                Phrasebook::Remembered(Mutex::new(Seen { patients: HashMap::new(), institutions }))
            }
        };
        let writer = Writer {
            queue: Mutex::default(),
            conn: Mutex::new(conn),
            location: location.clone(),
            _stop_checkpoints: stop_checkpoints,
        };
        Ok(Index {
            writer: Arc::new(writer),
            site_id: owner.site_id.clone(),
            known_patients: Arc::default(),
            phrases: Arc::new(phrases),
        })
    }

    /// The id stamped on the instances this node stores; its queues claim only those.
    fn node(&self) -> String {
        self.writer.location.node().to_string()
    }

    /// Where the index is.
    fn location(&self) -> &Location {
        &self.writer.location
    }

    /// Run `f` in the next batch transaction and return its result once that batch is committed.
    /// A failing `f` rolls back only its own changes. Blocks the calling thread.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                // A bug that panics fails this request alone; the batch and the combining thread go on.
                Ok(conn) => {
                    let done = catch_unwind(AssertUnwindSafe(|| f(&mut *conn)))
                        .unwrap_or_else(|payload| Err(IndexError::Panicked(panic_message(&*payload))));
                    // The writes a job deferred are its own: sent before it ends, their failure
                    // its failure, or dropped with it.
                    match done {
                        Ok(value) => conn.flush().map(|()| value).map_err(IndexError::from),
                        Err(e) => {
                            conn.discard();
                            Err(e)
                        }
                    }
                }
                Err(e) => Err(IndexError::Db(DbError::Commit(e.to_string()))),
            };
            let ok = result.is_ok();
            let send: Reply = Box::new(move |commit_failure| {
                let result = match commit_failure {
                    None => result,
                    Some(e) => result.and(Err(IndexError::Db(DbError::Commit(e.to_string())))),
                };
                // A caller that gave up waiting has dropped its receiver; nothing to tell it.
                let _ = reply.send(result);
            });
            (ok, send)
        });
        lock(&self.writer.queue).push(job);
        self.writer.combine();
        answer.recv().map_err(|_| IndexError::Closed)?
    }

    /// The names and places earlier instances of `patient_id` stated, and the institutions any
    /// instance stated: one round trip the first time a patient is asked about in this process
    /// (every time on a shared database).
    pub fn seen(&self, patient_id: &str) -> Result<Phrases, IndexError> {
        let memory = match &*self.phrases {
            Phrasebook::Remembered(memory) => memory,
            Phrasebook::Shared { session, location } => {
                return lock(session).reconnecting(location, |c| phrases_stated(c, patient_id));
            }
        };
        let cached = lock(memory).patients.get(patient_id).cloned();
        let [names, places] = match cached {
            Some(known) => known,
            None => {
                let id = patient_id.to_string();
                let known =
                    self.call(move |c| Ok([phrases_of(c, &id, NAME)?, phrases_of(c, &id, PLACE)?]))?;
                let mut seen = lock(memory);
                if seen.patients.len() >= KNOWN_PATIENTS {
                    seen.patients.clear();
                }
                seen.patients.entry(patient_id.to_string()).or_insert(known).clone()
            }
        };
        Ok(Phrases { names, places, institutions: lock(memory).institutions.clone() })
    }

    /// Add what a committed instance stated to the memory of [`Index::seen`].
    fn learn(&self, patient_id: &str, phrases: &Phrases) {
        fn add(known: &mut Vec<Vec<u8>>, new: &[Vec<u8>]) {
            for v in new {
                if !known.contains(v) {
                    known.push(v.clone());
                }
            }
        }
        let Phrasebook::Remembered(memory) = &*self.phrases else { return };
        let mut seen = lock(memory);
        if let Some([names, places]) = seen.patients.get_mut(patient_id) {
            add(names, &phrases.names);
            add(places, &phrases.places);
        }
        add(&mut seen.institutions, &phrases.institutions);
    }

    /// The pseudonym of a patient already committed, if this process has seen it.
    pub fn known_patient(&self, patient_id: &str) -> Option<String> {
        self.known_patients.lock().ok()?.get(patient_id).cloned()
    }

    /// Record patient, study and series; return the patient's pseudonym. Fails with `Conflict` when
    /// the instance contradicts earlier ones (a study under two patients, ...).
    pub fn capture(&self, capture: Capture) -> Result<String, IndexError> {
        let site_id = self.site_id.clone();
        let patient_id = capture.patient_id.clone();
        let anon = self.call(move |c| Ok(self::capture(c, &capture, &site_id)?.anon_patient_id))?;
        self.remember(patient_id, &anon);
        Ok(anon)
    }

    /// Everything about one stored instance in one transaction: its patient, study and series
    /// (checked against what the index knows, as [`Index::capture`] does), its instance row and
    /// UID mappings, and its audit row. The patient's pseudonym must be `patient_pseudonym`, the
    /// one the file was written with; otherwise nothing is recorded (`Conflict`).
    pub fn commit(
        &self,
        capture: Capture,
        record: InstanceRecord,
        audit: Option<AuditRecord>,
        patient_pseudonym: &str,
    ) -> Result<Committed, IndexError> {
        let site_id = self.site_id.clone();
        let patient_id = capture.patient_id.clone();
        let phrases = capture.phrases.clone();
        let expected = patient_pseudonym.to_string();
        let node = self.node();
        let committed = self.call(move |c| {
            let captured = self::capture(c, &capture, &site_id)?;
            if captured.anon_patient_id != expected {
                // Mappings never change once committed: another writer on this index broke that.
                return Err(IndexError::Conflict(
                    "the patient's pseudonym in the index is not the one the instance was written with"
                        .into(),
                ));
            }
            self::record(c, &node, &record, captured.previous.as_ref())?;
            remember_phrases(c, &capture.patient_id, &capture.phrases)?;
            let audit_row = match &audit {
                Some(a) => Some(audit::insert(c, a)?),
                None => None,
            };
            Ok(Committed {
                sop_uid: record.sop_uid.clone(),
                replaced: captured.previous.is_some(),
                audit_row,
            })
        })?;
        self.learn(&patient_id, &phrases);
        self.remember(patient_id, patient_pseudonym);
        Ok(committed)
    }

    /// Take back what [`Index::commit`] recorded for an instance that then failed: its audit row
    /// (the caller audits the real outcome), and, if its file never reached `public/`, its
    /// instance row (or, if an earlier version of the file is still there, the row is made to
    /// describe that file again). `on_disk` is the size of the file at the instance's path, if any.
    pub fn undo(
        &self,
        committed: Committed,
        published: bool,
        on_disk: Option<u64>,
    ) -> Result<(), IndexError> {
        self.call(move |c| {
            if let Some(id) = committed.audit_row {
                c.execute("DELETE FROM audit WHERE id = ?1", args![id])?;
            }
            if !published {
                match on_disk {
                    Some(size) if committed.replaced => {
                        // The file on disk is the earlier version, whose digest the row no longer
                        // has: none, so that no re-send is taken for the bytes already delivered.
                        c.execute(
                            "UPDATE instances SET size = ?2, digest = NULL WHERE sop_uid = ?1",
                            args![&committed.sop_uid, size],
                        )?;
                    }
                    _ => forget(c, &committed.sop_uid)?,
                }
            }
            Ok(())
        })
    }

    /// Forget instances still to be delivered whose file is not in `public`: a crash between
    /// their commit and the rename into place (they were never acknowledged). Returns how many,
    /// or, when more than `at_most` are missing (more than a crash can leave: `public/` not
    /// mounted, another storage directory), `Err` with how many, and nothing is forgotten.
    pub fn forget_unpublished(
        &self,
        public: &Path,
        at_most: usize,
    ) -> Result<Result<usize, usize>, IndexError> {
        let (public, node) = (public.to_path_buf(), self.node());
        self.call(move |c| {
            let pending: Vec<(String, String)> = c
                .query(
                    "SELECT sop_uid, path FROM instances WHERE state <> 'uploaded' AND node = ?1",
                    args![node],
                )?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<_, DbError>>()?;
            let missing: Vec<String> = pending
                .into_iter()
                .filter(|(_, path)| !public.join(path).exists())
                .map(|(sop_uid, _)| sop_uid)
                .collect();
            if missing.len() > at_most {
                return Ok(Err(missing.len()));
            }
            for sop_uid in &missing {
                forget(c, sop_uid)?;
            }
            Ok(Ok(missing.len()))
        })
    }

    /// The path of every instance of this node the index knows, relative to `public/`.
    pub fn paths(&self) -> Result<Vec<String>, IndexError> {
        let node = self.node();
        self.call(move |c| {
            let rows = c.query("SELECT path FROM instances WHERE node = ?1", args![node])?;
            Ok(rows.iter().map(|r| r.get(0)).collect::<Result<_, _>>()?)
        })
    }

    /// Never hand out a patient number up to `highest` again (it is on a folder already).
    pub fn reserve_patient_numbers(&self, highest: u64) -> Result<(), IndexError> {
        let highest = i64::try_from(highest).unwrap_or(i64::MAX);
        self.call(move |c| {
            c.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'last_patient_number'
                 AND CAST(value AS BIGINT) < CAST(?1 AS BIGINT)",
                args![highest.to_string()],
            )?;
            Ok(())
        })
    }

    fn remember(&self, patient_id: String, anon: &str) {
        if let Ok(mut known) = self.known_patients.lock() {
            if known.len() >= KNOWN_PATIENTS {
                known.clear();
            }
            known.insert(patient_id, anon.to_string());
        }
    }

    /// Let go of this handle. Every request it made is committed already; the connection closes
    /// with the last handle.
    pub fn close(self) {}
}

/// The SQLite index: WAL, a checkpoint thread of its own, its schema made or migrated.
fn open_sqlite(path: &Path, owner: &Owner) -> Result<(Db, Option<mpsc::Sender<()>>), IndexError> {
    if let Some(dir) = path.parent() {
        crate::file_modes::missing_dirs(dir)
            .map_err(|source| IndexError::Dir { path: dir.display().to_string(), source })?;
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // The index's statements, and one insert per row count up to db::ROWS_PER_INSERT.
    conn.set_prepared_statement_cache_capacity(128);
    conn.execute_batch(schema::SCHEMA)?;
    conn.execute_batch(deliveries::SCHEMA)?;
    migrate(&conn)?;
    // WAL with NORMAL never corrupts; a commit becomes durable when the WAL file reaches the
    // disk, which the caller's durability barrier (syncfs) or closing the index ensures.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run every second on a connection of their own, so commits rarely wait for
    // one to copy the WAL back. But a passive checkpoint under constant commits never catches
    // up with the end of the WAL, and the WAL only starts over once it has: so the writer
    // still checkpoints itself past WAL_PAGES (copying what the background left, between
    // two batches, when nothing else is writing), and the file is cut back after.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", WAL_BYTES_KEPT)?;
    let mut db = Db::Sqlite(conn);
    // IMMEDIATE: take the write lock first (waiting on busy_timeout). A deferred read that turns
    // into a write fails at once with "database is locked" when another process (the running
    // node, beside `queue retry`) commits in between, and no busy handler helps with that.
    init(&mut db, "BEGIN IMMEDIATE", &path.display().to_string(), owner)?;
    let checkpoints = rusqlite::Connection::open(path)?;
    checkpoints.busy_timeout(std::time::Duration::from_secs(30))?;
    checkpoints.pragma_update(None, "synchronous", "NORMAL")?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("phi-checkpoint".into())
        .spawn(move || checkpoint_loop(checkpoints, stopped))
        .map_err(|source| IndexError::Dir { path: "phi-checkpoint thread".into(), source })?;
    Ok((db, Some(stop)))
}

/// The index in a PostgreSQL schema, made or migrated under a session lock, so that two nodes
/// starting at once do not both create it.
fn open_postgres(mut db: Db, schema: &str, owner: &Owner, location: &Location) -> Result<Db, IndexError> {
    db.batch(&format!("SELECT pg_advisory_lock({})", schema::lock_key(schema)))?;
    let made = (|| -> Result<(), IndexError> {
        let version: Option<i64> = {
            db.batch(schema::PG_VERSION_TABLE)?;
            db.query_opt("SELECT MAX(version) FROM schema_version", args![])?
                .map(|r| r.get(0))
                .transpose()?
                .flatten()
        };
        match version {
            Some(found) if found > schema::PG_VERSION => {
                return Err(IndexError::NewerSchema {
                    path: location.to_string(),
                    found,
                    known: schema::PG_VERSION,
                })
            }
            Some(_) => {}
            None => {
                db.batch(schema::PG_SCHEMA)?;
                db.execute("INSERT INTO schema_version(version) VALUES (?1)", args![schema::PG_VERSION])?;
            }
        }
        init(&mut db, "BEGIN", &location.to_string(), owner)
    })();
    let unlocked = db.batch(&format!("SELECT pg_advisory_unlock({})", schema::lock_key(schema)));
    made?;
    unlocked?;
    Ok(db)
}

/// Add columns that an index created by an earlier version lacks.
fn migrate(conn: &rusqlite::Connection) -> Result<(), IndexError> {
    for (table, added) in
        [("instances", schema::ADDED_INSTANCE_COLUMNS), ("audit", schema::ADDED_AUDIT_COLUMNS)]
    {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let have: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        for (column, decl) in added {
            if !have.iter().any(|c| c == column) {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
            }
        }
    }
    Ok(())
}

pub(crate) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Check (or, in a new index, record) the site and the secret's fingerprint, and make the
/// default patient; `begin` starts a transaction that writes.
fn init(db: &mut Db, begin: &str, location: &str, owner: &Owner) -> Result<(), IndexError> {
    db.batch(begin)?;
    let done = init_in_transaction(db, location, owner);
    match done {
        Ok(()) => db.batch("COMMIT")?,
        Err(_) => {
            let _ = db.batch("ROLLBACK");
        }
    }
    done
}

fn init_in_transaction(db: &mut Db, location: &str, owner: &Owner) -> Result<(), IndexError> {
    let meta = |db: &mut Db, key: &'static str| -> Result<Option<String>, IndexError> {
        Ok(db
            .query_opt("SELECT value FROM meta WHERE key = ?1", args![key])?
            .map(|r| r.get(0))
            .transpose()?)
    };
    match meta(db, "site_id")? {
        Some(stored) if stored != owner.site_id => {
            return Err(IndexError::SiteMismatch {
                path: location.to_string(),
                stored,
                configured: owner.site_id.clone(),
            })
        }
        Some(_) => {}
        None => {
            db.execute("INSERT INTO meta(key, value) VALUES ('site_id', ?1)", args![&owner.site_id])?;
            db.execute("INSERT INTO meta(key, value) VALUES ('last_patient_number', '0')", args![])?;
        }
    }
    if let Some(configured) = &owner.secret_fingerprint {
        match meta(db, "secret_fingerprint")? {
            Some(stored) if stored != *configured => {
                return Err(IndexError::SecretMismatch {
                    path: location.to_string(),
                    stored,
                    configured: configured.clone(),
                })
            }
            Some(_) => {}
            None => {
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('secret_fingerprint', ?1)",
                    args![configured],
                )?;
            }
        }
    }
    db.execute(
        "INSERT INTO patients(patient_id, anon_patient_id, created_at) VALUES ('', ?1, ?2)
         ON CONFLICT DO NOTHING",
        args![&owner.default_patient_id, now()],
    )?;
    Ok(())
}

/// Copy the WAL back into the database every [`CHECKPOINT_EVERY`] until the index closes.
fn checkpoint_loop(conn: rusqlite::Connection, stopped: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        // PASSIVE copies what no reader still needs and never waits; the next round does the rest.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint failed; the next one will try again");
        }
    }
}

/// Run a batch in one transaction, each job in its own savepoint so one failure does not undo
/// the others; answer only after the commit. On PostgreSQL the batch first takes the schema's
/// transaction lock: the nodes' batches then commit one after another, as on SQLite, so a
/// patient number is taken by one node at a time and rowids grow in the order of commits.
fn run_batch(db: &mut Db, location: &Location, batch: Vec<Job>) {
    let mut replies = Vec::with_capacity(batch.len());
    // A job leaves `pending` only once the statement before it has run: a failure answers every
    // job still there with the error.
    let mut pending: std::collections::VecDeque<Job> = batch.into();
    let outcome = (|| -> Result<(), DbError> {
        // Each boundary between jobs is one round trip: the end of one job's savepoint and the
        // start of the next (or the commit) go together. The first starts the transaction, on a
        // new session if the last one was closed.
        let begin = match location {
            Location::Sqlite(_) => "BEGIN; SAVEPOINT job".to_string(),
            Location::Postgres { schema, .. } => {
                format!("BEGIN; SELECT pg_advisory_xact_lock({}); SAVEPOINT job", schema::lock_key(schema))
            }
        };
        let mut boundary: Option<String> = None;
        while !pending.is_empty() {
            match boundary.take() {
                Some(statements) => db.batch(&statements)?,
                None => db.reconnecting(location, |db| db.batch(&begin))?,
            }
            let job = pending.pop_front().expect("checked not empty");
            let (ok, reply) = job(Ok(db));
            replies.push(reply);
            let end = if ok { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
            let then = if pending.is_empty() { "COMMIT" } else { "SAVEPOINT job" };
            boundary = Some(format!("{end}; {then}"));
        }
        boundary.map_or(Ok(()), |statements| db.batch(&statements))
    })();
    if let Err(e) = &outcome {
        if !db.is_closed() {
            let _ = db.batch("ROLLBACK");
        }
        replies.extend(pending.drain(..).map(|job| job(Err(e)).1));
    }
    for reply in replies {
        reply(outcome.as_ref().err());
    }
}

/// Check the instance against what the index knows, and record its patient, study and series.
fn capture(tx: &mut Db, c: &Capture, site_id: &str) -> Result<Captured, IndexError> {
    // What the index holds of the patient, the study, the series and the instance, in one round
    // trip; what is new is written with the next one (deferred).
    let held = tx.query_one(
        "SELECT (SELECT patient_id FROM studies WHERE study_uid = ?1),
                (SELECT accession FROM studies WHERE study_uid = ?1),
                (SELECT study_uid FROM series WHERE series_uid = ?2),
                (SELECT series_uid FROM instances WHERE sop_uid = ?3),
                (SELECT digest FROM instances WHERE sop_uid = ?3),
                (SELECT anon_patient_id FROM patients WHERE patient_id = ?4)",
        args![&c.study_uid, &c.series_uid, &c.sop_uid, &c.patient_id],
    )?;
    let anon_patient_id = match held.get(5)? {
        Some(known) => known,
        None => new_patient(tx, c, site_id)?,
    };
    let (study_owner, accession): (Option<String>, Option<String>) = (held.get(0)?, held.get(1)?);
    let (series_study, instance_series): (Option<String>, Option<String>) = (held.get(2)?, held.get(3)?);
    match study_owner {
        Some(pid) if pid != c.patient_id => {
            return Err(IndexError::Conflict("StudyInstanceUID already belongs to another PatientID".into()))
        }
        Some(_) if accession.is_none() && c.accession.is_some() => {
            tx.defer(
                "UPDATE studies SET accession = ?2, anon_accession = ?3 WHERE study_uid = ?1",
                args![&c.study_uid, &c.accession, &c.anon_accession],
            )?;
        }
        Some(_) => {}
        None => {
            tx.defer(
                "INSERT INTO studies(study_uid, anon_study_uid, patient_id, accession, anon_accession,
                                     date_offset, study_date, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                args![
                    &c.study_uid,
                    &c.anon_study_uid,
                    &c.patient_id,
                    &c.accession,
                    &c.anon_accession,
                    c.date_offset,
                    &c.study_date,
                    &c.source
                ],
            )?;
        }
    }
    match series_study {
        Some(s) if s != c.study_uid => {
            return Err(IndexError::Conflict("SeriesInstanceUID already belongs to another study".into()))
        }
        Some(_) => {}
        None => {
            tx.defer(
                "INSERT INTO series(series_uid, anon_series_uid, study_uid, modality) VALUES (?1, ?2, ?3, ?4)",
                args![&c.series_uid, &c.anon_series_uid, &c.study_uid, &c.modality],
            )?;
        }
    }
    let previous = match instance_series {
        Some(s) if s != c.series_uid => {
            return Err(IndexError::Conflict("SOPInstanceUID already belongs to another series".into()))
        }
        Some(_) => Some(Previous { digest: held.get(4)? }),
        None => None,
    };
    Ok(Captured { anon_patient_id, previous })
}

/// What [`capture`] found and recorded.
struct Captured {
    anon_patient_id: String,
    /// The instance is in the index already (it was sent before).
    previous: Option<Previous>,
}

/// An instance's row from before it was sent again.
pub(crate) struct Previous {
    /// Of the file the row describes; `None` where it was not kept.
    pub digest: Option<String>,
}

/// Why a new patient's pseudonym cannot be recorded.
const PSEUDONYM_TAKEN: &str =
    "the pseudonym of this PatientID already belongs to another PatientID in the index \
     (two PatientIDs share a keyed pseudonym, or project.lookup_table gives one to another patient)";

/// Record a patient the index does not know. New patients in rsna mode take the next number from
/// a counter that only grows, so a number is never handed out twice (RSNA's MAX+1 can reuse one);
/// on a shared database the batch's lock makes taking it one node's act at a time.
fn new_patient(tx: &mut Db, c: &Capture, site_id: &str) -> Result<String, IndexError> {
    let anon = match &c.anon_patient_id {
        Some(id) => {
            // A keyed pseudonym is 48 bits of a hash: two PatientIDs can share one, and a lookup
            // table can be edited to give one away. Either is for someone to review, not a write
            // to retry forever.
            if tx.query_opt("SELECT 1 FROM patients WHERE anon_patient_id = ?1", args![id])?.is_some() {
                return Err(IndexError::Conflict(PSEUDONYM_TAKEN.into()));
            }
            id.clone()
        }
        None => {
            let next: i64 = tx
                .query_one(
                    "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT)
                     WHERE key = 'last_patient_number' RETURNING CAST(value AS BIGINT)",
                    args![],
                )?
                .get(0)?;
            crate::anonymize::Rsna::numbered_patient_id(site_id, next as u64)
        }
    };
    tx.defer(
        "INSERT INTO patients(patient_id, anon_patient_id, patient_name, sex, birth_date, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![&c.patient_id, &anon, &c.patient_name, &c.sex, &c.birth_date, now()],
    )?;
    Ok(anon)
}

/// The phrases of one kind recorded for a patient.
fn phrases_of(c: &mut Db, patient_id: &str, kind: i64) -> Result<Vec<Vec<u8>>, DbError> {
    let rows = c.query(
        "SELECT phrase FROM seen_phrases WHERE patient_id = ?1 AND kind = ?2",
        args![patient_id, kind],
    )?;
    rows.iter().map(|r| r.get(0)).collect()
}

/// The names and places `patient_id`'s instances stated and the institutions any instance
/// stated, in one query.
fn phrases_stated(c: &mut Db, patient_id: &str) -> Result<Phrases, IndexError> {
    let rows = c.query(
        "SELECT DISTINCT kind, phrase FROM seen_phrases
         WHERE (patient_id = ?1 AND kind IN (?2, ?3)) OR kind = ?4",
        args![patient_id, NAME, PLACE, INSTITUTION],
    )?;
    let mut phrases = Phrases::default();
    for row in rows {
        let (kind, phrase): (i64, Vec<u8>) = (row.get(0)?, row.get(1)?);
        match kind {
            NAME => phrases.names.push(phrase),
            PLACE => phrases.places.push(phrase),
            _ => phrases.institutions.push(phrase),
        }
    }
    Ok(phrases)
}

/// The phrases of one kind recorded for any patient.
fn phrases_of_kind(c: &mut Db, kind: i64) -> Result<Vec<Vec<u8>>, DbError> {
    let rows = c.query("SELECT DISTINCT phrase FROM seen_phrases WHERE kind = ?1", args![kind])?;
    rows.iter().map(|r| r.get(0)).collect()
}

/// Record the names and places an instance of `patient_id` stated.
fn remember_phrases(tx: &mut Db, patient_id: &str, phrases: &Phrases) -> Result<(), IndexError> {
    let mut rows = Vec::new();
    for (kind, values) in
        [(NAME, &phrases.names), (PLACE, &phrases.places), (INSTITUTION, &phrases.institutions)]
    {
        for v in values {
            rows.extend([Value::from(patient_id), Value::from(kind), Value::from(v)]);
        }
    }
    tx.defer_rows("seen_phrases(patient_id, kind, phrase)", "ON CONFLICT DO NOTHING", 3, &rows)?;
    Ok(())
}

/// What [`Index::commit`] recorded, for [`Index::undo`].
#[derive(Debug, Clone)]
pub struct Committed {
    sop_uid: String,
    /// The instance was in the index before (sent again).
    replaced: bool,
    audit_row: Option<i64>,
}

/// Drop an instance's row and its pending deliveries.
fn forget(c: &mut Db, sop_uid: &str) -> Result<(), IndexError> {
    let anon: Option<String> = c
        .query_opt("SELECT anon_sop_uid FROM instances WHERE sop_uid = ?1", args![sop_uid])?
        .map(|r| r.get(0))
        .transpose()?;
    if let Some(anon) = anon {
        c.execute("DELETE FROM deliveries WHERE anon_sop_uid = ?1 AND state <> 'sent'", args![anon])?;
    }
    c.execute("DELETE FROM instances WHERE sop_uid = ?1", args![sop_uid])?;
    Ok(())
}

/// Insert or replace an instance's row, stamped with the node that stored it; `previous` is the
/// row it replaces, as [`capture`] found it.
pub(crate) fn record(
    tx: &mut Db,
    node: &str,
    r: &InstanceRecord,
    previous: Option<&Previous>,
) -> Result<(), IndexError> {
    // A re-send whose anonymized bytes are those already delivered is not queued again: a
    // sender that re-sends a study (a retry, a second route) would otherwise cost one upload and
    // one export per instance. The same bytes being uploaded now are left to that upload; after
    // a failed attempt they are tried at once, but with the attempts counted, so that the retry
    // asks the bucket first (the failed put may have arrived). One whose bytes changed is a new
    // version, queued again everywhere.
    let unchanged = previous.and_then(|p| p.digest.as_deref()) == Some(r.digest.as_str());
    tx.defer(
        "INSERT INTO instances(sop_uid, anon_sop_uid, series_uid, sop_class_uid, path, size, state, stored_at, digest, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?10)
         ON CONFLICT(sop_uid) DO UPDATE SET path = excluded.path, size = excluded.size,
             stored_at = excluded.stored_at, digest = excluded.digest, node = excluded.node,
             state = CASE WHEN ?9 AND instances.state IN ('uploaded', 'uploading') THEN instances.state ELSE 'queued' END,
             attempts = CASE WHEN ?9 THEN instances.attempts ELSE 0 END,
             last_error = CASE WHEN ?9 AND instances.state IN ('uploaded', 'uploading') THEN instances.last_error END,
             next_try = CASE WHEN ?9 AND instances.state IN ('uploaded', 'uploading') THEN instances.next_try END,
             generation = CASE WHEN ?9 THEN instances.generation ELSE instances.generation + 1 END",
        args![&r.sop_uid, &r.anon_sop_uid, &r.series_uid, &r.sop_class_uid, &r.path, r.size, now(), &r.digest, unchanged, node],
    )?;
    // A re-sent instance goes to every destination again, but for one that has these very bytes
    // or is sending them now; a send of the version it replaces, still under way, settles
    // nothing (see `deliveries`).
    tx.defer(
        "UPDATE deliveries SET state = 'queued', attempts = CASE WHEN ?2 THEN attempts ELSE 0 END,
             last_error = NULL, next_try = NULL,
             instance_rowid = (SELECT rowid FROM instances WHERE anon_sop_uid = ?1)
         WHERE anon_sop_uid = ?1 AND NOT (?2 AND state IN ('sent', 'sending'))",
        args![&r.anon_sop_uid, unchanged],
    )?;
    let pairs: Vec<Value> =
        r.uid_map.iter().flat_map(|(phi, anon)| [Value::from(phi), Value::from(anon)]).collect();
    tx.defer_rows("uid_map(phi_uid, anon_uid)", "ON CONFLICT DO NOTHING", 2, &pairs)?;
    Ok(())
}

/// What the index's own tests share.
#[cfg(test)]
pub(crate) mod fixture {
    use super::db::args;
    use super::{Index, InstanceRecord, Owner};

    /// An index with `n` queued instances `anon0..` (originals `phi0..`) of one series, stored in
    /// that order, at `p/<i>.dcm`, of `100 + i` bytes and digest `v0`.
    pub(crate) fn index_with_instances(n: usize) -> (tempfile::TempDir, Index) {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("index.db"), &Owner::for_site("1")).unwrap();
        index
            .call(move |c| {
                c.batch(
                    "INSERT INTO studies(study_uid, anon_study_uid, patient_id, source) VALUES ('st', 'ast', '', 'test');
                     INSERT INTO series(series_uid, anon_series_uid, study_uid) VALUES ('s', 'as', 'st');",
                )?;
                for i in 0..n {
                    c.execute(
                        "INSERT INTO instances(sop_uid, anon_sop_uid, series_uid, sop_class_uid, path, size, stored_at, digest)
                         VALUES (?1, ?2, 's', '1.2', ?3, ?4, ?5, 'v0')",
                        args![
                            format!("phi{i}"),
                            format!("anon{i}"),
                            format!("p/{i}.dcm"),
                            100 + i as i64,
                            format!("2026-01-01T00:00:{i:02}.000Z")
                        ],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        (d, index)
    }

    /// Instance `i` of [`index_with_instances`] received again, `size` bytes with `digest`.
    pub(crate) fn resend(index: &Index, i: usize, digest: &'static str, size: u64) {
        index
            .call(move |c| {
                let previous = c
                    .query_opt("SELECT digest FROM instances WHERE sop_uid = ?1", args![format!("phi{i}")])?
                    .map(|r| r.get(0).map(|digest| super::Previous { digest }))
                    .transpose()?;
                super::record(
                    c,
                    "",
                    &InstanceRecord {
                        sop_uid: format!("phi{i}"),
                        anon_sop_uid: format!("anon{i}"),
                        series_uid: "s".into(),
                        sop_class_uid: "1.2".into(),
                        path: format!("p/{i}.dcm"),
                        size,
                        digest: digest.into(),
                        uid_map: Vec::new(),
                    },
                    previous.as_ref(),
                )
            })
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_callers_are_all_answered_and_a_failure_stays_their_own() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("index.db"), &Owner::for_site("1")).unwrap();
        let (threads, each) = (16, 200);
        std::thread::scope(|s| {
            for t in 0..threads {
                let index = index.clone();
                s.spawn(move || {
                    for i in 0..each {
                        let key = format!("k{t}-{i}");
                        let got = index
                            .call(move |c| {
                                c.execute("INSERT INTO meta(key, value) VALUES (?1, 'v')", args![&key])?;
                                Ok(key)
                            })
                            .unwrap();
                        assert_eq!(got, format!("k{t}-{i}"), "each caller gets its own answer");
                    }
                });
            }
        });
        // A failing request rolls back only itself and is answered with its error.
        let failed = index.call(|c| {
            c.execute("INSERT INTO meta(key, value) VALUES ('k0-0', 'again')", args![])?;
            Ok(())
        });
        assert!(failed.is_err(), "a duplicate key must fail");
        let rows: i64 = index
            .call(|c| Ok(c.query_one("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'", args![])?.get(0)?))
            .unwrap();
        assert_eq!(rows, threads * each);
    }

    /// New indexes keep UID mappings in their key's own tree; an index made before keeps its
    /// rowid table, and both take and give mappings alike.
    #[test]
    fn uid_mappings_work_in_new_and_older_indexes() {
        let d = tempfile::tempdir().unwrap();
        let older = d.path().join("older.db");
        rusqlite::Connection::open(&older)
            .unwrap()
            .execute_batch("CREATE TABLE uid_map (phi_uid TEXT PRIMARY KEY, anon_uid TEXT NOT NULL);")
            .unwrap();
        for (name, without_rowid) in [("new.db", true), ("older.db", false)] {
            let index = Index::open(&d.path().join(name), &Owner::for_site("1")).unwrap();
            let (sql, mapped) = index
                .call(|c| {
                    for (phi, anon) in [("1.2.3", "9.1"), ("1.2.3", "9.1"), ("1.2.4", "9.2")] {
                        c.execute(
                            "INSERT INTO uid_map(phi_uid, anon_uid) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                            args![phi, anon],
                        )?;
                    }
                    let sql: String = c
                        .query_one("SELECT sql FROM sqlite_master WHERE name = 'uid_map'", args![])?
                        .get(0)?;
                    let mapped: Vec<(String, String)> = c
                        .query("SELECT phi_uid, anon_uid FROM uid_map ORDER BY phi_uid", args![])?
                        .iter()
                        .map(|r| Ok((r.get(0)?, r.get(1)?)))
                        .collect::<Result<_, DbError>>()?;
                    Ok((sql, mapped))
                })
                .unwrap();
            assert_eq!(sql.contains("WITHOUT ROWID"), without_rowid, "{name}: {sql}");
            assert_eq!(mapped, [("1.2.3".into(), "9.1".into()), ("1.2.4".into(), "9.2".into())], "{name}");
        }
    }

    /// Many rows go in statements of up to ROWS_PER_INSERT rows; a row met twice, even in one
    /// statement, is kept once.
    #[test]
    fn rows_are_inserted_in_statements_of_many_and_a_repeated_one_is_kept_once() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("index.db"), &Owner::for_site("1")).unwrap();
        let n = 2 * db::ROWS_PER_INSERT + 5;
        let mut values: Vec<Value> =
            (0..n).flat_map(|i| [Value::from(format!("1.2.{i}")), Value::from(format!("9.{i}"))]).collect();
        values.extend([Value::from("1.2.0"), Value::from("9.0"), Value::from("1.2.0"), Value::from("9.0")]);
        let rows: Vec<(String, String)> = index
            .call(move |c| {
                c.defer_rows("uid_map(phi_uid, anon_uid)", "ON CONFLICT DO NOTHING", 2, &values)?;
                let rows = c
                    .query("SELECT phi_uid, anon_uid FROM uid_map", args![])?
                    .iter()
                    .map(|r| Ok((r.get(0)?, r.get(1)?)))
                    .collect::<Result<_, DbError>>()?;
                Ok(rows)
            })
            .unwrap();
        assert_eq!(rows.len(), n);
        assert!(rows.contains(&(format!("1.2.{}", n - 1), format!("9.{}", n - 1))));
    }

    #[test]
    fn a_request_that_panics_fails_alone_and_the_index_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("index.db"), &Owner::for_site("1")).unwrap();
        let boom = index.call(|c| -> Result<(), IndexError> {
            c.execute("INSERT INTO meta(key, value) VALUES ('half', 'done')", args![])?;
            panic!("a bug");
        });
        assert!(matches!(boom, Err(IndexError::Panicked(ref m)) if m == "a bug"), "{boom:?}");
        let after: i64 = index
            .call(|c| Ok(c.query_one("SELECT COUNT(*) FROM meta WHERE key = 'half'", args![])?.get(0)?))
            .unwrap();
        assert_eq!(after, 0, "the panicking request's changes are rolled back");
    }

    #[test]
    fn the_wal_stays_bounded_under_constant_commits() {
        // The background checkpoint alone never lets a busy WAL start over; it grew by gigabytes.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("index.db");
        let index = Index::open(&path, &Owner::for_site("1")).unwrap();
        let page = "x".repeat(4000);
        for i in 0..8000 {
            let value = page.clone();
            index
                .call(move |c| {
                    c.execute("INSERT INTO meta(key, value) VALUES (?1, ?2)", args![format!("w{i}"), value])?;
                    Ok(())
                })
                .unwrap();
        }
        // 8,000 commits of a page or more each: over 32 MB written to the WAL in all.
        let wal = std::fs::metadata(d.path().join("index.db-wal")).unwrap().len();
        assert!(wal < 12 << 20, "WAL is {wal} bytes");
    }

    /// `queue retry` opens the index beside a running node that commits all the time.
    #[test]
    fn a_second_writer_opens_the_index_while_the_first_commits() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("index.db");
        let node = Index::open(&path, &Owner::for_site("1")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    node.enqueue_deliveries("a").unwrap();
                }
            })
        };
        for _ in 0..100 {
            let other = Index::open(&path, &Owner::for_site("1")).expect("opens despite the other writer");
            other.close();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        busy.join().unwrap();
        node.close();
    }

    #[test]
    fn a_pseudonym_that_belongs_to_another_patient_is_a_conflict_not_a_database_error() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("index.db"), &Owner::for_site("1")).unwrap();
        let capture = |patient: &str, study: &str| Capture {
            original: Identity {
                patient_id: patient.into(),
                study_uid: study.into(),
                series_uid: format!("{study}.1"),
                sop_uid: format!("{study}.1.1"),
                ..Identity::default()
            },
            anon_patient_id: Some("SHARED-48-BITS".into()),
            anon_study_uid: format!("9.{study}"),
            anon_accession: None,
            date_offset: None,
            source: "test".into(),
            anon_series_uid: format!("9.{study}.1"),
            phrases: Phrases::default(),
        };
        assert_eq!(index.capture(capture("MRN-A", "1.1")).unwrap(), "SHARED-48-BITS");
        assert_eq!(
            index.capture(capture("MRN-A", "1.2")).unwrap(),
            "SHARED-48-BITS",
            "the same patient again"
        );
        match index.capture(capture("MRN-B", "1.3")) {
            Err(IndexError::Conflict(why)) => {
                assert!(why.contains("belongs to another PatientID") && !why.contains("MRN"), "{why}")
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
}
