//! Temporary files for data sets too large to hold in memory: a received data set while it
//! arrives, a Deflated one while it inflates. Deleted when dropped; the node empties the directory
//! at start, since nothing in it was ever acknowledged.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_SPILL: AtomicU64 = AtomicU64::new(0);

/// A spill file, deleted when dropped.
#[derive(Debug)]
pub struct Spill {
    path: PathBuf,
}

impl Spill {
    /// Create a new, empty spill file in `dir`.
    pub fn create(dir: &Path) -> io::Result<(Spill, File)> {
        let path =
            dir.join(format!("{}-{}.spill", std::process::id(), NEXT_SPILL.fetch_add(1, Ordering::Relaxed)));
        // Received as sent: PHI.
        let file = crate::file_modes::private_file(&path)?;
        Ok((Spill { path }, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
