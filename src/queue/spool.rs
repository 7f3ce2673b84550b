//! Atomic commit of anonymized files: write a temp file beside the destination, then rename it
//! into place, so a reader (or the uploader) never sees a partial file. Making it durable is the
//! caller's [`crate::durability::Barrier`]'s job.

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
}

impl Spool {
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        fs::create_dir_all(root)
            .map_err(|source| SpoolError::Io { path: root.display().to_string(), source })?;
        Ok(Spool { root: root.to_path_buf(), next: AtomicU64::new(0) })
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

    /// Write `rel` (relative to the root); a file already there is replaced atomically. Returns
    /// the size written.
    pub fn commit(
        &self,
        rel: &Path,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<(), WriteError>,
    ) -> Result<u64, SpoolError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dest = self.root.join(rel);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        // The temp file sits beside its destination: a rename within one directory locks one
        // directory, not two, and cannot cross file systems.
        let tmp = dir.join(format!(".{}-{n}.part", std::process::id()));
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| SpoolError::Io { path, source }
        };
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let result = (|| {
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
            write(&mut w).map_err(|e| match e {
                WriteError::Io(source) => SpoolError::Io { path: tmp.display().to_string(), source },
                other => SpoolError::Encode(other),
            })?;
            let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
            let size = file.metadata().map_err(io_err(&tmp))?.len();
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
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
        let spool = Spool::open(&d.path().join("public")).unwrap();
        let rel = Path::new("p/s/e/i.dcm");
        assert_eq!(spool.commit(rel, |w| Ok(w.write_all(b"first")?)).unwrap(), 5);
        assert_eq!(spool.commit(rel, |w| Ok(w.write_all(b"second!")?)).unwrap(), 7);
        assert_eq!(fs::read(d.path().join("public/p/s/e/i.dcm")).unwrap(), b"second!");
        let failed = spool.commit(Path::new("x.dcm"), |_| Err(WriteError::Io(io::Error::other("boom"))));
        assert!(failed.is_err());
        assert!(!d.path().join("public/x.dcm").exists());
        let leftovers: Vec<_> =
            fs::read_dir(d.path().join("public")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, ["p"], "no temp file is left behind");
        assert_eq!(fs::read_dir(d.path().join("public/p/s/e")).unwrap().count(), 1);
    }
}
