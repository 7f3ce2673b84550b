//! STOW-RS from outside: curl and raw HTTP/1.1 requests, and Orthanc's DICOMweb plugin sending
//! studies, against the real binary on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::{get, scrape, value};
use common::node::*;
use common::orthanc::{curl, Orthanc};
use common::*;

const BOUNDARY: &str = "dicom-anon-test-boundary";
const RELATED: &str = "multipart/related; type=\"application/dicom\"; boundary=dicom-anon-test-boundary";

/// A multipart/related body of `parts` (each with its Content-Type).
fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (ct, data) in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn dicom_parts(files: &[PathBuf]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let parts: Vec<(&str, &[u8])> = bytes.iter().map(|b| ("application/dicom", b.as_slice())).collect();
    multipart(&parts)
}

/// POST `body` to `path` with curl: the status, the body, and the response's content type.
fn stow_curl(node: &Node, path: &str, body: &Path, content_type: &str, accept: &str) -> (u16, String) {
    let url = format!("{}{path}", node.http_base());
    curl(&[
        "-s",
        "-X",
        "POST",
        "-H",
        &format!("Content-Type: {content_type}"),
        "-H",
        &format!("Accept: {accept}"),
        "--data-binary",
        &format!("@{}", body.display()),
        &url,
    ])
}

/// One raw HTTP/1.1 POST: `head_extra` headers, then `body`, then (with `close_early`) the
/// write side shut before the declared length. The status and the body.
fn raw_post(port: u16, path: &str, headers: &str, body: &[u8], close_early: bool) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n").unwrap();
    // A peer that answers early may close while we still write: what it said is what counts.
    let _ = s.write_all(body);
    if close_early {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), rest.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The items of an SQ attribute of a DICOM JSON response (none when it has no Value).
fn items<'a>(j: &'a serde_json::Value, tag: &str) -> Vec<&'a serde_json::Value> {
    assert_eq!(j[tag]["vr"], "SQ", "{tag} in {j}");
    j[tag]["Value"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn uid_of<'a>(item: &'a serde_json::Value, tag: &str) -> &'a str {
    item[tag]["Value"][0].as_str().unwrap_or_default()
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|f| (f.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&f).unwrap()))
        .collect()
}

/// Twelve instances of three patients, one of them large; their SOP instance UIDs, in order.
fn corpus(dir: &Path) -> (Vec<PathBuf>, Vec<String>, Vec<Patient>) {
    let patients = [smith(), yamada(), mueller()];
    let (mut files, mut uids) = (Vec::new(), Vec::new());
    for (pi, p) in patients.iter().enumerate() {
        for i in 0..4u32 {
            let shape = Shape {
                series: 1 + i % 2,
                instance: i,
                modality: if i % 2 == 0 { "CT" } else { "MR" },
                // Past the in-memory threshold: spilled as it arrives.
                rows: if pi == 0 && i == 3 { 1100 } else { 16 },
                ..Shape::default()
            };
            files.push(put(&dir.join(format!("in{pi}")), &format!("{i}.dcm"), &instance(p, &shape)));
            uids.push(sop_uid(p, &shape));
        }
    }
    (files, uids, patients.to_vec())
}

fn assert_phi_free(what: &str, bytes: &[u8], patients: &[Patient]) {
    for p in patients {
        for s in phi_strings(p) {
            assert!(!contains(bytes, &s), "{:?} leaked into {what}", String::from_utf8_lossy(&s));
        }
    }
}

