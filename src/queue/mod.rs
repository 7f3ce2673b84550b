//! Where instances go after the engine: the durable spool of anonymized files, or quarantine; and
//! the temporary spill files that hold large data sets on their way there.

mod in_flight;
pub mod quarantine;
pub mod spill;
pub mod spool;

pub use quarantine::{Held, Quarantine, Reason};
pub use spill::Spill;
pub use spool::{Spool, SpoolError, StageWriter, Staged};
