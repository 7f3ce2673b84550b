//! The persistent PHI index (SQLite, WAL): patients, studies, series, instances and the UID map.
//!
//! One thread owns the write connection. Callers hold a cheap [`Index`] handle and send requests
//! over a bounded channel; the owner runs whatever has queued up in one transaction (group commit)
//! and answers each caller only after that transaction is durable.

mod audit;
mod deliveries;
mod export;
mod presence;
mod queue;
mod schema;
mod stats;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OptionalExtension};

pub use audit::{export_audit, export_mapping, AuditRecord, PATIENT_ID_MAPPING, UID_MAPPING};
pub use deliveries::{Delivery, DeliveryRecord, DestinationStatus};
pub use export::{export_csv, ExportError};
pub use presence::Presence;
pub use queue::{Pending, QueueStatus, StuckItem};
pub use stats::{Counts, Reader};

/// At most this many requests share one transaction.
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The instance contradicts what the index already knows: a quarantine reason.
    #[error("integrity conflict: {0}")]
    Conflict(String),
    #[error("the index at {path} belongs to site {stored:?}, but project.site_id is {configured:?}; site ids cannot change")]
    SiteMismatch { path: String, stored: String, configured: String },
    #[error("PHI index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("the PHI index writer has stopped")]
    Closed,
}

/// What the index records about an instance's patient, study and series before it is anonymized.
#[derive(Debug, Clone)]
pub struct Capture {
    pub patient_id: String,
    pub patient_name: Option<String>,
    pub sex: Option<String>,
    pub birth_date: Option<String>,
    /// `Some` in keyed mode (stateless pseudonym); `None` lets the index number the patient.
    pub anon_patient_id: Option<String>,
    pub study_uid: String,
    pub anon_study_uid: String,
    pub accession: Option<String>,
    pub anon_accession: Option<String>,
    pub date_offset: Option<u32>,
    pub study_date: Option<String>,
    /// Where the instance came from: a file path or `AE@address`.
    pub source: String,
    pub series_uid: String,
    pub anon_series_uid: String,
    pub modality: Option<String>,
    pub sop_uid: String,
}

/// An instance whose anonymized file is durable, with every UID it mapped.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub sop_uid: String,
    pub anon_sop_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub path: String,
    pub size: u64,
    pub uid_map: Vec<(String, String)>,
}

/// A unit of work for the writer: runs inside the batch transaction and says whether it
/// succeeded; its reply goes out once the batch has committed (or failed to).
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// A handle on the index; clone it freely.
#[derive(Clone)]
pub struct Index {
    tx: mpsc::SyncSender<Job>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    site_id: String,
}

/// Identity of the project the index belongs to, checked every time it opens.
#[derive(Debug, Clone)]
pub struct Owner {
    pub site_id: String,
    /// The pseudonym of the patient with no PatientID.
    pub default_patient_id: String,
}

impl Owner {
    /// The owner for a site: the default patient is `<site>-000000` in both pseudonym modes.
    pub fn for_site(site_id: &str) -> Owner {
        Owner {
            site_id: site_id.to_string(),
            default_patient_id: crate::anonymize::Rsna::numbered_patient_id(site_id, 0),
        }
    }
}

impl Index {
    pub fn open(path: &Path, owner: &Owner) -> Result<Index, IndexError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
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
        let (tx, rx) = mpsc::sync_channel::<Job>(1024);
        let writer = std::thread::Builder::new()
            .name("phi-index".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|source| IndexError::Dir { path: "phi-index thread".into(), source })?;
        Ok(Index { tx, writer: Arc::new(Mutex::new(Some(writer))), site_id: owner.site_id.clone() })
    }

    /// Run `f` in the writer's next batch transaction and return its result once that batch is
    /// committed. A failing `f` rolls back only its own changes.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
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
        self.tx.send(job).map_err(|_| IndexError::Closed)?;
        answer.recv().map_err(|_| IndexError::Closed)?
    }

    /// Record patient, study and series; return the patient's pseudonym. Fails with `Conflict` when
    /// the instance contradicts earlier ones (a study under two patients, ...).
    pub fn capture(&self, capture: Capture) -> Result<String, IndexError> {
        let site_id = self.site_id.clone();
        self.call(move |c| self::capture(c, &capture, &site_id))
    }

    /// Record an instance whose file is written (state `queued`), and the UIDs it mapped.
    pub fn record(&self, record: InstanceRecord) -> Result<(), IndexError> {
        self.call(move |c| self::record(c, &record))
    }

    /// Stop the writer once every handle's pending requests are done. Other clones become unusable.
    pub fn close(self) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        drop(self.tx);
        if let Some(w) = writer {
            // Other live clones keep the channel open; the thread then ends when they drop.
            if Arc::strong_count(&self.writer) == 1 {
                let _ = w.join();
            }
        }
    }
}

