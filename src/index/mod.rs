//! The persistent PHI index (SQLite, WAL): patients, studies, series, instances and the UID map.
//!
//! One write connection, shared by combining: a caller queues its request and takes the
//! connection; whoever holds it runs everything queued by then in one transaction (group commit),
//! so under load many requests share a commit, and alone a caller runs its own on its own thread,
//! with no hand-off to a writer thread and back. Each caller gets its answer after the commit.

mod audit;
mod deliveries;
mod export;
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

use rusqlite::{params, Connection, OptionalExtension};

use crate::anonymize::Identity;

pub use audit::{export_audit, export_mapping, AuditRecord, Caller, PATIENT_ID_MAPPING, UID_MAPPING};
pub use deliveries::{Delivery, DeliveryRecord, DestinationStatus};
pub use export::{backup, export_csv, ExportError};
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
    #[error("PHI index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("the PHI index writer has stopped")]
    Closed,
    /// A bug met while running a request; only that request fails.
    #[error("internal error in a PHI index request: {0}")]
    Panicked(String),
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
/// out once the batch has committed (or failed to).
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// A handle on the index; clone it freely.
#[derive(Clone)]
pub struct Index {
    writer: Arc<Writer>,
    site_id: String,
    /// Committed patient pseudonyms (PHI PatientID to pseudonym). A mapping never changes once
    /// committed, so this is never stale; it spares an instance of a known patient the round trip
    /// that would otherwise have to precede its anonymization.
    known_patients: Arc<Mutex<HashMap<String, String>>>,
    /// The names and places recorded for each patient asked about (see [`Index::seen`]), and
    /// the site's institutions, read once at open; kept up to date by commits.
    seen: Arc<Mutex<Seen>>,
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
    conn: Mutex<Connection>,
    /// Dropped with the writer: the checkpoint thread then stops.
    _stop_checkpoints: mpsc::Sender<()>,
}