#[test]
fn a_study_sent_by_stow_rs_is_stored_exactly_as_the_same_study_sent_by_c_store() {
    let d = tempfile::tempdir().unwrap();
    let (files, uids, patients) = corpus(d.path());
    let dimse = Node::start(&d.path().join("dimse"), "", "  min_free_bytes: 0\n");
    let stow = Node::start(&d.path().join("stow"), "", "  min_free_bytes: 0\n");
    let out = storescu(dimse.port, &files);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));

    let body = put(d.path(), "body", &dicom_parts(&files));
    let (code, rsp) = stow_curl(&stow, "/dicomweb/studies", &body, RELATED, "application/dicom+json");
    assert_eq!(code, 200, "{rsp}\n{}", stow.log());
    let j = json(&rsp);
    let stored = items(&j, "00081199");
    assert_eq!(stored.len(), files.len(), "{rsp}");
    assert!(items(&j, "00081198").is_empty(), "{rsp}");
    // Named as the sender named them, in order.
    let named: Vec<&str> = stored.iter().map(|i| uid_of(i, "00081155")).collect();
    assert_eq!(named, uids);
    assert_eq!(uid_of(stored[0], "00081150"), sop_class(&Shape::default()));

    // The same bytes under the same paths: one pipeline, whatever the door.
    let (a, b) = (tree(&dimse.public()), tree(&stow.public()));
    assert_eq!(a.len(), files.len());
    assert_eq!(a.iter().map(|(p, _)| p).collect::<Vec<_>>(), b.iter().map(|(p, _)| p).collect::<Vec<_>>());
    for ((path, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{path:?} differs between C-STORE and STOW-RS");
        assert_phi_free(&format!("{path:?}"), y, &patients);
    }
    let m = scrape(&stow);
    assert_eq!(value(&m, "dicom_anon_instances_stored_total{transport=\"stow-rs\"}"), files.len() as f64);
    assert_eq!(value(&m, "dicom_anon_instances_received_total{transport=\"stow-rs\"}"), files.len() as f64);
    assert_eq!(value(&m, "dicom_anon_instances_stored_total{transport=\"dimse\"}"), 0.0);
    let page = get(stow.http_port.unwrap(), "/", None).1;
    assert!(page.contains(&format!("stored {n} (C-STORE 0, STOW-RS {n})", n = files.len())), "{page}");
    // Nothing planted comes back out: response, log, metrics. The response names each instance
    // by the UIDs its sender gave it (PS3.18), and nothing else of it.
    let without_uids = uids.iter().fold(rsp.clone(), |r, u| r.replace(u.as_str(), ""));
    assert!(!without_uids.contains("1.2.999.777."), "only the instances' own UIDs: {rsp}");
    assert_phi_free("the STOW-RS response", without_uids.as_bytes(), &patients);
    let metrics = get(stow.http_port.unwrap(), "/metrics", None).1;
    assert_phi_free("the metrics", metrics.as_bytes(), &patients);
    assert_phi_free("the log", stow.log().as_bytes(), &patients);
    assert!(files_under(&stow.dir.join("storage/private/tmp")).is_empty(), "spills are removed");

    // Sent again: the same answer, nothing new (an identical re-send is one instance).
    let (code, rsp) = stow_curl(&stow, "/dicomweb/studies", &body, RELATED, "application/dicom+json");
    assert_eq!(code, 200, "{rsp}");
    assert_eq!(tree(&stow.public()).len(), files.len());
}

