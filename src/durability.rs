//! When written data must reach stable storage.

/// The node acknowledges an instance only once it is durable, so it pays an fsync per commit. A
/// batch run on files has nobody to acknowledge: a crash means re-running it, so it writes to the
/// page cache and makes everything durable once, at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each commit is on stable storage when it returns.
    EachCommit,
    /// Commits reach the page cache; closing the spool and the index makes them durable.
    AtEnd,
}
