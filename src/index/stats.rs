//! Read-only queries for the operations endpoint, on a connection of their own: WAL lets them
//! read while the writer commits, so a status page or a scrape never waits in the writer's queue
//! or delays an acknowledgement. They return counts and anonymized values only.

use std::sync::Mutex;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::db::{args, Db, DbError, Location};
use super::queue::QueueStatus;
use super::IndexError;

/// How many of each the index holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub patients: u64,
    pub studies: u64,
    pub series: u64,
    pub instances: u64,
}

/// A read-only view of the index. On a shared database the counts are the whole archive's and
/// the queues this node's.
pub struct Reader {
    /// Connections are not `Sync`; reads are short, so they take turns.
    conn: Mutex<Db>,
    location: Location,
}

impl Reader {
    /// Open the index at `path`, which the writer has already created.
    pub fn open(path: &std::path::Path) -> Result<Reader, IndexError> {
        Reader::open_at(&Location::Sqlite(path.to_path_buf()))
    }

    pub fn open_at(location: &Location) -> Result<Reader, IndexError> {
        Ok(Reader { conn: Mutex::new(Db::reader(location)?), location: location.clone() })
    }

    /// Run `f` on the connection, made again if PostgreSQL closed it (see [`Db::reconnecting`]).
    fn with<T>(&self, f: impl Fn(&mut Db) -> Result<T, IndexError>) -> Result<T, IndexError> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).reconnecting(&self.location, f)
    }

    /// Patients with at least one study (the default patient only once it has one).
    pub fn counts(&self) -> Result<Counts, IndexError> {
        self.with(|c| {
            let mut n = |sql: &str| -> Result<u64, DbError> { c.query_one(sql, args![])?.get(0) };
            Ok(Counts {
                patients: n("SELECT COUNT(DISTINCT patient_id) FROM studies")?,
                studies: n("SELECT COUNT(*) FROM studies")?,
                series: n("SELECT COUNT(*) FROM series")?,
                instances: n("SELECT COUNT(*) FROM instances")?,
            })
        })
    }

    pub fn queue_status(&self) -> Result<QueueStatus, IndexError> {
        self.with(|c| super::queue::status(c, self.location.node()))
    }

    /// Instances this node stored in each of the `minutes` minutes up to `now`, oldest first,
    /// read from the audit trail, so that the status page's chart survives a restart.
    pub fn stored_per_minute(&self, now: DateTime<Utc>, minutes: usize) -> Result<Vec<u64>, IndexError> {
        let last = now.timestamp().div_euclid(60);
        let first = last - minutes as i64 + 1;
        let since = DateTime::from_timestamp(first * 60, 0).unwrap_or_default();
        let rows = self.with(|c| {
            Ok(c.query(
                "SELECT substr(at, 1, 16), COUNT(*) FROM audit WHERE at >= ?1 AND status = '0x0000' GROUP BY 1",
                args![since.format("%Y-%m-%dT%H:%M").to_string()],
            )?)
        })?;
        let mut out = vec![0; minutes];
        for row in rows {
            let (minute, n): (String, u64) = (row.get(0)?, row.get(1)?);
            let Ok(t) = NaiveDateTime::parse_from_str(&minute, "%Y-%m-%dT%H:%M") else { continue };
            let at = t.and_utc().timestamp().div_euclid(60);
            if (first..=last).contains(&at) {
                out[(at - first) as usize] = n;
            }
        }
        Ok(out)
    }

    /// Each DICOM destination's queue.
    pub fn destination_status(&self) -> Result<Vec<super::DestinationStatus>, IndexError> {
        self.with(|c| super::deliveries::destination_status(c, self.location.node()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, Owner};

    #[test]
    fn an_empty_index_counts_nothing_and_the_reader_cannot_write() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("index.db");
        let index = Index::open(&path, &Owner::for_site("1")).unwrap();
        let reader = Reader::open(&path).unwrap();
        assert_eq!(reader.counts().unwrap(), Counts::default());
        assert!(reader.queue_status().unwrap().counts.is_empty());
        assert_eq!(reader.stored_per_minute(chrono::Utc::now(), 60).unwrap(), vec![0; 60]);
        let mut c = reader.conn.lock().unwrap();
        assert!(c.execute("DELETE FROM meta", args![]).is_err());
        drop(c);
        index.close();
    }
}
