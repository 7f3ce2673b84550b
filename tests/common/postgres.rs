//! A PostgreSQL server (Debian's `postgresql`) of our own: a fresh cluster in a temp directory,
//! on a free port of 127.0.0.1, with password authentication, run as the unprivileged `postgres`
//! user when the tests run as root (PostgreSQL refuses to run as root), stopped by PID.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_port;

pub const USER: &str = "dag";
pub const PASSWORD: &str = "s3cret-Pg-pw";
pub const DATABASE: &str = "archive";

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
}

/// Debian installs the server binaries under /usr/lib/postgresql/<major>/bin.
fn bin_dir() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).find(|b| b.join("postgres").exists())
    });
    found.unwrap_or_else(|| {
        panic!("/usr/lib/postgresql/*/bin/postgres is missing: install the Debian package postgresql (.ci/run does)")
    })
}

/// `command` as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn give_to_server_user(path: &Path) {
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).output().unwrap();
        assert!(out.status.success(), "chown {path:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Postgres {
    /// A new cluster under `dir` with user [`USER`] and database [`DATABASE`].
    pub fn start(dir: &Path) -> Postgres {
        let bin = bin_dir();
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let pwfile = root.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        give_to_server_user(&root);
        let data = root.join("data");
        let out = as_server_user(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync", "--pwfile"])
            .arg(&pwfile)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let log = root.join("server.log");
        let mut pg = Postgres { child: None, port: free_port(), data, log, bin };
        pg.restart();
        let out = pg.psql("postgres", &format!("CREATE DATABASE {DATABASE}"));
        assert!(out.status.success(), "CREATE DATABASE: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    /// Start the server (again, on the same port and data): returns once it answers a query.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = as_server_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.psql("postgres", "SELECT 1").status.success() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL never answered on {}; log:\n{}",
                self.port,
                self.log()
            );
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("PostgreSQL exited ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (SIGINT): open sessions are cut, as when a database server restarts.
    pub fn stop(&mut self) {
        self.shut_down(libc::SIGINT);
    }

    /// Immediate shutdown (SIGQUIT): every server process quits at once, without a checkpoint,
    /// as in a crash; the next start recovers from the WAL.
    pub fn crash(&mut self) {
        self.shut_down(libc::SIGQUIT);
    }

    fn shut_down(&mut self, signal: libc::c_int) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    /// Restart with TLS on, showing `server`'s certificate, and refuse every connection over
    /// TCP that is not TLS (`hostssl` only). psql's default (`sslmode=prefer`) still connects.
    pub fn require_tls(&mut self, server: &super::pki::Pem) {
        std::fs::copy(&server.cert, self.data.join("server.crt")).unwrap();
        std::fs::copy(&server.key, self.data.join("server.key")).unwrap();
        std::fs::set_permissions(self.data.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        let hba = self.data.join("pg_hba.conf");
        let rules: Vec<String> = std::fs::read_to_string(&hba)
            .unwrap()
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}"),
                None => l.to_string(),
            })
            .collect();
        std::fs::write(&hba, rules.join("\n") + "\n").unwrap();
        give_to_server_user(&self.data);
        self.stop();
        self.restart();
    }

    pub fn url(&self) -> String {
        format!("postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `psql` on `database`, unaligned and without headers.
    pub fn psql(&self, database: &str, sql: &str) -> Output {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", database, "-XAt", "-v"])
            .arg("ON_ERROR_STOP=1")
            .args(["-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect("psql runs (Debian postgresql-client)")
    }

    /// The rows of a query on the archive, each row's columns joined by `|`.
    pub fn rows(&self, sql: &str) -> Vec<String> {
        let out = self.psql(DATABASE, sql);
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
