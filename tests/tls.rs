//! DICOM TLS against real peers: DCMTK's echoscu and storescu (built with OpenSSL, BCP 195
//! profiles) with certificates the test makes with the openssl command, and a rustls client that
//! holds an association open across a certificate reload.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::node::*;
use common::pki::{self, Pem};
use common::*;

/// The test's PKI: a CA the node trusts for clients, another it does not.
struct Certs {
    ca: Pem,
    server: Pem,
    /// CN=modality-1, signed by `ca`: allowed everywhere.
    client: Pem,
    /// CN=intruder, signed by `ca`: a valid certificate, but not on LOCKED's list.
    intruder: Pem,
    /// CN=modality-1 again, signed by a CA the node does not trust.
    foreign: Pem,
}

fn certs(dir: &Path) -> Certs {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = pki::ca(&pki, "hospital-ca");
    let other = pki::ca(&pki, "other-ca");
    Certs {
        server: pki::leaf(&pki, &ca, "server", "gateway", true),
        client: pki::leaf(&pki, &ca, "client", "modality-1", false),
        intruder: pki::leaf(&pki, &ca, "intruder", "intruder", false),
        foreign: pki::leaf(&pki, &other, "foreign", "modality-1", false),
        ca,
    }
}

/// Two projects; LOCKED takes only the certificate subject modality-1. `tls_extra` is added under
/// `scp.tls`.
fn config(dir: &Path, c: &Certs, tls_extra: &str) -> PathBuf {
    let yaml = format!(
        "scp:\n  host: 127.0.0.1\n  port: 0\n  tls:\n    port: 0\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n{tls_extra}\
         storage:\n  min_free_bytes: 0\nhttp:\n  listen: 127.0.0.1:0\nlogging:\n  level: debug\nprojects:\n\
         \x20 - {{ name: OPEN, ae_title: OPEN_ANON, site_id: \"99.1\", uid_root: \"{ROOT}\", script: {script}, storage: {{ dir: {open} }} }}\n\
         \x20 - {{ name: LOCKED, ae_title: LOCKED_ANON, site_id: \"99.2\", uid_root: \"{ROOT}\", script: {script}, storage: {{ dir: {locked} }},\n\
         \x20     tls_allowed_subjects: [modality-1] }}\n",
        c.server.cert.display(),
        c.server.key.display(),
        c.ca.cert.display(),
        script = default_script().display(),
        open = dir.join("open").display(),
        locked = dir.join("locked").display(),
    );
    put(dir, "node.yaml", yaml.as_bytes())
}

/// Certificates and a running node with them; `tls_extra` as for [`config`].
fn start(dir: &Path, tls_extra: &str) -> (Certs, Node) {
    let c = certs(dir);
    let node = Node::start_with(dir, &config(dir, &c, tls_extra));
    (c, node)
}

/// echoscu over TLS; `client: None` is anonymous TLS (no client certificate).
fn echo_tls(port: u16, called: &str, client: Option<&Pem>, ca: &Pem) -> Output {
    let mut cmd = dcmtk("echoscu");
    cmd.args(["-v", "-aet", "TESTSCU", "-aec", called]);
    match client {
        Some(pem) => cmd.arg("+tls").arg(&pem.key).arg(&pem.cert),
        None => cmd.arg("+tla"),
    };
    cmd.arg("+cf").arg(&ca.cert).args(["127.0.0.1", &port.to_string()]).output().unwrap()
}

/// echoscu over plain TCP, verbose.
fn echo_plain(port: u16, called: &str) -> Output {
    dcmtk("echoscu")
        .args(["-v", "-aet", "TESTSCU", "-aec", called, "127.0.0.1", &port.to_string()])
        .output()
        .unwrap()
}

/// Whether the C-ECHO got a success response. echoscu's exit code alone does not say: after an
/// A-ABORT it can print "Echo Failed" and still exit 0.
fn echoed(o: &Output) -> bool {
    o.status.success() && text(o).contains("Received Echo Response (Success)")
}

fn handshake_failures(node: &Node) -> usize {
    node.log().lines().filter(|l| l.contains("TLS handshake failed")).count()
}

