//! Atomic commit of anonymized files: write a temp file beside the destination ([`Spool::stage`]),
//! then rename it into place ([`Staged::publish`]), so a reader (or the uploader) never sees a
//! partial file. Between the two the caller records the instance in the index: an instance the
//! index refuses never reaches `public/`, not even for a moment. Making it durable is the caller's
//! [`crate::durability::Barrier`]'s job.
//!
//! ## Direct I/O for a node that acknowledges each instance
//! A node must get every file to the disk at once anyway, so it writes them with `O_DIRECT`: the
//! disk reads the bytes straight from our buffer, and the kernel neither copies them into its page
//! cache nor writes them back from there. Measured on the build machine (1,000 × 0.5 MB files,
//! each made durable in groups of eight by `syncfs`): 0.08 ms of CPU per file direct against
//! 0.28–0.31 ms through the page cache with early write-back, the largest single cost the
//! ingest profile showed. The flush that follows still makes data, inode and directory entry
//! durable together (`syncfs` flushes the device's cache even when no page is dirty).
//! Direct writes must be whole blocks from aligned memory, so the bytes are gathered in an aligned
//! buffer ([`StageWriter`]); the last partial block goes through the page cache, and so do files
//! under 64 KiB, for which a direct write's wait for the disk costs more than the copy it saves.
//! The last direct write of a file (for a 0.5 MB instance, the whole file but its last block)
//! runs in the background while the index commits the instance's row ([`super::in_flight`]);
//! [`Staged::publish`] waits for it before the file takes its name, so nobody ever reads a file
//! whose bytes are still on their way.
//! A file system that refuses `O_DIRECT` (tmpfs before Linux 6.6, some network file systems) is
//! written through the page cache, with write-back started early, from its first refusal on.
//! A batch run that makes everything durable only at its end writes through the page cache and
//! lets the kernel write back at leisure.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::in_flight::{self, InFlight};
use crate::dicom::WriteError;

/// Direct writes are made of whole blocks of this size, from memory aligned to it (4 KiB is the
/// largest logical block size of common disks; every smaller one divides it).
const BLOCK: usize = 4096;
/// The gathering buffer: a 0.5 MB instance is one direct write and a short tail.
const BUFFER: usize = 1 << 20;
/// Gathering buffers kept for reuse, so a busy node never faults fresh pages in for each file.
const SPARE_BUFFERS: usize = 16;
/// Smaller files go through the page cache: a direct write waits for the disk, where copying a
/// few kilobytes costs next to nothing (50,000 instances of 4 KB took 0.59 ms of CPU each
/// direct, 0.51 buffered).
const DIRECT_FROM: u64 = 64 * 1024;

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
    /// Each file goes to the disk at once (a node acknowledging instances, which flushes right
    /// after); a batch run leaves write-back to the system until its end.
    at_once: bool,
    shared: Arc<Shared>,
}

/// What a staged file gives back to its spool once its last write has ended, which may be after
/// [`Spool::stage`] returned: its buffer, and whether direct I/O worked.
struct Shared {
    /// `O_DIRECT` works here (until a refusal shows it does not).
    direct: AtomicBool,
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    fn take_buffer(&self) -> Option<Vec<u8>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keep `writer`'s buffer for the next file, and stop direct I/O if it was refused.
    fn give_back(&self, writer: &mut StageWriter) {
        if writer.refused_direct {
            self.direct.store(false, Ordering::Relaxed);
        }
        let buffer = std::mem::take(&mut writer.buf);
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    }
}

impl Spool {
    /// A spool under `root`; `at_once` for a node that makes each file durable as soon as it is
    /// written.
    pub fn open(root: &Path, at_once: bool) -> Result<Spool, SpoolError> {
        fs::create_dir_all(root)
            .map_err(|source| SpoolError::Io { path: root.display().to_string(), source })?;
        Ok(Spool {
            root: root.to_path_buf(),
            next: AtomicU64::new(0),
            at_once,
            shared: Arc::new(Shared { direct: AtomicBool::new(at_once), spare: Mutex::default() }),
        })
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
        write: impl FnOnce(&mut StageWriter) -> Result<(), WriteError>,
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
        let writer =
            StageWriter::new(file, self.shared.direct.load(Ordering::Relaxed), self.shared.take_buffer());
        let mut staged = Staged { tmp, dest, writer, shared: self.shared.clone(), published: false };
        let w = &mut staged.writer;
        // Dropped on failure, `staged` waits for its writes and deletes the temp file.
        write(w).and_then(|()| Ok(w.finish()?)).map_err(|e| match e {
            WriteError::Io(source) => SpoolError::Io { path: staged.tmp.display().to_string(), source },
            other => SpoolError::Encode(other),
        })?;
        if self.at_once {
            // The disk starts on what went through the page cache while the index commits; the
            // flush that follows then mostly waits for writes already under way.
            start_write_back(&staged.writer.file);
        }
        Ok(staged)
    }
}

