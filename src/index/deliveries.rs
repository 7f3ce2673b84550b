//! The queue of each DICOM destination: one row per (destination, instance), `queued → sending →
//! sent`, or `failed` with the attempt count, the last error and when to try again. The S3 state
//! stays in `instances`; a destination never changes it, and S3 never changes these rows.
//!
//! Rows are added by [`Index::enqueue_deliveries`], which the destination's worker calls: every
//! instance recorded after the last one it queued (by rowid, which only grows) gets a row. So the
//! ingest path does not know the destinations, and a destination added later receives the whole
//! archive. A re-sent instance keeps its rowid: recording it queues its rows again, and a send of
//! the version it replaced, still under way, settles nothing (the instance's `generation` moved).

use super::db::{args, Db, DbError};
use super::{now, Index, IndexError};
use chrono::{DateTime, Utc};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deliveries (
    destination    TEXT NOT NULL,              -- export.dicom[].name
    anon_sop_uid   TEXT NOT NULL,
    instance_rowid INTEGER NOT NULL,           -- instances.rowid: the order of arrival
    state          TEXT NOT NULL DEFAULT 'queued',  -- queued, sending, sent, failed
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    next_try       TEXT,
    sent_at        TEXT,
    PRIMARY KEY (destination, anon_sop_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries(destination, state, instance_rowid);
CREATE INDEX IF NOT EXISTS deliveries_by_rowid ON deliveries(destination, instance_rowid);
"#;

/// An instance to send to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub anon_sop_uid: String,
    pub sop_class_uid: String,
    /// The pseudonyms of its study and series: what a C-FIND of the destination asks about.
    pub anon_study_uid: String,
    pub anon_series_uid: String,
    /// Relative to the public directory.
    pub path: String,
    pub size: u64,
    /// Earlier attempts: the destination may already hold it.
    pub attempts: u32,
    /// The version of the instance claimed (`instances.generation`).
    pub generation: i64,
}

/// What became of a claimed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryRecord {
    /// The destination has version `generation` (stored now, or found there).
    Sent { uid: String, generation: i64 },
    /// An attempt failed; try again at `next_try`.
    Failed { uid: String, generation: i64, error: String, next_try: DateTime<Utc> },
    /// Its association ended before its turn: queued again, not an attempt.
    NotTried(String),
}

/// One destination's line in `queue status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationStatus {
    pub destination: String,
    pub counts: Vec<(String, u64)>,
    /// Failed instances: anonymized UID, attempts, last error, next try.
    pub failed: Vec<(String, u32, String, Option<String>)>,
    /// When the oldest instance not yet sent was stored.
    pub oldest_waiting: Option<String>,
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// At most this many rows are queued per call, so one call never holds the writer for long.
const ENQUEUE_BATCH: i64 = 5000;

impl Index {
    /// Queue for `destination` the instances recorded since the last one queued for it. Returns
    /// how many were added.
    pub fn enqueue_deliveries(&self, destination: &str) -> Result<usize, IndexError> {
        let (d, node) = (destination.to_string(), self.node());
        self.call(move |c| {
            Ok(c.execute(
                "INSERT INTO deliveries(destination, anon_sop_uid, instance_rowid)
                 SELECT ?1, anon_sop_uid, rowid FROM instances
                 WHERE node = ?3 AND rowid > (SELECT COALESCE(MAX(d.instance_rowid), 0) FROM deliveries d
                                              JOIN instances i ON i.rowid = d.instance_rowid
                                              WHERE d.destination = ?1 AND i.node = ?3)
                 ORDER BY rowid LIMIT ?2
                 ON CONFLICT DO NOTHING",
                args![d, ENQUEUE_BATCH, node],
            )?)
        })
    }

