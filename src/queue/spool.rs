//! Durable commit of anonymized files: write to a temp file, fsync, rename into place, fsync the
//! directory. Only after `commit` returns may anyone be told the instance is safe.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
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
    tmp: PathBuf,
    next: AtomicU64,
}

impl Spool {
    /// `tmp` must be on the same file system as `root`, so that the final rename is atomic.
    pub fn open(root: &Path, tmp: &Path) -> Result<Spool, SpoolError> {
        for dir in [root, tmp] {
            fs::create_dir_all(dir)
                .map_err(|source| SpoolError::Io { path: dir.display().to_string(), source })?;
        }
        Ok(Spool { root: root.to_path_buf(), tmp: tmp.to_path_buf(), next: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Write `rel` (relative to the root) durably; a file already there is replaced atomically.
    /// Returns the size written.
    pub fn commit(
        &self,
        rel: &Path,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<(), WriteError>,
    ) -> Result<u64, SpoolError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}.part", std::process::id()));
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| SpoolError::Io { path, source }
        };
        let result = (|| {
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
            write(&mut w).map_err(|e| match e {
                WriteError::Io(source) => SpoolError::Io { path: tmp.display().to_string(), source },
                other => SpoolError::Encode(other),
            })?;
            w.flush().map_err(io_err(&tmp))?;
            let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
            file.sync_all().map_err(io_err(&tmp))?;
            let size = file.metadata().map_err(io_err(&tmp))?.len();
            let dest = self.root.join(rel);
            let dir = dest.parent().unwrap_or(&self.root);
            ensure_dir(dir).map_err(io_err(dir))?;
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            // The rename is durable only once the directory entry is.
            sync_dir(dir).map_err(io_err(dir))?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Create `dir` and missing parents, fsyncing each parent whose entries changed.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
        match fs::create_dir(dir) {
            Ok(()) => sync_dir(parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_atomically_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(&d.path().join("public"), &d.path().join("tmp")).unwrap();
        let rel = Path::new("p/s/e/i.dcm");
        assert_eq!(spool.commit(rel, |w| Ok(w.write_all(b"first")?)).unwrap(), 5);
        assert_eq!(spool.commit(rel, |w| Ok(w.write_all(b"second!")?)).unwrap(), 7);
        assert_eq!(fs::read(d.path().join("public/p/s/e/i.dcm")).unwrap(), b"second!");
        let failed = spool.commit(Path::new("x.dcm"), |_| Err(WriteError::Io(io::Error::other("boom"))));
        assert!(failed.is_err());
        assert!(!d.path().join("public/x.dcm").exists());
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}