/// Gathers a file's bytes in a block-aligned buffer and writes them out a buffer at a time, with
/// `O_DIRECT` once the file is large enough and the spool uses it (see the module's
/// documentation).
pub struct StageWriter {
    /// The last direct write, still running: the kernel reads `buf` and writes `file` until it
    /// has been waited for ([`StageWriter::complete`], or the drop).
    last: Option<LastWrite>,
    file: File,
    /// `BUFFER + BLOCK` bytes, so that an aligned window of `BUFFER` bytes fits whatever address
    /// the allocator gave.
    buf: Vec<u8>,
    /// Where the aligned window starts in `buf`.
    start: usize,
    /// Bytes gathered in the window.
    filled: usize,
    /// Bytes in the file.
    written: u64,
    /// Direct writes are wanted once the file reaches [`DIRECT_FROM`].
    want_direct: bool,
    /// `O_DIRECT` is set on the file now.
    direct: bool,
    /// The file system refused a direct write; this file went on through the page cache.
    refused_direct: bool,
    /// SHA-256 of every byte written, taken as the bytes pass: the index compares it with the
    /// last version's, so that an identical re-send is not uploaded or exported again.
    digest: Sha256,
}

/// A direct write of the window's first `len` bytes at `offset`, running in the background.
struct LastWrite {
    write: InFlight,
    len: usize,
    offset: u64,
}

impl StageWriter {
    fn new(file: File, want_direct: bool, buffer: Option<Vec<u8>>) -> StageWriter {
        let buf = buffer.filter(|b| b.len() == BUFFER + BLOCK).unwrap_or_else(|| vec![0; BUFFER + BLOCK]);
        let start = buf.as_ptr().align_offset(BLOCK);
        StageWriter {
            last: None,
            file,
            buf,
            start,
            filled: 0,
            written: 0,
            want_direct,
            direct: false,
            refused_direct: false,
            digest: Sha256::new(),
        }
    }

