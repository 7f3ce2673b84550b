//! One writer per storage directory. Its index, spool, queue and pseudonym counter belong to one
//! process at a time: a second node on the same directory would answer 0xA700 ("database is
//! locked") to live senders and drain the same queue twice, so whoever writes there (a node, or
//! an offline command that writes the index) first takes an exclusive lock on
//! `<storage.dir>/private/node.lock` and keeps it until it exits. The file holds the holder's PID,
//! so the refusal can say who holds it. The lock is `flock(2)`: the kernel drops it with the
//! process, so a crash never leaves a stale lock behind (a stale PID in the file is harmless).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

/// The lock file, under the storage directory.
const LOCK_FILE: &str = "private/node.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process writes this storage directory.
    #[error("storage dir {dir} is in use by process {pid} (a node serving it, or an offline command writing its index); stop it first, or give this one its own storage.dir")]
    InUse { dir: String, pid: String },
    #[error("cannot lock storage dir {dir}: {source}")]
    Io { dir: String, source: io::Error },
}

/// The exclusive right to write one storage directory, held until dropped.
#[derive(Debug)]
pub struct StorageLock {
    /// Held open: closing it releases the lock.
    _file: File,
}

impl StorageLock {
    /// Take the lock on `storage_dir` (created if missing) and write our PID into it, or say
    /// which process holds it.
    pub fn acquire(storage_dir: &Path) -> Result<StorageLock, LockError> {
        let dir = storage_dir.display().to_string();
        let io_err = |source| LockError::Io { dir: dir.clone(), source };
        let path = lock_path(storage_dir);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        if !FileExt::try_lock_exclusive(&file).map_err(io_err)? {
            return Err(LockError::InUse { dir: dir.clone(), pid: holder_pid(&mut file) });
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(StorageLock { _file: file })
    }

    /// The PID of the process that writes `storage_dir` now, if any: read-only commands say
    /// that what they read is live. Takes no lock that could stand in a writer's way beyond the
    /// moment of the check.
    pub fn holder(storage_dir: &Path) -> Option<String> {
        let mut file = File::open(lock_path(storage_dir)).ok()?;
        match FileExt::try_lock_shared(&file) {
            Ok(true) => {
                let _ = FileExt::unlock(&file);
                None
            }
            Ok(false) => Some(holder_pid(&mut file)),
            Err(_) => None,
        }
    }
}

fn lock_path(storage_dir: &Path) -> PathBuf {
    storage_dir.join(LOCK_FILE)
}

/// The PID the holder wrote, or a word for "unknown" (it may be between taking the lock and
/// writing its PID).
fn holder_pid(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let pid = text.trim();
    if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
        pid.to_string()
    } else {
        "unknown".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(StorageLock::holder(d.path()), None);
        let first = StorageLock::acquire(d.path()).unwrap();
        let me = std::process::id().to_string();
        assert_eq!(StorageLock::holder(d.path()), Some(me.clone()));
        let err = StorageLock::acquire(d.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("is in use by process {me}")), "{err}");
        drop(first);
        assert_eq!(StorageLock::holder(d.path()), None);
        StorageLock::acquire(d.path()).unwrap();
    }
}
