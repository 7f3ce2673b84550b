//! Faults of the device under the storage directory: a crash with a power cut, and a device whose
//! write-back fails. The promise under both: an instance answered 0x0000 is on stable storage,
//! and after a failed flush nothing is answered 0x0000 until the node is restarted.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::device::Device;
use common::node::*;
use common::*;
use dicom_anon_gateway::anonymize::{Pseudonyms, Rsna};

/// The files storescu had answered with Success, from its `-v` log: "Sending file: X" is followed
/// by "Received Store Response (Success)" or another status.
fn acknowledged(log: &str) -> Vec<PathBuf> {
    let mut current: Option<PathBuf> = None;
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(f) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(f.trim()));
        } else if line.contains("Received Store Response (Success)") {
            out.push(current.take().expect("a response follows a file"));
        }
    }
    out
}

/// The anonymized file of `original` in `public`, by the UID the node's (rsna) pseudonyms give it.
fn stored_file(public: &Path, original: &Path) -> Option<PathBuf> {
    let rsna = Rsna::new(SITE, ROOT, Default::default()).unwrap();
    let anon = rsna.uid(&dcmdump_value(original, "SOPInstanceUID").unwrap());
    files_under(public)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == format!("{anon}.dcm"))
}

/// The length and CRC-32 of the pixel data of a Part 10 file, read whole: a file whose blocks
/// were lost does not parse or does not match.
fn pixels(file: &Path) -> (usize, u32) {
    let obj = dicom_object::open_file(file).unwrap_or_else(|e| panic!("{file:?} is not readable: {e}"));
    let element = obj.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap();
    let bytes = element.to_bytes().unwrap();
    (bytes.len(), crc32fast::hash(&bytes))
}