/// The last handle closes the index: everything in the WAL goes into `index.db`, and the WAL is
/// cut to nothing, so a copy of `index.db` alone made after a clean stop is the whole index.
impl Drop for Writer {
    fn drop(&mut self) {
        let conn = self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
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
                run_batch(&mut conn, batch);
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
    pub fn open(path: &Path, owner: &Owner) -> Result<Index, IndexError> {
        if let Some(dir) = path.parent() {
            crate::file_modes::missing_dirs(dir)
                .map_err(|source| IndexError::Dir { path: dir.display().to_string(), source })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(schema::SCHEMA)?;
        conn.execute_batch(deliveries::SCHEMA)?;
        migrate(&conn)?;
        // WAL with NORMAL never corrupts; a commit becomes durable when the WAL file reaches the
        // disk, which the caller's durability barrier (syncfs) or closing the index ensures.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        init(&mut conn, path, owner)?;
        // Checkpoints run every second on a connection of their own, so commits rarely wait for
        // one to copy the WAL back. But a passive checkpoint under constant commits never catches
        // up with the end of the WAL, and the WAL only starts over once it has: so the writer
        // still checkpoints itself past WAL_PAGES (copying what the background left, between
        // two batches, when nothing else is writing), and the file is cut back after.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", WAL_BYTES_KEPT)?;
        let checkpoints = Connection::open(path)?;
        checkpoints.busy_timeout(std::time::Duration::from_secs(30))?;
        checkpoints.pragma_update(None, "synchronous", "NORMAL")?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("phi-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoints, stopped))
            .map_err(|source| IndexError::Dir { path: "phi-checkpoint thread".into(), source })?;
        let writer = Writer { queue: Mutex::default(), conn: Mutex::new(conn), _stop_checkpoints: stop };
        let places = {
            let conn = lock(&writer.conn);
            let mut query = conn.prepare("SELECT DISTINCT phrase FROM seen_phrases WHERE kind = ?1")?;
            let rows = query.query_map([INSTITUTION], |r| r.get::<_, Vec<u8>>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let seen = Seen { patients: HashMap::new(), institutions: places };
        Ok(Index {
            writer: Arc::new(writer),
            site_id: owner.site_id.clone(),
            known_patients: Arc::default(),
            seen: Arc::new(Mutex::new(seen)),
        })
    }

    /// Run `f` in the next batch transaction and return its result once that batch is committed.
    /// A failing `f` rolls back only its own changes. Blocks the calling thread.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            // A bug that panics fails this request alone; the batch and the combining thread go on.
            let result = catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|payload| Err(IndexError::Panicked(panic_message(&*payload))));
            let ok = result.is_ok();
            let send: Reply = Box::new(move |commit_failure| {
                let result = match commit_failure {
                    None => result,
                    Some(e) => Err(IndexError::Sqlite(clone_error(e))),
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
    /// instance stated: one round trip the first time a patient is asked about in this process.
    pub fn seen(&self, patient_id: &str) -> Result<Phrases, IndexError> {
        let cached = lock(&self.seen).patients.get(patient_id).cloned();
        let [names, places] = match cached {
            Some(known) => known,
            None => {
                let id = patient_id.to_string();
                let known = self.call(move |c| {
                    let mut query = c.prepare_cached(
                        "SELECT phrase FROM seen_phrases WHERE patient_id = ?1 AND kind = ?2",
                    )?;
                    let mut of = |kind: i64| -> Result<Vec<Vec<u8>>, rusqlite::Error> {
                        query.query_map(params![id, kind], |r| r.get::<_, Vec<u8>>(0))?.collect()
                    };
                    Ok([of(NAME)?, of(PLACE)?])
                })?;
                let mut seen = lock(&self.seen);
                if seen.patients.len() >= KNOWN_PATIENTS {
                    seen.patients.clear();
                }
                seen.patients.entry(patient_id.to_string()).or_insert(known).clone()
            }
        };
        Ok(Phrases { names, places, institutions: lock(&self.seen).institutions.clone() })
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
        let mut seen = lock(&self.seen);
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
        let committed = self.call(move |c| {
            let captured = self::capture(c, &capture, &site_id)?;
            if captured.anon_patient_id != expected {
                // Mappings never change once committed: another writer on this index broke that.
                return Err(IndexError::Conflict(
                    "the patient's pseudonym in the index is not the one the instance was written with"
                        .into(),
                ));
            }
            self::record(c, &record)?;
            remember_phrases(c, &capture.patient_id, &capture.phrases)?;
            let audit_row = match &audit {
                Some(a) => Some(audit::insert(c, a)?),
                None => None,
            };
            Ok(Committed { sop_uid: record.sop_uid.clone(), replaced: captured.instance_known, audit_row })
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
                c.execute("DELETE FROM audit WHERE id = ?1", [id])?;
            }
            if !published {
                match on_disk {
                    Some(size) if committed.replaced => {
                        // The file on disk is the earlier version, whose digest the row no longer
                        // has: none, so that no re-send is taken for the bytes already delivered.
                        c.execute(
                            "UPDATE instances SET size = ?2, digest = NULL WHERE sop_uid = ?1",
                            params![committed.sop_uid, size as i64],
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
        let public = public.to_path_buf();
        self.call(move |c| {
            let pending: Vec<(String, String)> = c
                .prepare("SELECT sop_uid, path FROM instances WHERE state <> 'uploaded'")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
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

    /// The path of every instance the index knows, relative to `public/`.
    pub fn paths(&self) -> Result<Vec<String>, IndexError> {
        self.call(|c| {
            let paths = c
                .prepare("SELECT path FROM instances")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(paths)
        })
    }

    /// Never hand out a patient number up to `highest` again (it is on a folder already).
    pub fn reserve_patient_numbers(&self, highest: u64) -> Result<(), IndexError> {
        let highest = i64::try_from(highest).unwrap_or(i64::MAX);
        self.call(move |c| {
            c.execute(
                "UPDATE meta SET value = CAST(?1 AS TEXT) WHERE key = 'last_patient_number' AND CAST(value AS INTEGER) < ?1",
                [highest],
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

/// Add columns that an index created by an earlier version lacks.
fn migrate(conn: &Connection) -> Result<(), IndexError> {
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

fn init(conn: &mut Connection, path: &Path, owner: &Owner) -> Result<(), IndexError> {
    // IMMEDIATE: take the write lock first (waiting on busy_timeout). A deferred read that turns
    // into a write fails at once with "database is locked" when another process (the running
    // node, beside `queue retry`) commits in between, and no busy handler helps with that.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stored: Option<String> =
        tx.query_row("SELECT value FROM meta WHERE key = 'site_id'", [], |r| r.get(0)).optional()?;
    match stored {
        Some(stored) if stored != owner.site_id => {
            return Err(IndexError::SiteMismatch {
                path: path.display().to_string(),
                stored,
                configured: owner.site_id.clone(),
            })
        }
        Some(_) => {}
        None => {
            tx.execute("INSERT INTO meta(key, value) VALUES ('site_id', ?1)", [&owner.site_id])?;
            tx.execute("INSERT INTO meta(key, value) VALUES ('last_patient_number', '0')", [])?;
        }
    }
    if let Some(configured) = &owner.secret_fingerprint {
        let stored: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'secret_fingerprint'", [], |r| r.get(0))
            .optional()?;
        match stored {
            Some(stored) if stored != *configured => {
                return Err(IndexError::SecretMismatch {
                    path: path.display().to_string(),
                    stored,
                    configured: configured.clone(),
                })
            }
            Some(_) => {}
            None => {
                tx.execute("INSERT INTO meta(key, value) VALUES ('secret_fingerprint', ?1)", [configured])?;
            }
        }
    }
    tx.execute(
        "INSERT OR IGNORE INTO patients(patient_id, anon_patient_id, created_at) VALUES ('', ?1, ?2)",
        params![owner.default_patient_id, now()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Copy the WAL back into the database every [`CHECKPOINT_EVERY`] until the index closes.
fn checkpoint_loop(conn: Connection, stopped: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        // PASSIVE copies what no reader still needs and never waits; the next round does the rest.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint failed; the next one will try again");
        }
    }
}

/// Run a batch in one transaction, each job in its own savepoint so one failure does not undo
/// the others; answer only after the commit.
fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    let mut replies = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<(), rusqlite::Error> {
        let mut tx = conn.transaction()?;
        for job in batch {
            let sp = tx.savepoint()?;
            let (ok, reply) = job(&sp);
            if ok {
                sp.commit()?;
            } else {
                sp.finish()?;
            }
            replies.push(reply);
        }
        tx.commit()
    })();
    for reply in replies {
        reply(outcome.as_ref().err());
    }
}

fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}

fn capture(tx: &Connection, c: &Capture, site_id: &str) -> Result<Captured, IndexError> {
    let anon_patient_id = patient(tx, c, site_id)?;

    let owner: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT patient_id, accession FROM studies WHERE study_uid = ?1")?
        .query_row([&c.study_uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match owner {
        Some((pid, _)) if pid != c.patient_id => {
            return Err(IndexError::Conflict("StudyInstanceUID already belongs to another PatientID".into()))
        }
        Some((_, None)) if c.accession.is_some() => {
            tx.execute(
                "UPDATE studies SET accession = ?2, anon_accession = ?3 WHERE study_uid = ?1",
                params![c.study_uid, c.accession, c.anon_accession],
            )?;
        }
        Some(_) => {}
        None => {
            tx.prepare_cached(
                "INSERT INTO studies(study_uid, anon_study_uid, patient_id, accession, anon_accession,
                                     date_offset, study_date, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                c.study_uid,
                c.anon_study_uid,
                c.patient_id,
                c.accession,
                c.anon_accession,
                c.date_offset,
                c.study_date,
                c.source
            ])?;
        }
    }

    let study: Option<String> = tx
        .prepare_cached("SELECT study_uid FROM series WHERE series_uid = ?1")?
        .query_row([&c.series_uid], |r| r.get(0))
        .optional()?;
    match study {
        Some(s) if s != c.study_uid => {
            return Err(IndexError::Conflict("SeriesInstanceUID already belongs to another study".into()))
        }
        Some(_) => {}
        None => {
            tx.prepare_cached(
                "INSERT INTO series(series_uid, anon_series_uid, study_uid, modality) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![c.series_uid, c.anon_series_uid, c.study_uid, c.modality])?;
        }
    }

    let series: Option<String> = tx
        .prepare_cached("SELECT series_uid FROM instances WHERE sop_uid = ?1")?
        .query_row([&c.sop_uid], |r| r.get(0))
        .optional()?;
    if matches!(&series, Some(s) if *s != c.series_uid) {
        return Err(IndexError::Conflict("SOPInstanceUID already belongs to another series".into()));
    }
    Ok(Captured { anon_patient_id, instance_known: series.is_some() })
}

/// What [`capture`] found and recorded.
struct Captured {
    anon_patient_id: String,
    /// The instance is in the index already (it was sent before).
    instance_known: bool,
}

/// Why a new patient's pseudonym cannot be recorded.
const PSEUDONYM_TAKEN: &str =
    "the pseudonym of this PatientID already belongs to another PatientID in the index \
     (two PatientIDs share a keyed pseudonym, or project.lookup_table gives one to another patient)";

/// Get or create the patient. New patients in rsna mode take the next number from a counter that
/// only grows, so a number is never handed out twice (RSNA's MAX+1 can reuse one).
fn patient(tx: &Connection, c: &Capture, site_id: &str) -> Result<String, IndexError> {
    if let Some(id) = tx
        .prepare_cached("SELECT anon_patient_id FROM patients WHERE patient_id = ?1")?
        .query_row([&c.patient_id], |r| r.get(0))
        .optional()?
    {
        return Ok(id);
    }
    let anon = match &c.anon_patient_id {
        Some(id) => {
            // A keyed pseudonym is 48 bits of a hash: two PatientIDs can share one, and a lookup
            // table can be edited to give one away. Either is for someone to review, not a write
            // to retry forever.
            let taken = tx
                .prepare_cached("SELECT 1 FROM patients WHERE anon_patient_id = ?1")?
                .query_row([id], |_| Ok(()))
                .optional()?;
            if taken.is_some() {
                return Err(IndexError::Conflict(PSEUDONYM_TAKEN.into()));
            }
            id.clone()
        }
        None => {
            let last: i64 = tx.query_row(
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_patient_number'",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'last_patient_number'",
                [(last + 1).to_string()],
            )?;
            crate::anonymize::Rsna::numbered_patient_id(site_id, (last + 1) as u64)
        }
    };
    tx.prepare_cached(
        "INSERT INTO patients(patient_id, anon_patient_id, patient_name, sex, birth_date, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![c.patient_id, anon, c.patient_name, c.sex, c.birth_date, now()])?;
    Ok(anon)
}

/// Record the names and places an instance of `patient_id` stated.
fn remember_phrases(tx: &Connection, patient_id: &str, phrases: &Phrases) -> Result<(), IndexError> {
    let mut insert = tx
        .prepare_cached("INSERT OR IGNORE INTO seen_phrases(patient_id, kind, phrase) VALUES (?1, ?2, ?3)")?;
    for (kind, values) in
        [(NAME, &phrases.names), (PLACE, &phrases.places), (INSTITUTION, &phrases.institutions)]
    {
        for v in values {
            insert.execute(params![patient_id, kind, v])?;
        }
    }
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
fn forget(c: &Connection, sop_uid: &str) -> Result<(), IndexError> {
    let anon: Option<String> = c
        .query_row("SELECT anon_sop_uid FROM instances WHERE sop_uid = ?1", [sop_uid], |r| r.get(0))
        .optional()?;
    if let Some(anon) = anon {
        c.execute("DELETE FROM deliveries WHERE anon_sop_uid = ?1 AND state <> 'sent'", [&anon])?;
    }
    c.execute("DELETE FROM instances WHERE sop_uid = ?1", [sop_uid])?;
    Ok(())
}

/// Insert or replace an instance's row.
pub(crate) fn record(tx: &Connection, r: &InstanceRecord) -> Result<(), IndexError> {
    // A re-send whose anonymized bytes are those already delivered is not queued again: a
    // sender that re-sends a study (a retry, a second route) would otherwise cost one upload and
    // one export per instance. The same bytes being uploaded now are left to that upload; after
    // a failed attempt they are tried at once, but with the attempts counted, so that the retry
    // asks the bucket first (the failed put may have arrived). One whose bytes changed is a new
    // version, queued again everywhere.
    let previous: Option<Option<String>> = tx
        .prepare_cached("SELECT digest FROM instances WHERE sop_uid = ?1")?
        .query_row([&r.sop_uid], |row| row.get(0))
        .optional()?;
    let unchanged = previous.flatten().as_deref() == Some(r.digest.as_str());
    tx.prepare_cached(
        "INSERT INTO instances(sop_uid, anon_sop_uid, series_uid, sop_class_uid, path, size, state, stored_at, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8)
         ON CONFLICT(sop_uid) DO UPDATE SET path = excluded.path, size = excluded.size,
             stored_at = excluded.stored_at, digest = excluded.digest,
             state = CASE WHEN ?9 AND state IN ('uploaded', 'uploading') THEN state ELSE 'queued' END,
             attempts = CASE WHEN ?9 THEN attempts ELSE 0 END,
             last_error = CASE WHEN ?9 AND state IN ('uploaded', 'uploading') THEN last_error END,
             next_try = CASE WHEN ?9 AND state IN ('uploaded', 'uploading') THEN next_try END,
             generation = CASE WHEN ?9 THEN generation ELSE generation + 1 END",
    )?
    .execute(params![
        r.sop_uid,
        r.anon_sop_uid,
        r.series_uid,
        r.sop_class_uid,
        r.path,
        r.size as i64,
        now(),
        r.digest,
        unchanged
    ])?;
    // A re-sent instance goes to every destination again, but for one that has these very bytes
    // or is sending them now; a send of the version it replaces, still under way, settles
    // nothing (see `deliveries`).
    tx.prepare_cached(
        "UPDATE deliveries SET state = 'queued', attempts = CASE WHEN ?2 THEN attempts ELSE 0 END,
             last_error = NULL, next_try = NULL,
             instance_rowid = (SELECT rowid FROM instances WHERE anon_sop_uid = ?1)
         WHERE anon_sop_uid = ?1 AND NOT (?2 AND state IN ('sent', 'sending'))",
    )?
    .execute(params![r.anon_sop_uid, unchanged])?;
    let mut map = tx.prepare_cached("INSERT OR IGNORE INTO uid_map(phi_uid, anon_uid) VALUES (?1, ?2)")?;
    for (phi, anon) in &r.uid_map {
        map.execute([phi, anon])?;
    }
    Ok(())
}

/// What the index's own tests share.
#[cfg(test)]
pub(crate) mod fixture {
    use rusqlite::params;

    use super::{Index, Owner};

    /// An index with `n` queued instances `anon0..` (originals `phi0..`) of one series, stored in
    /// that order, at `p/<i>.dcm`, of `100 + i` bytes and digest `v0`.
    pub(crate) fn index_with_instances(n: usize) -> (tempfile::TempDir, Index) {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("index.db"), &Owner::for_site("1")).unwrap();
        index
            .call(move |c| {
                c.execute_batch(
                    "INSERT INTO studies(study_uid, anon_study_uid, patient_id, source) VALUES ('st', 'ast', '', 'test');
                     INSERT INTO series(series_uid, anon_series_uid, study_uid) VALUES ('s', 'as', 'st');",
                )?;
                for i in 0..n {
                    c.execute(
                        "INSERT INTO instances(sop_uid, anon_sop_uid, series_uid, sop_class_uid, path, size, stored_at, digest)
                         VALUES (?1, ?2, 's', '1.2', ?3, ?4, ?5, 'v0')",
                        params![
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
                                c.execute("INSERT INTO meta(key, value) VALUES (?1, 'v')", [&key])?;
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
            c.execute("INSERT INTO meta(key, value) VALUES ('k0-0', 'again')", [])?;
            Ok(())
        });
        assert!(failed.is_err(), "a duplicate key must fail");
        let rows: i64 = index
            .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(rows, threads * each);
    }

    /// New indexes keep UID mappings in their key's own tree; an index made before keeps its
    /// rowid table, and both take and give mappings alike.
    #[test]
    fn uid_mappings_work_in_new_and_older_indexes() {
        let d = tempfile::tempdir().unwrap();
        let older = d.path().join("older.db");
        Connection::open(&older)
            .unwrap()
            .execute_batch("CREATE TABLE uid_map (phi_uid TEXT PRIMARY KEY, anon_uid TEXT NOT NULL);")
            .unwrap();
        for (name, without_rowid) in [("new.db", true), ("older.db", false)] {
            let index = Index::open(&d.path().join(name), &Owner::for_site("1")).unwrap();
            let (sql, mapped) = index
                .call(|c| {
                    let mut map =
                        c.prepare_cached("INSERT OR IGNORE INTO uid_map(phi_uid, anon_uid) VALUES (?1, ?2)")?;
                    for (phi, anon) in [("1.2.3", "9.1"), ("1.2.3", "9.1"), ("1.2.4", "9.2")] {
                        map.execute([phi, anon])?;
                    }
                    let sql: String =
                        c.query_row("SELECT sql FROM sqlite_master WHERE name = 'uid_map'", [], |r| {
                            r.get(0)
                        })?;
                    let mut rows = c.prepare("SELECT phi_uid, anon_uid FROM uid_map ORDER BY phi_uid")?;
                    let mapped: Vec<(String, String)> =
                        rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
                    Ok((sql, mapped))
                })
                .unwrap();
            assert_eq!(sql.contains("WITHOUT ROWID"), without_rowid, "{name}: {sql}");
            assert_eq!(mapped, [("1.2.3".into(), "9.1".into()), ("1.2.4".into(), "9.2".into())], "{name}");
        }
    }

    #[test]
    fn a_request_that_panics_fails_alone_and_the_index_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("index.db"), &Owner::for_site("1")).unwrap();
        let boom = index.call(|c| -> Result<(), IndexError> {
            c.execute("INSERT INTO meta(key, value) VALUES ('half', 'done')", [])?;
            panic!("a bug");
        });
        assert!(matches!(boom, Err(IndexError::Panicked(ref m)) if m == "a bug"), "{boom:?}");
        let after: i64 = index
            .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM meta WHERE key = 'half'", [], |r| r.get(0))?))
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
                    c.execute(
                        "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                        params![format!("w{i}"), value],
                    )?;
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