/// Add columns that an index created by an earlier version lacks.
fn migrate(conn: &Connection) -> Result<(), IndexError> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('instances')")?;
    let have: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for (column, decl) in schema::ADDED_INSTANCE_COLUMNS {
        if !have.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE instances ADD COLUMN {column} {decl}"))?;
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
    tx.execute(
        "INSERT OR IGNORE INTO patients(patient_id, anon_patient_id, created_at) VALUES ('', ?1, ?2)",
        params![owner.default_patient_id, now()],
    )?;
    tx.commit()?;
    Ok(())
}

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch);
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

fn capture(tx: &Connection, c: &Capture, site_id: &str) -> Result<String, IndexError> {
    let anon_patient_id = patient(tx, c, site_id)?;

    let owner: Option<(String, Option<String>)> = tx
        .query_row("SELECT patient_id, accession FROM studies WHERE study_uid = ?1", [&c.study_uid], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
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
            tx.execute(
                "INSERT INTO studies(study_uid, anon_study_uid, patient_id, accession, anon_accession,
                                     date_offset, study_date, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    c.study_uid,
                    c.anon_study_uid,
                    c.patient_id,
                    c.accession,
                    c.anon_accession,
                    c.date_offset,
                    c.study_date,
                    c.source
                ],
            )?;
        }
    }

    let study: Option<String> = tx
        .query_row("SELECT study_uid FROM series WHERE series_uid = ?1", [&c.series_uid], |r| r.get(0))
        .optional()?;
    match study {
        Some(s) if s != c.study_uid => {
            return Err(IndexError::Conflict("SeriesInstanceUID already belongs to another study".into()))
        }
        Some(_) => {}
        None => {
            tx.execute(
                "INSERT INTO series(series_uid, anon_series_uid, study_uid, modality) VALUES (?1, ?2, ?3, ?4)",
                params![c.series_uid, c.anon_series_uid, c.study_uid, c.modality],
            )?;
        }
    }

    let series: Option<String> = tx
        .query_row("SELECT series_uid FROM instances WHERE sop_uid = ?1", [&c.sop_uid], |r| r.get(0))
        .optional()?;
    if matches!(series, Some(s) if s != c.series_uid) {
        return Err(IndexError::Conflict("SOPInstanceUID already belongs to another series".into()));
    }
    Ok(anon_patient_id)
}

/// Get or create the patient. New patients in rsna mode take the next number from a counter that
/// only grows, so a number is never handed out twice (RSNA's MAX+1 can reuse one).
fn patient(tx: &Connection, c: &Capture, site_id: &str) -> Result<String, IndexError> {
    if let Some(id) = tx
        .query_row("SELECT anon_patient_id FROM patients WHERE patient_id = ?1", [&c.patient_id], |r| {
            r.get(0)
        })
        .optional()?
    {
        return Ok(id);
    }
    let anon = match &c.anon_patient_id {
        Some(id) => id.clone(),
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
    tx.execute(
        "INSERT INTO patients(patient_id, anon_patient_id, patient_name, sex, birth_date, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![c.patient_id, anon, c.patient_name, c.sex, c.birth_date, now()],
    )?;
    Ok(anon)
}

fn record(tx: &Connection, r: &InstanceRecord) -> Result<(), IndexError> {
    tx.execute(
        "INSERT INTO instances(sop_uid, anon_sop_uid, series_uid, sop_class_uid, path, size, state, stored_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7)
         ON CONFLICT(sop_uid) DO UPDATE SET path = excluded.path, size = excluded.size,
             state = 'queued', stored_at = excluded.stored_at, attempts = 0, last_error = NULL,
             next_try = NULL",
        params![r.sop_uid, r.anon_sop_uid, r.series_uid, r.sop_class_uid, r.path, r.size as i64, now()],
    )?;
    let mut map = tx.prepare_cached("INSERT OR IGNORE INTO uid_map(phi_uid, anon_uid) VALUES (?1, ?2)")?;
    for (phi, anon) in &r.uid_map {
        map.execute([phi, anon])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Index, Owner};

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
}