#[test]
fn a_crash_with_a_power_cut_loses_no_acknowledged_instance() {
    let d = tempfile::tempdir().unwrap();
    let device = Device::new(&d.path().join("storage"), 256, 512);
    let mut node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let mut files = Vec::new();
    for i in 0..300u32 {
        let shape = Shape { rows: 128, instance: i, series: 1 + i % 4, ..Shape::default() };
        files.push(put(&d.path().join("in"), &format!("{i:03}.dcm"), &instance(&smith(), &shape)));
    }
    let mut sender = std::process::Command::new(tool("/usr/bin/storescu", "dcmtk"))
        .env("TCP_NODELAY", "1")
        .args(["-v", "-aet", "TESTSCU", "-aec", AE, "127.0.0.1", &node.port.to_string()])
        .args(&files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // storescu -v logs to stderr; the node is killed at the 60th acknowledgement.
    let mut log = String::new();
    for line in BufReader::new(sender.stderr.take().unwrap()).lines() {
        log.push_str(&line.unwrap());
        log.push('\n');
        if acknowledged(&log).len() == 60 {
            node.kill9();
            break;
        }
    }
    let _ = sender.kill();
    let _ = sender.wait();
    let acknowledged = acknowledged(&log);
    assert_eq!(acknowledged.len(), 60, "storescu did not get far enough");

    // Whatever the node had not flushed is lost, as in a power cut: the page cache survives a
    // kill, so without this the test could not tell a flushed instance from one in memory.
    device.power_cut();
    let node = Node::start_with(d.path(), &node.config);
    for f in &acknowledged {
        let out = stored_file(&node.public(), f)
            .unwrap_or_else(|| panic!("acknowledged {f:?} is missing after the crash; log:\n{}", node.log()));
        assert_eq!(pixels(&out), pixels(f), "{out:?} lost its data");
    }
    assert!(
        !files_under(&node.public()).iter().any(|p| p.to_string_lossy().ends_with(".part")),
        "temp files swept"
    );
    assert!(echoscu(node.port, "TESTSCU", AE).status.success());
    drop(node);
    drop(device);
}

#[test]
fn after_a_failed_flush_nothing_is_acknowledged_until_a_restart() {
    let d = tempfile::tempdir().unwrap();
    // Room for about 60 of the 200 instances of 0.5 MB: write-back fails part way through.
    let device = Device::new(&d.path().join("storage"), 256, 40);
    let mut node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let mut batches: Vec<Vec<PathBuf>> = vec![Vec::new(); 4];
    for i in 0..200u32 {
        let shape = Shape { rows: 512, instance: i, series: 1 + i % 4, ..Shape::default() };
        let f = put(&d.path().join("in"), &format!("{i:03}.dcm"), &instance(&smith(), &shape));
        batches[i as usize % 4].push(f);
    }
    // Four associations at once, so that several instances wait at each flush.
    let senders: Vec<_> = batches
        .iter()
        .map(|files| {
            let (port, files) = (node.port, files.clone());
            std::thread::spawn(move || text(&storescu(port, &files)))
        })
        .collect();
    let logs: Vec<String> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let acknowledged: Vec<PathBuf> = logs.iter().flat_map(|l| acknowledged(l)).collect();
    assert!(acknowledged.len() < 200, "the device never failed: every instance was acknowledged");

    // The node says why it takes nothing, and keeps to it. The device's failure reaches the node
    // either at a flush (final: see durability) or, when the journal's commit met it first and
    // the file system turned read-only, as the next file that cannot be created.
    let mut ready = ureq::get(format!("{}/readyz", node.http_base()))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let body = ready.body_mut().read_to_string().unwrap();
    assert_eq!(ready.status(), 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let flush_failed = body["checks"]["flush"]["ok"] == false;
    assert!(flush_failed || body["checks"]["spool"]["ok"] == false, "{body}");
    if flush_failed {
        assert!(body["checks"]["flush"]["error"].as_str().unwrap().contains("restarted"), "{body}");
        let page = ureq::get(node.http_base()).call().unwrap().body_mut().read_to_string().unwrap();
        assert!(page.contains("id=\"flush-failure\""), "the status page does not say: {page}");
        assert!(node.log().contains("a flush to disk failed"), "{}", node.log());
    }
    let again = text(&storescu(node.port, &batches[0][..1]));
    assert!(acknowledged_is_empty(&again), "an instance was acknowledged after a failed flush:\n{again}");
    node.kill9();

    // Every instance acknowledged is whole on the device once it is readable again.
    device.repair();
    for f in &acknowledged {
        let out = stored_file(&node.public(), f)
            .unwrap_or_else(|| panic!("acknowledged {f:?} was lost; node log:\n{}", node.log()));
        assert_eq!(pixels(&out), pixels(f), "acknowledged {f:?} lost its data ({out:?})");
    }
    drop(device);
}

fn acknowledged_is_empty(log: &str) -> bool {
    acknowledged(log).is_empty() && log.contains("Sending file")
}

/// The node's HTTP listener off: crash recovery's bound is then the associations alone.
const NO_HTTP: &str = "http:\n  enabled: false\n";

/// `serve` that must refuse to start: its stderr, once it has exited (killed after a minute).
fn refused_start(dir: &Path, config: &Path) -> String {
    let mut child = binary()
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("refused.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started; log:\n{}", std::fs::read_to_string(dir.join("refused.log")).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("refused.log")).unwrap();
    assert!(!status.success(), "{log}");
    log
}

fn send_patient(node: &Node, dir: &Path, patient: &Patient, study: u32, n: u32) {
    let files: Vec<PathBuf> = (0..n)
        .map(|i| {
            let shape = Shape { study, series: study, instance: i, ..Shape::default() };
            put(&dir.join("in"), &format!("{study}-{i}.dcm"), &instance(patient, &shape))
        })
        .collect();
    let out = storescu(node.port, &files);
    assert!(out.status.success() && acknowledged(&text(&out)).len() == n as usize, "{}", text(&out));
}

#[test]
fn an_index_older_than_its_files_stops_the_start_and_a_file_left_by_a_crash_is_held() {
    let d = tempfile::tempdir().unwrap();
    // Without the HTTP listener (no STOW-RS parts in flight), the bound is the 4 associations.
    let node = Node::start_full(d.path(), "  max_associations: 4\n", "  min_free_bytes: 0\n", NO_HTTP, &[]);
    send_patient(&node, d.path(), &smith(), 1, 3);
    let config = node.config.clone();
    assert!(node.stop().success());
    // A clean stop leaves index.db whole: a copy of it alone is the index.
    let private = d.path().join("storage/private");
    let wal = private.join("index.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the WAL was not checkpointed at the stop"
    );
    let backup = d.path().join("backup.db");
    let out = binary()
        .args(["index", "backup", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let node = Node::start_with(d.path(), &config);
    send_patient(&node, d.path(), &yamada(), 2, 5);
    send_patient(&node, d.path(), &mueller(), 3, 5);
    drop(node); // SIGKILL: a crash, the WAL as it was
    let good = d.path().join("good");
    std::fs::create_dir(&good).unwrap();
    for f in ["index.db", "index.db-wal", "index.db-shm"] {
        if private.join(f).exists() {
            std::fs::copy(private.join(f), good.join(f)).unwrap();
        }
    }

    // index.db from before the second run, restored without a WAL: ten acknowledged instances and
    // two patients it does not know. The start stops, names the fix and lists the files.
    for f in ["index.db-wal", "index.db-shm"] {
        let _ = std::fs::remove_file(private.join(f));
    }
    std::fs::copy(&backup, private.join("index.db")).unwrap();
    let log = refused_start(d.path(), &config);
    assert!(log.contains("older than the files") && log.contains("10 anonymized instances"), "{log}");
    assert!(log.contains("index.db-wal") && log.contains("index backup"), "{log}");
    let list = std::fs::read_to_string(private.join("index.unindexed.txt")).unwrap();
    assert_eq!(list.lines().count(), 10, "{list}");
    // No index at all: the same.
    std::fs::remove_file(private.join("index.db")).unwrap();
    let log = refused_start(d.path(), &config);
    assert!(log.contains("13 anonymized instances"), "{log}");

    // The whole index back, and one more file without a row, as a power cut between the rename and
    // the log's write-back leaves one: held as an orphan, and its patient number never reused.
    for f in ["index.db", "index.db-wal", "index.db-shm"] {
        let _ = std::fs::remove_file(private.join(f));
        if good.join(f).exists() {
            std::fs::copy(good.join(f), private.join(f)).unwrap();
        }
    }
    let public = d.path().join("storage/public");
    let some = files_under(&public).into_iter().next().unwrap();
    let orphan_dir = public.join(format!("{SITE}-000009/1.2/1.2.3"));
    std::fs::create_dir_all(&orphan_dir).unwrap();
    std::fs::copy(&some, orphan_dir.join("1.2.3.4.dcm")).unwrap();
    let node = Node::start_with(d.path(), &config);
    assert!(!orphan_dir.join("1.2.3.4.dcm").exists(), "the orphan is still in public/");
    let held = files_under(&node.quarantine().join("Orphan_After_Crash"));
    assert_eq!(held.iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).count(), 1, "{held:?}");
    assert!(node.log().contains("Orphan_After_Crash"), "{}", node.log());
    let newcomer = Patient { id: "NEW-PATIENT-1", name: "NEWCOMER^ANN", ..smith() };
    send_patient(&node, d.path(), &newcomer, 4, 1);
    assert!(
        public.join(format!("{SITE}-000010")).is_dir(),
        "the next patient number is 10: {:?}",
        std::fs::read_dir(&public).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>()
    );
}

#[test]
fn a_public_directory_that_is_not_there_stops_the_start_and_forgets_nothing() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start_full(d.path(), "  max_associations: 4\n", "  min_free_bytes: 0\n", NO_HTTP, &[]);
    send_patient(&node, d.path(), &smith(), 1, 6);
    let config = node.config.clone();
    assert!(node.stop().success());
    // The storage as an unmounted volume shows it: an empty public/.
    let public = d.path().join("storage/public");
    let away = d.path().join("public.away");
    std::fs::rename(&public, &away).unwrap();
    std::fs::create_dir(&public).unwrap();
    let log = refused_start(d.path(), &config);
    assert!(log.contains("6 instances the index holds for delivery have no file"), "{log}");
    // Back in place: every row is still there, nothing was forgotten.
    std::fs::remove_dir(&public).unwrap();
    std::fs::rename(&away, &public).unwrap();
    let status = binary().args(["queue", "status", "--config"]).arg(&config).output().unwrap();
    assert!(text(&status).contains("queued 6") || text(&status).contains("queued: 6"), "{}", text(&status));
    let node = Node::start_with(d.path(), &config);
    assert!(echoscu(node.port, "TESTSCU", AE).status.success());
}
