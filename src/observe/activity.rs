//! What the status page shows that the index does not keep: the last associations, bounded in
//! memory. (The instances stored per minute come from the audit trail, which outlives a restart.)

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};

/// Associations kept for the status page.
pub const RECENT: usize = 50;
/// Minutes in the instances-per-minute chart.
pub const MINUTES: usize = 60;

/// The process's activity (one node per process; see `metrics`).
pub static ACTIVITY: LazyLock<Activity> = LazyLock::new(Activity::default);

/// One association as the status page lists it. The calling AE title and the peer address are the
/// peer's own words: the page escapes them.
#[derive(Debug, Clone)]
pub struct AssociationRecord {
    pub ended: DateTime<Utc>,
    /// `None` when the request was rejected before its title could be read.
    pub calling_ae: Option<String>,
    pub peer: SocketAddr,
    pub instances: u64,
    pub failures: u64,
    pub end: &'static str,
}

#[derive(Default)]
pub struct Activity {
    recent: Mutex<VecDeque<AssociationRecord>>,
}

impl Activity {
    pub fn association(&self, record: AssociationRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// The last associations, newest first.
    pub fn recent(&self) -> Vec<AssociationRecord> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_fifty_newest_first() {
        let a = Activity::default();
        for i in 0..(RECENT as u64 + 7) {
            a.association(AssociationRecord {
                ended: Utc::now(),
                calling_ae: Some("SCU".into()),
                peer: "127.0.0.1:104".parse().unwrap(),
                instances: i,
                failures: 0,
                end: "released",
            });
        }
        let recent = a.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].instances, RECENT as u64 + 6);
        assert_eq!(recent[RECENT - 1].instances, 7);
    }
}
