//! Where instances go after the engine: the durable spool of anonymized files, or quarantine.

pub mod quarantine;
pub mod spool;

pub use quarantine::{Quarantine, Reason};
pub use spool::{Spool, SpoolError};
