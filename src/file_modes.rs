//! Who may read what the node writes. The index, the quarantine, spills and the exported CSVs hold
//! PHI, so they are the node's user's alone: directories 0700, files 0600.
//!
//! Two layers, because either alone has a gap. The process umask (set first thing by `main`) covers
//! every file anything creates, SQLite's index and its WAL included, whose modes we do not choose.
//! The explicit modes below cover the node run as a library (tests, an embedding) where nobody set
//! the umask, and repair directories an older version created 0755.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Directories that hold PHI.
pub const PRIVATE_DIR: u32 = 0o700;
/// Files that hold PHI.
pub const PRIVATE_FILE: u32 = 0o600;

/// Nothing this process creates is readable by group or others unless it says so.
pub fn restrict_umask() {
    // SAFETY: umask(2) cannot fail; it only swaps the process's mask.
    unsafe { libc::umask(0o077) };
}

/// Create `dir` (and its missing parents) as a private directory; an existing one is made private.
/// For the node's own directories only: never for a directory a user named.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    missing_dirs(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR))
}

/// Create whatever of `dir` and its parents is missing, private; existing ones are left as they
/// are (a user's `--out` may be their home directory).
pub fn missing_dirs(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(dir)
}

/// Create (or truncate) `path` for writing, readable by its owner only, whatever the umask and
/// whatever mode an existing file had.
pub fn private_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(PRIVATE_FILE).open(path)?;
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE))?;
    Ok(file)
}

/// Create `path`, which must not exist yet, readable by its owner only.
pub fn private_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(PRIVATE_FILE).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_directories_ignore_a_loose_umask_and_repair_old_modes() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), PRIVATE_DIR);
        let file = dir.join("f.csv");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        drop(private_file(&file).unwrap());
        assert_eq!(mode(&file), PRIVATE_FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "truncated");
        drop(private_new_file(&dir.join("g")).unwrap());
        assert_eq!(mode(&dir.join("g")), PRIVATE_FILE);
        assert!(private_new_file(&dir.join("g")).is_err(), "never overwrites");
    }
}
