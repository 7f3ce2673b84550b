//! The node as a DICOM peer sees it: DCMTK's echoscu, storescu and dcmsend against the real
//! binary on 127.0.0.1, outputs checked with dcmdump.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::node::*;
use common::*;

fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).collect()
}

/// storescu's words for a status, lower-cased without spaces ("Refused: OutOfResources").
fn says(out: &std::process::Output, words: &str) -> bool {
    let norm = |s: &str| s.to_lowercase().replace([' ', ':', '-'], "");
    norm(&text(out)).contains(&norm(words))
}

fn phi_free(file: &Path, patient: &Patient) {
    let bytes = std::fs::read(file).unwrap();
    let mut phi: Vec<&[u8]> = OTHER_PHI.iter().map(|s| s.as_bytes()).collect();
    phi.push(patient.id.as_bytes());
    phi.push(patient.name.as_bytes());
    phi.push(patient.birth_date.as_bytes());
    for s in phi {
        assert!(!contains(&bytes, s), "{:?} leaked into {file:?}", String::from_utf8_lossy(s));
    }
}

#[test]
fn echo_and_a_corpus_over_concurrent_associations_arrive_anonymized() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let echo = echoscu(node.port, "TESTSCU", AE);
    assert!(echo.status.success(), "{}", text(&echo));

    // Four senders at once, each a different study mix: CT and MR, multi-frame, a large
    // instance that spills to disk, three patients.
    let patients = [smith(), yamada(), mueller()];
    let mut batches: Vec<Vec<PathBuf>> = vec![Vec::new(); 4];
    let mut expected = 0;
    for (pi, p) in patients.iter().enumerate() {
        for i in 0..6u32 {
            let shape = Shape {
                study: 1 + i % 2,
                series: 1 + i % 3,
                instance: i,
                modality: if i % 2 == 0 { "CT" } else { "MR" },
                frames: if i == 5 { 3 } else { 1 },
                ..Shape::default()
            };
            let f = put(&d.path().join(format!("in{pi}")), &format!("{i}.dcm"), &instance(p, &shape));
            batches[(pi * 6 + i as usize) % 4].push(f);
            expected += 1;
        }
    }
    let big_shape = Shape { rows: 1024, frames: 3, series: 9, ..Shape::default() };
    let big = put(&d.path().join("big"), "big.dcm", &instance(&smith(), &big_shape));
    batches[0].push(big.clone());
    expected += 1;

    let senders: Vec<_> = batches
        .into_iter()
        .map(|files| {
            let port = node.port;
            std::thread::spawn(move || storescu(port, &files))
        })
        .collect();
    for s in senders {
        let out = s.join().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(!text(&out).contains("Store Failed"), "{}", text(&out));
    }
    // Compressed and deflated syntaxes go through dcmsend, which proposes each file's own syntax.
    let jpeg = put(
        &d.path().join("cx"),
        "jpeg.dcm",
        &instance(
            &smith(),
            &Shape { transfer_syntax: JPEG_BASELINE, frames: 2, series: 7, ..Shape::default() },
        ),
    );
    let deflated = put(
        &d.path().join("cx"),
        "deflated.dcm",
        &instance(&smith(), &Shape { transfer_syntax: DEFLATED, series: 8, ..Shape::default() }),
    );
    let sent = dcmsend(node.port, &[jpeg.clone(), deflated]);
    assert!(sent.status.success(), "{}", text(&sent));
    expected += 2;

    let outputs = dcm_files(&node.public());
    assert_eq!(outputs.len(), expected, "{outputs:#?}\n{}", node.log());
    for o in &outputs {
        assert!(
            dcmdump_value(o, "SOPInstanceUID")
                .is_some_and(|u| u.starts_with("1.2.826.0.1.3680043.10.474.99.99.2.")),
            "{o:?}"
        );
        for p in &patients {
            phi_free(o, p);
        }
    }
    // The large instance's pixel data passed through the spill file unchanged.
    let big_pixels = pixel_bytes(&big_shape, 2);
    assert!(
        outputs.iter().any(|o| contains(&std::fs::read(o).unwrap(), &big_pixels[..4096])),
        "large instance's last frame not found intact"
    );
    // So did the JPEG fragments.
    let jpeg_in = std::fs::read(&jpeg).unwrap();
    let fragment = &jpeg_in[jpeg_in.len() - 120..jpeg_in.len() - 20];
    assert!(outputs.iter().any(|o| contains(&std::fs::read(o).unwrap(), fragment)));
    assert!(dcm_files(&d.path().join("storage/private/tmp")).is_empty(), "spill files are removed");
    assert!(node.stop().success(), "SIGTERM gives a clean exit");
}

