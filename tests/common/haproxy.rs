//! HAProxy (Debian's `haproxy`) in TCP mode in front of nodes, each server checked through its
//! node's `/readyz`, run as our own process on free ports, stopped by PID.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_port;
use super::tool;

pub struct Haproxy {
    child: Option<Child>,
    /// Where DICOM associations go in.
    pub port: u16,
    stats_port: u16,
}

impl Haproxy {
    /// Balance associations over `servers` (name, DICOM port, HTTP port of `/readyz`); returns
    /// once every server is up.
    pub fn start(dir: &Path, servers: &[(&str, u16, u16)]) -> Haproxy {
        let haproxy = tool("/usr/sbin/haproxy", "haproxy");
        let (port, stats_port) = (free_port(), free_port());
        let mut config = format!(
            "global\n  maxconn 256\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  retries 3\n  option redispatch\n\
             frontend stats\n  mode http\n  bind 127.0.0.1:{stats_port}\n  stats enable\n  stats uri /stats\n\
             frontend dicom\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n\
             \x20 default-server inter 200ms fall 2 rise 2\n"
        );
        for (name, dicom, http) in servers {
            config.push_str(&format!("  server {name} 127.0.0.1:{dicom} check port {http}\n"));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("haproxy starts");
        let h = Haproxy { child: Some(child), port, stats_port };
        let names: Vec<&str> = servers.iter().map(|s| s.0).collect();
        h.wait_until("every server is up", |up| names.iter().all(|n| up.contains(&n.to_string())));
        h
    }

    /// The servers HAProxy counts as up now.
    pub fn up(&self) -> Vec<String> {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{}/stats;csv", self.stats_port)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                (cols.first() == Some(&"nodes") && cols.get(17) == Some(&"UP")).then(|| cols[1].to_string())
            })
            .filter(|name| name != "BACKEND")
            .collect()
    }

    /// Wait until the servers up satisfy `f`.
    pub fn wait_until(&self, what: &str, f: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = self.up();
            if f(&up) {
                return;
            }
            assert!(Instant::now() < deadline, "HAProxy: timed out waiting until {what}; up: {up:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
