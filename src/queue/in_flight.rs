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
//! io_uring is not everywhere: Docker's default seccomp profile refuses it, and a kernel may
//! have it turned off. Where a thread cannot set up a ring, the caller writes synchronously, as
//! it would without this module; the node says so once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{opcode, types, IoUring};

/// Entries per ring: a thread waits for its write before it starts another, so a few suffice.
const ENTRIES: u32 = 4;

/// Set once any thread has failed to set up a ring: the others do not try again.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

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

struct Ring {
    uring: IoUring,
    next_id: u64,
    /// Completions reaped while waiting for another write of this thread.
    done: HashMap<u64, i32>,
}

/// A write started by [`write_at`] and not yet waited for. It belongs to the thread that started
/// it (its ring is that thread's), hence not `Send`; dropped, it waits.
#[must_use = "the write must be waited for before its buffer is reused"]
pub struct InFlight {
    id: u64,
    waited: bool,
    _this_thread: PhantomData<*const ()>,
}

/// Start writing `buf` to `fd` at `offset`, on this thread's ring. `None` if this thread has no
/// ring (io_uring is unavailable) or cannot take the write now: the caller writes synchronously.
///
/// # Safety
/// `fd` must stay open, and `buf` allocated and unchanged, until the returned write has been
/// waited for (by [`InFlight::wait`] or its drop): the kernel reads them meanwhile.
pub unsafe fn write_at(fd: RawFd, buf: &[u8], offset: u64) -> Option<InFlight> {
    #[cfg(test)]
    if TURNED_OFF.get() {
        return None;
    }
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    RING.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(Ring::new()?);
        }
        let ring = slot.as_mut()?;
        let id = ring.next_id;
        let len = u32::try_from(buf.len()).ok()?;
        let entry = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len).offset(offset).build().user_data(id);
        // SAFETY: the caller keeps `fd` and `buf` valid until this write is waited for.
        unsafe { ring.uring.submission().push(&entry) }.ok()?;
        ring.next_id += 1;
        // A submission that fails now (the kernel short of memory) stays queued: waiting for the
        // write submits it again.
        let _ = ring.uring.submit();
        Some(InFlight { id, waited: false, _this_thread: PhantomData })
    })
}

impl Ring {
    fn new() -> Option<Ring> {
        match IoUring::new(ENTRIES) {
            Ok(uring) => Some(Ring { uring, next_id: 0, done: HashMap::new() }),
            Err(e) => {
                if !UNAVAILABLE.swap(true, Ordering::Relaxed) {
                    tracing::info!(error = %e, "io_uring is unavailable: each direct write waits for the disk before the index commits");
                }
                None
            }
        }
    }

    /// Wait until write `id` has completed; its result, as the kernel gives it.
    fn wait_for(&mut self, id: u64) -> i32 {
        loop {
            if let Some(result) = self.done.remove(&id) {
                return result;
            }
            // Submits what is queued (a write whose submit failed above) and waits for one.
            match self.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The ring itself failed: nothing else can be learnt about the write. Treat
                    // it as failed; the caller then writes the bytes synchronously. The kernel
                    // may still hold the entry, so the ring is never used again.
                    UNAVAILABLE.store(true, Ordering::Relaxed);
                    return -e.raw_os_error().unwrap_or(libc::EIO);
                }
            }
            for cqe in self.uring.completion() {
                self.done.insert(cqe.user_data(), cqe.result());
            }
        }
    }
}

impl InFlight {
    /// Wait for the write to end: the bytes written (possibly fewer than asked), or its error.
    pub fn wait(mut self) -> io::Result<usize> {
        self.waited = true;
        let result = RING.with_borrow_mut(|slot| match slot.as_mut() {
            Some(ring) => ring.wait_for(self.id),
            None => -libc::EIO,
        });
        usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.waited {
            RING.with_borrow_mut(|slot| slot.as_mut().map(|ring| ring.wait_for(self.id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn writes_complete_in_any_order_of_waiting() {
        let d = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(d.path().join("f")).unwrap();
        let (a, b) = (vec![1u8; 5000], vec![2u8; 3000]);
        // SAFETY: `file`, `a` and `b` outlive both writes, which are waited for below.
        let first = unsafe { write_at(file.as_raw_fd(), &a, 0) }.expect("io_uring on the build machine");
        let second = unsafe { write_at(file.as_raw_fd(), &b, 5000) }.unwrap();
        assert_eq!(second.wait().unwrap(), 3000);
        assert_eq!(first.wait().unwrap(), 5000);
        let bad = unsafe { write_at(-1, &a, 0) }.unwrap();
        assert_eq!(bad.wait().unwrap_err().raw_os_error(), Some(libc::EBADF));
        let written = std::fs::read(d.path().join("f")).unwrap();
        assert!(written[..5000].iter().all(|&x| x == 1) && written[5000..].iter().all(|&x| x == 2));
    }
}
