//! Export to DICOM destinations: DCMTK storescp (writing exactly the bytes it receives) and
//! dcmqrscp as destinations of the queue. Every instance arrives once, byte for byte the data
//! set of the local file; a destination that goes down and comes back loses and repeats nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::node::{dcmsend, storescu, text, Node};
use common::peers::{dcmqrscp, free_port, storescp, storescp_with, Peer};
use common::*;
use dicom_anon_gateway::dicom::{read_dataset, Part10, Tag};

/// `count` CT instances of Smith in one study, as files.
fn corpus(dir: &Path, from: u32, count: u32) -> Vec<PathBuf> {
    (from..from + count)
        .map(|i| {
            let shape = Shape { series: 1 + i % 3, instance: i, ..Shape::default() };
            put(&dir.join("in"), &format!("{i}.dcm"), &instance(&smith(), &shape))
        })
        .collect()
}

/// A file's SOP Instance UID and its data set bytes (everything after the file meta).
fn data_set(file: &Path) -> (String, Vec<u8>) {
    let bytes = std::fs::read(file).unwrap();
    let p10 = Part10::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let ds = read_dataset(p10.body, p10.meta.transfer_syntax.encoding()).unwrap();
    let uid = ds.text(Tag(0x0008, 0x0018)).unwrap().to_string();
    (uid, p10.body.to_vec())
}

/// SOP Instance UID → data set, for every file; panics on a UID seen twice.
fn by_uid(files: &[PathBuf]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for f in files {
        let (uid, body) = data_set(f);
        assert!(out.insert(uid.clone(), body).is_none(), "{uid} arrived twice");
    }
    out
}

fn local(node: &Node) -> BTreeMap<String, Vec<u8>> {
    let files: Vec<PathBuf> = files_under(&node.public())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    by_uid(&files)
}

/// `export.dicom` for these peers, each with its number of associations.
fn destinations(peers: &[(&str, &Peer, usize)]) -> String {
    let mut yaml = String::from("export:\n  dicom:\n");
    for (name, p, associations) in peers {
        yaml.push_str(&format!(
            "    - {{ name: {name}, ae_title: {}, host: 127.0.0.1, port: {}, associations: {associations}, timeout_s: 5 }}\n",
            p.ae, p.port
        ));
    }
    yaml
}

fn queue_status(config: &Path) -> String {
    let out = binary().args(["queue", "status", "--config"]).arg(config).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sent(status: &str, destination: &str, n: usize) -> bool {
    status
        .lines()
        .any(|l| l.starts_with(&format!("destination {destination} ")) && l.ends_with(&format!("sent {n}")))
}

#[test]
fn every_instance_reaches_storescp_and_dcmqrscp_once_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let scp = storescp(&d.path().join("scp"), "STORESCP", free_port());
    let qr = dcmqrscp(&d.path().join("qr"), "ARCHIVE", "NOBODY", 1);
    let node = Node::start_full(
        d.path(),
        "",
        "  min_free_bytes: 0\n",
        // dcmqrscp's index loses instances stored over concurrent associations: one for it.
        &destinations(&[("research-scp", &scp, 2), ("archive", &qr, 1)]),
        &[],
    );
    let files = corpus(d.path(), 0, 30);
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));

    wait_until("30 instances at storescp", Duration::from_secs(60), || scp.files().len() >= 30);
    wait_until("30 instances at dcmqrscp", Duration::from_secs(60), || qr.files().len() >= 30);
    wait_until("both destinations recorded as sent", Duration::from_secs(30), || {
        let s = queue_status(&node.config);
        sent(&s, "research-scp", 30) && sent(&s, "archive", 30)
    });
    let mine = local(&node);
    assert_eq!(mine.len(), 30);
    // storescp +B keeps the bytes as received: each data set is the local file's, exactly.
    let theirs = by_uid(&scp.files());
    assert_eq!(theirs.keys().collect::<Vec<_>>(), mine.keys().collect::<Vec<_>>());
    for (uid, body) in &mine {
        assert!(theirs[uid] == *body, "{uid} differs at storescp");
    }
    // dcmqrscp re-encodes what it stores; each instance is there once, anonymized.
    let archived = by_uid(&qr.files());
    assert_eq!(archived.keys().collect::<Vec<_>>(), mine.keys().collect::<Vec<_>>());
    for f in scp.files().iter().chain(qr.files().iter()) {
        let bytes = std::fs::read(f).unwrap();
        for s in phi_strings(&smith()) {
            assert!(!contains(&bytes, &s), "{:?} in {}", String::from_utf8_lossy(&s), f.display());
        }
    }
    let status = queue_status(&node.config);
    assert!(
        status.contains(&format!("destination archive (ARCHIVE@127.0.0.1:{}): sent 30", qr.port)),
        "{status}"
    );
    assert!(
        status.starts_with("S3 upload: disabled"),
        "the S3 queue's counts say they wait for nothing: {status}"
    );
    let metrics = metrics(node.http_port.unwrap());
    for destination in ["research-scp", "archive"] {
        let line = format!("dicom_anon_exports_total{{destination=\"{destination}\",outcome=\"sent\"}} 30");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    node.stop();
}

