//! Several nodes, one archive: the PHI index on a real PostgreSQL server (Debian's), nodes
//! receiving from DCMTK's storescu at the same time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::haproxy::Haproxy;
use common::node::{storescu, text, Node, SITE};
use common::peers::storescp;
use common::postgres::{Postgres, PASSWORD};
use common::{binary, files_under, instance, put, Patient, Shape};
use dicom_core::Tag;

/// The schema of the test project (`TEST_PROJECT`, lower-cased).
const SCHEMA: &str = "test_project";

/// The YAML that puts a node's index in PostgreSQL.
fn on_postgres(node_id: &str) -> String {
    format!("index:\n  backend: postgres\n  url_env: DAG_INDEX_URL\nnode:\n  id: {node_id}\n")
}

fn start_node(dir: &Path, pg: &Postgres, node_id: &str, project: &str) -> Node {
    start_node_with(dir, pg, node_id, project, "")
}

/// [`start_node`] with more top-level YAML.
fn start_node_with(dir: &Path, pg: &Postgres, node_id: &str, project: &str, extra: &str) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let config =
        Node::write_config(dir, "", "  min_free_bytes: 0\n", &format!("{}{extra}", on_postgres(node_id)));
    if !project.is_empty() {
        let yaml = std::fs::read_to_string(&config).unwrap().replacen(
            "project:\n",
            &format!("project:\n{project}"),
            1,
        );
        std::fs::write(&config, yaml).unwrap();
    }
    Node::start_env(dir, &config, &[("DAG_INDEX_URL", &pg.url())])
}

/// Patient `k` of many: ids whose byte sums differ, so that the corpus's UIDs do too.
fn patient(k: usize) -> Patient {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    Patient {
        name: leak(format!("PGTEST^PATIENT{}", "X".repeat(k))),
        id: leak(format!("PG-{}", "7".repeat(k))),
        birth_date: "19700101",
        charset: None,
        name_bytes: None,
    }
}

/// `studies` studies of `per_study` instances for each of `patients` patients, written to `dir`.
fn corpus(dir: &Path, patients: usize, studies: u32, per_study: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for k in 1..=patients {
        let p = patient(k);
        for study in 1..=studies {
            for n in 1..=per_study {
                let shape = Shape { study, instance: n, ..Shape::default() };
                files.push(put(dir, &format!("p{k}-s{study}-i{n}.dcm"), &instance(&p, &shape)));
            }
        }
    }
    files
}

