//! Read-only queries for the operations endpoint, on a connection of their own: WAL lets them
//! read while the writer commits, so a status page or a scrape never waits in the writer's queue
//! or delays an acknowledgement. They return counts and anonymized values only.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{Connection, OpenFlags};

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

/// A read-only view of the index.
pub struct Reader {
    /// rusqlite connections are not `Sync`; reads are short, so they take turns.
    conn: Mutex<Connection>,
}

impl Reader {
    /// Open the index at `path`, which the writer has already created.
    pub fn open(path: &Path) -> Result<Reader, IndexError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader { conn: Mutex::new(conn) })
    }

    /// Patients with at least one study (the default patient only once it has one).
    pub fn counts(&self) -> Result<Counts, IndexError> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|v| v as u64);
        Ok(Counts {
            patients: n("SELECT COUNT(DISTINCT patient_id) FROM studies")?,
            studies: n("SELECT COUNT(*) FROM studies")?,
            series: n("SELECT COUNT(*) FROM series")?,
            instances: n("SELECT COUNT(*) FROM instances")?,
        })
    }

    pub fn queue_status(&self) -> Result<QueueStatus, IndexError> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        super::queue::status(&c)
    }

    /// Instances the SCP stored in each of the `minutes` minutes up to `now`, oldest first, read
    /// from the audit trail, so that the status page's chart survives a restart.
    pub fn stored_per_minute(&self, now: DateTime<Utc>, minutes: usize) -> Result<Vec<u64>, IndexError> {
        let last = now.timestamp().div_euclid(60);
        let first = last - minutes as i64 + 1;
        let since = DateTime::from_timestamp(first * 60, 0).unwrap_or_default();
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = c.prepare_cached(
            "SELECT substr(at, 1, 16), COUNT(*) FROM audit WHERE at >= ?1 AND status = '0x0000' GROUP BY 1",
        )?;
        let rows = stmt.query_map([since.format("%Y-%m-%dT%H:%M").to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = vec![0; minutes];
        for row in rows {
            let (minute, n) = row?;
            let Ok(t) = NaiveDateTime::parse_from_str(&minute, "%Y-%m-%dT%H:%M") else { continue };
            let at = t.and_utc().timestamp().div_euclid(60);
            if (first..=last).contains(&at) {
                out[(at - first) as usize] = n as u64;
            }
        }
        Ok(out)
    }

    /// Each DICOM destination's queue (none in an index no exporting node has opened yet).
    pub fn destination_status(&self) -> Result<Vec<super::DestinationStatus>, IndexError> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        super::deliveries::destination_status(&c)
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
        let c = reader.conn.lock().unwrap();
        assert!(c.execute("DELETE FROM meta", []).is_err());
        drop(c);
        index.close();
    }
}