    fn window(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + BUFFER]
    }

    /// Copy everything `src` (the file at `src_path`) yields into the file, reading straight into
    /// the buffer. A failed read names `src_path`.
    pub fn copy_from(&mut self, src: &mut impl Read, src_path: &Path) -> io::Result<u64> {
        let mut copied = 0;
        loop {
            if self.filled == BUFFER {
                self.write_blocks()?;
            }
            let filled = self.filled;
            let n = match src.read(&mut self.window()[filled..]) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(e.kind(), format!("reading {}: {e}", src_path.display())))
                }
            };
            self.digest.update(&self.buf[self.start + filled..self.start + filled + n]);
            self.filled += n;
            copied += n as u64;
        }
    }

    /// Write out the whole blocks gathered, keeping a partial last block in the buffer.
    fn write_blocks(&mut self) -> io::Result<()> {
        let whole = self.filled / BLOCK * BLOCK;
        self.go_direct_for(whole)?;
        self.write_out(whole)?;
        self.written += whole as u64;
        let (start, filled) = (self.start, self.filled);
        self.buf.copy_within(start + whole..start + filled, start);
        self.filled -= whole;
        Ok(())
    }

    /// Write the first `len` bytes of the window to the file. A direct write that fails for any
    /// reason, part-way or not, is finished through the page cache (only a failure there too is
    /// an error); one the file system refuses ([`refuses_direct`]) also stops direct I/O for the
    /// spool.
    fn write_out(&mut self, len: usize) -> io::Result<()> {
        let (mut done, mut refused) = (0, false);
        while done < len {
            let start = self.start + done;
            match self.file.write(&self.buf[start..self.start + len]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct => {
                    self.set_direct(false)?;
                    refused |= refuses_direct(&e);
                }
                Err(e) => return Err(e),
            }
        }
        if refused {
            // Not a full disk or a failing one: the page cache took what direct I/O refused.
            self.refuse_direct();
        }
        Ok(())
    }

    /// Set `O_DIRECT` before writing `whole` bytes of blocks, if they take the file to
    /// [`DIRECT_FROM`] and direct writes are wanted.
    fn go_direct_for(&mut self, whole: usize) -> io::Result<()> {
        if self.want_direct && !self.direct && whole > 0 && self.written + whole as u64 >= DIRECT_FROM {
            self.set_direct(true)?;
        }
        Ok(())
    }

    /// Set or clear `O_DIRECT` on the open file. A file system that cannot do direct I/O
    /// refuses to set it; the file then goes on through the page cache.
    fn set_direct(&mut self, on: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor `self.file` keeps open; F_GETFL/F_SETFL only read and
        // change its status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let wanted = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) } < 0 {
            let e = io::Error::last_os_error();
            if on && e.raw_os_error() == Some(libc::EINVAL) {
                self.refuse_direct();
                return Ok(());
            }
            return Err(e);
        }
        self.direct = on;
        Ok(())
    }

    fn refuse_direct(&mut self) {
        self.want_direct = false;
        self.refused_direct = true;
    }

    /// Write out what is gathered: the whole blocks, directly if the file is direct, and in the
    /// background where this thread can ([`StageWriter::complete`] waits for them); the partial
    /// last block through the page cache (a direct write cannot end mid-block). The tail goes
    /// first, so that the blocks can still be on their way, unless its page would overlap them.
    fn finish(&mut self) -> io::Result<()> {
        let whole = self.filled / BLOCK * BLOCK;
        let offset = self.written;
        let tail_first = pages_fit_in_blocks();
        if tail_first {
            self.write_buffered_at(whole..self.filled, offset + whole as u64)?;
        }
        self.go_direct_for(whole)?;
        let window = &self.buf[self.start..self.start + whole];
        // SAFETY: the write reads `self.buf` and writes `self.file`, which stay as they are
        // until it is waited for: `complete` and the drop do, before anything else touches them.
        let started = match (tail_first && self.direct, whole) {
            (true, 1..) => unsafe { in_flight::write_at(self.file.as_raw_fd(), window, offset) },
            _ => None,
        };
        match started {
            Some(write) => self.last = Some(LastWrite { write, len: whole, offset }),
            None => self.write_out(whole)?,
        }
        if !tail_first {
            self.write_buffered_at(whole..self.filled, offset + whole as u64)?;
        }
        self.written += self.filled as u64;
        self.filled = 0;
        Ok(())
    }

    /// Wait for the background write. As in [`StageWriter::write_out`], a direct write that
    /// failed or stopped short is finished through the page cache.
    fn complete(&mut self) -> io::Result<()> {
        let Some(LastWrite { write, len, offset }) = self.last.take() else { return Ok(()) };
        let (done, refused) = match write.wait() {
            Ok(n) => (n.min(len), false),
            Err(e) => (0, refuses_direct(&e)),
        };
        self.write_buffered_at(done..len, offset + done as u64)?;
        if refused {
            self.refuse_direct();
        }
        Ok(())
    }

    /// Write `range` of the window at `at` through the page cache (nothing if it is empty).
    fn write_buffered_at(&mut self, range: std::ops::Range<usize>, at: u64) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        if self.direct {
            self.set_direct(false)?;
        }
        self.file.write_all_at(&self.buf[self.start + range.start..self.start + range.end], at)
    }
}

impl Drop for StageWriter {
    /// The kernel may still be reading the buffer: it is freed only once the write has ended.
    fn drop(&mut self) {
        if let Some(last) = self.last.take() {
            let _ = last.write.wait();
        }
    }
}

impl Write for StageWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.filled == BUFFER {
            self.write_blocks()?;
        }
        let filled = self.filled;
        let n = data.len().min(BUFFER - filled);
        self.window()[filled..filled + n].copy_from_slice(&data[..n]);
        self.digest.update(&data[..n]);
        self.filled += n;
        Ok(n)
    }

    /// Bytes reach the file when the buffer is full and when the stage ends; a flush in between
    /// would cut a direct write short of a whole block.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An anonymized file written beside its destination, not yet in place; its last write may
/// still be running. It stays on the thread that staged it, whose ring runs that write.
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    writer: StageWriter,
    shared: Arc<Shared>,
    published: bool,
}

impl Staged {
    pub fn size(&self) -> u64 {
        self.writer.written
    }

    /// The SHA-256 of the file's bytes, in hex.
    pub fn digest(&self) -> String {
        hex::encode(self.writer.digest.clone().finalize())
    }

    /// Once every byte is written, rename the file into place, atomically replacing any file
    /// there.
    pub fn publish(mut self) -> Result<(), SpoolError> {
        self.writer.complete().map_err(io_error(&self.tmp))?;
        fs::rename(&self.tmp, &self.dest).map_err(io_error(&self.dest))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Its outcome no longer matters, but the buffer is reused only once the write has ended.
        let _ = self.writer.complete();
        self.shared.give_back(&mut self.writer);
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A direct write's error that means this file system does not do direct I/O (or not from this
/// memory): the spool then stops asking. Any other error (a disk's hiccup) costs one write's
/// fallback, not direct I/O for good.
fn refuses_direct(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

/// The tail goes through the page cache before the blocks in front of it are written directly:
/// only where a page is no larger than a block (4 KiB pages: x86-64, most arm64 kernels) does its
/// page lie wholly outside the direct write.
fn pages_fit_in_blocks() -> bool {
    static FIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: sysconf only reads a system setting.
    *FIT.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).is_ok_and(|p| p <= BLOCK)
    })
}