/// The operations endpoint's /metrics.
fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}

#[test]
fn a_destination_down_mid_export_and_back_gets_everything_once() {
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut scp = storescp(&d.path().join("scp"), "STORESCP", port);
    let node =
        Node::start_full(d.path(), "", "  min_free_bytes: 0\n", &destinations(&[("dest", &scp, 2)]), &[]);
    let out = storescu(node.port, &corpus(d.path(), 0, 20));
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the first 20 at storescp", Duration::from_secs(60), || scp.files().len() >= 20);
    wait_until("the first 20 recorded as sent", Duration::from_secs(30), || {
        sent(&queue_status(&node.config), "dest", 20)
    });

    // Down: the next 20 are received and committed, but cannot leave.
    scp.stop();
    let out = storescu(node.port, &corpus(d.path(), 20, 20));
    assert!(
        out.status.success(),
        "the node still takes instances while a destination is down: {}",
        text(&out)
    );
    wait_until("the node to notice", Duration::from_secs(30), || {
        node.log().contains("destination unreachable")
    });
    let status = queue_status(&node.config);
    assert!(status.contains("sent 20") && !sent(&status, "dest", 40), "{status}");

    // Back on the same port: the rest arrives, nothing twice (storescp -uf writes a second copy
    // of an instance as a second file, which by_uid refuses).
    let scp = storescp(&d.path().join("scp"), "STORESCP", port);
    wait_until("all 40 recorded as sent", Duration::from_secs(90), || {
        sent(&queue_status(&node.config), "dest", 40)
    });
    let theirs = by_uid(&scp.files());
    let mine = local(&node);
    assert_eq!(theirs.len(), 40);
    assert_eq!(theirs.keys().collect::<Vec<_>>(), mine.keys().collect::<Vec<_>>());
    for (uid, body) in &mine {
        assert!(theirs[uid] == *body, "{uid} differs at storescp");
    }
    assert!(node.log().contains("destination reachable again"), "{}", node.log());

    // After a restart nothing already sent goes again: one new instance is all that follows
    // (the queue is oldest first, so a resent old one would arrive before it).
    let config = node.config.clone();
    node.stop();
    let node = Node::start_with(d.path(), &config);
    let out = storescu(node.port, &corpus(d.path(), 40, 1));
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the 41st recorded as sent", Duration::from_secs(30), || {
        sent(&queue_status(&config), "dest", 41)
    });
    assert_eq!(by_uid(&scp.files()).len(), 41);
    node.stop();
}