#[test]
fn dcmtk_stores_over_mutual_tls_and_bad_clients_are_refused_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let (c, node) = start(d.path(), "");
    let tls = node.tls_port.expect("a TLS listener");

    let ok = echo_tls(tls, "OPEN_ANON", Some(&c.client), &c.ca);
    assert!(echoed(&ok), "{}\n{}", text(&ok), node.log());

    // storescu +tls: the instances arrive, anonymized, in OPEN's archive only.
    let files: Vec<PathBuf> = (0..3)
        .map(|i| {
            let shape = Shape { rows: 32, instance: i, ..Shape::default() };
            put(&d.path().join("in"), &format!("{i}.dcm"), &instance(&smith(), &shape))
        })
        .collect();
    let out = dcmtk("storescu")
        .args(["-aet", "TESTSCU", "-aec", "OPEN_ANON", "+tls"])
        .arg(&c.client.key)
        .arg(&c.client.cert)
        .arg("+cf")
        .arg(&c.ca.cert)
        .args(["127.0.0.1", &tls.to_string()])
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    let stored = files_under(&d.path().join("open/public"));
    assert_eq!(stored.len(), 3, "{}", node.log());
    assert!(files_under(&d.path().join("locked/public")).is_empty());
    for f in &stored {
        let bytes = std::fs::read(f).unwrap();
        for phi in phi_strings(&smith()) {
            assert!(!contains(&bytes, &phi), "{} holds {:?}", f.display(), String::from_utf8_lossy(&phi));
        }
    }

    // Refused at the handshake, each with one log line: no client certificate, one from a CA
    // the node does not trust, and plain DICOM on the TLS port.
    assert_eq!(handshake_failures(&node), 0, "{}", node.log());
    let anonymous = echo_tls(tls, "OPEN_ANON", None, &c.ca);
    assert!(!echoed(&anonymous), "a client without a certificate got in: {}", text(&anonymous));
    wait_until("the handshake failure's log line", Duration::from_secs(10), || {
        handshake_failures(&node) == 1
    });
    let foreign = echo_tls(tls, "OPEN_ANON", Some(&c.foreign), &c.ca);
    assert!(!echoed(&foreign), "another CA's certificate got in: {}", text(&foreign));
    wait_until("the second failure's log line", Duration::from_secs(10), || handshake_failures(&node) == 2);
    let plain = echo_plain(tls, "OPEN_ANON");
    assert!(!echoed(&plain), "plain TCP was answered on the TLS port: {}", text(&plain));
    wait_until("the third failure's log line", Duration::from_secs(10), || handshake_failures(&node) == 3);

    // A valid certificate whose subject LOCKED does not list: refused there, welcome at OPEN.
    let intruder = echo_tls(tls, "LOCKED_ANON", Some(&c.intruder), &c.ca);
    assert!(!echoed(&intruder), "intruder reached LOCKED: {}", text(&intruder));
    let log = node.log();
    assert!(log.contains("certificate subject not allowed") && log.contains("intruder"), "{log}");
    let intruder_open = echo_tls(tls, "OPEN_ANON", Some(&c.intruder), &c.ca);
    assert!(echoed(&intruder_open), "{}", text(&intruder_open));
    let allowed = echo_tls(tls, "LOCKED_ANON", Some(&c.client), &c.ca);
    assert!(echoed(&allowed), "{}\n{}", text(&allowed), node.log());
    // An AE title that is no project's is rejected over TLS as over TCP.
    let unknown = echo_tls(tls, "NOBODY", Some(&c.client), &c.ca);
    assert!(text(&unknown).contains("Called AE Title Not Recognized"), "{}", text(&unknown));

    // The node kept serving on both listeners, and nothing panicked.
    let again = echo_tls(tls, "OPEN_ANON", Some(&c.client), &c.ca);
    assert!(echoed(&again), "{}", text(&again));
    let plain_port = echo_plain(node.port, "OPEN_ANON");
    assert!(echoed(&plain_port), "{}", text(&plain_port));
    // LOCKED lists certificate subjects, so plain TCP cannot go around them.
    let around = echo_plain(node.port, "LOCKED_ANON");
    assert!(text(&around).contains("Association Rejected"), "{}", text(&around));
    assert!(node.log().contains("takes TLS only"), "{}", node.log());
    let log = node.log();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(handshake_failures(&node), 3, "one line per failed handshake:\n{log}");

    // The status page says TLS is on and names the other project; the failures are counted.
    let http = |path: &str| {
        let url = format!("{}{path}", node.http_base());
        ureq::get(&url).call().unwrap().body_mut().read_to_string().unwrap()
    };
    let page = http("/");
    let tls_cell = format!("id=\"tls\">on 127.0.0.1:{tls} (client certificates required)<");
    assert!(page.contains(&tls_cell), "{page}");
    assert!(page.contains("<a href=\"/projects/LOCKED\">LOCKED</a></td><td>LOCKED_ANON</td>"), "{page}");
    let metrics = http("/metrics");
    assert!(
        metrics.contains("dicom_anon_connections_dropped_total{reason=\"tls_handshake\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dicom_anon_associations_rejected_total{reason=\"tls_subject\"} 1")
            && metrics.contains("dicom_anon_associations_rejected_total{reason=\"tls_only\"} 1"),
        "{metrics}"
    );
    assert!(page.contains("rejected: this AE title takes TLS only"), "{page}");
    // Issue 23: a refusal dicom-ul answers inside the TLS stream names the calling AE title too,
    // on the page and in the log (it showed `—` and nothing).
    let refused_row = page.split("<tr").find(|r| r.contains("rejected: called AE title not ours"));
    assert!(refused_row.is_some_and(|r| r.contains(">TESTSCU<")), "{page}");
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("association not established") && l.contains("calling_ae=TESTSCU")),
        "{log}"
    );
    let stopped = node.stop();
    assert!(stopped.success());
}