#[test]
fn each_part_is_answered_as_ps3_18_says() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let port = node.http_port.unwrap();
    let good = instance(&smith(), &Shape::default());
    let other = instance(&smith(), &Shape { instance: 2, ..Shape::default() });
    let study = uid(1, &smith(), &Shape::default(), 0);
    let headers = |len: usize| format!("Content-Type: {RELATED}\r\nContent-Length: {len}\r\n");
    let post = |path: &str, body: &[u8]| raw_post(port, path, &headers(body.len()), body, false);

    // One stored, one not a DICOM file: 202, the failure named with 0xC000.
    let body = multipart(&[("application/dicom", &good), ("application/dicom", b"just some text")]);
    let (code, rsp) = post("/dicomweb/studies", &body);
    assert_eq!(code, 202, "{rsp}");
    let j = json(&rsp);
    assert_eq!(items(&j, "00081199").len(), 1);
    let failed = items(&j, "00081198");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["00081197"]["Value"][0], 0xC000);

    // The study in the URL: an instance of it is stored, one of another is a conflict (409),
    // and nothing of it is kept.
    let (code, rsp) =
        post(&format!("/dicomweb/studies/{study}"), &multipart(&[("application/dicom", &other)]));
    assert_eq!(code, 200, "{rsp}");
    let (code, rsp) = post("/dicomweb/studies/1.2.3.4.5", &multipart(&[("application/dicom", &good)]));
    assert_eq!(code, 409, "{rsp}");
    assert_eq!(items(&json(&rsp), "00081198")[0]["00081197"]["Value"][0], 0x0110);

    // A DICOM file the node cannot read: quarantined with its reason, 409 with 0xC000.
    let mut broken = good[..good.len() / 2].to_vec();
    broken.extend_from_slice(&[0xFF; 64]);
    let (code, rsp) =
        post("/projects/TEST_PROJECT/dicomweb/studies", &multipart(&[("application/dicom", &broken)]));
    assert_eq!(code, 409, "{rsp}");
    let j = json(&rsp);
    let failed = items(&j, "00081198");
    assert_eq!(failed[0]["00081197"]["Value"][0], 0xC000, "{rsp}");
    assert!(failed[0]["00000902"]["Value"][0].as_str().is_some_and(|c| !c.is_empty()), "a comment says why");
    assert_eq!(
        files_under(&node.quarantine()).iter().filter(|f| f.extension().is_some_and(|e| e == "dcm")).count(),
        1
    );

    // XML when asked for: a well-formed Native DICOM Model document.
    let xml_headers =
        format!("{}Accept: application/dicom+xml\r\n", headers(0).replace("Content-Length: 0\r\n", ""));
    let body = multipart(&[("application/dicom", &good)]);
    let (code, rsp) = raw_post(
        port,
        "/dicomweb/studies",
        &format!("{xml_headers}Content-Length: {}\r\n", body.len()),
        &body,
        false,
    );
    assert_eq!(code, 200, "{rsp}");
    let doc = roxmltree::Document::parse(&rsp).unwrap_or_else(|e| panic!("{e}: {rsp}"));
    assert!(doc.descendants().any(|n| n.attribute("tag") == Some("00081199")));
    assert!(rsp.contains(&sop_uid(&smith(), &Shape::default())), "{rsp}");

    // Not multipart/related, or parts of another type: 415; another project's path: 404.
    let (code, _) = raw_post(
        port,
        "/dicomweb/studies",
        "Content-Type: application/dicom\r\nContent-Length: 4\r\n",
        b"DICM",
        false,
    );
    assert_eq!(code, 415);
    let (code, _) = raw_post(
        port,
        "/dicomweb/studies",
        &format!("Content-Type: multipart/related; type=\"application/dicom+json\"; boundary={BOUNDARY}\r\nContent-Length: 2\r\n"),
        b"[]",
        false,
    );
    assert_eq!(code, 415);
    assert_eq!(post("/projects/NOPE/dicomweb/studies", &body).0, 404);

    // What was stored: the two instances, each once.
    assert_eq!(files_under(&node.public()).len(), 2, "{}", node.log());
    let m = scrape(&node);
    // Failures counted by their reason and the transport, as over DIMSE.
    let series = |s: &str| value(&m, &format!("dicom_anon_{s},transport=\"stow-rs\"}}"));
    assert_eq!(series("instances_quarantined_total{reason=\"DICOM_Read_Error\""), 1.0);
    assert_eq!(series("instances_refused_total{status=\"0xC000\""), 1.0, "the text part");
    assert_eq!(series("instances_refused_total{status=\"0x0110\""), 1.0, "the other study");
    assert!(
        !m.keys().any(|k| k.contains("status=\"292\"") || k.contains("status=\"49152\"")),
        "statuses in hex"
    );
    assert_eq!(
        value(&m, "dicom_anon_instances_stored_total{transport=\"stow-rs\"}"),
        3.0,
        "the first, the study's, the XML one"
    );
}

