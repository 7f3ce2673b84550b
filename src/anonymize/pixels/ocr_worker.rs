//! A resident OCR process: `dicom-anon-gateway ocr-worker` loads Tesseract's library and model
//! once, then reads each image in a child it forks for that image alone, so an image costs its
//! recognition only, not also the engine's start and its model's load (about 80 ms of the
//! 100-180 ms the command-line program takes per image here).
//!
//! It keeps what running `tesseract` per image gave. Each image is read by a fresh engine, a copy
//! of the one just loaded: nothing an image does to the engine's memory or state (a corruption
//! that does not crash, the adaptive classifier's learning) reaches the next image, which may be
//! another patient's. The engine runs in processes of their own, under the node's address-space
//! limit, killed at the time limit (the worker and its child are one process group); a crash costs
//! the image being read, held. The library is opened at run time (`libtesseract.so.5`, Debian's
//! `libtesseract5`, which `tesseract-ocr` depends on), so building the node still needs no C++
//! toolchain or headers, and a machine without it falls back to the command-line program.
//!
//! The protocol, on the worker's standard input and output: a request is the image's width and
//! height (u32, little endian) and its 8-bit grey pixels, row by row; an answer is a status byte
//! (0: done, 1: failed), a length (u32, little endian) and that many bytes: Tesseract's TSV, or
//! what failed. The first answer, before any request, is the engine's version, or why it cannot
//! start.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::{self, Read, Write};

/// The library's name, as Debian installs it.
const LIBRARY: &str = "libtesseract.so.5";
/// Tesseract's page segmentation mode for sparse text (PSM_SPARSE_TEXT): burned-in annotation is
/// words scattered over an image, not a page. The same `--psm 11` the program is run with.
const SPARSE_TEXT: c_int = 11;
/// The resolution Tesseract assumes for an image without one, said explicitly so the library
/// reads as the program does (which warns "Invalid resolution 0 dpi. Using 70 instead").
const ASSUMED_PPI: c_int = 70;
/// The largest image a request may carry (width times height), as a sanity bound on the length.
const MAX_PIXELS: u64 = 1 << 30;

/// Answer statuses.
pub const DONE: u8 = 0;
pub const FAILED: u8 = 1;

/// The C API functions used, resolved from the library. "C-unwind": the engine is C++, and an
/// exception (`bad_alloc` under the address-space limit) must unwind as defined behaviour, to the
/// abort that ends the child and holds its image.
struct Api {
    handle: *mut c_void,
    init3: unsafe extern "C-unwind" fn(*mut c_void, *const c_char, *const c_char) -> c_int,
    set_page_seg_mode: unsafe extern "C-unwind" fn(*mut c_void, c_int),
    set_image: unsafe extern "C-unwind" fn(*mut c_void, *const u8, c_int, c_int, c_int, c_int),
    set_source_resolution: unsafe extern "C-unwind" fn(*mut c_void, c_int),
    get_tsv_text: unsafe extern "C-unwind" fn(*mut c_void, c_int) -> *mut c_char,
    delete_text: unsafe extern "C-unwind" fn(*const c_char),
    delete: unsafe extern "C-unwind" fn(*mut c_void),
}

impl Drop for Api {
    fn drop(&mut self) {
        // SAFETY: the handle is a live engine, deleted once; its model's caches go with it.
        unsafe { (self.delete)(self.handle) }
    }
}