#[test]
fn tls_only_opens_no_plain_listener_and_a_bad_certificate_file_stops_the_start() {
    let d = tempfile::tempdir().unwrap();
    let (c, node) = start(d.path(), "    only: true\n");
    assert_eq!(Some(node.port), node.tls_port, "with scp.tls.only the listening line names the TLS port");
    let ok = echo_tls(node.port, "OPEN_ANON", Some(&c.client), &c.ca);
    assert!(echoed(&ok), "{}", text(&ok));
    drop(node);

    // A key that is not the certificate's: the node refuses to start and names the file.
    let bad = Certs { server: Pem { cert: c.server.cert.clone(), key: c.client.key.clone() }, ..c };
    let bad_config = config(d.path(), &bad, "");
    for command in ["serve", "check-config"] {
        let out = binary().args([command, "--config"]).arg(&bad_config).output().unwrap();
        assert!(!out.status.success(), "{command} accepted a key that is not the certificate's");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("scp.tls.key_file"), "{command}: {err}");
    }
}

#[test]
fn a_v1_client_certificate_is_refused_with_a_reason_an_integrator_can_read() {
    let d = tempfile::tempdir().unwrap();
    let (c, node) = start(d.path(), "");
    let tls = node.tls_port.expect("a TLS listener");
    // Signed by the CA the node trusts, valid in every other way.
    let v1 = pki::leaf_v1(&d.path().join("pki"), &c.ca, "v1-client", "modality-1");
    let dump = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&v1.cert)
        .output()
        .unwrap();
    assert!(text(&dump).contains("Version: 1 (0x0)"), "not a v1 certificate: {}", text(&dump));

    let refused = echo_tls(tls, "OPEN_ANON", Some(&v1), &c.ca);
    assert!(!echoed(&refused), "a v1 certificate got in: {}", text(&refused));
    wait_until("the handshake failure's log line", Duration::from_secs(10), || {
        handshake_failures(&node) == 1
    });
    let log = node.log();
    let line = log.lines().find(|l| l.contains("TLS handshake failed")).unwrap();
    assert!(line.contains("client certificate is X.509 v1; DICOM TLS needs v3"), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "the line names the peer: {line}");
    assert!(!line.contains("UnsupportedCertVersion"), "{line}");
    // The same client with a v3 certificate gets in.
    let ok = echo_tls(tls, "OPEN_ANON", Some(&c.client), &c.ca);
    assert!(echoed(&ok), "{}", text(&ok));
    assert!(node.stop().success());
}

