//! What the status page shows that the index does not keep: the last associations and the
//! instances stored per minute over the last hour. Both are bounded in memory.

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
    /// (minute since the epoch, instances stored in it), oldest first, the last hour only.
    per_minute: Mutex<VecDeque<(i64, u64)>>,
}

impl Activity {
    pub fn association(&self, record: AssociationRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    pub fn instance_stored(&self) {
        self.stored_at(Utc::now().timestamp().div_euclid(60));
    }

    fn stored_at(&self, minute: i64) {
        let mut m = self.per_minute.lock().unwrap_or_else(|p| p.into_inner());
        match m.back_mut() {
            Some((last, n)) if *last == minute => *n += 1,
            _ => m.push_back((minute, 1)),
        }
        while m.front().is_some_and(|(first, _)| *first <= minute - MINUTES as i64) {
            m.pop_front();
        }
    }

    /// The last associations, newest first.
    pub fn recent(&self) -> Vec<AssociationRecord> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }

    /// Instances stored in each of the last [`MINUTES`] minutes, oldest first, ending now.
    pub fn per_minute(&self) -> Vec<u64> {
        self.per_minute_until(Utc::now().timestamp().div_euclid(60))
    }

    fn per_minute_until(&self, now: i64) -> Vec<u64> {
        let m = self.per_minute.lock().unwrap_or_else(|p| p.into_inner());
        let first = now - MINUTES as i64 + 1;
        let mut out = vec![0; MINUTES];
        for &(minute, n) in m.iter() {
            if (first..=now).contains(&minute) {
                out[(minute - first) as usize] = n;
            }
        }
        out
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

    #[test]
    fn minutes_older_than_an_hour_fall_out_of_the_chart() {
        let a = Activity::default();
        a.stored_at(1000);
        a.stored_at(1000);
        a.stored_at(1030);
        a.stored_at(1059);
        assert_eq!(a.per_minute_until(1059)[0], 2);
        assert_eq!(a.per_minute_until(1059)[59], 1);
        a.stored_at(1060);
        let chart = a.per_minute_until(1060);
        assert_eq!(chart.iter().sum::<u64>(), 3, "minute 1000 has left: {chart:?}");
        assert_eq!(chart[29], 1);
        assert_eq!(a.per_minute.lock().unwrap().len(), 3);
    }
}
