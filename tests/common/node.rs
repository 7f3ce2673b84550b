//! A running node (the real binary) on 127.0.0.1 with a port the OS picked, and the DCMTK peers
//! that talk to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::{binary, default_script, put, tool};

pub const SITE: &str = "99.99";
pub const ROOT: &str = "1.2.826.0.1.3680043.10.474";
pub const AE: &str = "ANONYMIZER";

pub struct Node {
    child: Option<Child>,
    pub port: u16,
    /// The operations endpoint's port; `None` with `http.enabled: false`.
    pub http_port: Option<u16>,
    /// The TLS listener's port; `None` without `scp.tls`.
    pub tls_port: Option<u16>,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Node {
    /// Start a node storing under `dir`; `scp` is extra YAML under `scp:` (indented two spaces),
    /// `storage` extra YAML under `storage:`.
    pub fn start(dir: &Path, scp: &str, storage: &str) -> Node {
        Node::start_full(dir, scp, storage, "", &[])
    }

    /// As `start`, with more top-level YAML (`extra`) and environment variables for the node.
    /// Unless `extra` has an `http:` section, the operations endpoint takes a free port.
    pub fn start_full(dir: &Path, scp: &str, storage: &str, extra: &str, env: &[(&str, &str)]) -> Node {
        let config = Node::write_config(dir, scp, storage, extra);
        Node::start_env(dir, &config, env)
    }

    /// The config [`Node::start_full`] starts with, written to `dir/node.yaml`.
    pub fn write_config(dir: &Path, scp: &str, storage: &str, extra: &str) -> PathBuf {
        let http =
            if extra.lines().any(|l| l.starts_with("http:")) { "" } else { "http:\n  listen: 127.0.0.1:0\n" };
        let extra = format!("{extra}{http}");
        let yaml = format!(
            "project:\n  name: TEST_PROJECT\n  site_id: \"{SITE}\"\n  uid_root: \"{ROOT}\"\n  script: {}\n\
             scp:\n  ae_title: {AE}\n  host: 127.0.0.1\n  port: 0\n{scp}\
             storage:\n  dir: {}\n{storage}{extra}logging:\n  level: debug\n",
            default_script().display(),
            dir.join("storage").display()
        );
        put(dir, "node.yaml", yaml.as_bytes())
    }

    /// Start (or restart) with an existing config file.
    pub fn start_with(dir: &Path, config: &Path) -> Node {
        Node::start_env(dir, config, &[])
    }

    pub fn start_env(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Node {
        let mut command = binary();
        command.envs(env.iter().copied());
        Node::start_command(dir, config, command)
    }

    /// `serve` with `config`, run by `command` (the binary, with whatever environment or limits
    /// the test gives it).
    pub fn start_command(dir: &Path, config: &Path, mut command: Command) -> Node {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log")).unwrap();
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the node starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!("no 'listening on' line from the node: {line:?}; log:\n{}", read_log(dir))
            });
        // The second line is "http on ADDR" or "http disabled".
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let http_port = match line.strip_prefix("http on ") {
            Some(addr) => Some(
                addr.trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("unreadable http line from the node: {line:?}")),
            ),
            None if line.starts_with("http disabled") => None,
            None => panic!("no 'http on' line from the node: {line:?}; log:\n{}", read_log(dir)),
        };
        // The third is "tls on ADDR" or "tls disabled".
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let tls_port = match line.strip_prefix("tls on ") {
            Some(addr) => addr.trim().rsplit(':').next().and_then(|p| p.parse().ok()),
            None if line.starts_with("tls disabled") => None,
            None => panic!("no 'tls' line from the node: {line:?}; log:\n{}", read_log(dir)),
        };
        Node {
            child: Some(child),
            port,
            http_port,
            tls_port,
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
        }
    }

    /// `http://127.0.0.1:PORT` of the operations endpoint.
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port.expect("the operations endpoint is enabled"))
    }

    pub fn public(&self) -> PathBuf {
        self.dir.join("storage/public")
    }

    pub fn quarantine(&self) -> PathBuf {
        self.dir.join("storage/private/quarantine")
    }

    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) with a PID we spawned and still own (not yet reaped).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node did not stop within 40 s of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
}

/// A DCMTK tool by name (echoscu, storescu, ...).
pub fn dcmtk(name: &str) -> Command {
    let mut c = Command::new(tool(&format!("/usr/bin/{name}"), "dcmtk"));
    // Debian's DCMTK leaves Nagle on; with it small PDUs stall.
    c.env("TCP_NODELAY", "1");
    c
}

pub fn echoscu(port: u16, calling: &str, called: &str) -> Output {
    dcmtk("echoscu").args(["-aet", calling, "-aec", called, "127.0.0.1", &port.to_string()]).output().unwrap()
}

/// storescu (uncompressed syntaxes) with verbose output, one association for all files.
pub fn storescu(port: u16, files: &[PathBuf]) -> Output {
    dcmtk("storescu")
        .args(["-v", "-aet", "TESTSCU", "-aec", AE, "127.0.0.1", &port.to_string()])
        .args(files)
        .output()
        .unwrap()
}

/// dcmsend proposes each file's own transfer syntax (compressed, deflated).
pub fn dcmsend(port: u16, files: &[PathBuf]) -> Output {
    dcmtk("dcmsend")
        .args(["-v", "-aet", "TESTSCU", "-aec", AE, "127.0.0.1", &port.to_string()])
        .args(files)
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