/// One `openssl s_client` handshake with `args` against `port`, presenting `client`: the cipher
/// suite it got, or what openssl said when the handshake did not complete. (The protocol line
/// comes with the session, which a TLS 1.3 server sends after the handshake, when s_client may
/// have left: the suite alone says TLS 1.3, whose suite names are its own.)
fn s_client(port: u16, args: &[&str], client: &Pem, ca: &Pem) -> Result<String, String> {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .arg("-CAfile")
        .arg(&ca.cert)
        // No input: s_client closes once the handshake is over.
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl command runs");
    let said = text(&out);
    let cipher = said.lines().find_map(|l| l.split_once(", Cipher is ")).map(|(_, c)| c.trim().to_string());
    match cipher {
        Some(cipher) if out.status.success() && cipher != "(NONE)" => Ok(cipher),
        _ => Err(said),
    }
}

/// Offered by OpenSSL at security level 0 and refused by the BCP 195 profile (RFC 9325 §4.1 and
/// §4.2): TLS 1.0 and 1.1, CBC suites, and TLS 1.2's ChaCha20 suite, which the profile's TLS 1.2
/// list does not name.
const REFUSED: &[&[&str]] = &[
    &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
    &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA@SECLEVEL=0"],
    &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA384"],
    &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
];

#[test]
fn the_tls_listener_refuses_tls_1_1_and_cbc_suites_and_takes_bcp_195_handshakes() {
    let d = tempfile::tempdir().unwrap();
    let (c, node) = start(d.path(), "");
    let tls = node.tls_port.expect("a TLS listener");

    // What the profile allows.
    let gcm = s_client(tls, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], &c.client, &c.ca);
    assert_eq!(gcm.as_deref(), Ok("ECDHE-ECDSA-AES128-GCM-SHA256"), "{}", node.log());
    let tls13 = s_client(tls, &["-tls1_3"], &c.client, &c.ca);
    assert!(tls13.as_ref().is_ok_and(|t| t.starts_with("TLS_AES_")), "{tls13:?}");

    // What it does not: refused by the node, one log line each.
    for args in REFUSED {
        let got = s_client(tls, args, &c.client, &c.ca);
        assert!(got.is_err(), "the node accepted {args:?}: {got:?}");
    }
    wait_until("a log line per refused handshake", Duration::from_secs(10), || {
        handshake_failures(&node) == REFUSED.len()
    });

    // The same client, against an OpenSSL server that allows everything, gets each of them: so
    // the refusals above are the node's, not this client's (Debian's OpenSSL refuses TLS 1.1 at
    // its default security level).
    let port = common::ports::free_port();
    let mut control = std::process::Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cipher", "ALL@SECLEVEL=0", "-www"])
        .arg("-cert")
        .arg(&c.server.cert)
        .arg("-key")
        .arg(&c.server.key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    wait_until("openssl s_server listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let accepted: Vec<_> = REFUSED.iter().map(|args| s_client(port, args, &c.client, &c.ca)).collect();
    let _ = control.kill();
    let _ = control.wait();
    for (args, got) in REFUSED.iter().zip(&accepted) {
        assert!(got.is_ok(), "the control server refused {args:?}, so the probe proves nothing: {got:?}");
    }
    assert!(node.stop().success());
}

/// A rustls client that trusts `ca` and presents `client`.
fn client_config(ca: &Pem, client: &Pem) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&ca.cert).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_file(&client.cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&client.key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// One C-ECHO on an open association; its status.
fn echo_on(
    scu: &mut dicom_ul::association::client::ClientAssociation<dicom_ul::association::client::TlsStream>,
    message_id: u16,
) -> u16 {
    use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
    use dicom_object::InMemDicomObject;
    use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let pc = scu.presentation_contexts()[0].id;
    let command = InMemDicomObject::command_from_element_iter([
        DataElement::new(Tag(0x0000, 0x0002), VR::UI, PrimitiveValue::from("1.2.840.10008.1.1")),
        DataElement::new(Tag(0x0000, 0x0100), VR::US, PrimitiveValue::from(0x0030u16)),
        DataElement::new(Tag(0x0000, 0x0110), VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(Tag(0x0000, 0x0800), VR::US, PrimitiveValue::from(0x0101u16)),
    ]);
    let mut bytes = Vec::new();
    command.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
    let pdv = PDataValue {
        presentation_context_id: pc,
        value_type: PDataValueType::Command,
        is_last: true,
        data: bytes,
    };
    scu.send(&Pdu::PData { data: vec![pdv] }).unwrap();
    common::rawscu::response_status(scu.receive().unwrap())
}

/// A TLS association to OPEN_ANON proposing Verification, held by the test.
fn hold(
    port: u16,
    calling: &str,
    c: &Certs,
) -> dicom_ul::association::client::ClientAssociation<dicom_ul::association::client::TlsStream> {
    dicom_ul::association::client::ClientAssociationOptions::new()
        .calling_ae_title(calling)
        .called_ae_title("OPEN_ANON")
        .with_presentation_context("1.2.840.10008.1.1", vec!["1.2.840.10008.1.2"])
        .tls_config(client_config(&c.ca, &c.client))
        .server_name("localhost")
        .establish_tls(("127.0.0.1", port))
        .expect("a TLS association")
}

#[test]
fn sighup_rereads_certificates_without_dropping_a_running_association() {
    let d = tempfile::tempdir().unwrap();
    let (c, node) = start(d.path(), "");
    let tls = node.tls_port.unwrap();

    // An association open before the reload.
    let mut held = hold(tls, "HELD", &c);
    assert_eq!(echo_on(&mut held, 1), 0);

    // The operator replaces the server certificate with one from a new CA (the files are
    // rewritten in place), then sends SIGHUP.
    let renewed_dir = d.path().join("renewed");
    std::fs::create_dir_all(&renewed_dir).unwrap();
    let new_ca = pki::ca(&renewed_dir, "new-ca");
    let renewed = pki::leaf(&renewed_dir, &new_ca, "server", "gateway", true);
    std::fs::copy(&renewed.cert, &c.server.cert).unwrap();
    std::fs::copy(&renewed.key, &c.server.key).unwrap();
    // SAFETY: kill(2) with the PID of the node this test spawned and still owns.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    wait_until("the reload's log line", Duration::from_secs(10), || {
        node.log().contains("TLS certificates read again")
    });

    // New handshakes get the new certificate: a client trusting only the old CA now fails, one
    // trusting the new CA gets in.
    let old_trust = echo_tls(tls, "OPEN_ANON", Some(&c.client), &c.ca);
    assert!(!echoed(&old_trust), "still the old certificate: {}", text(&old_trust));
    let new_trust = echo_tls(tls, "OPEN_ANON", Some(&c.client), &new_ca);
    assert!(echoed(&new_trust), "{}\n{}", text(&new_trust), node.log());
    // The association from before the reload still works.
    assert_eq!(echo_on(&mut held, 2), 0, "{}", node.log());
    held.release().unwrap();

    // A broken file on the next SIGHUP: refused, the current certificate stays.
    std::fs::write(&c.server.key, b"not a key").unwrap();
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    wait_until("the refused reload's log line", Duration::from_secs(10), || {
        node.log().contains("not reloaded")
    });
    let still = echo_tls(tls, "OPEN_ANON", Some(&c.client), &new_ca);
    assert!(echoed(&still), "{}\n{}", text(&still), node.log());
    assert!(node.stop().success());
}

/// A handshake in progress is evictable (a peer may hold only a few pending); a negotiated TLS
/// association is not, however many the same address holds.
#[test]
fn many_tls_associations_from_one_address_all_stay_open() {
    let d = tempfile::tempdir().unwrap();
    let (c, node) = start(d.path(), "");
    let tls = node.tls_port.unwrap();
    let mut held: Vec<_> = (0..12).map(|i| hold(tls, &format!("HELD{i}"), &c)).collect();
    for (i, scu) in held.iter_mut().enumerate() {
        assert_eq!(echo_on(scu, 1), 0, "association {i}:\n{}", node.log());
    }
    for scu in held {
        scu.release().unwrap();
    }
    assert!(node.stop().success());
}
