//! The operations endpoint as ops and their tools see it, against the real binary: Prometheus
//! scrapes before and after DCMTK sends, readiness on a small tmpfs that fills up, the bearer
//! token, and the status page in headless Chromium.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::*;
use common::node::*;
use common::*;

/// Poll an endpoint until it answers `code`, at most 30 s; returns the body.
fn wait_for_code(node: &Node, path: &str, code: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = get(node.http_port.unwrap(), path, None);
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {code} (last {got}: {body}); log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ct(p: &Patient, series: u32, instance: u32) -> Vec<u8> {
    common::instance(p, &Shape { series, instance, ..Shape::default() })
}

/// The data set of a Part 10 file, for the raw SCU.
fn body_of(file: &[u8]) -> Vec<u8> {
    dicom_anon_gateway::dicom::Part10::parse(file).unwrap().body.to_vec()
}

/// `files` with storescu (stored), then one data set cut short (0xC000, quarantined as
/// DICOM_Read_Error) and one MR where only CT is accepted (0x0124, refused, nothing kept), each over
/// its own raw association. Returns the data set bytes the two raw associations sent.
fn send_stored_quarantined_refused(node: &Node, files: &[PathBuf]) -> usize {
    let out = storescu(node.port, files);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));
    let body = body_of(&ct(&yamada(), 1, 1));
    let announced = sop_uid(&yamada(), &Shape { series: 1, instance: 1, ..Shape::default() });
    assert_eq!(rawscu::store_raw(node.port, AE, CT_IMAGE, &announced, &body[..body.len() / 2]), 0xC000);
    let mr_shape = Shape { modality: "MR", ..Shape::default() };
    let mr = common::instance(&mueller(), &mr_shape);
    assert_eq!(
        rawscu::store_raw(node.port, AE, MR_IMAGE, &sop_uid(&mueller(), &mr_shape), &body_of(&mr)),
        0x0124
    );
    body.len() / 2 + body_of(&mr).len()
}

