//! DCMTK peers the node talks to as an SCU: dcmqrscp as a PACS (query/retrieve, and a storage
//! destination) and storescp as a destination. DCMTK 3.6.7 has no bind-address option, so they
//! listen on every interface; every connection in the tests goes to 127.0.0.1. Each is stopped by
//! its PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use super::ports::free_port;
use super::{files_under, tool, wait_until};

fn dcmtk(name: &str) -> Command {
    let mut c = Command::new(tool(&format!("/usr/bin/{name}"), "dcmtk"));
    c.env("TCP_NODELAY", "1");
    c
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A DCMTK process, killed by PID on drop.
pub struct Peer {
    child: Option<Child>,
    pub port: u16,
    pub ae: String,
    /// Where it stores what it receives.
    pub dir: PathBuf,
    log: PathBuf,
}

impl Peer {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every file it has stored (dcmqrscp's index.dat excluded).
    pub fn files(&self) -> Vec<PathBuf> {
        files_under(&self.dir).into_iter().filter(|p| !p.ends_with("index.dat")).collect()
    }

    /// A peer that is not running (yet): its AE title and port, for a config.
    pub fn placeholder(ae: &str, port: u16) -> Peer {
        Peer { child: None, port, ae: ae.into(), dir: PathBuf::new(), log: PathBuf::new() }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start `command` (the DCMTK tool `name`) with its output appended to `log`, and wait until it
    /// listens on `port`.
    fn start(mut command: Command, name: &str, port: u16, ae: &str, dir: PathBuf, log: PathBuf) -> Peer {
        let append = || Stdio::from(std::fs::File::options().create(true).append(true).open(&log).unwrap());
        let child = command
            .stdout(append())
            .stderr(append())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let mut peer = Peer { child: Some(child), port, ae: ae.into(), dir, log };
        peer.wait_listening(name);
        peer
    }

    /// Until it listens; a peer that exits first fails the test with its log (a port taken
    /// meanwhile shows there as "Address already in use").
    fn wait_listening(&mut self, what: &str) {
        let port = self.port;
        let child = self.child.as_mut().expect("a started peer");
        let mut exited = None;
        wait_until(&format!("{what} listening on {port}"), Duration::from_secs(15), || {
            exited = child.try_wait().unwrap();
            exited.is_some() || listening(port)
        });
        if let Some(status) = exited {
            panic!("{what} on port {port} exited ({status}) before listening: {}", self.log());
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// dcmqrscp with one AE (`ae`) storing under `dir/db`, knowing `(node_ae, 127.0.0.1,
/// node_port)` as a move destination.
pub fn dcmqrscp(dir: &Path, ae: &str, node_ae: &str, node_port: u16) -> Peer {
    let port = free_port();
    let db = dir.join("db");
    std::fs::create_dir_all(&db).unwrap();
    let cfg = format!(
        "NetworkTCPPort = {port}\nMaxPDUSize = 65536\nMaxAssociations = 16\n\
         HostTable BEGIN\nnode = ({node_ae}, 127.0.0.1, {node_port})\nHostTable END\n\
         VendorTable BEGIN\nVendorTable END\n\
         AETable BEGIN\n{ae} {} RW (10000, 1024mb) ANY\nAETable END\n",
        db.display()
    );
    let cfg_path = dir.join("dcmqrscp.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut command = dcmtk("dcmqrscp");
    command.arg("-c").arg(&cfg_path);
    Peer::start(command, "dcmqrscp", port, ae, db, dir.join("dcmqrscp.log"))
}

/// storescp writing exactly the bytes it receives (`+B`) under unique names (`-uf`, so a second
/// copy of an instance is a second file), one process per association.
pub fn storescp(dir: &Path, ae: &str, port: u16) -> Peer {
    storescp_with(dir, ae, port, &[])
}

/// [`storescp`] with more options (`+xi`: Implicit VR LE only; `+xa`: every syntax).
pub fn storescp_with(dir: &Path, ae: &str, port: u16, options: &[&str]) -> Peer {
    let out = dir.join("received");
    std::fs::create_dir_all(&out).unwrap();
    let mut command = dcmtk("storescp");
    command
        .args(["--fork", "+B", "-uf", "-aet", ae])
        .args(options)
        .arg("-od")
        .arg(&out)
        .arg(port.to_string());
    Peer::start(command, "storescp", port, ae, out, dir.join("storescp.log"))
}

/// Send files to a peer with storescu (one association), as `calling`.
pub fn storescu_to(port: u16, called: &str, files: &[PathBuf]) {
    let out = dcmtk("storescu")
        .args(["-aet", "FILLER", "-aec", called, "127.0.0.1", &port.to_string()])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "storescu to {called}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