#[test]
fn with_check_existing_what_the_destination_holds_is_not_sent_again() {
    let d = tempfile::tempdir().unwrap();
    let qr = dcmqrscp(&d.path().join("qr"), "ARCHIVE", "NOBODY", 1);
    let scp = storescp(&d.path().join("scp"), "STORESCP", free_port());
    let node =
        Node::start_full(d.path(), "", "  min_free_bytes: 0\n", &destinations(&[("archive", &qr, 1)]), &[]);
    let out = storescu(node.port, &corpus(d.path(), 0, 10));
    assert!(out.status.success(), "{}", text(&out));
    wait_until("10 recorded as sent", Duration::from_secs(30), || {
        sent(&queue_status(&node.config), "archive", 10)
    });
    assert_eq!(qr.files().len(), 10);

    // Two destinations added later, both asking first: the same dcmqrscp (which holds all ten)
    // and storescp (which answers no C-FIND, so it is sent everything).
    let config = node.config.clone();
    node.stop();
    let yaml = std::fs::read_to_string(&config).unwrap().replace(
        "  dicom:\n",
        &format!(
            "  dicom:\n    - {{ name: again, ae_title: ARCHIVE, host: 127.0.0.1, port: {}, associations: 1, check_existing: true }}\n    \
             - {{ name: fresh, ae_title: STORESCP, host: 127.0.0.1, port: {}, check_existing: true }}\n",
            qr.port, scp.port
        ),
    );
    std::fs::write(&config, yaml).unwrap();
    let node = Node::start_with(d.path(), &config);
    wait_until("both new destinations done", Duration::from_secs(30), || {
        let s = queue_status(&config);
        sent(&s, "again", 10) && sent(&s, "fresh", 10)
    });
    let log = node.log();
    let skipped = log
        .lines()
        .filter(|l| l.contains("already at the destination") && l.contains("destination=again"))
        .count();
    assert_eq!(skipped, 10, "{log}");
    assert_eq!(qr.files().len(), 10);
    assert_eq!(by_uid(&scp.files()).len(), 10);
    node.stop();
}

#[test]
fn an_instance_that_cannot_be_sent_holds_back_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    // The destination is not up yet: the queue fills.
    let config_peer = Peer::placeholder("STORESCP", port);
    let node = Node::start_full(
        d.path(),
        "",
        "  min_free_bytes: 0\n",
        &destinations(&[("dest", &config_peer, 2)]),
        &[],
    );
    let out = storescu(node.port, &corpus(d.path(), 0, 6));
    assert!(out.status.success(), "{}", text(&out));
    // One queued file goes bad on disk (a full disk, an operator's mistake).
    let mine: Vec<PathBuf> = files_under(&node.public())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert_eq!(mine.len(), 6);
    std::fs::write(&mine[2], b"not DICOM any more").unwrap();

    let scp = storescp(&d.path().join("scp"), "STORESCP", port);
    wait_until("5 sent and 1 failed", Duration::from_secs(60), || {
        let s = queue_status(&node.config);
        s.lines()
            .any(|l| l.starts_with("destination dest ") && l.contains("failed 1") && l.contains("sent 5"))
    });
    assert_eq!(by_uid(&scp.files()).len(), 5);
    let status = queue_status(&node.config);
    // The bad file is retried with backoff like any failed send (an operator may put it right),
    // so how many attempts it has had by now depends on the machine's speed: not asserted.
    assert!(status.contains("not a DICOM Part 10 file") && status.contains("attempts "), "{status}");
    node.stop();
}