/// A symbol of the open library `lib`, as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the C signature of the symbol `name` in the Tesseract C API.
unsafe fn symbol<T: Copy>(lib: *mut c_void, name: &str) -> Result<T, String> {
    let cname = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: dlsym on a handle dlopen returned; the name is NUL-terminated.
    let p = unsafe { libc::dlsym(lib, cname.as_ptr()) };
    if p.is_null() {
        return Err(format!("{LIBRARY} has no {name}"));
    }
    // SAFETY: a function pointer is pointer-sized; the caller vouches for the signature.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl Api {
    /// Open the library and start one engine with the English model.
    fn open() -> Result<(Api, String), String> {
        let name = CString::new(LIBRARY).expect("no NUL in the name");
        // SAFETY: dlopen with a NUL-terminated name; the handle is kept for the process's life.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(format!("cannot open {LIBRARY} (Debian: libtesseract5)"));
        }
        // SAFETY: each signature below is the one tesseract/capi.h declares for the name.
        unsafe {
            let create: unsafe extern "C-unwind" fn() -> *mut c_void = symbol(lib, "TessBaseAPICreate")?;
            let version: unsafe extern "C-unwind" fn() -> *const c_char = symbol(lib, "TessVersion")?;
            let api = Api {
                handle: create(),
                init3: symbol(lib, "TessBaseAPIInit3")?,
                set_page_seg_mode: symbol(lib, "TessBaseAPISetPageSegMode")?,
                set_image: symbol(lib, "TessBaseAPISetImage")?,
                set_source_resolution: symbol(lib, "TessBaseAPISetSourceResolution")?,
                get_tsv_text: symbol(lib, "TessBaseAPIGetTsvText")?,
                delete_text: symbol(lib, "TessDeleteText")?,
                delete: symbol(lib, "TessBaseAPIDelete")?,
            };
            if api.handle.is_null() {
                return Err("Tesseract could not create an engine".into());
            }
            let eng = CString::new("eng").expect("no NUL");
            if (api.init3)(api.handle, std::ptr::null(), eng.as_ptr()) != 0 {
                return Err("tesseract has no English model (Debian: tesseract-ocr-eng)".into());
            }
            let version = CStr::from_ptr(version()).to_string_lossy().into_owned();
            Ok((api, format!("tesseract {version} (resident)")))
        }
    }

    /// The TSV of every word in a `width` x `height` grey image.
    fn read(&self, width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>, String> {
        let (w, h) = (c_int::try_from(width), c_int::try_from(height));
        let (Ok(w), Ok(h)) = (w, h) else { return Err("the image is too large".into()) };
        if pixels.len() != width * height {
            return Err("the image's size and its pixels disagree".into());
        }
        // SAFETY: the handle is a live engine; `pixels` holds width x height bytes, one per pixel,
        // and outlives the call (Tesseract copies the image in SetImage); the text is freed with
        // the API's own function.
        unsafe {
            (self.set_page_seg_mode)(self.handle, SPARSE_TEXT);
            (self.set_image)(self.handle, pixels.as_ptr(), w, h, 1, w);
            (self.set_source_resolution)(self.handle, ASSUMED_PPI);
            let text = (self.get_tsv_text)(self.handle, 0);
            if text.is_null() {
                return Err("Tesseract could not read the image".into());
            }
            let tsv = CStr::from_ptr(text).to_bytes().to_vec();
            (self.delete_text)(text);
            Ok(tsv)
        }
    }
}

/// Write one answer.
pub fn answer(out: &mut impl Write, status: u8, body: &[u8]) -> io::Result<()> {
    out.write_all(&[status])?;
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// Read one request: `None` at the end of input.
fn request(input: &mut impl Read) -> io::Result<Option<(usize, usize, Vec<u8>)>> {
    let mut head = [0u8; 8];
    match input.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let width = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let height = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    let n = u64::from(width) * u64::from(height);
    if n > MAX_PIXELS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "an image larger than any request may be"));
    }
    let mut pixels = vec![0u8; n as usize];
    input.read_exact(&mut pixels)?;
    Ok(Some((width as usize, height as usize, pixels)))
}