#[test]
fn hostile_bodies_get_a_4xx_leave_nothing_behind_and_the_node_keeps_serving() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let port = node.http_port.unwrap();
    let good = instance(&smith(), &Shape::default());
    let with = |ct: &str, len: usize| format!("Content-Type: {ct}\r\nContent-Length: {len}\r\n");

    // The wrong boundary: no delimiter is ever found.
    let body = multipart(&[("application/dicom", &good)]);
    let other = RELATED.replace(BOUNDARY, "another-boundary");
    let (code, rsp) = raw_post(port, "/dicomweb/studies", &with(&other, body.len()), &body, false);
    assert_eq!(code, 400, "{rsp}");

    // No boundary at all.
    let (code, _) = raw_post(
        port,
        "/dicomweb/studies",
        &with("multipart/related; type=\"application/dicom\"", 4),
        b"abcd",
        false,
    );
    assert_eq!(code, 415);

    // A truncated part: the body stops in the middle of the instance.
    let cut = &body[..body.len() / 2];
    let (code, rsp) = raw_post(port, "/dicomweb/studies", &with(RELATED, cut.len()), cut, false);
    assert_eq!(code, 400, "{rsp}");

    // 2 GB declared, a few bytes sent, then the sender goes away.
    let (code, rsp) = raw_post(port, "/dicomweb/studies", &with(RELATED, 2 << 30), &body[..1000], true);
    assert!(code == 400 || code == 0, "a body that never arrives is refused or dropped: {code} {rsp}");

    // A part past scp.max_instance_bytes: 413 as soon as it is, without reading the rest.
    let small =
        Node::start(&d.path().join("small"), "  max_instance_bytes: 100000\n", "  min_free_bytes: 0\n");
    let big = instance(&smith(), &Shape { rows: 400, ..Shape::default() });
    let body = multipart(&[("application/dicom", &big)]);
    let (code, rsp) =
        raw_post(small.http_port.unwrap(), "/dicomweb/studies", &with(RELATED, body.len()), &body, false);
    assert_eq!(code, 413, "{rsp}");
    let j = json(&rsp);
    let failed = items(&j, "00081198");
    assert_eq!(failed.len(), 1, "the part is named as failed: {rsp}");
    assert_eq!(failed[0]["00081197"]["Value"][0], 0xA700);

    // 10,000 tiny parts: refused past the part limit.
    let tiny: Vec<(&str, &[u8])> = (0..10_000).map(|_| ("application/dicom", b"x".as_slice())).collect();
    let body = multipart(&tiny);
    let (code, rsp) = raw_post(port, "/dicomweb/studies", &with(RELATED, body.len()), &body, false);
    assert_eq!(code, 413, "{rsp}");

    // Endless part headers.
    let mut body = format!("--{BOUNDARY}\r\nContent-Type: ").into_bytes();
    body.extend(std::iter::repeat_n(b'a', 1 << 20));
    let (code, rsp) = raw_post(port, "/dicomweb/studies", &with(RELATED, body.len()), &body, false);
    assert_eq!(code, 400, "{rsp}");

    // Nothing half-written anywhere, no junk quarantined, and the node still serves both doors.
    for n in [&node, &small] {
        assert!(files_under(&n.public()).is_empty(), "{:?}", files_under(&n.public()));
        assert!(files_under(&n.dir.join("storage/private/tmp")).is_empty(), "spills are removed");
        assert!(files_under(&n.quarantine()).is_empty(), "junk is not an instance to keep");
    }
    assert!(echoscu(node.port, "TESTSCU", AE).status.success());
    let body = multipart(&[("application/dicom", &good)]);
    let (code, rsp) = raw_post(port, "/dicomweb/studies", &with(RELATED, body.len()), &body, false);
    assert_eq!(code, 200, "{rsp}");
    assert_eq!(get(port, "/healthz", None).0, 200);
}

#[test]
fn orthanc_sends_a_study_to_the_node_by_stow_rs() {
    let d = tempfile::tempdir().unwrap();
    let (files, _, patients) = corpus(d.path());
    let node = Node::start(&d.path().join("node"), "", "  min_free_bytes: 0\n");
    let mut orthanc =
        Orthanc::start(&d.path().join("orthanc"), &[("gateway", format!("{}/dicomweb/", node.http_base()))]);
    let studies: std::collections::BTreeSet<String> = files.iter().map(|f| orthanc.upload(f)).collect();
    for study in &studies {
        let request = serde_json::json!({ "Resources": [study] }).to_string();
        let (code, rsp) = orthanc.post("/dicom-web/servers/gateway/stow", &["--data-binary", &request]);
        assert_eq!(
            code,
            200,
            "Orthanc's STOW-RS to the node failed: {rsp}\n{}\n{}",
            orthanc.log(),
            node.log()
        );
    }
    let stored = files_under(&node.public());
    assert_eq!(stored.len(), files.len(), "{}", node.log());
    for f in &stored {
        assert_phi_free(&format!("{f:?}"), &std::fs::read(f).unwrap(), &patients);
    }
    assert_phi_free("the log", node.log().as_bytes(), &patients);
    orthanc.stop();
}

