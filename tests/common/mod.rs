//! Shared test support: the corpus generator, real peers (DCMTK, dicom3tools) and runs of the
//! real binary.
#![allow(dead_code)]

pub mod corpus;
pub mod device;
pub mod haproxy;
pub mod http;
pub mod moto;
pub mod node;
pub mod orthanc;
pub mod peers;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod rawscu;
pub mod research;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use corpus::*;

/// A real peer tool, by full path. Missing is a loud failure, never a skip.
pub fn tool(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(p.exists(), "{path} is missing: install the Debian package {package} (.ci/run does)");
    p
}

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dicom-anon-gateway"))
}

/// The bytes of one explicit VR little endian element, for tests that write hostile data sets
/// by hand.
pub fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut b = [tag.0.to_le_bytes(), tag.1.to_le_bytes()].concat();
    b.extend(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UR" | b"UC") {
        b.extend([0, 0]);
        b.extend((value.len() as u32).to_le_bytes());
    } else {
        b.extend((value.len() as u16).to_le_bytes());
    }
    b.extend(value);
    b
}

/// A config file for a test project in `dir`; `extra` is appended under `project:`.
pub fn config(dir: &Path, site_id: &str, uid_root: &str, script: &Path, extra: &str) -> PathBuf {
    let yaml = format!(
        "project:\n  name: TEST_PROJECT\n  site_id: \"{site_id}\"\n  uid_root: \"{uid_root}\"\n  script: {}\n{extra}storage:\n  dir: {}\n  min_free_bytes: 0\nlogging:\n  level: warn\n",
        script.display(),
        dir.join("storage").display()
    );
    put(dir, "config.yaml", yaml.as_bytes())
}

pub fn default_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default-anonymizer.script")
}

/// The shipped default: the PS3.15 Basic Profile script.
pub fn profile_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ps315-basic-profile.script")
}

pub fn rsna_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rsna-default-anonymizer.script")
}

pub fn anonymize(config: &Path, out: &Path, inputs: &[&Path]) -> Output {
    let out = binary()
        .arg("anonymize")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(inputs)
        .output()
        .unwrap();
    out
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Poll `done` until it holds; fail with `what` (and the node's log, via the message) after
/// `within`. Tests wait on conditions, never on a fixed sleep.
pub fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(haystack, needle).is_some()
}

/// `dcmdump +P <tag>` of one attribute, e.g. "StudyDate"; the value between the brackets.
pub fn dcmdump_value(file: &Path, key: &str) -> Option<String> {
    let out = Command::new(tool("/usr/bin/dcmdump", "dcmtk")).args(["+P", key]).arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    let start = line.find('[')? + 1;
    let end = line[start..].find(']')? + start;
    Some(line[start..end].to_string())
}

/// dciodvfy's error lines.
pub fn dciodvfy_errors(file: &Path) -> Vec<String> {
    let out = Command::new(tool("/usr/bin/dciodvfy", "dicom3tools")).arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let mut errors: Vec<String> =
        text.lines().filter(|l| l.starts_with("Error")).map(str::to_string).collect();
    errors.sort();
    errors.dedup();
    errors
}
