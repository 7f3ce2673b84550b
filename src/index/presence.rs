//! What the index already holds of a study on a PACS, for `retrieve` to skip what is complete.
//! A read-only connection of its own: the node may be writing meanwhile (WAL).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::IndexError;

pub struct Presence {
    conn: Connection,
}

impl Presence {
    /// Open the index at `path`; `None` when there is none yet (nothing is held).
    pub fn open(path: &Path) -> Result<Option<Presence>, IndexError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Some(Presence { conn }))
    }

    /// Instances of the study (by its original UID) that have a file in the queue.
    pub fn instances_of_study(&self, study_uid: &str) -> Result<u64, IndexError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM instances i JOIN series s ON s.series_uid = i.series_uid WHERE s.study_uid = ?1",
            [study_uid],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// How many of these original SOP Instance UIDs the index holds.
    pub fn held(&self, sop_uids: &[String]) -> Result<u64, IndexError> {
        let mut stmt = self.conn.prepare_cached("SELECT 1 FROM instances WHERE sop_uid = ?1")?;
        let mut n = 0;
        for uid in sop_uids {
            if stmt.query_row([uid], |_| Ok(())).optional()?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The pseudonym of a study, once it has arrived.
    pub fn anon_study_uid(&self, study_uid: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .conn
            .query_row("SELECT anon_study_uid FROM studies WHERE study_uid = ?1", [study_uid], |r| r.get(0))
            .optional()?)
    }
}