#[test]
fn each_file_goes_in_its_own_syntax_or_an_uncompressed_fallback_and_never_decompressed() {
    let d = tempfile::tempdir().unwrap();
    let every = storescp_with(&d.path().join("every"), "EVERY", free_port(), &["+xa"]);
    let implicit = storescp_with(&d.path().join("implicit"), "IMPLICIT", free_port(), &["+xi"]);
    let node = Node::start_full(
        d.path(),
        "",
        "  min_free_bytes: 0\n",
        &destinations(&[("every", &every, 1), ("implicit", &implicit, 1)]),
        &[],
    );
    let mut files = corpus(d.path(), 0, 2);
    let jpeg = Shape { transfer_syntax: JPEG_BASELINE, series: 9, instance: 9, ..Shape::default() };
    files.push(put(&d.path().join("in"), "jpeg.dcm", &instance(&smith(), &jpeg)));
    let out = dcmsend(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("every destination settled", Duration::from_secs(30), || {
        let s = queue_status(&node.config);
        sent(&s, "every", 3)
            && s.lines().any(|l| {
                l.starts_with("destination implicit ") && l.contains("failed 1") && l.contains("sent 2")
            })
    });
    // In its own syntax, JPEG included: byte for byte.
    let mine = local(&node);
    let theirs = by_uid(&every.files());
    assert_eq!(theirs.len(), 3);
    for (uid, body) in &mine {
        assert!(theirs[uid] == *body, "{uid} differs at the destination that takes every syntax");
    }
    // Implicit VR only: the Explicit VR files re-encoded, the JPEG one refused with the reason.
    for f in implicit.files() {
        let bytes = std::fs::read(&f).unwrap();
        let ts = Part10::parse(&bytes).unwrap().meta.transfer_syntax.uid;
        assert_eq!(ts, "1.2.840.10008.1.2", "{}", f.display());
    }
    assert_eq!(by_uid(&implicit.files()).len(), 2);
    let status = queue_status(&node.config);
    assert!(status.contains("in none of the syntaxes 1.2.840.10008.1.2.4.50"), "{status}");
    node.stop();
}

#[test]
fn a_destination_over_mutual_dicom_tls_gets_everything_and_one_that_cannot_be_trusted_gets_nothing() {
    let d = tempfile::tempdir().unwrap();
    let pki_dir = d.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let ca = common::pki::ca(&pki_dir, "hospital-ca");
    let server = common::pki::leaf(&pki_dir, &ca, "archive", "archive.hospital", true);
    let client = common::pki::leaf(&pki_dir, &ca, "gateway", "gateway.hospital", false);
    let stranger = common::pki::ca(&pki_dir, "other-ca");
    // storescp over TLS, asking for our certificate (DCMTK requires one when it has +cf).
    let tls_args = |pem: &common::pki::Pem| {
        vec![
            "+tls".to_string(),
            pem.key.display().to_string(),
            pem.cert.display().to_string(),
            "+cf".to_string(),
            ca.cert.display().to_string(),
        ]
    };
    let args = tls_args(&server);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let secure = storescp_with(&d.path().join("secure"), "SECURE", free_port(), &args);
    let doubted = storescp_with(&d.path().join("doubted"), "DOUBTED", free_port(), &args);
    let tls = |ca_file: &Path| {
        format!(
            "tls: {{ ca_file: {}, cert_file: {}, key_file: {}, server_name: localhost }}",
            ca_file.display(),
            client.cert.display(),
            client.key.display()
        )
    };
    let export = format!(
        "export:\n  dicom:\n    - {{ name: secure, ae_title: SECURE, host: 127.0.0.1, port: {}, timeout_s: 5, {} }}\n    - {{ name: doubted, ae_title: DOUBTED, host: 127.0.0.1, port: {}, timeout_s: 5, {} }}\n",
        secure.port,
        tls(&ca.cert),
        doubted.port,
        // We trust another CA than the one that signed this destination's certificate.
        tls(&stranger.cert),
    );
    let node = Node::start_full(d.path(), "", "  min_free_bytes: 0\n", &export, &[]);
    let files = corpus(d.path(), 0, 5);
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("5 instances at the TLS destination", Duration::from_secs(60), || secure.files().len() >= 5);
    wait_until("the untrusted destination recorded as failing", Duration::from_secs(30), || {
        queue_status(&node.config).contains("destination doubted") && node.log().contains("DOUBTED@127.0.0.1")
    });
    let mine = local(&node);
    let theirs = by_uid(&secure.files());
    assert_eq!(theirs.len(), 5);
    for (uid, body) in &mine {
        assert!(theirs[uid] == *body, "{uid} differs at the TLS destination");
    }
    assert!(doubted.files().is_empty(), "nothing goes to a destination whose certificate we do not trust");
    assert!(sent(&queue_status(&node.config), "secure", 5));
    node.stop();
}
