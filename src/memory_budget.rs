//! The node-wide budget for data sets held in memory (`scp.max_in_memory_total_bytes`).
//! `scp.max_in_memory_bytes` bounds one instance; times `scp.max_associations` that is over 2 GiB
//! with the defaults, so every association also takes its bytes from this shared budget before it
//! reads a data set into memory, and gives them back when the instance is done. One that does not
//! fit waits for others to finish, briefly, and is then refused as a limit of this node (0xA700).
//!
//! The callers run on the blocking pool (the pipeline), so the wait is a condition variable, not
//! an async semaphore.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What holding a data set of `bytes` in memory costs: the bytes read, and beside them the parsed
/// elements and the values repaired or replaced while anonymizing. Measured at about 1.4 times the
/// bytes (a 40 MiB data set raised the node's peak RSS by 57 MB): counted as 1.5.
pub fn cost(bytes: u64) -> u64 {
    bytes.saturating_add(bytes / 2)
}

/// The budget was still taken by other instances when the wait ended.
#[derive(Debug, thiserror::Error)]
#[error(
    "{needed} bytes in memory would exceed scp.max_in_memory_total_bytes ({limit} bytes, {in_use} in use) \
     after waiting {} s",
    waited.as_secs()
)]
pub struct OverBudget {
    pub needed: u64,
    pub limit: u64,
    pub in_use: u64,
    pub waited: Duration,
}

/// Bytes of data sets in memory across the node.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    in_use: Mutex<u64>,
    freed: Condvar,
}

/// Bytes taken from a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget { limit, in_use: Mutex::new(0), freed: Condvar::new() })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Take `bytes`, waiting up to `wait` for other instances to give theirs back. More than the
    /// whole budget is granted when nothing else holds any, so an instance is never refused for
    /// its own size alone (config validation keeps the largest allowed one within the budget).
    pub fn reserve(self: &Arc<Self>, bytes: u64, wait: Duration) -> Result<Reservation, OverBudget> {
        let deadline = Instant::now() + wait;
        // A poisoned lock only means a holder panicked; the count itself is always whole.
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *in_use == 0 || in_use.saturating_add(bytes) <= self.limit {
                *in_use += bytes;
                return Ok(Reservation { budget: self.clone(), bytes });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(OverBudget { needed: bytes, limit: self.limit, in_use: *in_use, waited: wait });
            }
            in_use = self.freed.wait_timeout(in_use, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        *self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut in_use = self.budget.in_use.lock().unwrap_or_else(|p| p.into_inner());
        *in_use -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_does_not_fit_waits_for_a_release_and_is_refused_when_none_comes() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(60, Duration::ZERO).unwrap();
        let refused = budget.reserve(50, Duration::from_millis(20)).unwrap_err();
        assert_eq!((refused.needed, refused.limit, refused.in_use), (50, 100, 60));
        assert!(refused.to_string().contains("scp.max_in_memory_total_bytes"), "{refused}");
        let small = budget.reserve(40, Duration::ZERO).unwrap();
        drop(small);
        // A release while waiting lets the waiter in.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(a);
        });
        let b = budget.reserve(90, Duration::from_secs(10)).unwrap();
        releaser.join().unwrap();
        assert_eq!(budget.in_use(), 90);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_lone_instance_larger_than_the_budget_is_let_through() {
        let budget = MemoryBudget::new(10);
        let big = budget.reserve(20, Duration::ZERO).unwrap();
        assert!(budget.reserve(1, Duration::ZERO).is_err());
        drop(big);
        assert_eq!(budget.in_use(), 0);
    }
}