#[test]
fn unknown_called_ae_and_calling_ae_outside_the_allow_list_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "  allowed_calling_ae_titles: [FRIEND]\n", "  min_free_bytes: 0\n");
    let wrong_called = echoscu(node.port, "FRIEND", "NOTME");
    assert!(!wrong_called.status.success());
    assert!(text(&wrong_called).contains("Called AE Title Not Recognized"), "{}", text(&wrong_called));
    let stranger = echoscu(node.port, "STRANGER", AE);
    assert!(!stranger.status.success());
    assert!(text(&stranger).contains("Calling AE Title Not Recognized"), "{}", text(&stranger));
    let friend = echoscu(node.port, "FRIEND", AE);
    assert!(friend.status.success(), "{}", text(&friend));
    // The status page lists whom it refused, and why (a refusal dicom-ul answers itself is
    // recorded just after the peer hears it: wait for it).
    let url = format!("{}/", node.http_base());
    let page = || ureq::get(&url).call().unwrap().body_mut().read_to_string().unwrap();
    let listed = |page: &str, who: &str, why: &str| {
        page.split("<tr").any(|r| r.contains(&format!(">{who}<")) && r.contains(why))
    };
    wait_until("the refusals on the status page", Duration::from_secs(10), || {
        let page = page();
        listed(&page, "STRANGER", "rejected: calling AE title not allowed")
            && listed(&page, "FRIEND", "rejected: called AE title not ours")
    });
    // Issue 23: the log line names whom it refused.
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("association not established")
            && l.contains("calling_ae=STRANGER")
            && l.contains("calling AE title not recognized")),
        "{log}"
    );
}

/// Issue 23: a C-STORE whose SOP class is not its presentation context's is refused with 0x0122,
/// and that refusal has its log line, as every failure status does.
#[test]
fn a_sop_class_refusal_has_a_log_line() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let shape = Shape { modality: "MR", ..Shape::default() };
    let mr = instance(&smith(), &shape);
    let body = dicom_anon_gateway::dicom::Part10::parse(&mr).unwrap().body;
    let status = common::rawscu::store_in_context(
        node.port,
        AE,
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.4",
        &sop_uid(&smith(), &shape),
        "1.2.840.10008.1.2.1",
        body,
    );
    assert_eq!(status, 0x0122);
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("instance refused")
            && l.contains("0x0122")
            && l.contains("calling_ae=RAWSCU")
            && l.contains("1.2.840.10008.5.1.4.1.1.4")),
        "{log}"
    );
}

#[test]
fn unsupported_classes_oversize_instances_and_refused_modalities_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let scp = "  storage_classes: [\"1.2.840.10008.5.1.4.1.1.2\"]\n  max_instance_bytes: 20000\n  modalities: [CT]\n";
    let node = Node::start(d.path(), scp, "  min_free_bytes: 0\n");
    let mr = put(d.path(), "mr.dcm", &instance(&smith(), &Shape { modality: "MR", ..Shape::default() }));
    let out = storescu(node.port, &[mr]);
    // The SOP class is not offered by the node: storescu finds no context for it and sends nothing.
    assert!(text(&out).contains("No presentation context"), "{}", text(&out));

    let large = put(d.path(), "large.dcm", &instance(&smith(), &Shape { rows: 128, ..Shape::default() }));
    let out = storescu(node.port, &[large]);
    assert!(says(&out, "Refused: Out of Resources"), "{}", text(&out));

    // A CT whose Modality says MR (the SOP class is accepted, the modality is not).
    let mut odd = instance(&smith(), &Shape { series: 4, ..Shape::default() });
    let pos = odd.windows(6).position(|w| w == [0x08, 0x00, 0x60, 0x00, b'C', b'S']).unwrap();
    odd[pos + 8..pos + 10].copy_from_slice(b"MR");
    let odd = put(d.path(), "odd.dcm", &odd);
    let out = storescu(node.port, &[odd]);
    // 0x0124 (PS3.7 C.5 "Refused: Not authorized"); DCMTK prints it as an unknown failure status.
    assert!(says(&out, "Status: 0x124") || says(&out, "Not Authorized"), "{}", text(&out));

    assert!(dcm_files(&node.public()).is_empty(), "nothing refused was stored");
    assert!(node.log().contains("Modality \"MR\" is not accepted"), "{}", node.log());
    assert!(node.log().contains("larger than scp.max_instance_bytes"));
}