#[test]
fn each_counter_moves_by_exactly_what_was_sent() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "  modalities: [CT]\n", "  min_free_bytes: 0\n");
    let before = scrape(&node);
    assert_eq!(value(&before, "dicom_anon_listener_up"), 1.0);

    const N: u32 = 5;
    let files: Vec<PathBuf> =
        (0..N).map(|i| put(d.path(), &format!("{i}.dcm"), &ct(&smith(), 1 + i % 2, i))).collect();
    let raw_bytes = send_stored_quarantined_refused(&node, &files);

    // Three associations: storescu's and the raw SCU's two; each is counted once it has ended.
    let delta = |m: &BTreeMap<String, f64>, s: &str| value(m, s) - value(&before, s);
    let after = wait_for_metrics(&node, "three released associations", |m| {
        delta(m, "dicom_anon_associations_ended_total{end=\"released\"}") >= 3.0
    });
    let moved = |s: &str| delta(&after, s);
    assert_eq!(moved("dicom_anon_associations_accepted_total"), 3.0);
    assert_eq!(moved("dicom_anon_associations_ended_total{end=\"released\"}"), 3.0);
    assert_eq!(value(&after, "dicom_anon_associations_active"), 0.0);
    assert_eq!(moved("dicom_anon_instances_received_total{transport=\"dimse\"}"), f64::from(N + 2));
    assert_eq!(moved("dicom_anon_instances_stored_total{transport=\"dimse\"}"), f64::from(N));
    assert_eq!(
        moved("dicom_anon_instances_quarantined_total{reason=\"DICOM_Read_Error\",transport=\"dimse\"}"),
        1.0
    );
    let quarantined: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("dicom_anon_instances_quarantined_total"))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum();
    assert_eq!(quarantined, 1.0, "no other reason moved");
    assert_eq!(moved("dicom_anon_instances_refused_total{status=\"0x0124\",transport=\"dimse\"}"), 1.0);
    for other in ["0x0122", "0xA700", "0xC000"] {
        assert_eq!(
            moved(&format!("dicom_anon_instances_refused_total{{status=\"{other}\",transport=\"dimse\"}}")),
            0.0,
            "{other}"
        );
    }
    assert_eq!(moved("dicom_anon_ack_latency_seconds_count"), f64::from(N + 2), "one response per C-STORE");
    assert!(moved("dicom_anon_ack_latency_seconds_sum") > 0.0);
    // Bytes in: every data set byte. The raw SCU's are exact; storescu re-encodes its data sets,
    // so theirs are near the files' bodies.
    let bodies: u64 = files.iter().map(|f| body_of(&std::fs::read(f).unwrap()).len() as u64).sum();
    let raw = raw_bytes as f64;
    let bytes_in = moved("dicom_anon_received_bytes_total") - raw;
    assert!((bytes_in - bodies as f64).abs() < 0.1 * bodies as f64, "{bytes_in} for bodies of {bodies}");
    // Each acknowledged instance waited for a flush; concurrent ones may share one.
    assert!(moved("dicom_anon_durability_flushes_total") >= 1.0);
    assert_eq!(moved("dicom_anon_durability_flush_failures_total"), 0.0);
    assert!(moved("dicom_anon_durability_flush_seconds_count") >= 1.0);
    // Uploads are off: everything stored waits in the queue.
    assert_eq!(
        value(&after, "dicom_anon_upload_queue_instances{project=\"TEST_PROJECT\",state=\"queued\"}"),
        f64::from(N)
    );
    assert!(value(&after, "dicom_anon_upload_oldest_queued_age_seconds{project=\"TEST_PROJECT\"}") >= 0.0);
    assert!(value(&after, "dicom_anon_storage_free_bytes{project=\"TEST_PROJECT\"}") > 0.0);
    assert!(value(&after, "dicom_anon_index_size_bytes{project=\"TEST_PROJECT\"}") > 0.0);

    // No PHI and no UID in any label or value of the exposition.
    let (_, raw) = get(node.http_port.unwrap(), "/metrics", None);
    for p in [smith(), yamada(), mueller()] {
        for s in phi_strings(&p) {
            assert!(!contains(raw.as_bytes(), &s), "{:?} in /metrics", String::from_utf8_lossy(&s));
        }
    }
    assert!(!raw.contains("TESTSCU") && !raw.contains("RAWSCU"), "AE titles are no labels");
    assert!(!raw.contains(ROOT), "no anonymized UID either");
}

/// A tmpfs mounted for one test and unmounted when dropped (lazily, should a file stay open).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn readiness_follows_free_space_while_liveness_stays() {
    let d = tempfile::tempdir().unwrap();
    // Declared first, dropped last: the node stops before its disk goes.
    let disk = Tmpfs::mount(&d.path().join("storage"), "64m");
    let node = Node::start(d.path(), "", &format!("  min_free_bytes: {}\n", 24 << 20));
    let body = wait_for_code(&node, "/readyz", 200);
    assert!(body.contains("\"ready\":true") && body.contains("\"uploader\":\"disabled\""), "{body}");

    // Fill the disk below the minimum: not ready, still alive, and instances are refused.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0x55u8; 48 << 20]).unwrap();
    let body = wait_for_code(&node, "/readyz", 503);
    assert!(body.contains("\"ready\":false"), "{body}");
    assert!(body.contains("\"disk\":{\"error\":null,\"free_bytes\":"), "{body}");
    assert!(
        body.contains("\"listener\":{\"ok\":true}")
            && body.contains("\"index\":{\"error\":null,\"ok\":true}"),
        "{body}"
    );
    assert_eq!(get(node.http_port.unwrap(), "/healthz", None).0, 200);
    let f = put(d.path(), "a.dcm", &ct(&smith(), 1, 1));
    let out = storescu(node.port, std::slice::from_ref(&f));
    assert!(text(&out).to_lowercase().replace(' ', "").contains("outofresources"), "{}", text(&out));

    // Free it again: ready, and the same instance is taken.
    std::fs::remove_file(&filler).unwrap();
    wait_for_code(&node, "/readyz", 200);
    // Space, but nowhere to create a file (here `public` is a file, which stops even root): not
    // ready, and the check says why.
    let public = node.public();
    let away = public.with_file_name("public.away");
    std::fs::rename(&public, &away).unwrap();
    std::fs::write(&public, b"not a directory").unwrap();
    let body = wait_for_code(&node, "/readyz", 503);
    assert!(body.contains("\"spool\":{\"error\":\"cannot create a file in"), "{body}");
    assert!(body.contains("\"disk\":{\"error\":null,\"free_bytes\":"), "{body}");
    std::fs::remove_file(&public).unwrap();
    std::fs::rename(&away, &public).unwrap();
    wait_for_code(&node, "/readyz", 200);
    let out = storescu(node.port, &[f]);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));
    let m = scrape(&node);
    assert_eq!(value(&m, "dicom_anon_instances_refused_total{status=\"0xA700\",transport=\"dimse\"}"), 1.0);
    assert_eq!(value(&m, "dicom_anon_instances_stored_total{transport=\"dimse\"}"), 1.0);
    assert_eq!(
        value(&m, "dicom_anon_storage_min_free_bytes{project=\"TEST_PROJECT\"}"),
        f64::from(24u32 << 20)
    );

    assert!(node.stop().success());
    drop(disk);
}