    /// Take up to `limit` instances for `destination`, oldest first: queued ones, and failed ones
    /// whose next try has come. They become `sending`.
    pub fn claim_deliveries(&self, destination: &str, limit: usize) -> Result<Vec<Delivery>, IndexError> {
        let (d, node) = (destination.to_string(), self.node());
        self.call(move |c| {
            let rows = c.query(
                "SELECT d.anon_sop_uid, i.sop_class_uid, i.path, i.size, d.attempts, st.anon_study_uid, se.anon_series_uid,
                        i.generation
                 FROM deliveries d JOIN instances i ON i.rowid = d.instance_rowid
                 JOIN series se ON se.series_uid = i.series_uid JOIN studies st ON st.study_uid = se.study_uid
                 WHERE d.destination = ?1 AND i.node = ?4
                   AND (d.state = 'queued' OR (d.state = 'failed' AND d.next_try <= ?2))
                 ORDER BY d.instance_rowid LIMIT ?3",
                args![&d, now(), limit, node],
            )?;
            let rows: Vec<Delivery> = rows
                .iter()
                .map(|r| {
                    Ok(Delivery {
                        anon_sop_uid: r.get(0)?,
                        sop_class_uid: r.get(1)?,
                        path: r.get(2)?,
                        size: r.get(3)?,
                        attempts: r.get(4)?,
                        anon_study_uid: r.get(5)?,
                        anon_series_uid: r.get(6)?,
                        generation: r.get(7)?,
                    })
                })
                .collect::<Result<_, DbError>>()?;
            for p in &rows {
                c.execute(
                    "UPDATE deliveries SET state = 'sending' WHERE destination = ?1 AND anon_sop_uid = ?2",
                    args![&d, &p.anon_sop_uid],
                )?;
            }
            Ok(rows)
        })
    }

    /// Record what became of claimed instances, all in one transaction.
    pub fn record_deliveries(
        &self,
        destination: &str,
        records: Vec<DeliveryRecord>,
    ) -> Result<(), IndexError> {
        let d = destination.to_string();
        self.call(move |c| {
            // Only the version claimed settles its row: a re-send meanwhile queued it again.
            let at = now();
            for r in &records {
                match r {
                    DeliveryRecord::Sent { uid, generation } => c.execute(
                        "UPDATE deliveries SET state = 'sent', sent_at = ?3, last_error = NULL, next_try = NULL
                         WHERE destination = ?1 AND anon_sop_uid = ?2 AND state = 'sending'
                           AND (SELECT generation FROM instances WHERE rowid = deliveries.instance_rowid) = ?4",
                        args![&d, uid, &at, generation],
                    )?,
                    DeliveryRecord::Failed { uid, generation, error, next_try } => c.execute(
                        "UPDATE deliveries SET state = 'failed', attempts = attempts + 1, last_error = ?3, next_try = ?4
                         WHERE destination = ?1 AND anon_sop_uid = ?2 AND state = 'sending'
                           AND (SELECT generation FROM instances WHERE rowid = deliveries.instance_rowid) = ?5",
                        args![&d, uid, error, time(*next_try), generation],
                    )?,
                    DeliveryRecord::NotTried(uid) => c.execute(
                        "UPDATE deliveries SET state = 'queued'
                         WHERE destination = ?1 AND anon_sop_uid = ?2 AND state = 'sending'",
                        args![&d, uid],
                    )?,
                };
            }
            Ok(())
        })
    }

    /// After a restart nothing is being sent: what was is queued again, as an attempt (its outcome
    /// is unknown, so the destination may hold it: a STOW-RS destination is asked before the
    /// next send). Returns how many.
    pub fn requeue_sending(&self, destination: &str) -> Result<usize, IndexError> {
        let (d, node) = (destination.to_string(), self.node());
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE deliveries SET state = 'queued', attempts = attempts + 1
                 WHERE destination = ?1 AND state = 'sending'
                   AND instance_rowid IN (SELECT rowid FROM instances WHERE node = ?2)",
                args![d, node],
            )?)
        })
    }

    /// Every destination's counts and failed instances, as `queue status` shows them.
    pub fn destination_status(&self) -> Result<Vec<DestinationStatus>, IndexError> {
        let node = self.node();
        self.call(move |c| destination_status(c, &node))
    }

    /// Put every failed delivery back in its queue for an immediate try. Returns how many.
    pub fn retry_failed_deliveries(&self) -> Result<usize, IndexError> {
        let node = self.node();
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE deliveries SET state = 'queued', next_try = NULL
                 WHERE state = 'failed' AND instance_rowid IN (SELECT rowid FROM instances WHERE node = ?1)",
                args![node],
            )?)
        })
    }
}

