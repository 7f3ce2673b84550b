//! Text found in an image by Tesseract, in a process of its own: a resident worker that reads
//! image after image (`ocr_worker.rs`), or, without one, the command-line program once per image.
//!
//! Why a process and not the library in the node: OCR reads hostile pixels with a large C++
//! engine. In its own process a crash, a hang or a runaway allocation costs one instance (held
//! with a reason), never the node; the process gets an address-space limit and is killed at its
//! time limit (a killed worker is replaced for the next image). The command-line program is
//! Debian's `tesseract-ocr`, and the worker opens its library at run time, so the node needs no
//! C++ toolchain to build.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::Duration;

use super::ocr_worker;
use super::PixelError;

/// A worker is replaced after this many images, so whatever the engine keeps between images
/// (caches, fragmentation) stays bounded.
const READS_PER_WORKER: u32 = 500;
/// After a worker fails to start, images go to the program this long before a worker is tried
/// again.
const START_RETRY: Duration = Duration::from_secs(60);
/// How long a new worker may take to load its model and say so.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An 8-bit grey image, row by row.
#[derive(Debug, Clone)]
pub struct Grey {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Grey {
    /// Binary PGM, which Tesseract's image library reads from standard input.
    fn pgm(&self) -> Vec<u8> {
        let mut out = format!("P5\n{} {}\n255\n", self.width, self.height).into_bytes();
        out.extend_from_slice(&self.pixels);
        out
    }
}

/// One word Tesseract found, in the image's coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
    /// 0-100.
    pub confidence: f32,
    pub text: String,
    /// Block, paragraph and line numbers: words of one line share them.
    pub line: (u32, u32, u32),
}

/// The OCR engine: where it is, how long and how much memory one image may take, and how many
/// images are read at once (OCR is CPU-bound; the rest of the node needs a core too).
pub struct Ocr {
    program: PathBuf,
    timeout: Duration,
    memory_bytes: u64,
    slots: Slots,
    /// Resident workers, when they can run: the command that starts one, and those idle.
    resident: Option<Resident>,
}

/// Resident workers: how one is started, and the idle ones (at most one per slot).
struct Resident {
    command: Vec<OsString>,
    idle: Mutex<Vec<Worker>>,
    /// When a worker last could not be started: for [`START_RETRY`] after it, images go to the
    /// program once each (the log says so at each failure).
    failed_start: Mutex<Option<std::time::Instant>>,
}

impl Resident {
    /// Whether a worker failed to start less than [`START_RETRY`] ago.
    fn resting(&self) -> bool {
        let failed = *self.failed_start.lock().unwrap_or_else(|p| p.into_inner());
        failed.is_some_and(|at| at.elapsed() < START_RETRY)
    }
}

/// One resident worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    reads: u32,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Not if it has been reaped already (found dead while idle): its pid may be another's now.
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_group(&self.child);
        }
        let _ = self.child.wait();
    }
}

/// Kill a worker and the reader it may have forked: they are one process group.
fn kill_group(child: &Child) {
    // SAFETY: kill(2) on the process group our own child leads; the child is not reaped yet (its
    // pid, and so the group's id, cannot have been reused).
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
}

impl Ocr {
    /// The engine `program`. The default (`tesseract`, found on PATH) is run as resident workers
    /// of this very binary when it is the node's (`ocr-worker`), and their library opens (see
    /// [`probe`](Self::probe)); any other program, a site's own wrapper, is run per image.
    pub fn new(program: &Path, timeout: Duration, memory_bytes: u64, workers: usize) -> Ocr {
        let node = std::env::current_exe()
            .ok()
            .filter(|exe| exe.file_name().is_some_and(|n| n == env!("CARGO_PKG_NAME")));
        // The running binary itself, even after an upgrade replaced the file at its path.
        let running = |exe: PathBuf| {
            let own = Path::new("/proc/self/exe");
            if own.exists() {
                own.to_path_buf()
            } else {
                exe
            }
        };
        let resident = match node {
            Some(exe) if program == Path::new("tesseract") => Some(Resident {
                command: vec![
                    running(exe).into(),
                    "ocr-worker".into(),
                    "--timeout-s".into(),
                    timeout.as_secs().max(1).to_string().into(),
                ],
                idle: Mutex::new(Vec::new()),
                failed_start: Mutex::new(None),
            }),
            _ => None,
        };
        Ocr {
            program: program.to_path_buf(),
            timeout,
            memory_bytes,
            slots: Slots::new(workers.max(1)),
            resident,
        }
    }