/// Ask the kernel to start writing `file`'s dirty pages back, without waiting. Advisory: the
/// caller's flush is what guarantees durability.
fn start_write_back(file: &File) {
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

    /// Files of any length, from empty to several buffers, come out byte for byte, whether
    /// written in pieces or copied from a reader, direct (the last write in the background or
    /// not) or through the page cache.
    #[test]
    fn files_of_any_length_are_written_exactly() {
        let d = tempfile::tempdir().unwrap();
        let longest = 2 * BUFFER + 3 * BLOCK + 17;
        let data: Vec<u8> = (0..longest as u32).map(|i| (i * 7 + i / 4096) as u8).collect();
        for (at_once, in_background) in [(true, true), (true, false), (false, false)] {
            in_flight::turn_off_on_this_thread(!in_background);
            let spool =
                Spool::open(&d.path().join(format!("public-{at_once}-{in_background}")), at_once).unwrap();
            for len in
                [0, 17, BLOCK, DIRECT_FROM as usize - 1, DIRECT_FROM as usize, BUFFER, BUFFER + 1, longest]
            {
                for cut in [0, 132, 1000] {
                    let (data, name) = (&data[..len], format!("{len}-{cut}.dcm"));
                    let cut = cut.min(len);
                    let staged = spool
                        .stage(Path::new(&name), |w| {
                            for piece in data[..cut].chunks(333) {
                                w.write_all(piece)?;
                            }
                            w.copy_from(&mut &data[cut..], Path::new("memory"))?;
                            Ok(())
                        })
                        .unwrap();
                    assert_eq!(staged.size(), len as u64);
                    // Those whose last write has whole blocks, at or past the direct threshold.
                    let background =
                        at_once && in_background && [DIRECT_FROM as usize, longest].contains(&len);
                    assert_eq!(staged.writer.last.is_some(), background, "{name}, in the background");
                    staged.publish().unwrap();
                    assert!(
                        fs::read(spool.root().join(&name)).unwrap() == data,
                        "{name}, at once: {at_once}"
                    );
                }
            }
            assert!(spool.shared.spare.lock().unwrap().len() == 1, "the buffer is kept for the next file");
        }
    }

    /// A direct write the file system refuses (here: from memory that is not block-aligned) is
    /// finished through the page cache, exactly, and the spool stops asking for direct I/O:
    /// refused while the buffer fills (a synchronous write) or at the end (in the background).
    #[test]
    fn a_refused_direct_write_goes_on_through_the_page_cache() {
        let d = tempfile::tempdir().unwrap();
        for (len, in_background) in [(BUFFER + 5000, false), (100_000, true)] {
            let data: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
            let path = d.path().join(format!("{len}"));
            let mut w = StageWriter::new(File::create(&path).unwrap(), true, None);
            w.start += 1;
            w.write_all(&data).unwrap();
            w.finish().unwrap();
            assert_eq!(w.last.is_some(), in_background, "{len}");
            w.complete().unwrap();
            assert!(w.refused_direct && !w.want_direct && !w.direct, "{len}");
            assert_eq!(w.written, data.len() as u64);
            assert!(fs::read(&path).unwrap() == data, "{len}");
        }
    }

    /// A file whose last write is still running is not published until it has ended: nobody may
    /// read a file in place whose bytes are still on their way.
    #[test]
    fn publishing_waits_for_the_last_write() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path(), true).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8 + 1).collect();
        let dest = d.path().join("held.dcm");
        // Reads the file the moment it appears, as the uploader might.
        let reader = std::thread::spawn({
            let dest = dest.clone();
            move || loop {
                if let Ok(bytes) = fs::read(&dest) {
                    return bytes;
                }
                std::thread::yield_now();
            }
        });
        in_flight::hold_back_next_write(std::time::Duration::from_millis(300));
        let staged = spool.stage(Path::new("held.dcm"), |w| Ok(w.write_all(&data)?)).unwrap();
        assert!(staged.writer.last.is_some(), "the last write runs in the background");
        let started = std::time::Instant::now();
        staged.publish().unwrap();
        // Held back and written (not cancelled and redone synchronously, as where the kernel
        // cannot link a timeout to a write).
        assert!(started.elapsed() >= std::time::Duration::from_millis(250), "the write was not held back");
        assert!(spool.shared.direct.load(Ordering::Relaxed), "the held-back write went direct");
        assert!(reader.join().unwrap() == data, "published before its bytes were written");
    }
}
