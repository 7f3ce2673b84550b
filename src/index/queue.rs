//! The upload queue lives in the `instances` table: `queued → uploading → uploaded`, or `failed`
//! with the attempt count, the last error and when to try again.

use super::db::{args, Db, DbError};
use super::{now, Index, IndexError};
use chrono::{DateTime, Utc};

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
    /// SHA-256 of the anonymized file (hex), when the index has it: stored with the object, it
    /// tells this version from an earlier one of the same size.
    pub digest: Option<String>,
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
        let node = self.node();
        self.call(move |c| {
            let rows: Vec<Pending> = c
                .query(
                    "SELECT anon_sop_uid, path, size, attempts, generation, digest FROM instances
                     WHERE node = ?3 AND (state = 'queued' OR (state = 'failed' AND next_try <= ?1))
                     ORDER BY stored_at LIMIT ?2",
                    args![now(), limit, node],
                )?
                .iter()
                .map(|r| {
                    Ok(Pending {
                        anon_sop_uid: r.get(0)?,
                        path: r.get(1)?,
                        size: r.get(2)?,
                        attempts: r.get(3)?,
                        generation: r.get(4)?,
                        digest: r.get(5)?,
                    })
                })
                .collect::<Result<_, DbError>>()?;
            for p in &rows {
                c.execute(
                    "UPDATE instances SET state = 'uploading' WHERE anon_sop_uid = ?1",
                    args![&p.anon_sop_uid],
                )?;
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
                args![uid, etag, now(), generation],
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
                args![uid, error, time(next_try), generation],
            )?;
            Ok(())
        })
    }

    /// Give claimed instances back untouched (the uploader could not even start on them).
    pub fn unclaim(&self, anon_sop_uids: Vec<String>) -> Result<(), IndexError> {
        self.call(move |c| {
            for uid in &anon_sop_uids {
                c.execute(
                    "UPDATE instances SET state = 'queued' WHERE anon_sop_uid = ?1 AND state = 'uploading'",
                    args![uid],
                )?;
            }
            Ok(())
        })
    }

    /// After a restart nothing of this node is uploading: what was is queued again, as an
    /// attempt made, so that a put whose answer the crash lost is found in the bucket rather than
    /// made twice. Returns how many.
    pub fn requeue_interrupted(&self) -> Result<usize, IndexError> {
        let node = self.node();
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE instances SET state = 'queued', attempts = attempts + 1 WHERE state = 'uploading' AND node = ?1",
                args![node],
            )?)
        })
    }

    /// Put every failed instance of this node back in the queue for an immediate try. Returns
    /// how many.
    pub fn retry_failed(&self) -> Result<usize, IndexError> {
        let node = self.node();
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE instances SET state = 'queued', next_try = NULL WHERE state = 'failed' AND node = ?1",
                args![node],
            )?)
        })
    }

    /// Mark as uploaded the instances of this node whose paths are already in the bucket (RSNA's
    /// rule: an existing key counts as uploaded), but for one uploaded before and queued again
    /// since: its bytes changed, and the key holds the old ones. Returns how many changed.
    pub fn mark_present(&self, paths: Vec<String>) -> Result<usize, IndexError> {
        let node = self.node();
        self.call(move |c| {
            let at = now();
            let mut n = 0;
            for p in &paths {
                n += c.execute(
                    "UPDATE instances SET state = 'uploaded', uploaded_at = ?2
                     WHERE path = ?1 AND node = ?3 AND state <> 'uploaded' AND uploaded_at IS NULL",
                    args![p, &at, &node],
                )?;
            }
            Ok(n)
        })
    }

    /// Take over the queues of node `from` (a dead node whose storage was moved here): its
    /// instances become this node's, queued for upload and for every destination again where
    /// they were under way. Returns how many instances.
    pub fn adopt(&self, from: &str) -> Result<usize, IndexError> {
        let (from, node) = (from.to_string(), self.node());
        self.call(move |c| {
            let n = c.execute(
                "UPDATE instances SET node = ?2,
                     state = CASE WHEN state = 'uploading' THEN 'queued' ELSE state END,
                     attempts = CASE WHEN state = 'uploading' THEN attempts + 1 ELSE attempts END
                 WHERE node = ?1",
                args![&from, &node],
            )?;
            c.execute(
                "UPDATE deliveries SET state = 'queued', attempts = attempts + 1
                 WHERE state = 'sending' AND instance_rowid IN (SELECT rowid FROM instances WHERE node = ?1)",
                args![&node],
            )?;
            // The dead node's queue of a destination may have stopped short of instances stored
            // before this node's last queued one: those are queued here, once.
            c.execute(
                "INSERT INTO deliveries(destination, anon_sop_uid, instance_rowid)
                 SELECT d.destination, i.anon_sop_uid, i.rowid
                 FROM (SELECT DISTINCT destination FROM deliveries) d, instances i
                 WHERE i.node = ?1
                   AND NOT EXISTS (SELECT 1 FROM deliveries e
                                   WHERE e.destination = d.destination AND e.anon_sop_uid = i.anon_sop_uid)
                 ON CONFLICT DO NOTHING",
                args![&node],
            )?;
            Ok(n)
        })
    }

    pub fn queue_status(&self) -> Result<QueueStatus, IndexError> {
        let node = self.node();
        self.call(move |c| status(c, &node))
    }
}