#[test]
fn audit_rows_lost_to_a_full_disk_are_counted_and_shown() {
    let d = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&d.path().join("storage"), "16m");
    // No minimum: instances reach the pipeline and the index on a disk with no room at all.
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let port = node.http_port.unwrap();
    wait_for_code(&node, "/readyz", 200);
    assert_eq!(value(&scrape(&node), "dicom_anon_audit_rows_dropped_total"), 0.0);
    assert!(!get(port, "/", None).1.contains("audit-dropped"), "nothing to say yet");

    // More than the tmpfs holds: write_all stops at ENOSPC with the disk full.
    let filler = disk.0.join("filler");
    assert!(std::fs::write(&filler, vec![0x55u8; 32 << 20]).is_err(), "the disk is full");
    const N: u32 = 6;
    let files: Vec<PathBuf> =
        (0..N).map(|i| put(d.path(), &format!("{i}.dcm"), &ct(&smith(), 1, i))).collect();
    // --no-halt: storescu goes on after a failed C-STORE, so each of the N gets its answer.
    let out = dcmtk("storescu")
        .args(["-v", "--no-halt", "-aet", "TESTSCU", "-aec", AE, "127.0.0.1", &node.port.to_string()])
        .args(&files)
        .output()
        .unwrap();
    let answers = text(&out).matches("Received Store Response").count();
    assert_eq!(answers, N as usize, "{}", text(&out));
    assert!(!text(&out).contains("Received Store Response (Success)"), "{}", text(&out));
    // The association ends after its last audit row was tried.
    let m = wait_for_metrics(&node, "storescu's association ended", |m| {
        value(m, "dicom_anon_associations_ended_total{end=\"released\"}") >= 1.0
    });
    let dropped = value(&m, "dicom_anon_audit_rows_dropped_total");
    assert!(dropped >= 1.0, "no audit row was lost to the full disk; log:\n{}", node.log());
    assert!(node.log().contains("cannot record the audit row"));
    let (_, page) = get(port, "/", None);
    assert!(page.contains(&format!("id=\"audit-dropped\" class=\"bad\">{dropped} audit rows")), "{page}");

    // With room again: every C-STORE is either a row in the trail or counted as dropped.
    std::fs::remove_file(&filler).unwrap();
    let config = node.config.clone();
    assert!(node.stop().success());
    let csv = d.path().join("audit.csv");
    let out = binary()
        .args(["audit", "export", "--out", csv.to_str().unwrap(), "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows = std::fs::read_to_string(&csv).unwrap().lines().skip(1).count();
    assert_eq!(rows as f64 + dropped, f64::from(N), "{rows} rows and {dropped} dropped");
    drop(disk);
}

#[test]
fn concurrent_readiness_probes_on_a_healthy_node_all_answer_ready() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let port = node.http_port.unwrap();
    wait_for_code(&node, "/readyz", 200);
    // Eight probers at once, as several load balancers and an orchestrator do.
    let failures: Vec<String> = std::thread::scope(|s| {
        let probers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(move || {
                    (0..150)
                        .map(|_| get(port, "/readyz", None))
                        .filter(|(code, _)| *code != 200)
                        .map(|(code, body)| format!("{code} {body}"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        probers.into_iter().flat_map(|p| p.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{} of 1200 probes not ready, first: {}", failures.len(), failures[0]);
    let leftovers: Vec<_> = files_under(&node.public());
    assert!(leftovers.is_empty(), "probe files left behind: {leftovers:?}");
    assert!(node.stop().success());
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn probes_against_a_stuck_index_share_one_check_and_leave_no_thread_behind() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let port = node.http_port.unwrap();
    wait_for_code(&node, "/readyz", 200);
    let before = threads(node.pid());
    // Another writer holds the index: the node's writer waits (its busy timeout is 30 s).
    let lock = rusqlite::Connection::open(d.path().join("storage/private/index.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let probes: Vec<_> = (0..16).map(|_| s.spawn(move || get(port, "/readyz", None))).collect();
        probes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let during = threads(node.pid());
    lock.execute_batch("COMMIT").unwrap();
    for (code, body) in &answers {
        assert_eq!(*code, 503, "{body}");
        assert!(body.contains("no answer from the index writer for"), "{body}");
    }
    // One probe ran; the others waited for it. Each probe left on its own would leave a thread
    // blocked on the index behind it.
    assert!(during < before + 4, "{before} threads before the probes, {during} after");
    wait_for_code(&node, "/readyz", 200);
    assert!(node.stop().success());
}

/// Set this process's (or, in `pre_exec`, a child's) limit on open files.
fn limit_open_files(soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit with a valid pointer; async-signal-safe, so fine in pre_exec.
    match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[test]
fn dicom_intake_goes_on_while_idle_http_connections_are_held_open() {
    use std::os::unix::process::CommandExt;
    // This process holds the connections: its soft limit up to its hard one.
    let mut own = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    assert!(own.rlim_max >= 1024, "this test needs 1024 open files, the hard limit is {}", own.rlim_max);
    limit_open_files(own.rlim_max, own.rlim_max).unwrap();

    let d = tempfile::tempdir().unwrap();
    let config = Node::write_config(d.path(), "", "  min_free_bytes: 0\n", "");
    // 128 descriptors, soft and hard, so raising the soft limit at start gives nothing more:
    // without a cap, the idle connections below take every one of them. (180 of them fit the
    // cap and the listen backlog of 128, so none waits for a SYN to be sent again.)
    let mut command = binary();
    // SAFETY: the closure only calls setrlimit.
    unsafe { command.pre_exec(|| limit_open_files(128, 128)) };
    let node = Node::start_command(d.path(), &config, command);
    let port = node.http_port.unwrap();
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", node.pid())).unwrap().count();
    let before = fds();
    let held: Vec<TcpStream> = (0..180)
        .map(|i| TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    // As many as the cap allows are accepted; the rest wait in the listen backlog.
    wait_until("the endpoint holding 64 connections", Duration::from_secs(10), || fds() >= before + 64);

    let f = put(d.path(), "a.dcm", &ct(&smith(), 1, 1));
    let out = storescu(node.port, &[f]);
    assert!(
        out.status.success() && !text(&out).contains("Store Failed"),
        "{}\nlog:\n{}",
        text(&out),
        node.log()
    );
    assert_eq!(files_under(&node.public()).len(), 1);

    // An idle connection is closed by the node (header-read timeout), not kept for ever.
    let mut first = &held[0];
    first.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut byte = [0u8; 1];
    let started = Instant::now();
    assert_eq!(first.read(&mut byte).unwrap(), 0, "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(20), "closed after {:?}", started.elapsed());
    drop(held);
    wait_for_code(&node, "/healthz", 200);
    assert!(node.stop().success());
}

#[test]
fn the_token_guards_everything_but_healthz() {
    let d = tempfile::tempdir().unwrap();
    let token = "s3cr3t-0123456789-abcdef";
    let node = Node::start_full(
        d.path(),
        "",
        "  min_free_bytes: 0\n",
        "http:\n  listen: 127.0.0.1:0\n  token_env: OPS_TEST_TOKEN\n",
        &[("OPS_TEST_TOKEN", token)],
    );
    let port = node.http_port.unwrap();
    assert_eq!(get(port, "/healthz", None).0, 200);
    for path in ["/", "/metrics", "/readyz", "/nowhere"] {
        let (code, body) = get(port, path, None);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains("dicom_anon"), "{path} said something: {body}");
        assert_eq!(get(port, path, Some("s3cr3t-0123456789-abcdeF")).0, 401, "{path} with a wrong token");
    }
    for path in ["/", "/metrics", "/readyz"] {
        assert_eq!(get(port, path, Some(token)).0, 200, "{path} with the token");
    }
    assert_eq!(get(port, "/nowhere", Some(token)).0, 404);
    // The challenge names the scheme.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.to_lowercase().contains("www-authenticate: bearer"), "{raw}");
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nauthorization: {scheme} {token}\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{scheme}: {raw}");
    }
    let config = node.config.clone();
    assert!(node.stop().success());

    // A token that is configured but missing stops the start; it never opens unguarded.
    let yaml = std::fs::read_to_string(&config).unwrap();
    let out = binary()
        .arg("serve")
        .arg("--config")
        .arg(put(d.path(), "again.yaml", yaml.as_bytes()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("OPS_TEST_TOKEN"), "{}", text(&out));
}

#[test]
fn the_status_page_in_chromium_shows_the_counts_and_no_phi() {
    let chromium = chromium();
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    // Two patients, two studies, three series, five instances.
    let mut files = Vec::new();
    for (i, (series, n)) in [(1, 1), (1, 2), (2, 3)].into_iter().enumerate() {
        files.push(put(d.path(), &format!("s{i}.dcm"), &ct(&smith(), series, n)));
    }
    for n in 1..=2 {
        files.push(put(d.path(), &format!("y{n}.dcm"), &ct(&yamada(), 1, n)));
    }
    let out = storescu(node.port, &files);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));
    // One quarantined, which holds PHI on disk but only counts on the page.
    let whole = ct(&mueller(), 1, 1);
    let body = body_of(&whole);
    let announced = sop_uid(&mueller(), &Shape { series: 1, instance: 1, ..Shape::default() });
    assert_eq!(rawscu::store_raw(node.port, AE, CT_IMAGE, &announced, &body[..body.len() / 2]), 0xC000);
    // A calling AE title with markup in it must show as text.
    let evil = "<i>EVIL</i>&";
    let scu = rawscu::associate(node.port, evil, AE, CT_IMAGE, EXPLICIT_LE);
    scu.release().unwrap();
    wait_for_metrics(&node, "three ended associations", |m| {
        value(m, "dicom_anon_associations_ended_total{end=\"released\"}") >= 3.0
    });

    let url = format!("{}/", node.http_base());
    let profile = tempfile::tempdir().unwrap();
    let browser = |extra: &[&str]| headless(&chromium, &url, profile.path(), extra);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ops-status-page.png");
    let _ = std::fs::remove_file(&shot);
    browser(&[&format!("--screenshot={}", shot.display()), "--window-size=1280,900"]);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());

    let dom = String::from_utf8(browser(&["--dump-dom"]).stdout).unwrap();
    for (id, n) in [("count-patients", 2), ("count-studies", 2), ("count-series", 3), ("count-instances", 5)]
    {
        assert!(dom.contains(&format!("id=\"{id}\">{n}<")), "{id} = {n} not in the page:\n{dom}");
    }
    assert!(dom.contains("id=\"quarantine-DICOM_Read_Error\">1<"), "{dom}");
    assert!(dom.contains("id=\"queue-queued\">5<"), "{dom}");
    assert!(
        dom.contains("received 6 · stored 5 (C-STORE 5, STOW-RS 0) · quarantined 1 · refused 0"),
        "{dom}"
    );
    assert!(dom.contains("TEST_PROJECT") && dom.contains("TESTSCU") && dom.contains("released"), "{dom}");
    assert!(dom.contains("<svg id=\"chart\""), "{dom}");
    // The peer's markup is text, never an element.
    assert!(dom.contains("&lt;i&gt;EVIL&lt;/i&gt;&amp;"), "{dom}");
    assert!(!dom.contains("<i>EVIL"), "{dom}");
    for p in [smith(), yamada(), mueller()] {
        for s in phi_strings(&p) {
            assert!(!contains(dom.as_bytes(), &s), "{:?} on the status page", String::from_utf8_lossy(&s));
        }
    }
    assert!(!dom.contains(ROOT), "no UID on the page");
    println!("status page screenshot: {}", shot.display());
}

#[test]
fn the_audit_trail_and_the_id_mappings_export_what_happened() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "  modalities: [CT]\n", "  min_free_bytes: 0\n");
    let files: Vec<PathBuf> =
        (1..=2).map(|i| put(d.path(), &format!("{i}.dcm"), &ct(&smith(), 1, i))).collect();
    send_stored_quarantined_refused(&node, &files);
    // The quarantined one, as the helper sent it.
    let body = body_of(&ct(&yamada(), 1, 1));
    let announced = sop_uid(&yamada(), &Shape { series: 1, instance: 1, ..Shape::default() });
    // A clean stop waits for every association, and so for every audit row.
    let config = node.config.clone();
    assert!(node.stop().success());

    let csv = d.path().join("audit.csv");
    let run = |args: &[&str]| binary().args(args).arg("--config").arg(&config).output().unwrap();
    let out = run(&["audit", "export", "--out", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let audit = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = audit.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(audit.lines().next().unwrap(), "time,association,calling_ae,peer,anon_study_uid,anon_series_uid,anon_sop_uid,status,quarantine_reason,bytes,pixels_masked");
    assert_eq!(rows.len(), 4, "{audit}");
    let (stored, others) = rows.split_at(2);
    for r in stored {
        assert_eq!((r[2], r[7], r[8]), ("TESTSCU", "0x0000", ""), "{audit}");
        assert!(r[4..7].iter().all(|uid| uid.starts_with(ROOT)), "anonymized UIDs: {audit}");
        assert!(r[9].parse::<u64>().unwrap() > 0);
    }
    assert_eq!(stored[0][1], stored[1][1], "one association");
    assert_ne!(stored[0][6], stored[1][6]);
    assert_eq!(
        (others[0][2], others[0][7], others[0][8]),
        ("RAWSCU", "0xC000", "DICOM_Read_Error"),
        "{audit}"
    );
    assert_eq!(others[0][9], (body.len() / 2).to_string());
    assert_eq!((others[1][7], others[1][8], others[1][6]), ("0x0124", "", ""), "{audit}");
    assert_ne!(others[0][1], others[1][1], "two associations");
    for p in [smith(), yamada(), mueller()] {
        for s in phi_strings(&p) {
            assert!(!contains(audit.as_bytes(), &s), "{:?} in the audit trail", String::from_utf8_lossy(&s));
        }
    }
    let out = run(&["audit", "export", "--since", "2999-01-01", "--out", csv.to_str().unwrap()]);
    assert!(text(&out).contains("wrote 0 audit rows"), "{}", text(&out));
    let out = run(&["audit", "export", "--since", "yesterday", "--out", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The MIDI-B mappings: every original UID and PatientID with its pseudonym (PHI, on request).
    let dir = d.path().join("mapping");
    let out = run(&["index", "export", "--mapping", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let uids = std::fs::read_to_string(dir.join("uid_mapping.csv")).unwrap();
    assert_eq!(uids.lines().next(), Some("id_old,id_new"));
    for i in 1..=2 {
        let sop = sop_uid(&smith(), &Shape { series: 1, instance: i, ..Shape::default() });
        let line = uids
            .lines()
            .find(|l| l.starts_with(&format!("{sop},")))
            .unwrap_or_else(|| panic!("{sop}: {uids}"));
        assert!(line.split(',').nth(1).unwrap().starts_with(ROOT), "{line}");
    }
    assert!(!uids.contains(&announced), "a quarantined instance maps nothing");
    let patients = std::fs::read_to_string(dir.join("patient_id_mapping.csv")).unwrap();
    let lines: Vec<&str> = patients.lines().collect();
    assert_eq!(lines.len(), 2, "{patients}");
    assert!(lines[1].starts_with("MRN12345,") && lines[1].contains(SITE), "{patients}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runs_in_process_on_port_zero_and_stops_on_its_future() {
    let d = tempfile::tempdir().unwrap();
    let yaml = format!(
        "project:\n  name: LIB\n  site_id: \"{SITE}\"\n  uid_root: \"{ROOT}\"\n  script: {}\n\
         scp:\n  ae_title: {AE}\n  host: 127.0.0.1\n  port: 0\nstorage:\n  dir: {}\n  min_free_bytes: 0\n\
         http:\n  listen: 127.0.0.1:0\n",
        default_script().display(),
        d.path().join("storage").display()
    );
    let config =
        dicom_anon_gateway::config::Config::load(&put(d.path(), "lib.yaml", yaml.as_bytes())).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = dicom_anon_gateway::node::start(config, async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    assert_ne!(node.scp_addr.port(), 0);
    let http = node.http_addr.expect("http is enabled").port();
    // Bound before start returns: ready at once, no waiting.
    let (code, body) = tokio::task::spawn_blocking(move || get(http, "/readyz", None)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let port = node.scp_addr.port();
    let f = put(d.path(), "a.dcm", &ct(&smith(), 1, 1));
    let out = tokio::task::spawn_blocking(move || storescu(port, &[f])).await.unwrap();
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(40), node.stopped()).await.expect("stops").unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the listener is closed");
    assert!(TcpStream::connect(("127.0.0.1", http)).is_err(), "the endpoint is closed");
    assert_eq!(files_under(&d.path().join("storage/public")).len(), 1);
}

/// Issue 23: a second node on a storage directory that a node serves stops at once and names the
/// holder, offline commands that write its index refuse, and read-only ones say they read it live.
#[test]
fn a_second_writer_on_a_served_storage_dir_is_refused_and_names_the_node() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let storage = d.path().join("storage");
    let in_use = format!("storage dir {} is in use by process {}", storage.display(), node.pid());
    let config = node.config.clone();
    let run = |args: &[&str]| binary().args(args).arg("--config").arg(&config).output().unwrap();

    // `serve` ends by itself (no signal): it must not get as far as listening.
    let mut child = binary()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let second = child.wait_with_output().unwrap();
            panic!("a second node serves the same storage dir: {}", text(&second));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = child.wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(2), "{}", text(&second));
    assert!(text(&second).contains(&in_use), "{}", text(&second));
    assert!(!text(&second).contains("listening on"), "{}", text(&second));

    let input = put(&d.path().join("in"), "1.dcm", &ct(&smith(), 1, 1));
    let out = d.path().join("out");
    let anonymize = run(&["anonymize", "--out", out.to_str().unwrap(), input.to_str().unwrap()]);
    assert_eq!(anonymize.status.code(), Some(2), "{}", text(&anonymize));
    assert!(text(&anonymize).contains(&in_use), "{}", text(&anonymize));
    for args in [&["queue", "retry"][..], &["quarantine", "retry"]] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(&in_use), "{args:?}: {}", text(&o));
    }
    let status = run(&["queue", "status"]);
    assert!(status.status.success(), "{}", text(&status));
    let live = format!("reading the live index of {} (process {}", storage.display(), node.pid());
    assert!(String::from_utf8_lossy(&status.stderr).contains(&live), "{}", text(&status));

    // The first node still serves; once it is gone, the directory is free again.
    assert!(echoscu(node.port, "TESTSCU", AE).status.success(), "{}", node.log());
    assert!(node.stop().success());
    let status = run(&["queue", "status"]);
    assert!(!text(&status).contains("live index"), "{}", text(&status));
    let again = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    assert!(echoscu(again.port, "TESTSCU", AE).status.success(), "{}", again.log());
}

/// Issue 23: DICOM export is visible to operations. A destination that does not answer shows on
/// the page (headless Chromium) with its state, queue, oldest instance and error, and in
/// `/metrics` as gauges labelled by its configured name; an export-only node's S3 queue says that
/// no uploader is configured rather than looking stuck.
#[test]
fn an_unreachable_destination_shows_on_the_page_and_in_its_gauges() {
    let chromium = chromium();
    let d = tempfile::tempdir().unwrap();
    let closed = common::ports::free_port();
    let export = format!(
        "export:\n  dicom:\n    - {{ name: research, ae_title: RESEARCH, host: 127.0.0.1, port: {closed}, timeout_s: 2 }}\n"
    );
    let node = Node::start_full(d.path(), "", "  min_free_bytes: 0\n", &export, &[]);
    let files: Vec<PathBuf> =
        (1..=3).map(|i| put(d.path(), &format!("{i}.dcm"), &ct(&smith(), 1, i))).collect();
    let out = storescu(node.port, &files);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));

    let series = |state: &str| {
        format!("dicom_anon_export_queue_instances{{destination=\"research\",project=\"TEST_PROJECT\",state=\"{state}\"}}")
    };
    let m = wait_for_metrics(&node, "research unreachable with three queued", |m| {
        m.get("dicom_anon_export_unreachable{destination=\"research\",project=\"TEST_PROJECT\"}")
            == Some(&1.0)
            && m.get(&series("queued")) == Some(&3.0)
    });
    assert_eq!(value(&m, &series("sent")), 0.0);
    assert!(
        value(
            &m,
            "dicom_anon_export_oldest_queued_age_seconds{destination=\"research\",project=\"TEST_PROJECT\"}"
        ) >= 0.0
    );
    assert_eq!(value(&m, "dicom_anon_upload_enabled{project=\"TEST_PROJECT\"}"), 0.0);

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/", node.http_base());
    let dom = String::from_utf8(headless(&chromium, &url, profile.path(), &["--dump-dom"]).stdout).unwrap();
    let row = dom
        .split("<tr ")
        .find(|r| r.starts_with("id=\"destination-research\""))
        .unwrap_or_else(|| panic!("no row for the destination:\n{dom}"));
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    for want in [&format!("RESEARCH@127.0.0.1:{closed}")[..], "unreachable (paused)", ">3<", "refused"] {
        assert!(row.to_lowercase().contains(&want.to_lowercase()), "{want} not in {row}");
    }
    assert!(row.contains(&chrono::Utc::now().format("%Y-%m-%dT").to_string()), "oldest waiting: {row}");
    assert!(dom.contains("off (upload.enabled is false)"), "{dom}");
}

/// Issue 23: the chart of instances stored per minute is read from the audit trail, so a restart
/// does not blank it.
#[test]
fn the_per_minute_chart_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let files: Vec<PathBuf> =
        (1..=3).map(|i| put(d.path(), &format!("{i}.dcm"), &ct(&smith(), 1, i))).collect();
    let out = storescu(node.port, &files);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));
    let config = node.config.clone();
    assert!(node.stop().success());

    let node = Node::start_with(d.path(), &config);
    let url = format!("{}/", node.http_base());
    let page = ureq::get(&url).call().unwrap().body_mut().read_to_string().unwrap();
    let charted: u64 = page
        .split("<title>")
        .skip(1)
        .filter_map(|t| t.split(" instances, ").next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(charted, 3, "{page}");
}