/// This node's queue of each destination.
pub(super) fn destination_status(c: &mut Db, node: &str) -> Result<Vec<DestinationStatus>, IndexError> {
    let mut out: Vec<DestinationStatus> = Vec::new();
    let rows = c.query(
        "SELECT d.destination, d.state, COUNT(*) FROM deliveries d JOIN instances i ON i.rowid = d.instance_rowid
         WHERE i.node = ?1 GROUP BY d.destination, d.state ORDER BY d.destination, d.state",
        args![node],
    )?;
    for row in rows {
        let (destination, state, n): (String, String, u64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        if out.last().is_none_or(|s| s.destination != destination) {
            out.push(DestinationStatus { destination: destination.clone(), ..Default::default() });
        }
        let last = out.last_mut().expect("pushed above");
        last.counts.push((state, n));
    }
    for s in &mut out {
        s.failed = c
            .query(
                "SELECT d.anon_sop_uid, d.attempts, COALESCE(d.last_error, ''), d.next_try
                 FROM deliveries d JOIN instances i ON i.rowid = d.instance_rowid
                 WHERE d.destination = ?1 AND d.state = 'failed' AND i.node = ?2 ORDER BY d.instance_rowid LIMIT 100",
                args![&s.destination, node],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .collect::<Result<_, DbError>>()?;
        s.oldest_waiting = c
            .query_one(
                "SELECT MIN(i.stored_at) FROM deliveries d JOIN instances i ON i.rowid = d.instance_rowid
                 WHERE d.destination = ?1 AND d.state <> 'sent' AND i.node = ?2",
                args![&s.destination, node],
            )?
            .get(0)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::DeliveryRecord;
    use crate::index::fixture::index_with_instances;
    use crate::index::Index;

    #[test]
    fn each_destination_queues_every_instance_once_and_keeps_its_own_state() {
        let (_d, index) = index_with_instances(3);
        assert_eq!(index.enqueue_deliveries("a").unwrap(), 3);
        assert_eq!(index.enqueue_deliveries("a").unwrap(), 0);
        assert_eq!(index.enqueue_deliveries("b").unwrap(), 3);
        let claimed = index.claim_deliveries("a", 2).unwrap();
        assert_eq!(claimed.iter().map(|c| c.anon_sop_uid.as_str()).collect::<Vec<_>>(), ["anon0", "anon1"]);
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let records = vec![
            DeliveryRecord::Sent { uid: "anon0".into(), generation: 0 },
            DeliveryRecord::Failed {
                uid: "anon1".into(),
                generation: 0,
                error: "0xA700".into(),
                next_try: past,
            },
        ];
        index.record_deliveries("a", records).unwrap();
        // The failed one is due again; the sent one never comes back.
        let again = index.claim_deliveries("a", 10).unwrap();
        assert_eq!(
            again.iter().map(|c| (c.anon_sop_uid.as_str(), c.attempts)).collect::<Vec<_>>(),
            [("anon1", 1), ("anon2", 0)]
        );
        assert_eq!(index.requeue_sending("a").unwrap(), 2);
        let status = index.destination_status().unwrap();
        assert_eq!(status.len(), 2);
        assert_eq!(status[0].counts, [("queued".to_string(), 2), ("sent".to_string(), 1)]);
        assert_eq!(status[1].counts, [("queued".to_string(), 3)]);
        index.close();
    }

    /// Record instance `i` again, as a re-send does, its anonymized file's digest `digest`.
    fn resend(index: &Index, i: usize, digest: &'static str) {
        crate::index::fixture::resend(index, i, digest, 11);
    }

    #[test]
    fn the_same_bytes_re_sent_during_their_send_are_left_to_it() {
        let (_d, index) = index_with_instances(1);
        resend(&index, 0, "v1");
        index.enqueue_deliveries("a").unwrap();
        let claimed = index.claim_deliveries("a", 10).unwrap();
        // The very bytes on their way come again (a sender's retry).
        resend(&index, 0, "v1");
        let sent = vec![DeliveryRecord::Sent { uid: "anon0".into(), generation: claimed[0].generation }];
        index.record_deliveries("a", sent).unwrap();
        assert!(index.claim_deliveries("a", 10).unwrap().is_empty(), "sent once, not twice");
        // Other bytes: a new version, sent again.
        resend(&index, 0, "v2");
        assert_eq!(index.claim_deliveries("a", 10).unwrap().len(), 1);
        index.close();
    }

    #[test]
    fn an_instance_re_sent_during_its_send_is_sent_again_and_after_it_too() {
        let (_d, index) = index_with_instances(2);
        index.enqueue_deliveries("a").unwrap();
        let claimed = index.claim_deliveries("a", 10).unwrap();
        assert_eq!(claimed.len(), 2);
        // anon0 is re-sent while both are on their way; then both sends succeed.
        resend(&index, 0, "v1");
        let sent = claimed
            .iter()
            .map(|c| DeliveryRecord::Sent { uid: c.anon_sop_uid.clone(), generation: c.generation })
            .collect();
        index.record_deliveries("a", sent).unwrap();
        let again = index.claim_deliveries("a", 10).unwrap();
        assert_eq!(
            again.iter().map(|c| (c.anon_sop_uid.as_str(), c.generation)).collect::<Vec<_>>(),
            [("anon0", 1)]
        );
        index
            .record_deliveries("a", vec![DeliveryRecord::Sent { uid: "anon0".into(), generation: 1 }])
            .unwrap();
        assert!(index.claim_deliveries("a", 10).unwrap().is_empty());
        // Sent, then re-sent: sent again (the high-water mark alone never saw it).
        resend(&index, 1, "v1");
        assert_eq!(index.enqueue_deliveries("a").unwrap(), 0);
        let again = index.claim_deliveries("a", 10).unwrap();
        assert_eq!(again.iter().map(|c| c.anon_sop_uid.as_str()).collect::<Vec<_>>(), ["anon1"]);
        index.close();
    }

    #[test]
    fn an_upload_of_a_version_re_sent_meanwhile_settles_nothing() {
        let (_d, index) = index_with_instances(1);
        let claimed = index.claim(10).unwrap();
        resend(&index, 0, "v1");
        assert!(
            !index.mark_uploaded(&claimed[0], None).unwrap(),
            "the old version's upload settled the new one"
        );
        index.mark_failed(&claimed[0], "late", chrono::Utc::now()).unwrap();
        let again = index.claim(10).unwrap();
        assert_eq!((again.len(), again[0].generation, again[0].attempts), (1, 1, 0), "{again:?}");
        assert!(index.mark_uploaded(&again[0], None).unwrap());
        assert!(index.claim(10).unwrap().is_empty());
        // A restart with an upload under way: tried again as an attempt, so the bucket is asked first.
        resend(&index, 0, "v2");
        assert_eq!(index.claim(10).unwrap().len(), 1);
        assert_eq!(index.requeue_interrupted().unwrap(), 1);
        assert_eq!(index.claim(10).unwrap()[0].attempts, 1);
        index.close();
    }

    /// Issue 23: a re-send whose anonymized bytes are those already uploaded and sent queues
    /// nothing; one whose bytes changed queues both again.
    #[test]
    fn an_identical_re_send_is_neither_uploaded_nor_sent_again() {
        let (_d, index) = index_with_instances(1);
        resend(&index, 0, "v1");
        index.enqueue_deliveries("a").unwrap();
        let upload = index.claim(10).unwrap();
        assert!(index.mark_uploaded(&upload[0], None).unwrap());
        let send = index.claim_deliveries("a", 10).unwrap();
        let sent = DeliveryRecord::Sent { uid: "anon0".into(), generation: send[0].generation };
        index.record_deliveries("a", vec![sent]).unwrap();

        resend(&index, 0, "v1");
        assert!(index.claim(10).unwrap().is_empty(), "uploaded again");
        assert!(index.claim_deliveries("a", 10).unwrap().is_empty(), "sent again");
        resend(&index, 0, "v2");
        assert_eq!(index.claim(10).unwrap().len(), 1);
        assert_eq!(index.claim_deliveries("a", 10).unwrap().len(), 1);
        index.close();
    }
}
