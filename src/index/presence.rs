//! What the index already holds of a study on a PACS, for `retrieve` to skip what is complete.
//! A read-only connection of its own: the node may be writing meanwhile (WAL).

use std::sync::Mutex;

use super::db::{args, Db, Location};
use super::IndexError;

pub struct Presence {
    conn: Mutex<Db>,
}

impl Presence {
    /// Open the index at `location`; `None` when there is none yet (nothing is held).
    pub fn open(location: &Location) -> Result<Option<Presence>, IndexError> {
        if let Location::Sqlite(path) = location {
            if !path.exists() {
                return Ok(None);
            }
        }
        Ok(Some(Presence { conn: Mutex::new(Db::reader(location)?) }))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Db> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Instances of the study (by its original UID) that have a file in the queue.
    pub fn instances_of_study(&self, study_uid: &str) -> Result<u64, IndexError> {
        Ok(self
            .conn()
            .query_one(
                "SELECT COUNT(*) FROM instances i JOIN series s ON s.series_uid = i.series_uid WHERE s.study_uid = ?1",
                args![study_uid],
            )?
            .get(0)?)
    }

    /// How many of these original SOP Instance UIDs the index holds.
    pub fn held(&self, sop_uids: &[String]) -> Result<u64, IndexError> {
        let mut c = self.conn();
        let mut n = 0;
        for uid in sop_uids {
            if c.query_opt("SELECT 1 FROM instances WHERE sop_uid = ?1", args![uid])?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The pseudonym of a study, once it has arrived.
    pub fn anon_study_uid(&self, study_uid: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .conn()
            .query_opt("SELECT anon_study_uid FROM studies WHERE study_uid = ?1", args![study_uid])?
            .map(|r| r.get(0))
            .transpose()?)
    }
}
