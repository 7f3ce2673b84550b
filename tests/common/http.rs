//! The operations endpoint from outside: plain HTTP/1.1 requests, Prometheus scrapes, and the
//! status page in headless Chromium.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::node::{text, Node};
use super::tool;

/// One HTTP/1.1 GET; returns the status code and the body.
pub fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the operations endpoint accepts");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    // Chunked bodies: the chunk size lines are short hex numbers; none of our checks depend on them.
    (code, body.to_string())
}

/// Every sample of a scrape, by series (`name{labels}`).
pub fn scrape(node: &Node) -> BTreeMap<String, f64> {
    let (code, body) = get(node.http_port.unwrap(), "/metrics", None);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

pub fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| panic!("{series} not in the scrape: {:?}", m.keys().collect::<Vec<_>>()))
}

/// Poll `/metrics` until `done` holds, at most 30 s.
pub fn wait_for_metrics(
    node: &Node,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(node);
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}; log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn chromium() -> PathBuf {
    tool("/usr/bin/chromium", "chromium")
}

/// Headless Chromium on `url` with `extra` arguments, in a profile of its own under `profile`.
pub fn headless(chromium: &Path, url: &str, profile: &Path, extra: &[&str]) -> std::process::Output {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", text(&out));
    out
}