#[test]
fn junk_and_cut_connections_leave_the_server_serving() {
    let d = tempfile::tempdir().unwrap();
    let mut node =
        Node::start(d.path(), "  timeouts: { acse_s: 2, dimse_s: 2, idle_s: 2 }\n", "  min_free_bytes: 0\n");
    let addr = format!("127.0.0.1:{}", node.port);
    // Random bytes, then a close.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x13\x37").unwrap();
    drop(s);
    // An A-ASSOCIATE-RQ header announcing 1000 bytes, then 10 bytes, then a cut.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[0x01, 0x00, 0x00, 0x00, 0x03, 0xE8]).unwrap();
    s.write_all(&[0u8; 10]).unwrap();
    drop(s);
    // A connection that never speaks: the ACSE timeout closes it.
    let silent = TcpStream::connect(&addr).unwrap();
    let ok = echoscu(node.port, "TESTSCU", AE);
    assert!(ok.status.success(), "{}", text(&ok));
    // A cut in the middle of a data set: storescu killed while sending a large instance.
    let big =
        put(d.path(), "big.dcm", &instance(&smith(), &Shape { rows: 2048, frames: 16, ..Shape::default() }));
    let mut sender = std::process::Command::new("/usr/bin/storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aec", AE, "--max-send-pdu", "4096", "127.0.0.1", &node.port.to_string()])
        .arg(&big)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Cut it once the data set is being spilled, i.e. in the middle of the transfer.
    let tmp = d.path().join("storage/private/tmp");
    wait_until("the large data set to start spilling", Duration::from_secs(30), || {
        !files_under(&tmp).is_empty()
    });
    let _ = sender.kill();
    let _ = sender.wait();
    wait_until("the node to see the cut connection", Duration::from_secs(30), || {
        node.log().contains("connection closed") && files_under(&tmp).is_empty()
    });
    drop(silent);
    assert!(node.is_running(), "the node died; log:\n{}", node.log());
    let ok = echoscu(node.port, "TESTSCU", AE);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(dcm_files(&node.public()).is_empty(), "a cut instance is never stored; log:\n{}", node.log());
    assert!(node.log().contains("connection closed"), "the transfer was cut: {}", node.log());
    assert!(files_under(&d.path().join("storage/private/tmp")).is_empty(), "its spill file is removed");
}

#[test]
fn the_association_over_the_limit_is_rejected_not_queued() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(
        d.path(),
        "  max_associations: 1\n  timeouts: { acse_s: 10, dimse_s: 10, idle_s: 10 }\n",
        "  min_free_bytes: 0\n",
    );
    // This association holds the only permit.
    let holder = rawscu::associate(node.port, "HOLDER", AE, "1.2.840.10008.1.1", "1.2.840.10008.1.2");
    let out = echoscu(node.port, "TESTSCU", AE);
    assert!(!out.status.success());
    assert!(text(&out).contains("Local Limit Exceeded"), "{}", text(&out));
    holder.release().unwrap();
    wait_until("the holder's association to end", Duration::from_secs(10), || {
        node.log().lines().any(|l| l.contains("calling_ae=HOLDER") && l.contains("association finished"))
    });
    let out = echoscu(node.port, "TESTSCU", AE);
    assert!(out.status.success(), "the permit comes back: {}", text(&out));
}

#[test]
fn a_full_disk_answers_a700_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 1000000000000000000\n");
    let f = put(d.path(), "a.dcm", &instance(&smith(), &Shape::default()));
    let out = storescu(node.port, &[f]);
    assert!(says(&out, "Refused: Out of Resources"), "{}", text(&out));
    assert!(dcm_files(&node.public()).is_empty());
    assert!(files_under(&d.path().join("storage/private/tmp")).is_empty());
    assert!(node.log().contains("storage.min_free_bytes"), "{}", node.log());
}

#[test]
fn a_mismatched_or_unparseable_data_set_is_quarantined_with_a_status() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let file = instance(&smith(), &Shape::default());
    let body = dicom_anon_gateway::dicom::Part10::parse(&file).unwrap().body.to_vec();
    let announced = sop_uid(&smith(), &Shape::default());
    // The data set is not the instance the command announced.
    assert_eq!(rawscu::store_raw(node.port, AE, CT_IMAGE, "1.2.3.999", &body), 0xA900);
    // A data set cut short.
    assert_eq!(rawscu::store_raw(node.port, AE, CT_IMAGE, &announced, &body[..body.len() / 2]), 0xC000);
    // The same instance whole is fine, and sent again it replaces its file.
    assert_eq!(rawscu::store_raw(node.port, AE, CT_IMAGE, &announced, &body), 0x0000);
    assert_eq!(rawscu::store_raw(node.port, AE, CT_IMAGE, &announced, &body), 0x0000);
    assert_eq!(dcm_files(&node.public()).len(), 1);
    assert_eq!(dcm_files(&node.quarantine().join("Missing_Attributes")).len(), 1, "{}", node.log());
    assert_eq!(dcm_files(&node.quarantine().join("DICOM_Read_Error")).len(), 1, "{}", node.log());
    // A quarantined instance is a Part 10 file the offline command can read again.
    let q = &dcm_files(&node.quarantine().join("Missing_Attributes"))[0];
    assert_eq!(dcmdump_value(q, "SOPInstanceUID").as_deref(), Some(announced.as_str()));
}