#[test]
fn over_https_the_path_picks_the_project_and_its_certificate_list_applies() {
    use common::pki;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = pki::ca(&dir, "hospital-ca");
    let server = pki::leaf(&dir, &ca, "server", "gateway", true);
    let client = pki::leaf(&dir, &ca, "client", "modality-1", false);
    let intruder = pki::leaf(&dir, &ca, "intruder", "intruder", false);
    let token = "0123456789abcdef-stow-token";
    let yaml = format!(
        "scp:\n  host: 127.0.0.1\n  port: 0\nstorage:\n  min_free_bytes: 0\n\
         http:\n  listen: 127.0.0.1:0\n  token_env: STOW_TEST_TOKEN\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n\
         logging:\n  level: debug\nprojects:\n\
         \x20 - {{ name: OPEN, ae_title: OPEN_ANON, site_id: \"99.1\", uid_root: \"{ROOT}\", script: {script}, storage: {{ dir: {open} }} }}\n\
         \x20 - {{ name: LOCKED, ae_title: LOCKED_ANON, site_id: \"99.2\", uid_root: \"{ROOT}\", script: {script}, storage: {{ dir: {locked} }},\n\
         \x20     tls_allowed_subjects: [modality-1] }}\n",
        server.cert.display(),
        server.key.display(),
        ca.cert.display(),
        script = default_script().display(),
        open = d.path().join("open").display(),
        locked = d.path().join("locked").display(),
    );
    let config = put(d.path(), "node.yaml", yaml.as_bytes());
    let check = binary()
        .args(["check-config", "--config"])
        .arg(&config)
        .env("STOW_TEST_TOKEN", token)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let node = Node::start_env(d.path(), &config, &[("STOW_TEST_TOKEN", token)]);
    let port = node.http_port.unwrap();
    let body =
        put(d.path(), "body", &multipart(&[("application/dicom", &instance(&smith(), &Shape::default()))]));
    let send = |project: &str, cert: Option<&pki::Pem>, bearer: Option<&str>| {
        let url = format!("https://127.0.0.1:{port}/projects/{project}/dicomweb/studies");
        let data = format!("@{}", body.display());
        let auth = bearer.map(|t| format!("Authorization: Bearer {t}")).unwrap_or_default();
        let (cert_path, key_path) =
            cert.map(|c| (c.cert.display().to_string(), c.key.display().to_string())).unwrap_or_default();
        let mut args = vec!["-s", "--cacert", ca.cert.to_str().unwrap(), "-X", "POST", "-H", &auth];
        args.extend([
            "-H",
            "Content-Type: multipart/related; type=\"application/dicom\"; boundary=dicom-anon-test-boundary",
        ]);
        if cert.is_some() {
            args.extend(["--cert", &cert_path, "--key", &key_path]);
        }
        args.extend(["--data-binary", &data, &url]);
        curl(&args)
    };
    // No client certificate: no TLS session at all (curl reports 000).
    assert_eq!(send("OPEN", None, Some(token)).0, 0);
    // The bearer token still guards every route.
    assert_eq!(send("OPEN", Some(&client), None).0, 401);
    // Any certificate of the CA for OPEN; only modality-1 for LOCKED.
    assert_eq!(send("OPEN", Some(&intruder), Some(token)).0, 200);
    let (code, rsp) = send("LOCKED", Some(&intruder), Some(token));
    assert_eq!(code, 403, "{rsp}");
    assert!(node.log().contains("certificate subject not allowed"), "{}", node.log());
    let (code, rsp) = send("LOCKED", Some(&client), Some(token));
    assert_eq!(code, 200, "{rsp}");
    // Two projects: the short base path does not guess.
    let url = format!("https://127.0.0.1:{port}/dicomweb/studies");
    let auth = format!("Authorization: Bearer {token}");
    let (code, _) = curl(&[
        "-s",
        "--cacert",
        ca.cert.to_str().unwrap(),
        "--cert",
        client.cert.to_str().unwrap(),
        "--key",
        client.key.to_str().unwrap(),
        "-H",
        &auth,
        "-X",
        "POST",
        &url,
    ]);
    assert_eq!(code, 404);
    // Each project stored its own instance, under its own storage.
    assert_eq!(files_under(&d.path().join("open/public")).len(), 1);
    assert_eq!(files_under(&d.path().join("locked/public")).len(), 1);
}

