//! The upload queue lives in the `instances` table: `queued → uploading → uploaded`, or `failed`
//! with the attempt count, the last error and when to try again.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{now, Index, IndexError};

/// An instance to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub anon_sop_uid: String,
    /// Relative to the public directory; also the object key's tail.
    pub path: String,
    pub size: u64,
    /// Earlier attempts: a retried object may already be in the bucket.
    pub attempts: u32,
    /// Which version of the instance was claimed: a re-send during the upload makes a new one,
    /// and the old upload then settles nothing.
    pub generation: i64,
}

/// What `queue status` prints.
#[derive(Debug, Clone, Default)]
pub struct QueueStatus {
    pub counts: Vec<(String, u64)>,
    pub oldest_queued: Option<String>,
    pub failed: Vec<StuckItem>,
}

#[derive(Debug, Clone)]
pub struct StuckItem {
    pub anon_sop_uid: String,
    pub attempts: u32,
    pub last_error: String,
    pub next_try: Option<String>,
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Index {
    /// Take up to `limit` instances to upload, oldest first: queued ones, and failed ones whose
    /// next try has come. They become `uploading`.
    pub fn claim(&self, limit: usize) -> Result<Vec<Pending>, IndexError> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT anon_sop_uid, path, size, attempts, generation FROM instances
                 WHERE state = 'queued' OR (state = 'failed' AND next_try <= ?1)
                 ORDER BY stored_at LIMIT ?2",
            )?;
            let rows: Vec<Pending> = stmt
                .query_map(params![now(), limit as i64], |r| {
                    Ok(Pending {
                        anon_sop_uid: r.get(0)?,
                        path: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        attempts: r.get(3)?,
                        generation: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut mark =
                c.prepare_cached("UPDATE instances SET state = 'uploading' WHERE anon_sop_uid = ?1")?;
            for p in &rows {
                mark.execute([&p.anon_sop_uid])?;
            }
            Ok(rows)
        })
    }

    /// Record an upload of the version `claimed`. Returns false, and changes nothing, when the
    /// instance was re-sent meanwhile: the new version is queued and will be uploaded too.
    pub fn mark_uploaded(&self, claimed: &Pending, etag: Option<String>) -> Result<bool, IndexError> {
        let (uid, generation) = (claimed.anon_sop_uid.clone(), claimed.generation);
        self.call(move |c| {
            let n = c.execute(
                "UPDATE instances SET state = 'uploaded', etag = ?2, uploaded_at = ?3, last_error = NULL,
                 next_try = NULL WHERE anon_sop_uid = ?1 AND generation = ?4 AND state = 'uploading'",
                params![uid, etag, now(), generation],
            )?;
            Ok(n > 0)
        })
    }

    /// Record a failed attempt of the version `claimed`; it is tried again at `next_try`. A
    /// version re-sent meanwhile is queued afresh, and keeps that.
    pub fn mark_failed(
        &self,
        claimed: &Pending,
        error: &str,
        next_try: DateTime<Utc>,
    ) -> Result<(), IndexError> {
        let (uid, generation, error) = (claimed.anon_sop_uid.clone(), claimed.generation, error.to_string());
        self.call(move |c| {
            c.execute(
                "UPDATE instances SET state = 'failed', attempts = attempts + 1, last_error = ?2, next_try = ?3
                 WHERE anon_sop_uid = ?1 AND generation = ?4 AND state = 'uploading'",
                params![uid, error, time(next_try), generation],
            )?;
            Ok(())
        })
    }

    /// Give claimed instances back untouched (the uploader could not even start on them).
    pub fn unclaim(&self, anon_sop_uids: Vec<String>) -> Result<(), IndexError> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "UPDATE instances SET state = 'queued' WHERE anon_sop_uid = ?1 AND state = 'uploading'",
            )?;
            for uid in &anon_sop_uids {
                stmt.execute([uid])?;
            }
            Ok(())
        })
    }

    /// After a restart nothing is uploading: what was is queued again, as an attempt made, so
    /// that a put whose answer the crash lost is found in the bucket rather than made twice.
    /// Returns how many.
    pub fn requeue_interrupted(&self) -> Result<usize, IndexError> {
        self.call(|c| {
            Ok(c.execute(
                "UPDATE instances SET state = 'queued', attempts = attempts + 1 WHERE state = 'uploading'",
                [],
            )?)
        })
    }

    /// Put every failed instance back in the queue for an immediate try. Returns how many.
    pub fn retry_failed(&self) -> Result<usize, IndexError> {
        self.call(|c| {
            Ok(c.execute(
                "UPDATE instances SET state = 'queued', next_try = NULL WHERE state = 'failed'",
                [],
            )?)
        })
    }

    /// Mark as uploaded the instances whose paths are already in the bucket (RSNA's rule: an
    /// existing key counts as uploaded), but for one uploaded before and queued again since: its
    /// bytes changed, and the key holds the old ones. Returns how many changed.
    pub fn mark_present(&self, paths: Vec<String>) -> Result<usize, IndexError> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "UPDATE instances SET state = 'uploaded', uploaded_at = ?2
                 WHERE path = ?1 AND state <> 'uploaded' AND uploaded_at IS NULL",
            )?;
            let at = now();
            let mut n = 0;
            for p in &paths {
                n += stmt.execute(params![p, at])?;
            }
            Ok(n)
        })
    }

    pub fn queue_status(&self) -> Result<QueueStatus, IndexError> {
        self.call(status)
    }
}

pub(super) fn status(c: &Connection) -> Result<QueueStatus, IndexError> {
    let mut s = QueueStatus::default();
    let mut stmt = c.prepare("SELECT state, COUNT(*) FROM instances GROUP BY state ORDER BY state")?;
    s.counts =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect::<Result<_, _>>()?;
    s.oldest_queued = c.query_row(
        "SELECT MIN(stored_at) FROM instances WHERE state IN ('queued', 'failed', 'uploading')",
        [],
        |r| r.get(0),
    )?;
    let mut stmt = c.prepare(
        "SELECT anon_sop_uid, attempts, COALESCE(last_error, ''), next_try FROM instances
         WHERE state = 'failed' ORDER BY stored_at LIMIT 100",
    )?;
    s.failed = stmt
        .query_map([], |r| {
            Ok(StuckItem {
                anon_sop_uid: r.get(0)?,
                attempts: r.get(1)?,
                last_error: r.get(2)?,
                next_try: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(s)
}
