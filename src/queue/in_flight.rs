//! A write that runs while its thread goes on: the last direct write of a staged file runs while
//! the index commits its row, instead of before (see [`super::spool`]).
//!
//! A direct write waits for the disk (0.3–0.4 ms for a 0.5 MB instance on the build machine),
//! with the CPU idle; the index commit that follows is CPU (0.15 ms). Run one after the other,
//! an association waits for both; started through io_uring, the disk writes while the commit
//! runs. Each thread has its own small ring, so a write is waited for where it was started, with
//! no hand-off to another thread and back.
//!
//! Measured with `scripts/bench-ingest.sh` (1,000 × 0.5 MB), three runs alternating with the build
//! before, one association: 716, 639 and 657 instances/s against 624, 507 and 569 (+18 %); eight
//! associations unchanged (997 against 1,039 on average, within this machine's noise). Forcing
//! each write to io_uring's worker threads (`IOSQE_ASYNC`) was no faster and cost more CPU.
//!
//! Measured again after the restructuring of issue 26 (same session, one release build run with
//! and without it through `DICOM_ANON_IO_URING=off`, alternating, `bench-ingest.sh --repeat 2
//! 1000`, two runs each): one association 315 and 329 instances/s with it against 270 and 255
//! without (+17 % and +29 %; last byte to response 2.6 against 3.3 ms; node CPU 1.0 against 1.6 ms
//! per instance); eight associations 415 and 454 against 437 and 453 (no difference). It still
//! pays where an association waits for its own write, so it stays. (These rates include the
//! pixel stage's OCR of each series' first image, about 0.2 s for each of the corpus's 10 series.)
//!
//! io_uring is not everywhere: Docker's default seccomp profile refuses it, and a kernel may
//! have it turned off. Where a thread cannot set up a ring, the caller writes synchronously, as
//! it would without this module; the node says so once.

use std::cell::RefCell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

/// Entries per ring: a thread waits for its write before it starts another, so a few suffice.
const ENTRIES: u32 = 4;

/// Set once the kernel has refused a ring: no thread tries again.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// `DICOM_ANON_IO_URING=off` in the environment: every write is synchronous, as where io_uring is
/// unavailable; said once in the log. For a host where io_uring misbehaves, and to measure what it
/// buys (run `scripts/bench-ingest.sh` with and without it).
fn turned_off_by_operator() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| {
        let off = std::env::var("DICOM_ANON_IO_URING").is_ok_and(|v| v.eq_ignore_ascii_case("off"));
        if off {
            tracing::info!("io_uring turned off (DICOM_ANON_IO_URING=off): files are written synchronously");
        }
        off
    })
}

thread_local! {
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Tests of the synchronous path turn the rings off on their thread.
    static TURNED_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Write synchronously on this thread, as where io_uring is unavailable.
#[cfg(test)]
pub fn turn_off_on_this_thread(off: bool) {
    TURNED_OFF.set(off);
}

#[cfg(test)]
thread_local! {
    /// Tests that must see a write still running hold this thread's next one back this long.
    static HOLD_BACK: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

/// Start this thread's next background write only `delay` after it is asked for.
#[cfg(test)]
pub fn hold_back_next_write(delay: Duration) {
    HOLD_BACK.set(Some(delay));
}

struct Ring {
    uring: IoUring,
    next_id: u64,
    /// The write the kernel has taken and not yet completed: one at a time per thread, so that a
    /// ring is only ever dropped with nothing of ours in the kernel.
    in_kernel: Option<u64>,
}

/// A write started by [`write_at`] and not yet waited for. It belongs to the thread that started
/// it (its ring is that thread's), hence not `Send`; dropped, it waits.
#[must_use = "the write must be waited for before its buffer is reused"]
pub struct InFlight {
    id: u64,
    waited: bool,
    _this_thread: PhantomData<*const ()>,
}

/// Start writing `buf` to `fd` at `offset`, on this thread's ring. `None` if the write was not
/// started, and never will be: this thread has no ring (io_uring is unavailable), already has a
/// write in flight, or the kernel did not take the write. The caller then writes synchronously.
///
/// # Safety
/// `fd` must stay open, and `buf` allocated and unchanged, until the returned write has been
/// waited for (by [`InFlight::wait`] or its drop): the kernel reads them meanwhile.
pub unsafe fn write_at(fd: RawFd, buf: &[u8], offset: u64) -> Option<InFlight> {
    #[cfg(test)]
    if TURNED_OFF.get() {
        return None;
    }
    if UNAVAILABLE.load(Ordering::Relaxed) || turned_off_by_operator() {
        return None;
    }
    RING.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Ring::new();
        }
        let ring = slot.as_mut()?;
        if ring.in_kernel.is_some() {
            return None;
        }
        let id = ring.next_id;
        ring.next_id += 1;
        let len = u32::try_from(buf.len()).ok()?;
        let entry = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len).offset(offset).build().user_data(id);
        #[cfg(test)]
        let held = HOLD_BACK.take().map(|delay| {
            let timespec = Box::new(types::Timespec::from(delay));
            let timeout = opcode::Timeout::new(&*timespec)
                .flags(types::TimeoutFlags::ETIME_SUCCESS)
                .build()
                .flags(io_uring::squeue::Flags::IO_LINK)
                .user_data(u64::MAX);
            // SAFETY: the kernel reads the timespec when the entry is submitted, below.
            unsafe { ring.uring.submission().push(&timeout) }.expect("room for a timeout");
            timespec
        });
        // SAFETY: the caller keeps `fd` and `buf` valid until this write is waited for; if the
        // kernel does not take it below, the ring goes and the entry with it, unread.
        if unsafe { ring.uring.submission().push(&entry) }.is_err() {
            // Nothing taken yet: whatever is queued goes with the ring.
            *slot = None;
            return None;
        }
        let submitted = ring.uring.submit();
        #[cfg(test)]
        drop(held);
        match submitted {
            Ok(taken) if taken > 0 => {
                ring.in_kernel = Some(id);
                Some(InFlight { id, waited: false, _this_thread: PhantomData })
            }
            _ => {
                // Not taken (the kernel short of memory): an entry left queued could run on a
                // later submit, after `buf` is gone. Dropping the ring, with nothing of ours in
                // the kernel, discards it; the next write sets up a new one.
                *slot = None;
                None
            }
        }
    })
}