    /// As [`new`](Self::new), with resident workers started by `command` (tests start stand-ins).
    pub fn with_worker(command: Vec<OsString>, timeout: Duration, memory_bytes: u64, workers: usize) -> Ocr {
        let resident =
            Some(Resident { command, idle: Mutex::new(Vec::new()), failed_start: Mutex::new(None) });
        Ocr {
            program: PathBuf::from("tesseract"),
            timeout,
            memory_bytes,
            slots: Slots::new(workers.max(1)),
            resident,
        }
    }

    /// The engine's version line, or why it cannot run: said once at start. A resident worker
    /// that cannot start leaves the program per image, with the reason logged.
    pub fn probe(&mut self) -> Result<String, PixelError> {
        if let Some(resident) = &self.resident {
            match self.start_worker(resident) {
                Ok((worker, version)) => {
                    resident.idle.lock().unwrap_or_else(|p| p.into_inner()).push(worker);
                    return Ok(version);
                }
                Err(e) => {
                    tracing::info!(reason = %e, "burned-in text: no resident OCR worker; tesseract runs once per image");
                    self.resident = None;
                }
            }
        }
        self.probe_program()
    }

    /// The command-line program's version line, or why it cannot run.
    fn probe_program(&self) -> Result<String, PixelError> {
        let out = Command::new(&self.program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PixelError::Ocr(format!("cannot run {}: {e}", self.program.display())))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let first = text.lines().next().unwrap_or_default().trim().to_string();
        if !out.status.success() || !first.starts_with("tesseract") {
            return Err(PixelError::Ocr(format!("{} is not a working tesseract", self.program.display())));
        }
        let langs = Command::new(&self.program).arg("--list-langs").stdin(Stdio::null()).output();
        let has_eng =
            langs.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "eng"));
        if !has_eng {
            return Err(PixelError::Ocr("tesseract has no English model (Debian: tesseract-ocr-eng)".into()));
        }
        Ok(first)
    }

    /// Every word in `image`. An engine that fails, is killed or runs past its time is an error:
    /// the caller holds the instance.
    pub fn read(&self, image: &Grey) -> Result<Vec<Word>, PixelError> {
        let _slot = self.slots.take();
        match &self.resident {
            Some(r) if !r.resting() => self.read_resident(r, image),
            _ => self.read_once(image),
        }
    }

    /// A worker process, started and ready: with the version it said.
    fn start_worker(&self, resident: &Resident) -> Result<(Worker, String), PixelError> {
        let mut command = Command::new(&resident.command[0]);
        command
            .args(&resident.command[1..])
            .env("OMP_THREAD_LIMIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        limit(&mut command, self.memory_bytes, false);
        // A group of its own, with the readers it forks: a kill at the time limit takes both.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child =
            command.spawn().map_err(|e| PixelError::Ocr(format!("cannot start the OCR worker: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PixelError::Ocr("the OCR worker has no pipes".into()));
        };
        let mut worker = Worker { child, stdin, stdout, reads: 0 };
        let version = exchange(&mut worker, None, START_TIMEOUT)?;
        Ok((worker, String::from_utf8_lossy(&version).into_owned()))
    }

    /// Read with an idle worker (or a new one); a worker that fails is not used again. A worker
    /// that cannot be started sends this image, and every later one, to the program.
    fn read_resident(&self, resident: &Resident, image: &Grey) -> Result<Vec<Word>, PixelError> {
        let idle = {
            let mut idle = resident.idle.lock().unwrap_or_else(|p| p.into_inner());
            // One that died while idle (the OOM killer, an operator) is not given the image.
            idle.retain_mut(|w| matches!(w.child.try_wait(), Ok(None)));
            idle.pop()
        };
        let mut worker = match idle {
            Some(w) => w,
            None => match self.start_worker(resident) {
                Ok((w, _)) => w,
                Err(e) => {
                    *resident.failed_start.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(std::time::Instant::now());
                    tracing::warn!(error = %e, retry_in_s = START_RETRY.as_secs(), "burned-in text: a resident OCR worker could not be started; tesseract runs once per image meanwhile");
                    return self.read_once(image);
                }
            },
        };
        let tsv = exchange(&mut worker, Some(image), self.timeout)?;
        worker.reads += 1;
        if worker.reads < READS_PER_WORKER {
            resident.idle.lock().unwrap_or_else(|p| p.into_inner()).push(worker);
        }
        Ok(parse_tsv(&String::from_utf8_lossy(&tsv)))
    }

    /// Read by running the program once for this image.
    fn read_once(&self, image: &Grey) -> Result<Vec<Word>, PixelError> {
        let mut command = Command::new(&self.program);
        // Sparse text: burned-in annotation is words scattered over an image, not a page.
        command
            .args(["stdin", "stdout", "-l", "eng", "--psm", "11", "tsv"])
            .env("OMP_THREAD_LIMIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        limit(&mut command, self.memory_bytes, true);
        let mut child = command
            .spawn()
            .map_err(|e| PixelError::Ocr(format!("cannot start {}: {e}", self.program.display())))?;
        let pid = child.id();
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let pgm = image.pgm();
        let (done, finished) = mpsc::channel();
        std::thread::scope(|s| {
            // Written from its own thread: a large image fills the pipe before Tesseract reads it.
            s.spawn(move || {
                if let Some(mut w) = stdin.take() {
                    // A write error means the engine stopped early; its exit status says why.
                    let _ = w.write_all(&pgm);
                }
            });
            s.spawn(move || {
                let mut text = Vec::new();
                let read = stdout.as_mut().map_or(Ok(0), |r| r.read_to_end(&mut text));
                let _ = done.send(read.map(|_| text));
            });
            // What the engine says of a failure: its last line goes into the reason.
            let said = s.spawn(move || {
                let mut text = Vec::new();
                let _ = stderr.as_mut().map(|r| r.take(64 << 10).read_to_end(&mut text));
                String::from_utf8_lossy(&text).lines().last().unwrap_or_default().trim().to_string()
            });
            let text = match finished.recv_timeout(self.timeout) {
                Ok(text) => text,
                Err(_) => {
                    // SAFETY: kill(2) on the pid of our own child, not yet reaped (we wait below).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    let _ = child.wait();
                    return Err(PixelError::Ocr(format!(
                        "OCR ran past its {} s limit",
                        self.timeout.as_secs()
                    )));
                }
            };
            let status = child.wait().map_err(|e| PixelError::Ocr(format!("waiting for tesseract: {e}")))?;
            if !status.success() {
                let said = said.join().unwrap_or_default();
                return Err(PixelError::Ocr(format!("tesseract failed ({status}): {said}")));
            }
            let text = text.map_err(|e| PixelError::Ocr(format!("reading tesseract's output: {e}")))?;
            Ok(parse_tsv(&String::from_utf8_lossy(&text)))
        })
    }
}

/// Send `image` to `worker` (none: only read what it says first) and read its answer within
/// `timeout`; past it the worker is killed. An error leaves the worker unusable.
fn exchange(worker: &mut Worker, image: Option<&Grey>, timeout: Duration) -> Result<Vec<u8>, PixelError> {
    let (done, finished) = mpsc::channel();
    let Worker { stdin, stdout, child, .. } = worker;
    let child = &*child;
    let answer = std::thread::scope(|s| {
        if let Some(image) = image {
            // From its own thread: a large image fills the pipe before the worker has read it.
            s.spawn(move || {
                let mut request = Vec::with_capacity(8 + image.pixels.len());
                request.extend_from_slice(&(image.width as u32).to_le_bytes());
                request.extend_from_slice(&(image.height as u32).to_le_bytes());
                request.extend_from_slice(&image.pixels);
                // A write error means the worker stopped; reading its answer says so.
                let _ = stdin.write_all(&request).and_then(|()| stdin.flush());
            });
        }
        s.spawn(move || {
            let _ = done.send(read_answer(stdout));
        });
        match finished.recv_timeout(timeout) {
            Ok(answer) => answer,
            Err(_) => {
                kill_group(child);
                Err(PixelError::Ocr(format!("OCR ran past its {} s limit", timeout.as_secs())))
            }
        }
    });
    let answer = answer.map_err(|e| match child_status(worker) {
        Some(status) => PixelError::Ocr(format!("{e} ({status})")),
        None => e,
    });
    match answer? {
        (ocr_worker::DONE, body) => Ok(body),
        (_, why) => Err(PixelError::Ocr(format!("the OCR worker failed: {}", String::from_utf8_lossy(&why)))),
    }
}

/// How a worker that stopped answering ended, if it has: a crash's signal, or its exit code.
fn child_status(worker: &mut Worker) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    loop {
        match worker.child.try_wait() {
            Ok(Some(status)) => return Some(format!("worker {status}")),
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// One answer of a worker: its status and body. A worker that ends first is an error.
fn read_answer(stdout: &mut ChildStdout) -> Result<(u8, Vec<u8>), PixelError> {
    let lost = |e: std::io::Error| PixelError::Ocr(format!("the OCR worker stopped: {e}"));
    let mut head = [0u8; 5];
    stdout.read_exact(&mut head).map_err(lost)?;
    let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
    if head[0] > ocr_worker::FAILED || len > 64 << 20 {
        return Err(PixelError::Ocr("the OCR worker answered something else than OCR".into()));
    }
    let mut body = vec![0u8; len];
    stdout.read_exact(&mut body).map_err(lost)?;
    Ok((head[0], body))
}

/// An address-space limit for the engine process, and a lower CPU priority: intake beside it
/// (a CT stream, the sender waiting on its acknowledgement) comes first, OCR takes what is left.
///
/// With `dies_with_spawner`, the process is killed when the thread that started it ends (Linux's
/// PDEATHSIG follows the thread, not the process): right for a program run once per image, whose
/// thread waits for it, so it goes when a node killed with SIGKILL cannot stop it at its time
/// limit; wrong for a resident worker, which outlives the blocking-pool thread that started it
/// (the worker ends with its input instead, and bounds each reading itself).
fn limit(command: &mut Command, bytes: u64, dies_with_spawner: bool) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit, setpriority and prctl are async-signal-safe and touch only the child
    // itself; nothing else runs between fork and exec here.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Best effort: a priority that cannot be lowered still reads the image.
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            if dies_with_spawner {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// Tesseract's TSV: level, page, block, paragraph, line, word, left, top, width, height,
/// confidence, text. Level 5 rows are words.
fn parse_tsv(tsv: &str) -> Vec<Word> {
    tsv.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 12 || f[0] != "5" {
                return None;
            }
            let n = |i: usize| f[i].trim().parse::<usize>().ok();
            let text = f[11].trim();
            if text.is_empty() {
                return None;
            }
            Some(Word {
                x: n(6)?,
                y: n(7)?,
                w: n(8)?,
                h: n(9)?,
                confidence: f[10].trim().parse().unwrap_or(0.0),
                text: text.to_string(),
                line: (n(2)? as u32, n(3)? as u32, n(4)? as u32),
            })
        })
        .collect()
}

/// A counting semaphore for blocking threads (the pipeline runs on tokio's blocking pool).
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots { free: Mutex::new(n), freed: Condvar::new() }
    }

    fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf` octal escapes for `bytes`: what a stand-in worker written in sh answers.
    fn octal(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("\\{b:03o}")).collect()
    }

    /// An answer frame as the worker writes it.
    fn frame(status: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![status];
        f.extend_from_slice(&(body.len() as u32).to_le_bytes());
        f.extend_from_slice(body);
        f
    }

    /// A stand-in worker: `script` (sh) after it counts its start in `dir/starts`.
    fn stand_in(dir: &Path, script: &str, timeout: Duration) -> Ocr {
        let starts = dir.join("starts");
        let script = format!("echo started >> '{}'\n{script}", starts.display());
        let command = vec!["sh".into(), "-c".into(), script.into()];
        Ocr::with_worker(command, timeout, 1 << 30, 1)
    }

    fn starts(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("starts")).unwrap_or_default().lines().count()
    }

    /// A 4 x 2 image: a request of 8 + 8 bytes.
    fn image() -> Grey {
        Grey { width: 4, height: 2, pixels: vec![0; 8] }
    }

    #[test]
    fn a_resident_worker_is_started_once_and_reads_image_after_image() {
        let d = tempfile::tempdir().unwrap();
        let tsv = "level\tpage\n5\t1\t2\t1\t1\t1\t10\t20\t30\t40\t95.5\tHELLO\n";
        let script = format!(
            "printf '{}'\nwhile [ \"$(head -c 16 | wc -c)\" -eq 16 ]; do printf '{}'; done",
            octal(&frame(0, b"tesseract 5 (stand-in)")),
            octal(&frame(0, tsv.as_bytes()))
        );
        let mut ocr = stand_in(d.path(), &script, Duration::from_secs(10));
        assert_eq!(ocr.probe().unwrap(), "tesseract 5 (stand-in)");
        for _ in 0..3 {
            let words = ocr.read(&image()).unwrap();
            assert_eq!((words.len(), words[0].text.as_str(), words[0].x), (1, "HELLO", 10));
        }
        assert_eq!(starts(d.path()), 1, "one worker read every image");
    }

    #[test]
    fn a_worker_that_crashes_hangs_or_fails_costs_the_image_and_is_replaced() {
        let ready = octal(&frame(0, b"tesseract"));
        // Crashes on its first image.
        let d = tempfile::tempdir().unwrap();
        let mut ocr = stand_in(
            d.path(),
            &format!("printf '{ready}'; head -c 16 > /dev/null; kill -9 $$"),
            Duration::from_secs(10),
        );
        ocr.probe().unwrap();
        assert!(matches!(ocr.read(&image()), Err(PixelError::Ocr(e)) if e.contains("stopped")));
        assert!(ocr.read(&image()).is_err());
        assert_eq!(starts(d.path()), 2, "a new worker for the next image");

        // Never answers: killed at the limit.
        let d = tempfile::tempdir().unwrap();
        let mut ocr =
            stand_in(d.path(), &format!("printf '{ready}'; exec sleep 30"), Duration::from_millis(300));
        ocr.probe().unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(ocr.read(&image()), Err(PixelError::Ocr(e)) if e.contains("limit")));
        assert!(started.elapsed() < Duration::from_secs(10), "not left to run");

        // Says it failed: an error with its words, and the worker is not used again.
        let d = tempfile::tempdir().unwrap();
        let failed = octal(&frame(1, b"cannot read"));
        let mut ocr = stand_in(
            d.path(),
            &format!("printf '{ready}'; head -c 16 > /dev/null; printf '{failed}'; exec sleep 30"),
            Duration::from_secs(10),
        );
        ocr.probe().unwrap();
        assert!(matches!(ocr.read(&image()), Err(PixelError::Ocr(e)) if e.contains("cannot read")));
    }

    #[test]
    fn a_worker_that_cannot_be_started_again_sends_images_to_the_program_for_a_while() {
        let d = tempfile::tempdir().unwrap();
        let ready = octal(&frame(0, b"tesseract"));
        // The first start works and crashes on its image; every later start fails.
        let starts = d.path().join("starts");
        let script = format!(
            "[ \"$(wc -l < '{}')\" -gt 1 ] && exit 3\nprintf '{ready}'; head -c 16 > /dev/null; kill -9 $$",
            starts.display()
        );
        let mut ocr = stand_in(d.path(), &script, Duration::from_secs(10));
        ocr.probe().unwrap();
        assert!(ocr.read(&image()).is_err(), "the crash costs its image");
        // No worker now: the program (Debian's tesseract, on the test bed) reads it instead.
        assert!(ocr.read(&image()).is_ok());
        assert!(ocr.resident.as_ref().is_some_and(Resident::resting));
        assert!(ocr.read(&image()).is_ok());
        assert_eq!(self::starts(d.path()), 2, "no new try while resting");
    }

    #[test]
    fn a_worker_that_cannot_start_leaves_the_program_per_image() {
        for script in [
            format!("printf '{}'", octal(&frame(1, b"no library"))),
            "echo not a worker".to_string(),
            "exit 3".into(),
        ] {
            let d = tempfile::tempdir().unwrap();
            let mut ocr = stand_in(d.path(), &script, Duration::from_secs(10));
            // The program probe then decides: Debian's tesseract is installed on the test bed.
            let version = ocr.probe();
            assert!(ocr.resident.is_none(), "{script}: the resident engine is dropped");
            assert!(version.is_ok_and(|v| v.starts_with("tesseract") && !v.contains("resident")), "{script}");
        }
    }

    #[test]
    fn words_are_read_from_tesseracts_tsv() {
        let tsv =
            "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
                   1\t1\t0\t0\t0\t0\t0\t0\t640\t480\t-1\t\n\
                   5\t1\t2\t1\t1\t1\t22\t26\t180\t26\t91.5\tSMITH\n\
                   5\t1\t2\t1\t1\t2\t224\t26\t26\t20\t46\t \n";
        let words = parse_tsv(tsv);
        assert_eq!(words.len(), 1);
        assert_eq!(words[0].text, "SMITH");
        assert_eq!((words[0].x, words[0].y, words[0].w, words[0].h), (22, 26, 180, 26));
        assert_eq!(words[0].line, (2, 1, 1));
    }
}
