//! Atomic commit of anonymized files: write a temp file beside the destination ([`Spool::stage`]),
//! then rename it into place ([`Staged::publish`]), so a reader (or the uploader) never sees a
//! partial file. Between the two the caller records the instance in the index: an instance the
//! index refuses never reaches `public/`, not even for a moment. Making it durable is the caller's
//! [`crate::durability::Barrier`]'s job.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dicom::WriteError;

/// Big enough that a 0.5 MB instance takes a handful of write calls.
const WRITE_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("cannot encode the anonymized data set: {0}")]
    Encode(WriteError),
}

pub struct Spool {
    root: PathBuf,
    next: AtomicU64,
    /// Start each file's write-back as soon as it is written (a node acknowledging instances,
    /// which flushes right after); a batch run leaves it to the system until its end.
    write_back_early: bool,
}

impl Spool {
    pub fn open(root: &Path, write_back_early: bool) -> Result<Spool, SpoolError> {
        fs::create_dir_all(root)
            .map_err(|source| SpoolError::Io { path: root.display().to_string(), source })?;
        Ok(Spool { root: root.to_path_buf(), next: AtomicU64::new(0), write_back_early })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Remove temp files a crash left behind (never a committed file); returns how many.
    pub fn sweep(&self) -> usize {
        walkdir::WalkDir::new(&self.root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file() && is_temp(e.path()))
            .filter(|e| fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Write `rel` (relative to the root) to a temp file beside it. The file replaces whatever is
    /// at `rel` only when published; dropped unpublished, it is deleted.
    pub fn stage(
        &self,
        rel: &Path,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<(), WriteError>,
    ) -> Result<Staged, SpoolError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dest = self.root.join(rel);
        let dir = dest.parent().unwrap_or(&self.root);
        // The temp file sits beside its destination: a rename within one directory locks one
        // directory, not two, and cannot cross file systems.
        let tmp = dir.join(format!(".{}-{n}.part", std::process::id()));
        // A series' directories are made by its first instance; the others find them there.
        let file = match File::create(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io_error(dir))?;
                File::create(&tmp)
            }
            other => other,
        }
        .map_err(io_error(&tmp))?;
        let mut staged = Staged { tmp, dest, size: 0, published: false };
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
        write(&mut w).map_err(|e| match e {
            WriteError::Io(source) => SpoolError::Io { path: staged.tmp.display().to_string(), source },
            other => SpoolError::Encode(other),
        })?;
        let file = w.into_inner().map_err(|e| io_error(&staged.tmp)(e.into_error()))?;
        staged.size = file.metadata().map_err(io_error(&staged.tmp))?.len();
        if self.write_back_early {
            // The disk starts on the data while the index commits; the flush that follows then
            // mostly waits for writes already under way.
            start_write_back(&file);
        }
        Ok(staged)
    }
}

/// An anonymized file written beside its destination, not yet in place.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    size: u64,
    published: bool,
}

impl Staged {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rename the file into place, atomically replacing any file there.
    pub fn publish(mut self) -> Result<(), SpoolError> {
        fs::rename(&self.tmp, &self.dest).map_err(io_error(&self.dest))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Ask the kernel to start writing `file`'s dirty pages back, without waiting. Advisory: the
/// caller's flush is what guarantees durability.
fn start_write_back(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open for the call.
    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.display().to_string(), source }
}

fn is_temp(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.ends_with(".part"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_replaces_atomically_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(&d.path().join("public"), true).unwrap();
        let rel = Path::new("p/s/e/i.dcm");
        let first = spool.stage(rel, |w| Ok(w.write_all(b"first")?)).unwrap();
        assert_eq!(first.size(), 5);
        assert!(!d.path().join("public/p/s/e/i.dcm").exists(), "not in place before it is published");
        first.publish().unwrap();
        let second = spool.stage(rel, |w| Ok(w.write_all(b"second!")?)).unwrap();
        assert_eq!(second.size(), 7);
        second.publish().unwrap();
        assert_eq!(fs::read(d.path().join("public/p/s/e/i.dcm")).unwrap(), b"second!");
        let failed = spool.stage(Path::new("x.dcm"), |_| Err(WriteError::Io(io::Error::other("boom"))));
        assert!(failed.is_err());
        assert!(!d.path().join("public/x.dcm").exists());
        drop(spool.stage(rel, |w| Ok(w.write_all(b"dropped")?)).unwrap());
        assert_eq!(
            fs::read(d.path().join("public/p/s/e/i.dcm")).unwrap(),
            b"second!",
            "an unpublished file never replaces"
        );
        let leftovers: Vec<_> =
            fs::read_dir(d.path().join("public")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, ["p"], "no temp file is left behind");
        assert_eq!(fs::read_dir(d.path().join("public/p/s/e")).unwrap().count(), 1);
    }
}
