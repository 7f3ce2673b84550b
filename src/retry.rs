//! How long a worker waits before trying again: capped exponential backoff with full jitter,
//! shared by the S3 uploader and the DICOM exporters so that both back off alike.

use std::time::Duration;

/// The first wait's ceiling.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// No wait is longer: a destination back after an outage is tried within five minutes.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Full jitter: a random wait between 0 and min(cap, base × 2^attempt), so that many items that
/// failed together do not all come back at once.
pub fn backoff(attempt: u32) -> Duration {
    backoff_ceiling(attempt).mul_f64(fastrand::f64())
}

/// The longest wait after `failures` failures in a row.
pub fn backoff_ceiling(failures: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1u32 << failures.min(20)).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_a_doubling_cap() {
        for attempt in 0..30 {
            let ceiling = backoff_ceiling(attempt);
            for _ in 0..50 {
                assert!(backoff(attempt) <= ceiling);
            }
        }
        assert_eq!(backoff_ceiling(0), Duration::from_secs(1));
        assert_eq!(backoff_ceiling(3), Duration::from_secs(8));
        assert_eq!(backoff_ceiling(40), Duration::from_secs(300));
    }
}