impl Ring {
    fn new() -> Option<Ring> {
        match IoUring::new(ENTRIES) {
            Ok(uring) => Some(Ring { uring, next_id: 0, in_kernel: None }),
            Err(e) => {
                // Refused (seccomp, a kernel without it or with it turned off) is for good;
                // anything else (memory) may pass, and the next write tries again.
                let refused = matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS | libc::EACCES));
                if refused && !UNAVAILABLE.swap(true, Ordering::Relaxed) {
                    tracing::info!(error = %e, "io_uring is unavailable: each direct write waits for the disk before the index commits");
                }
                None
            }
        }
    }

    /// Wait until write `id`, which the kernel has taken, has completed; its result, as the kernel
    /// gives it. A write the kernel has taken always completes, so this waits through failures
    /// of the wait itself: giving up would let the kernel read a buffer already reused.
    fn wait_for(&mut self, id: u64) -> i32 {
        let mut pause = Duration::from_micros(100);
        loop {
            if let Some(result) = self.uring.completion().find(|c| c.user_data() == id).map(|c| c.result()) {
                self.in_kernel = None;
                return result;
            }
            match self.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
        }
    }
}

impl InFlight {
    /// Wait for the write to end: the bytes written (possibly fewer than asked), or the error the
    /// kernel gave it.
    pub fn wait(mut self) -> io::Result<usize> {
        self.waited = true;
        let result = self.wait_here();
        usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result))
    }

    fn wait_here(&self) -> i32 {
        // The ring that took the write is still this thread's: it is dropped only with nothing in
        // the kernel.
        RING.with_borrow_mut(|slot| slot.as_mut().map_or(-libc::EIO, |ring| ring.wait_for(self.id)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.waited {
            self.wait_here();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn one_write_at_a_time_per_thread_and_errors_come_back() {
        let d = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(d.path().join("f")).unwrap();
        let (a, b) = (vec![1u8; 5000], vec![2u8; 3000]);
        // SAFETY: `file`, `a` and `b` outlive the writes, which are waited for below.
        let first = unsafe { write_at(file.as_raw_fd(), &a, 0) }.expect("io_uring on the build machine");
        assert!(unsafe { write_at(file.as_raw_fd(), &b, 5000) }.is_none(), "one in flight per thread");
        assert_eq!(first.wait().unwrap(), 5000);
        let second = unsafe { write_at(file.as_raw_fd(), &b, 5000) }.unwrap();
        drop(second);
        let bad = unsafe { write_at(-1, &a, 0) }.unwrap();
        assert_eq!(bad.wait().unwrap_err().raw_os_error(), Some(libc::EBADF));
        let written = std::fs::read(d.path().join("f")).unwrap();
        assert!(written[..5000].iter().all(|&x| x == 1) && written[5000..].iter().all(|&x| x == 2));
    }
}