fn tag(obj: &dicom_object::DefaultDicomObject, t: Tag) -> String {
    obj.element(t).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

/// (PatientID, StudyInstanceUID) of every anonymized file under `public`.
fn stored(public: &Path) -> Vec<(String, String)> {
    files_under(public)
        .iter()
        .map(|f| {
            let obj = dicom_object::open_file(f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            (tag(&obj, Tag(0x0010, 0x0020)), tag(&obj, Tag(0x0020, 0x000D)))
        })
        .collect()
}

/// A command of the CLI (`args`, then `--config CONFIG`), with the database's URL in the environment.
fn cli(args: &[&str], config: &Path, pg: &Postgres) -> std::process::Output {
    binary().args(args).arg("--config").arg(config).env("DAG_INDEX_URL", pg.url()).output().unwrap()
}

fn count(pg: &Postgres, sql: &str) -> u64 {
    pg.rows(sql)[0].parse().unwrap()
}

/// storescu succeeded for every file it sent.
fn assert_all_stored(out: &std::process::Output, what: &str) {
    let log = text(out);
    assert!(out.status.success() && !log.contains("Failed"), "{what}: {log}");
}

#[test]
fn two_nodes_on_one_database_give_each_patient_one_pseudonym_and_each_study_one_uid() {
    let d = tempfile::tempdir().unwrap();
    let pg = Postgres::start(d.path());
    let a = start_node(&d.path().join("a"), &pg, "node-a", "");
    let b = start_node(&d.path().join("b"), &pg, "node-b", "");
    let files = corpus(&d.path().join("in"), 20, 2, 4);
    // Eight senders at once, each with every eighth file: every study arrives at both nodes,
    // interleaved, and every patient's first instance at both nearly together.
    let senders: Vec<_> = (0..8)
        .map(|k| {
            let slice: Vec<PathBuf> = files.iter().skip(k).step_by(8).cloned().collect();
            let port = if k % 2 == 0 { a.port } else { b.port };
            std::thread::spawn(move || (k, storescu(port, &slice)))
        })
        .collect();
    for s in senders {
        let (k, out) = s.join().unwrap();
        assert_all_stored(&out, &format!("sender {k}"));
    }

    // One pseudonym per patient, numbered 1 to 20 with none twice and none skipped.
    let patients = pg.rows(&format!(
        "SELECT patient_id, anon_patient_id FROM {SCHEMA}.patients WHERE patient_id <> '' ORDER BY anon_patient_id"
    ));
    assert_eq!(patients.len(), 20, "{patients:?}");
    let numbers = numbered(20);
    let anon: Vec<String> = patients.iter().map(|r| r.split('|').nth(1).unwrap().to_string()).collect();
    assert_eq!(anon, numbers);

    // In both archives: each study under one patient pseudonym, one study UID per study.
    let (on_a, on_b) = (stored(&a.public()), stored(&b.public()));
    assert_eq!(on_a.len() + on_b.len(), 160);
    assert!(!on_a.is_empty() && !on_b.is_empty());
    let mut owner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (patient, study) in on_a.iter().chain(&on_b) {
        owner.entry(study.clone()).or_default().insert(patient.clone());
    }
    assert_eq!(owner.len(), 40, "one study UID per study");
    assert!(owner.values().all(|p| p.len() == 1), "a study under two pseudonyms: {owner:?}");
    let studies_a: BTreeSet<&String> = on_a.iter().map(|(_, s)| s).collect();
    let studies_b: BTreeSet<&String> = on_b.iter().map(|(_, s)| s).collect();
    assert!(studies_a.intersection(&studies_b).count() > 0, "studies were split across the nodes");
    let in_files: BTreeSet<&String> = on_a.iter().chain(&on_b).map(|(p, _)| p).collect();
    assert_eq!(in_files.into_iter().cloned().collect::<Vec<_>>(), numbers);

    // The index knows every instance once, each on the node that holds its file; the audit
    // trail holds every acknowledged instance once.
    assert_eq!(
        count(&pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.instances WHERE node = 'node-a'")),
        on_a.len() as u64
    );
    assert_eq!(
        count(&pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.instances WHERE node = 'node-b'")),
        on_b.len() as u64
    );
    assert_eq!(
        count(
            &pg,
            &format!("SELECT COUNT(DISTINCT anon_sop_uid) FROM {SCHEMA}.audit WHERE status = '0x0000'")
        ),
        160
    );
    assert_eq!(count(&pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.audit WHERE status = '0x0000'")), 160);

    // Each node's queue is its own: `queue status` counts what it holds.
    for (node, n) in [(&a, on_a.len()), (&b, on_b.len())] {
        let out = cli(&["queue", "status"], &node.config, &pg);
        let said = text(&out);
        assert!(out.status.success() && said.contains(&format!("queued: {n}")), "{said}");
    }
    let (log_a, log_b) = (a.log(), b.log());
    drop((a, b));
    for log in [log_a, log_b] {
        assert!(!log.contains(PASSWORD), "the connection string's password is in a log");
        assert!(!log.contains("PG-7"), "a PatientID is in a log");
    }
}

/// Wait until `f` holds, or fail saying `what`.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's `/readyz` status.
fn ready(node: &Node) -> u16 {
    common::http::get(node.http_port.unwrap(), "/readyz", None).0
}

/// How many instances the index holds, every node's.
fn stored_instances(pg: &Postgres) -> u64 {
    count(pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.instances"))
}

/// The `rsna` pseudonyms 1..=`n` of the test site.
fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|n| format!("{SITE}-{n:06}")).collect()
}

/// The pseudonyms of the patients the index holds, in order.
fn patient_pseudonyms(pg: &Postgres) -> Vec<String> {
    pg.rows(&format!(
        "SELECT anon_patient_id FROM {SCHEMA}.patients WHERE patient_id <> '' ORDER BY anon_patient_id"
    ))
}

#[test]
fn a_database_that_stops_costs_the_sender_a_retry_and_the_node_recovers_by_itself() {
    let d = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(d.path());
    let node = start_node(&d.path().join("a"), &pg, "node-a", "");
    let files = corpus(&d.path().join("in"), 3, 1, 2);
    assert_all_stored(&storescu(node.port, &files[..2]), "before the stop");
    assert_eq!(ready(&node), 200);

    pg.stop();
    // Patient 2's instances arrive while the database is down: refused with 0xA700 (the
    // sender keeps its copy and tries again), never acknowledged.
    let out = storescu(node.port, &files[2..4]);
    let said = text(&out);
    assert!(said.contains("Refused: OutOfResources"), "{said}");
    assert!(!said.contains("Status: Success"), "an instance was acknowledged with the index down: {said}");
    wait_until("/readyz says 503", || ready(&node) == 503);

    pg.restart();
    wait_until("/readyz says 200 again", || ready(&node) == 200);
    assert_all_stored(&storescu(node.port, &files[2..]), "after the restart");

    // Every instance once; patient 2, refused once, still took one number.
    assert_eq!(stored_instances(&pg), 6);
    assert_eq!(files_under(&node.public()).len(), 6);
    assert_eq!(patient_pseudonyms(&pg), numbered(3));
}

/// The files storescu's verbose output says were acknowledged (0x0000).
fn acknowledged(out: &std::process::Output) -> Vec<PathBuf> {
    let mut sending = None;
    let mut acked = Vec::new();
    for line in text(out).lines() {
        if let Some(file) = line.split("Sending file: ").nth(1) {
            sending = Some(PathBuf::from(file.trim()));
        } else if line.contains("Received Store Response (Success)") {
            acked.extend(sending.take());
        }
    }
    acked
}

/// PostgreSQL crashes (immediate shutdown: no checkpoint, commits in flight cut) while a sender
/// streams: what was acknowledged is in the database after its recovery, the rest was refused
/// with 0xA700, and sending everything again numbers each patient once, with no number skipped
/// or taken twice (a commit that was cut took its number back with it).
#[test]
fn a_database_crash_mid_stream_loses_no_acknowledged_instance_and_takes_no_number_twice() {
    let d = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(d.path());
    let node = start_node(&d.path().join("a"), &pg, "node-a", "");
    // Long enough that the crash, once 10 are stored, comes before the last (30 per patient).
    let files = corpus(&d.path().join("in"), 10, 2, 15);
    let sending = {
        let (port, files) = (node.port, files.clone());
        std::thread::spawn(move || storescu(port, &files))
    };
    wait_until("the stream is under way", || stored_instances(&pg) >= 10);
    pg.crash();
    let out = sending.join().unwrap();
    let acked = acknowledged(&out);
    assert!(acked.len() >= 10 && acked.len() < files.len(), "not cut mid-stream: {}", text(&out));
    assert!(text(&out).contains("Refused: OutOfResources"), "{}", text(&out));

    pg.restart();
    let rows: BTreeSet<String> =
        pg.rows(&format!("SELECT sop_uid FROM {SCHEMA}.instances")).into_iter().collect();
    for file in &acked {
        let sop = tag(&dicom_object::open_file(file).unwrap(), dicom_dictionary_std::tags::SOP_INSTANCE_UID);
        assert!(rows.contains(&sop), "{file:?} was acknowledged but its row is gone after recovery");
    }
    wait_until("/readyz says 200 again", || ready(&node) == 200);
    assert_all_stored(&storescu(node.port, &files), "everything, sent again");
    assert_eq!(stored_instances(&pg), files.len() as u64);
    assert_eq!(files_under(&node.public()).len(), files.len());
    assert_eq!(patient_pseudonyms(&pg), numbered(10));
    assert_eq!(pseudonyms(&node.public()).len(), 10);
}

#[test]
fn two_nodes_keyed_with_different_secrets_refuse_to_share_one_database() {
    let d = tempfile::tempdir().unwrap();
    let pg = Postgres::start(d.path());
    let keyed = |secret_file: &str| format!("  pseudonyms: keyed\n  secret_file: {secret_file}\n");
    let first = d.path().join("first.key");
    std::fs::write(&first, "the first node's secret, 32 bytes or more").unwrap();
    let a = start_node(&d.path().join("a"), &pg, "node-a", &keyed(first.to_str().unwrap()));
    assert_all_stored(&storescu(a.port, &corpus(&d.path().join("in"), 1, 1, 1)), "keyed node a");

    let second = d.path().join("second.key");
    std::fs::write(&second, "another secret altogether, 32 bytes or more").unwrap();
    let dir = d.path().join("b");
    std::fs::create_dir_all(&dir).unwrap();
    let config = Node::write_config(&dir, "", "  min_free_bytes: 0\n", &on_postgres("node-b"));
    let yaml = std::fs::read_to_string(&config).unwrap().replacen(
        "project:\n",
        &format!("project:\n{}", keyed(second.to_str().unwrap())),
        1,
    );
    std::fs::write(&config, yaml).unwrap();
    let mut child = binary()
        .args(["serve", "--config"])
        .arg(&config)
        .env("DAG_INDEX_URL", pg.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node with another secret started on the shared database");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("another project secret"), "{err}");
    assert!(!err.contains(PASSWORD), "the connection string is in the error: {err}");
    drop(a);
}

/// `index migrate`, run by the CLI with the project's configuration.
fn migrate(config: &Path, pg: &Postgres) -> std::process::Output {
    cli(&["index", "migrate", "--to", "postgres"], config, pg)
}

/// PatientID of every anonymized file, by the original patient's number (`pK-...` files).
fn pseudonyms(public: &Path) -> BTreeSet<String> {
    stored(public).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn a_sqlite_index_migrated_to_postgres_keeps_every_pseudonym_and_the_numbering() {
    let d = tempfile::tempdir().unwrap();
    let pg = Postgres::start(d.path());
    let dir = d.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let files = corpus(&d.path().join("in"), 3, 2, 2);
    // The first studies of patients 1 and 2 on SQLite; the rest after the move.
    let (before, rest): (Vec<PathBuf>, Vec<PathBuf>) = files.iter().cloned().partition(|f| {
        let name = f.file_name().unwrap().to_str().unwrap();
        name.contains("-s1-") && !name.starts_with("p3-")
    });
    let node = Node::start(&dir, "", "  min_free_bytes: 0\n");
    assert_all_stored(&storescu(node.port, &before), "on SQLite");
    let sqlite_config = node.config.clone();
    drop(node);
    let on_sqlite = pseudonyms(&dir.join("storage/public"));
    assert_eq!(on_sqlite.len(), 2);
    let uids_before = stored(&dir.join("storage/public")).len();

    // The same node, its index in PostgreSQL.
    let yaml = std::fs::read_to_string(&sqlite_config).unwrap() + &on_postgres("node-a");
    std::fs::write(&sqlite_config, yaml).unwrap();
    let out = migrate(&sqlite_config, &pg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("instances: 4 rows"), "{}", text(&out));
    assert_eq!(count(&pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.instances WHERE node = 'node-a'")), 4);
    assert!(count(&pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.uid_map")) >= uids_before as u64);
    // Once is all: the schema now holds an archive.
    let again = migrate(&sqlite_config, &pg);
    assert!(!again.status.success() && text(&again).contains("already holds an archive"), "{}", text(&again));

    let node = Node::start_env(&dir, &sqlite_config, &[("DAG_INDEX_URL", &pg.url())]);
    assert_all_stored(&storescu(node.port, &rest), "on PostgreSQL");
    drop(node);
    // Patients 1 and 2 kept their pseudonyms in their second studies; patient 3 took number 3.
    let all = pseudonyms(&dir.join("storage/public"));
    let expected: BTreeSet<String> = numbered(3).into_iter().collect();
    assert_eq!(all, expected);
    assert!(on_sqlite.is_subset(&all));
    let owners = stored(&dir.join("storage/public"));
    let mut by_study: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (p, s) in &owners {
        by_study.entry(s.clone()).or_default().insert(p.clone());
    }
    assert_eq!(by_study.len(), 6);
    assert!(by_study.values().all(|p| p.len() == 1));
}

#[test]
fn behind_haproxy_a_killed_node_costs_no_acknowledged_instance_and_each_node_ships_its_own() {
    let d = tempfile::tempdir().unwrap();
    let pg = Postgres::start(d.path());
    let archive = storescp(&d.path().join("archive"), "ARCHIVE", common::ports::free_port());
    let export = format!(
        "export:\n  dicom:\n    - {{ name: archive, ae_title: ARCHIVE, host: 127.0.0.1, port: {}, timeout_s: 5 }}\n",
        archive.port
    );
    let a = start_node_with(&d.path().join("a"), &pg, "node-a", "", &export);
    let mut b = start_node_with(&d.path().join("b"), &pg, "node-b", "", &export);
    let lb =
        Haproxy::start(d.path(), &[("a", a.port, a.http_port.unwrap()), ("b", b.port, b.http_port.unwrap())]);
    let files = corpus(&d.path().join("in"), 10, 2, 3);
    let (first, second) = files.split_at(40);
    let send = |files: &[PathBuf], senders: usize| {
        let handles: Vec<_> = (0..senders)
            .map(|k| {
                let slice: Vec<PathBuf> = files.iter().skip(k).step_by(senders).cloned().collect();
                let port = lb.port;
                std::thread::spawn(move || storescu(port, &slice))
            })
            .collect();
        for h in handles {
            assert_all_stored(&h.join().unwrap(), "through HAProxy");
        }
    };
    send(first, 8);
    let (on_a, on_b) = (files_under(&a.public()).len(), files_under(&b.public()).len());
    assert_eq!(on_a + on_b, 40);
    assert!(on_a > 0 && on_b > 0, "HAProxy sent every association to one node: {on_a} and {on_b}");
    // Both nodes ship what they stored, and only that: the archive holds each instance once.
    wait_until("the archive holds the first 40", || archive.files().len() >= 40);

    b.kill9();
    // New associations go to the node that is left, from the first one on.
    send(second, 4);
    lb.wait_until("b is down", |up| up == ["a".to_string()]);
    assert_eq!(files_under(&a.public()).len(), on_a + second.len());
    assert_eq!(files_under(&b.public()).len(), on_b, "node b's acknowledged instances are on its disk");
    assert_eq!(stored_instances(&pg), 60);
    assert_eq!(
        count(&pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.instances WHERE node = 'node-b'")),
        on_b as u64
    );

    // b comes back on its ports: HAProxy routes to it again, and it has nothing of a's to send.
    let yaml = std::fs::read_to_string(&b.config)
        .unwrap()
        .replacen("  port: 0\n", &format!("  port: {}\n", b.port), 1)
        .replacen("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{}", b.http_port.unwrap()), 1);
    std::fs::write(&b.config, yaml).unwrap();
    let b = Node::start_env(&b.dir.clone(), &b.config.clone(), &[("DAG_INDEX_URL", &pg.url())]);
    lb.wait_until("b is up again", |up| up.len() == 2);
    wait_until("the archive holds all 60", || archive.files().len() >= 60);
    let out = cli(&["queue", "status"], &b.config, &pg);
    assert!(
        text(&out).contains(&format!("queued: {on_b}")) && text(&out).contains(&format!("): sent {on_b}\n")),
        "{}",
        text(&out)
    );
    // Settled, every send recorded: no copy can come late.
    wait_until("every send is recorded", || {
        count(&pg, &format!("SELECT COUNT(*) FROM {SCHEMA}.deliveries WHERE state = 'sent'")) == 60
    });
    assert_eq!(archive.files().len(), 60, "an instance reached the archive twice");
}

/// A job's writes go out with its next request (pipelined): each job's failure is its own, even
/// when its failing write only reaches the server with the end of the job, and the writes of the
/// jobs it shared a batch with are committed.
#[test]
fn a_deferred_write_that_fails_fails_its_own_job_and_no_other() {
    use dicom_anon_gateway::index::db::{Db, Value};
    use dicom_anon_gateway::index::{Index, IndexError, Location, Owner};
    let d = tempfile::tempdir().unwrap();
    let pg = Postgres::start(d.path());

    // On one session: the first failure among the deferred writes and the request is the answer.
    let mut db = Db::postgres(&pg.url(), "deferred", None).unwrap();
    db.batch("CREATE TABLE t (k INT PRIMARY KEY, v TEXT)").unwrap();
    let insert = "INSERT INTO t VALUES (?1, ?2)";
    let row = |k: i64| [Value::Int(k), Value::Text(format!("v{k}"))];
    db.batch("BEGIN").unwrap();
    // Each write numbers its row after those before it: the rows say the writes ran in the order
    // they were deferred, ahead of the query that reads them (more of them than `join_all`
    // keeps in order, 30).
    let next = "INSERT INTO t SELECT COALESCE(MAX(k), 0) + 1, ?1 FROM t";
    for i in 1..=40 {
        db.defer(next, &[Value::Text(format!("v{i}"))]).unwrap();
    }
    let rows = db.query("SELECT k, v FROM t ORDER BY k", &[]).unwrap();
    assert_eq!(rows.len(), 40);
    for r in &rows {
        assert_eq!(format!("v{}", r.get::<i64>(0).unwrap()), r.get::<String>(1).unwrap());
    }
    db.defer(insert, &row(41)).unwrap();
    db.defer(insert, &row(41)).unwrap();
    let e = db.query_one("SELECT COUNT(*) FROM t", &[]).unwrap_err().to_string();
    assert!(e.contains("23505"), "not the duplicate key but {e}");
    db.batch("ROLLBACK").unwrap();
    db.defer(insert, &row(7)).unwrap();
    db.discard();
    db.defer(insert, &row(8)).unwrap();
    db.flush().unwrap();
    let keys: Vec<i64> =
        db.query("SELECT k FROM t ORDER BY k", &[]).unwrap().iter().map(|r| r.get(0).unwrap()).collect();
    assert_eq!(keys, [8], "rolled back, discarded and flushed writes");
    // A session the server ends while it is idle: the next request says why, not only that the
    // connection is closed.
    let ended = pg.rows(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dicom-anon-gateway'",
    );
    assert_eq!(ended, ["t"]);
    let mut e = String::new();
    wait_until("the session is known closed", || {
        e = db.query("SELECT 1", &[]).unwrap_err().to_string();
        db.is_closed()
    });
    assert!(e.contains("57P01"), "{e}");

    // Through the index's combining writer, many jobs at once share batches: those whose
    // deferred write breaks a key fail alone.
    let location = Location::Postgres { url: pg.url(), schema: "jobs".into(), node: "a".into(), tls: None };
    let index = std::sync::Arc::new(Index::open_at(&location, &Owner::for_site("1")).unwrap());
    let threads: Vec<_> = (0..40)
        .map(|i: i64| {
            let index = index.clone();
            std::thread::spawn(move || {
                index.call(move |c| {
                    let key = Value::Text(format!("deferred-{i}"));
                    c.defer("INSERT INTO meta(key, value) VALUES (?1, 'x')", std::slice::from_ref(&key))?;
                    if i % 4 == 0 {
                        c.defer("INSERT INTO meta(key, value) VALUES (?1, 'again')", &[key])?;
                    }
                    Ok(())
                })
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        match t.join().unwrap() {
            Err(IndexError::Db(e)) if i % 4 == 0 => assert!(e.to_string().contains("23505"), "job {i}: {e}"),
            Ok(()) if i % 4 != 0 => {}
            other => panic!("job {i}: {other:?}"),
        }
    }
    let kept = pg.rows("SELECT key FROM jobs.meta WHERE key LIKE 'deferred-%' ORDER BY key");
    let expected: BTreeSet<String> =
        (0..40).filter(|i| i % 4 != 0).map(|i| format!("deferred-{i}")).collect();
    assert_eq!(kept.into_iter().collect::<BTreeSet<_>>(), expected);
}

/// The worked example in `docker/several-nodes/`: Docker Compose (Debian's `docker-compose`)
/// accepts the compose file and resolves two nodes that differ only in their host name (their
/// `node.id`), HAProxy accepts its configuration, and the nodes' configuration, with the paths the
/// image has made local, connects to a real PostgreSQL through the URL file it names.
#[test]
fn the_several_nodes_example_is_accepted_by_compose_haproxy_and_the_node() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/several-nodes");
    let out = std::process::Command::new("docker-compose")
        .arg("-f")
        .arg(example.join("compose.yaml"))
        .arg("config")
        .output()
        .expect("docker-compose runs (Debian docker-compose: scripts/test.sh installs it)");
    assert!(out.status.success(), "docker-compose config: {}", text(&out));
    let resolved: serde_norway::Value = serde_norway::from_slice(&out.stdout).unwrap();
    let services = &resolved["services"];
    for node in ["node-a", "node-b"] {
        let s = &services[node];
        assert_eq!(s["hostname"].as_str(), Some(node));
        assert_eq!(s["secrets"][0]["source"].as_str(), Some("index_url"), "{node}: {s:?}");
        let volumes: Vec<&str> =
            s["volumes"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert!(
            volumes.iter().any(|v| v.contains("node.yaml:/etc/dicom-anon-gateway/config.yaml")),
            "{volumes:?}"
        );
        assert!(volumes.iter().any(|v| v.starts_with(&format!("{node}-data:/data"))), "{volumes:?}");
    }
    assert_eq!(services["haproxy"]["ports"][0]["published"].as_u64(), Some(11112));

    let out = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(example.join("haproxy.cfg"))
        .output()
        .expect("haproxy runs");
    assert!(out.status.success(), "haproxy -c: {}", text(&out));

    let d = tempfile::tempdir().unwrap();
    let pg = Postgres::start(d.path());
    let url_file = d.path().join("index_url");
    std::fs::write(&url_file, pg.url()).unwrap();
    let config = d.path().join("node.yaml");
    let yaml = std::fs::read_to_string(example.join("node.yaml"))
        .unwrap()
        .replace("/etc/dicom-anon-gateway/", &format!("{}/config/", env!("CARGO_MANIFEST_DIR")))
        .replace("/run/secrets/index_url", url_file.to_str().unwrap())
        .replace("dir: /data", &format!("dir: {}", d.path().join("data").display()));
    std::fs::write(&config, yaml).unwrap();
    let out = cli(&["check-config"], &config, &pg);
    assert!(out.status.success(), "check-config: {}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "the URL's password was printed");
    // The schema is the project's name in lower case, made by the node when it connected.
    assert_eq!(
        pg.rows("SELECT schema_name FROM information_schema.schemata WHERE schema_name = 'my_project'"),
        ["my_project"]
    );
}

/// `index.tls`: the node reaches PostgreSQL over TLS, checks the server's certificate against the
/// CA it is given, and stores through it; a server that takes only TLS refuses the same node
/// without `tls`, and a node given another CA refuses the server.
#[test]
fn the_index_over_tls_checks_the_servers_certificate() {
    let d = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(d.path());
    let ca = common::pki::ca(d.path(), "index-ca");
    let other_ca = common::pki::ca(d.path(), "other-ca");
    let config = |name: &str, tls: &str| {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let index =
            format!("index:\n  backend: postgres\n  url_env: DAG_INDEX_URL\n{tls}node:\n  id: {name}\n");
        Node::write_config(&dir, "", "  min_free_bytes: 0\n", &index)
    };
    let with_ca = |ca: &common::pki::Pem| format!("  tls: {{ ca_file: {} }}\n", ca.cert.display());
    let refused = |out: &std::process::Output, what: &str, why: &str| {
        assert!(!out.status.success(), "{what}: {}", text(out));
        assert!(text(out).contains(why), "{what}, not for {why}: {}", text(out));
        assert!(!text(out).contains(PASSWORD), "the URL's password was printed: {}", text(out));
    };

    // A server without TLS is refused, not used in the clear.
    let out = cli(&["check-config"], &config("no-tls", &with_ca(&ca)), &pg);
    refused(&out, "a server without TLS was used", "server does not support TLS");
    // A certificate of the right CA for another name.
    pg.require_tls(&common::pki::server_named(d.path(), &ca, "elsewhere", "DNS:db.example"));
    let out = cli(&["check-config"], &config("elsewhere", &with_ca(&ca)), &pg);
    refused(&out, "a certificate for another host was trusted", "certificate not valid for name");

    pg.require_tls(&common::pki::leaf(d.path(), &ca, "index-server", "127.0.0.1", true));

    let out = cli(&["check-config"], &config("plain", ""), &pg);
    refused(&out, "a plain connection was taken", "28000");
    let out = cli(&["check-config"], &config("wrong", &with_ca(&other_ca)), &pg);
    refused(&out, "a certificate of another CA was trusted", "UnknownIssuer");

    let good = config("good", &with_ca(&ca));
    let checked = cli(&["check-config"], &good, &pg);
    assert!(checked.status.success(), "{}", text(&checked));
    let node = Node::start_env(&d.path().join("good"), &good, &[("DAG_INDEX_URL", &pg.url())]);
    let files = corpus(&d.path().join("in"), 2, 1, 2);
    assert_all_stored(&storescu(node.port, &files), "over a TLS index");
    assert_eq!(stored_instances(&pg), 4);
    // The node's sessions are encrypted, as the server sees them.
    let sessions = count(
        &pg,
        "SELECT COUNT(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'dicom-anon-gateway' AND s.ssl",
    );
    assert!(sessions >= 2, "{sessions} TLS sessions of the node");
    assert_eq!(
        count(
            &pg,
            "SELECT COUNT(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'dicom-anon-gateway' AND NOT s.ssl"
        ),
        0
    );
}