/// This node's upload queue.
pub(super) fn status(c: &mut Db, node: &str) -> Result<QueueStatus, IndexError> {
    let counts = c
        .query(
            "SELECT state, COUNT(*) FROM instances WHERE node = ?1 GROUP BY state ORDER BY state",
            args![node],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<Result<_, DbError>>()?;
    let oldest_queued = c
        .query_one(
            "SELECT MIN(stored_at) FROM instances WHERE node = ?1 AND state IN ('queued', 'failed', 'uploading')",
            args![node],
        )?
        .get(0)?;
    let failed = c
        .query(
            "SELECT anon_sop_uid, attempts, COALESCE(last_error, ''), next_try FROM instances
             WHERE node = ?1 AND state = 'failed' ORDER BY stored_at LIMIT 100",
            args![node],
        )?
        .iter()
        .map(|r| {
            Ok(StuckItem {
                anon_sop_uid: r.get(0)?,
                attempts: r.get(1)?,
                last_error: r.get(2)?,
                next_try: r.get(3)?,
            })
        })
        .collect::<Result<_, DbError>>()?;
    Ok(QueueStatus { counts, oldest_queued, failed })
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::index::fixture::index_with_instances;

    /// (state, attempts, last_error, next_try is set, etag) of `anon`.
    fn row(index: &Index, anon: &str) -> (String, u32, Option<String>, bool, Option<String>) {
        let anon = anon.to_string();
        index
            .call(move |c| {
                let r = c.query_one(
                    "SELECT state, attempts, last_error, next_try IS NOT NULL, etag FROM instances
                     WHERE anon_sop_uid = ?1",
                    args![anon],
                )?;
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
    }

    fn state(index: &Index, anon: &str) -> String {
        row(index, anon).0
    }

    fn uids(claimed: &[Pending]) -> Vec<&str> {
        claimed.iter().map(|p| p.anon_sop_uid.as_str()).collect()
    }

    /// Instance `i` received again; `digest` is its anonymized file's.
    fn resend(index: &Index, i: usize, digest: &'static str) {
        crate::index::fixture::resend(index, i, digest, 200);
    }

    #[test]
    fn a_claim_takes_the_oldest_queued_up_to_its_limit_and_marks_them_uploading() {
        let (_d, index) = index_with_instances(3);
        let first = index.claim(2).unwrap();
        assert_eq!(
            first[0],
            Pending {
                anon_sop_uid: "anon0".into(),
                path: "p/0.dcm".into(),
                size: 100,
                attempts: 0,
                generation: 0,
                digest: first[0].digest.clone(),
            }
        );
        assert_eq!(uids(&first), ["anon0", "anon1"]);
        assert_eq!((state(&index, "anon0"), state(&index, "anon2")), ("uploading".into(), "queued".into()));
        assert_eq!(uids(&index.claim(10).unwrap()), ["anon2"], "a claimed instance is not claimed twice");
        assert!(index.claim(10).unwrap().is_empty());
        let status = index.queue_status().unwrap();
        assert_eq!(status.counts, [("uploading".to_string(), 3)]);
        assert_eq!(status.oldest_queued.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        index.close();
    }

    #[test]
    fn an_upload_recorded_is_done_once_and_keeps_its_etag() {
        let (_d, index) = index_with_instances(2);
        let claimed = index.claim(10).unwrap();
        assert!(index.mark_uploaded(&claimed[0], Some("\"e1\"".into())).unwrap());
        assert_eq!(row(&index, "anon0"), ("uploaded".into(), 0, None, false, Some("\"e1\"".into())));
        assert!(
            !index.mark_uploaded(&claimed[0], None).unwrap(),
            "not uploading any more: nothing to record"
        );
        assert_eq!(row(&index, "anon0").4.as_deref(), Some("\"e1\""), "the second record changed nothing");
        assert_eq!(state(&index, "anon1"), "uploading", "only the instance named");
        let status = index.queue_status().unwrap();
        assert_eq!(status.counts, [("uploaded".to_string(), 1), ("uploading".to_string(), 1)]);
        assert_eq!(status.oldest_queued.as_deref(), Some("2026-01-01T00:00:01.000Z"));
        index.close();
    }

    #[test]
    fn a_failed_attempt_is_counted_and_waits_for_its_next_try() {
        let (_d, index) = index_with_instances(2);
        let claimed = index.claim(10).unwrap();
        index.mark_failed(&claimed[0], "503 Slow Down", Utc::now() + Duration::hours(1)).unwrap();
        assert_eq!(row(&index, "anon0"), ("failed".into(), 1, Some("503 Slow Down".into()), true, None));
        index.unclaim(vec!["anon1".into()]).unwrap();
        assert_eq!(
            row(&index, "anon1"),
            ("queued".into(), 0, None, false, None),
            "given back, no attempt made"
        );
        assert_eq!(uids(&index.claim(10).unwrap()), ["anon1"], "a failure is not tried before its time");
        let status = index.queue_status().unwrap();
        assert_eq!(status.failed.len(), 1);
        assert_eq!((status.failed[0].anon_sop_uid.as_str(), status.failed[0].attempts), ("anon0", 1));
        assert_eq!(status.failed[0].last_error, "503 Slow Down");

        // Its time comes: claimed again with its attempts, failed again, counted again.
        index.retry_failed().unwrap();
        let again = index.claim(10).unwrap();
        assert_eq!(uids(&again), ["anon0"]);
        assert_eq!(again[0].attempts, 1);
        index.mark_failed(&again[0], "timeout", Utc::now() - Duration::seconds(1)).unwrap();
        assert_eq!(row(&index, "anon0").1, 2);
        let due = index.claim(10).unwrap();
        assert_eq!((uids(&due), due[0].attempts), (vec!["anon0"], 2), "a failure whose time has come");
        assert!(index.mark_uploaded(&due[0], None).unwrap());
        assert_eq!(row(&index, "anon0"), ("uploaded".into(), 2, None, false, None), "the error is cleared");
        index.close();
    }

    #[test]
    fn retry_failed_queues_every_failure_for_now_and_nothing_else() {
        let (_d, index) = index_with_instances(3);
        let claimed = index.claim(2).unwrap();
        let later = Utc::now() + Duration::days(1);
        for p in &claimed {
            index.mark_failed(p, "denied", later).unwrap();
        }
        assert_eq!(index.retry_failed().unwrap(), 2);
        assert_eq!(row(&index, "anon0"), ("queued".into(), 1, Some("denied".into()), false, None));
        assert_eq!(index.retry_failed().unwrap(), 0);
        assert_eq!(uids(&index.claim(10).unwrap()), ["anon0", "anon1", "anon2"]);
        index.close();
    }

    #[test]
    fn after_a_restart_what_was_uploading_is_queued_as_an_attempt_made() {
        let (_d, index) = index_with_instances(3);
        let claimed = index.claim(2).unwrap();
        assert!(index.mark_uploaded(&claimed[1], None).unwrap());
        assert_eq!(index.requeue_interrupted().unwrap(), 1);
        assert_eq!(row(&index, "anon0"), ("queued".into(), 1, None, false, None));
        assert_eq!(state(&index, "anon1"), "uploaded");
        assert_eq!(
            row(&index, "anon2"),
            ("queued".into(), 0, None, false, None),
            "never claimed: no attempt"
        );
        assert_eq!(index.requeue_interrupted().unwrap(), 0, "nothing is uploading now");
        let again = index.claim(10).unwrap();
        assert_eq!(
            again.iter().map(|p| (p.anon_sop_uid.as_str(), p.attempts)).collect::<Vec<_>>(),
            [("anon0", 1), ("anon2", 0)]
        );
        index.close();
    }

    #[test]
    fn objects_already_in_the_bucket_count_as_uploaded_but_for_a_changed_re_send() {
        let (_d, index) = index_with_instances(4);
        // anon1 failed once, anon2 was uploaded and then re-sent with other bytes: queued again.
        let claimed = index.claim(3).unwrap();
        index.mark_failed(&claimed[1], "x", Utc::now() + Duration::hours(1)).unwrap();
        assert!(index.mark_uploaded(&claimed[2], None).unwrap());
        resend(&index, 2, "v1");
        assert_eq!(state(&index, "anon2"), "queued");
        index.requeue_interrupted().unwrap();
        let listed = ["p/0.dcm", "p/1.dcm", "p/2.dcm", "p/9.dcm"].map(String::from).to_vec();
        assert_eq!(index.mark_present(listed.clone()).unwrap(), 2);
        assert_eq!(state(&index, "anon0"), "uploaded");
        assert_eq!(state(&index, "anon1"), "uploaded");
        assert_eq!(state(&index, "anon2"), "queued", "the key holds the old bytes");
        assert_eq!(state(&index, "anon3"), "queued", "not listed");
        assert_eq!(index.mark_present(listed).unwrap(), 0, "nothing more to mark");
        index.close();
    }

    #[test]
    fn an_instance_re_sent_during_its_upload_is_not_settled_by_that_upload() {
        let (_d, index) = index_with_instances(2);
        let claimed = index.claim(10).unwrap();
        assert_eq!(claimed[0].generation, 0);
        resend(&index, 0, "v1");
        resend(&index, 1, "v1");
        assert_eq!(state(&index, "anon0"), "queued", "the new version waits for its own upload");
        assert!(!index.mark_uploaded(&claimed[0], Some("old".into())).unwrap());
        index.mark_failed(&claimed[1], "lost", Utc::now() - Duration::seconds(1)).unwrap();
        assert_eq!(row(&index, "anon0"), ("queued".into(), 0, None, false, None));
        assert_eq!(
            row(&index, "anon1"),
            ("queued".into(), 0, None, false, None),
            "the failure of the old one"
        );

        let again = index.claim(10).unwrap();
        assert_eq!(again.iter().map(|p| (p.size, p.generation)).collect::<Vec<_>>(), [(200, 1), (200, 1)]);
        let anon0 = again.iter().find(|p| p.anon_sop_uid == "anon0").unwrap();
        assert!(index.mark_uploaded(anon0, None).unwrap(), "the new version's upload settles it");
        assert_eq!(state(&index, "anon0"), "uploaded");
        // Re-sent with the very bytes uploaded: nothing to upload again.
        resend(&index, 0, "v1");
        assert_eq!(state(&index, "anon0"), "uploaded");
        index.close();
    }

    #[test]
    fn the_same_bytes_re_sent_during_their_upload_are_left_to_it_and_after_a_failure_keep_their_attempts() {
        let (_d, index) = index_with_instances(2);
        let claimed = index.claim(10).unwrap();
        resend(&index, 0, "v0");
        assert_eq!(state(&index, "anon0"), "uploading", "the upload under way carries these bytes");
        assert!(index.mark_uploaded(&claimed[0], None).unwrap(), "and settles them: no second upload");
        index.mark_failed(&claimed[1], "lost", Utc::now() + Duration::hours(1)).unwrap();
        resend(&index, 1, "v0");
        let (state, attempts, ..) = row(&index, "anon1");
        assert_eq!((state.as_str(), attempts), ("queued", 1), "tried now, but as a retry: HEAD first");
        let again = index.claim(10).unwrap();
        assert_eq!((again.len(), again[0].attempts, again[0].generation), (1, 1, 0));
        index.close();
    }
}
