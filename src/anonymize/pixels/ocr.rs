//! Text found in an image by Tesseract, run as a separate process per image.
//!
//! Why a process and not the library: OCR reads hostile pixels with a large C++ engine. In its
//! own process a crash, a hang or a runaway allocation costs one instance (held with a reason),
//! never the node; the process gets an address-space limit and is killed at its time limit. The
//! command-line program is Debian's `tesseract-ocr`, so the node needs no C++ toolchain to build.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::Duration;

use super::PixelError;

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
}

impl Ocr {
    pub fn new(program: &Path, timeout: Duration, memory_bytes: u64, workers: usize) -> Ocr {
        Ocr { program: program.to_path_buf(), timeout, memory_bytes, slots: Slots::new(workers.max(1)) }
    }

    /// The engine's version line, or why it cannot run: said once at start.
    pub fn probe(&self) -> Result<String, PixelError> {
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
        let mut command = Command::new(&self.program);
        // Sparse text: burned-in annotation is words scattered over an image, not a page.
        command
            .args(["stdin", "stdout", "-l", "eng", "--psm", "11", "tsv"])
            .env("OMP_THREAD_LIMIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        limit(&mut command, self.memory_bytes);
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

/// An address-space limit for the engine process, and a lower CPU priority: intake beside it
/// (a CT stream, the sender waiting on its acknowledgement) comes first, OCR takes what is left.
fn limit(command: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit and setpriority are async-signal-safe and touch only the child itself;
    // nothing else runs between fork and exec here.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Best effort: a priority that cannot be lowered still reads the image.
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
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