#[test]
fn a_known_patients_instance_that_contradicts_the_index_never_reaches_public() {
    // The second instance's patient is known (its pseudonym comes from memory), so the conflict
    // is found only when the instance commits, after its file has been staged beside public/.
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let send = |shape: &Shape| {
        let file = instance(&smith(), shape);
        let body = dicom_anon_gateway::dicom::Part10::parse(&file).unwrap().body.to_vec();
        rawscu::store_raw(node.port, AE, CT_IMAGE, &sop_uid(&smith(), shape), &body)
    };
    let first = Shape { series: 1, instance: 1001, ..Shape::default() };
    // Same SOP Instance UID (series * 1000 + instance), another series.
    let other_series = Shape { series: 2, instance: 1, ..Shape::default() };
    assert_eq!(sop_uid(&smith(), &first), sop_uid(&smith(), &other_series));
    assert_eq!(send(&first), 0x0000);
    assert_eq!(send(&other_series), 0xC000, "{}", node.log());
    let public = files_under(&node.public());
    assert_eq!(public.len(), 1, "only the first instance is in public/, no temp file: {public:?}");
    assert_eq!(dcm_files(&node.quarantine().join("Capture_PHI_Error")).len(), 1, "{}", node.log());
    // The first instance is untouched by the second's failure.
    assert_eq!(send(&first), 0x0000);
    assert_eq!(files_under(&node.public()).len(), 1);
}

#[test]
fn an_instance_that_fails_after_its_commit_leaves_no_success_in_the_audit_or_the_queue() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let shape = Shape::default();
    let file = instance(&smith(), &shape);
    let body = dicom_anon_gateway::dicom::Part10::parse(&file).unwrap().body.to_vec();
    let send = || rawscu::store_raw(node.port, AE, CT_IMAGE, &sop_uid(&smith(), &shape), &body);
    assert_eq!(send(), 0x0000);
    // Its place in public/ becomes a non-empty directory: the rename of the next copy fails.
    let stored = dcm_files(&node.public()).remove(0);
    std::fs::remove_file(&stored).unwrap();
    std::fs::create_dir_all(stored.join("in-the-way")).unwrap();
    assert_eq!(send(), 0xA700, "{}", node.log());
    let index = rusqlite::Connection::open(d.path().join("storage/private/index.db")).unwrap();
    let statuses: Vec<String> = index
        .prepare("SELECT status FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(statuses, ["0x0000", "0xA700"], "one row per C-STORE, each its real answer");
    let queued: i64 =
        index.query_row("SELECT COUNT(*) FROM instances WHERE state = 'queued'", [], |r| r.get(0)).unwrap();
    assert_eq!(queued, 0, "no queued row points at a file that is not there");
}

#[test]
fn a_peer_told_0xa700_hears_what_failed_and_not_where_the_node_keeps_its_files() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    // public/ becomes a file: nothing can be written under it.
    let public = node.public();
    std::fs::remove_dir_all(&public).unwrap();
    std::fs::write(&public, b"not a directory").unwrap();
    let shape = Shape::default();
    let file = instance(&smith(), &shape);
    let body = dicom_anon_gateway::dicom::Part10::parse(&file).unwrap().body.to_vec();
    let (status, comment) = rawscu::store_raw_answer(
        node.port,
        AE,
        CT_IMAGE,
        &sop_uid(&smith(), &shape),
        "1.2.840.10008.1.2.1",
        &body,
    );
    assert_eq!(status, 0xA700, "{}", node.log());
    let comment = comment.expect("an error comment");
    assert!(comment.contains("could not write the instance to its storage"), "{comment}");
    let storage = d.path().join("storage");
    assert!(!comment.contains(storage.to_str().unwrap()) && !comment.contains('/'), "{comment}");
    assert!(node.log().contains(public.to_str().unwrap()), "the log keeps the path:\n{}", node.log());
}

#[test]
fn a_queued_row_whose_file_never_reached_public_is_forgotten_at_the_next_start() {
    // What a crash between an instance's commit and its rename into public/ leaves behind (that
    // instance was never acknowledged): a queued row and no file.
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let config = node.config.clone();
    assert!(storescu(
        node.port,
        &[put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()))]
    )
    .status
    .success());
    let stored = dcm_files(&node.public()).remove(0);
    assert!(node.stop().success());
    std::fs::remove_file(&stored).unwrap();
    let node = Node::start_with(d.path(), &config);
    let index = rusqlite::Connection::open(d.path().join("storage/private/index.db")).unwrap();
    let rows: i64 = index.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "{}", node.log());
    assert!(node.log().contains("never placed in public/"), "{}", node.log());
}