/// Every file under `dir`'s bytes.
fn contents(dir: &Path) -> std::collections::BTreeSet<Vec<u8>> {
    files_under(dir).iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn the_node_exports_to_orthanc_by_stow_rs_once_each_through_an_outage_of_orthanc() {
    let d = tempfile::tempdir().unwrap();
    let (files, _, _) = corpus(d.path());
    let mut orthanc = Orthanc::start(&d.path().join("orthanc"), &[]);
    let extra = format!(
        "export:\n  dicomweb:\n    - {{ name: orthanc, url: \"http://127.0.0.1:{}/dicom-web/\", batch: 4, requests: 2, timeout_s: 5 }}\n",
        orthanc.http_port
    );
    let node = Node::start_full(&d.path().join("node"), "", "  min_free_bytes: 0\n", &extra, &[]);
    let (first, second) = files.split_at(8);
    let out = storescu(node.port, first);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));
    wait_until("Orthanc holds the first 8", Duration::from_secs(60), || orthanc.instances().len() == 8);

    // Orthanc goes away; the rest waits, paused, and goes once it is back.
    orthanc.stop();
    let out = storescu(node.port, second);
    assert!(out.status.success() && !text(&out).contains("Store Failed"), "{}", text(&out));
    common::http::wait_for_metrics(&node, "the destination paused", |m| {
        m.get("dicom_anon_export_unreachable{destination=\"orthanc\",project=\"TEST_PROJECT\"}").copied()
            == Some(1.0)
    });
    orthanc.restart(&[]);
    wait_until("Orthanc holds all 12", Duration::from_secs(90), || orthanc.instances().len() == files.len());
    let m = common::http::wait_for_metrics(&node, "every instance recorded sent", |m| {
        m.get("dicom_anon_exports_total{destination=\"orthanc\",outcome=\"sent\"}").copied()
            == Some(files.len() as f64)
    });
    assert_eq!(
        m.get("dicom_anon_export_unreachable{destination=\"orthanc\",project=\"TEST_PROJECT\"}").copied(),
        Some(0.0)
    );

    // What Orthanc holds is exactly the node's anonymized files, byte for byte.
    let local = contents(&node.public());
    let remote: std::collections::BTreeSet<Vec<u8>> =
        orthanc.instances().iter().map(|id| orthanc.file(id)).collect();
    assert_eq!(local.len(), files.len());
    assert!(local == remote, "Orthanc's copies differ from the node's files");
    // Each recorded sent once: nothing sent again after it was stored.
    let status = binary().args(["queue", "status", "--config"]).arg(&node.config).output().unwrap();
    assert!(text(&status).contains("orthanc"), "{}", text(&status));
}

#[test]
fn stow_rs_requests_past_their_share_are_told_to_retry_and_probes_still_answer() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let port = node.http_port.unwrap();
    let good = multipart(&[("application/dicom", &instance(&smith(), &Shape::default()))]);
    // 48 senders (three quarters of the listener's 64 connections) that start a body and stall.
    let stalled: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {RELATED}\r\nContent-Length: {}\r\n\r\n", good.len()).unwrap();
            s.write_all(&good[..100]).unwrap();
            s
        })
        .collect();
    let headers = format!("Content-Type: {RELATED}\r\nContent-Length: {}\r\n", good.len());
    common::http::wait_for_metrics(&node, "48 STOW-RS requests in progress", |m| {
        m.get("dicom_anon_stow_requests_in_progress").copied() == Some(48.0)
    });
    let refused = raw_post(port, "/dicomweb/studies", &headers, &good, false);
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert!(refused.1.contains("too many STOW-RS requests"), "{}", refused.1);
    assert!(node.log().contains("as many are being served"), "{}", node.log());
    assert_eq!(get(port, "/healthz", None).0, 200, "probes are not starved");
    assert_eq!(get(port, "/readyz", None).0, 200);
    // The stalled senders go away: their share is free again.
    drop(stalled);
    wait_until("a STOW-RS request is served again", Duration::from_secs(30), || {
        raw_post(port, "/dicomweb/studies", &headers, &good, false).0 == 200
    });
    assert!(files_under(&node.dir.join("storage/private/tmp")).is_empty());
}