/// The worker's life: start the engine, say so, then answer each request until the input ends
/// (the node closed it, or is gone). Each reading is killed after `timeout_s`, so a reader stuck
/// on a hostile image ends even when the node that would have killed it has died. Returns the
/// process's exit code.
pub fn serve(timeout_s: u64) -> i32 {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    // The answers go out on a copy of standard output, and standard output itself becomes
    // standard error before the library is loaded: whatever the engine prints (it prints
    // warnings) can never be taken for an answer.
    // SAFETY: dup/dup2 on the process's own standard descriptors; the copy is owned by `output`.
    let mut output = unsafe {
        let answers = libc::dup(1);
        if answers < 0 || libc::dup2(2, 1) < 0 {
            return 1;
        }
        io::BufWriter::new(<std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(answers))
    };
    let api = match Api::open() {
        Ok((api, version)) => {
            if answer(&mut output, DONE, version.as_bytes()).is_err() {
                return 1;
            }
            api
        }
        Err(why) => {
            let _ = answer(&mut output, FAILED, why.as_bytes());
            return 1;
        }
    };
    loop {
        let said = match request(&mut input) {
            Ok(None) => return 0,
            Ok(Some((w, h, pixels))) => match read_in_child(&api, w, h, &pixels, timeout_s, output.get_ref())
            {
                Ok(frame) => output.write_all(&frame).and_then(|()| output.flush()),
                Err(why) => answer(&mut output, FAILED, why.as_bytes()),
            },
            Err(_) => return 1,
        };
        if said.is_err() {
            return 1;
        }
    }
}

/// Read one image in a child forked for it: a fresh copy of the loaded engine, gone with the
/// image. Returns the child's answer frame, whole, or why there is none (it crashed, or was
/// killed by the address-space limit: the exit status says which).
fn read_in_child(
    api: &Api,
    width: usize,
    height: usize,
    pixels: &[u8],
    timeout_s: u64,
    answers: &std::fs::File,
) -> Result<Vec<u8>, String> {
    use std::os::fd::AsRawFd;
    let answers = answers.as_raw_fd();
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe(2) into a two-element array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("no pipe for the reading: {}", io::Error::last_os_error()));
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: getpid has no preconditions.
    let worker = unsafe { libc::getpid() };
    // SAFETY: the worker is single-threaded (OMP_THREAD_LIMIT=1, no thread of ours), so the child
    // may allocate and run the engine; it leaves by _exit, running no destructor of the parent's.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: closing the pipe we made.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        return Err(format!("cannot fork a reader: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child: dies with the worker (single-threaded, so its one thread is the
        // worker's life) and at its time limit (SIGALRM ends it); its own copy of the pipe's write
        // end, owned by `out` until _exit.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The worker may have died before the line above took effect.
            if libc::getppid() != worker {
                libc::_exit(1);
            }
            libc::alarm(u32::try_from(timeout_s).unwrap_or(u32::MAX).max(1));
            // Only its own pipe: not the worker's input nor its answers.
            libc::close(read_end);
            libc::close(0);
            libc::close(answers);
        }
        let mut out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(write_end) };
        let written = match api.read(width, height, pixels) {
            Ok(tsv) => answer(&mut out, DONE, &tsv),
            Err(why) => answer(&mut out, FAILED, why.as_bytes()),
        };
        // SAFETY: _exit ends the child without unwinding or running the parent's atexit work.
        unsafe { libc::_exit(i32::from(written.is_err())) }
    }
    // SAFETY: in the worker: the child has its own write end; ours is closed so EOF comes.
    unsafe { libc::close(write_end) };
    let mut frame = Vec::new();
    let mut from_child = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(read_end) };
    let read = from_child.read_to_end(&mut frame);
    let mut status: c_int = 0;
    // SAFETY: waiting for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    let exited_cleanly = waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if read.is_ok() && exited_cleanly && is_whole_frame(&frame) {
        return Ok(frame);
    }
    if waited == pid && libc::WIFSIGNALED(status) {
        return Err(format!("the engine was killed by signal {} while reading", libc::WTERMSIG(status)));
    }
    Err(format!("the engine stopped while reading (wait status {status})"))
}

/// Whether `frame` is exactly one answer.
fn is_whole_frame(frame: &[u8]) -> bool {
    frame.len() >= 5
        && frame[0] <= FAILED
        && u32::from_le_bytes(frame[1..5].try_into().expect("4 bytes")) as usize == frame.len() - 5
}
