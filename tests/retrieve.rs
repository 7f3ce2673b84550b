//! `retrieve` against DCMTK dcmqrscp as the PACS: Study Root C-FIND, then C-MOVE to the node's
//! AE title, by accession list, patient ID, study date and study UID; everything arrives
//! anonymized exactly once, a second run skips, and failures say what the PACS or network did.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::node::{Node, AE, ROOT, SITE};
use common::peers::{dcmqrscp, free_port, storescu_to, Peer};
use common::*;

/// A study on the PACS: whose, which, how many instances.
struct Planted {
    patient: Patient,
    study: u32,
    accession: &'static str,
    date: &'static str,
    instances: u32,
}

fn planted() -> Vec<Planted> {
    vec![
        Planted { patient: smith(), study: 1, accession: "RA1001", date: "20220301", instances: 5 },
        Planted { patient: smith(), study: 2, accession: "RA1002", date: "20230615", instances: 3 },
        Planted { patient: mueller(), study: 3, accession: "RA2001", date: "20230615", instances: 4 },
        Planted { patient: yamada(), study: 4, accession: "RA3001", date: "20240110", instances: 2 },
    ]
}

/// Write the planted studies as files (two series each).
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for s in planted() {
        for i in 0..s.instances {
            let shape = Shape {
                study: s.study,
                series: 1 + i % 2,
                instance: i,
                accession: s.accession,
                study_date: s.date,
                ..Shape::default()
            };
            files.push(put(
                &dir.join("corpus"),
                &format!("{}-{i}.dcm", s.study),
                &instance(&s.patient, &shape),
            ));
        }
    }
    files
}

/// A node config on a fixed port (the PACS must know where to send), with the PACS listed.
fn node_config(dir: &Path, port: u16, pacs_port: u16) -> PathBuf {
    let yaml = format!(
        "project:\n  name: TEST_PROJECT\n  site_id: \"{SITE}\"\n  uid_root: \"{ROOT}\"\n  script: {}\n\
         scp:\n  ae_title: {AE}\n  host: 127.0.0.1\n  port: {port}\n\
         storage:\n  dir: {}\n  min_free_bytes: 0\n\
         http:\n  listen: 127.0.0.1:0\n\
         pacs:\n  - {{ name: main, ae_title: PACS, host: 127.0.0.1, port: {pacs_port} }}\n  - {{ name: gone, ae_title: GONE, host: 127.0.0.1, port: {} }}\n\
         logging:\n  level: info\n",
        default_script().display(),
        dir.join("storage").display(),
        free_port()
    );
    put(dir, "node.yaml", yaml.as_bytes())
}

fn retrieve(config: &Path, args: &[&str]) -> Output {
    binary().arg("retrieve").arg("--config").arg(config).args(["--from", "main"]).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The public files, by name.
fn public_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("storage/public"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect()
}

/// A PACS on a port chosen now, filled with the planted corpus, sending moves to `node_port`.
fn pacs_with_corpus(dir: &Path, node_port: u16) -> Peer {
    let pacs = dcmqrscp(&dir.join("pacs"), "PACS", AE, node_port);
    storescu_to(pacs.port, "PACS", &corpus(dir));
    pacs
}

/// No planted PHI value in `text` (logs, stderr).
fn assert_no_phi(what: &str, text: &[u8]) {
    for p in [smith(), mueller(), yamada()] {
        for s in phi_strings(&p) {
            assert!(!contains(text, &s), "{:?} leaked into {what}", String::from_utf8_lossy(&s));
        }
    }
    for s in planted() {
        assert!(!contains(text, s.accession.as_bytes()), "{} leaked into {what}", s.accession);
    }
}

/// A report row's outcome for the line that starts with the asked value.
fn row<'a>(out: &'a str, asked: &str) -> &'a str {
    out.lines()
        .find(|l| l.split(". ").nth(1).is_some_and(|rest| rest.starts_with(asked)))
        .unwrap_or_else(|| panic!("no row for {asked} in:\n{out}"))
}

#[test]
fn retrieve_by_accessions_patient_and_date_moves_each_study_once_through_the_running_node() {
    let d = tempfile::tempdir().unwrap();
    let node_port = free_port();
    // The PACS port must be in the node's config, and the node's port in the PACS's: pick both first.
    let pacs = pacs_with_corpus(d.path(), node_port);
    let config = node_config(d.path(), node_port, pacs.port);
    let node = Node::start_with(d.path(), &config);
    assert_eq!(node.port, node_port);

    // Dry run: the list (PHI) on stdout, nothing moved.
    let accessions = put(d.path(), "acc.txt", b"AccessionNumber\nRA1001\nRA1002\n# a comment\nNOSUCHACC\n");
    let dry = retrieve(&config, &["--accessions", accessions.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "as the real run would: {}{}", stdout(&dry), stderr(&dry));
    assert!(row(&stdout(&dry), "RA1001").contains("would move"), "{}", stdout(&dry));
    assert!(row(&stdout(&dry), "NOSUCHACC").ends_with("| not found"), "{}", stdout(&dry));
    assert!(public_files(d.path()).is_empty(), "a dry run moved something");

    // By accession list: two studies (8 instances), one accession the PACS does not know.
    let csv = d.path().join("report.csv");
    let first =
        retrieve(&config, &["--accessions", accessions.to_str().unwrap(), "--csv", csv.to_str().unwrap()]);
    let out = stdout(&first);
    assert_eq!(first.status.code(), Some(1), "an unknown accession is a failure:\n{out}{}", stderr(&first));
    assert!(stderr(&first).contains("already running"), "{}", stderr(&first));
    assert!(row(&out, "RA1001").contains("moved 5") && row(&out, "RA1001").ends_with("| moved"), "{out}");
    assert!(row(&out, "RA1002").contains("moved 3, warnings 0, failed 0, in index 3"), "{out}");
    assert!(row(&out, "NOSUCHACC").ends_with("| not found"), "{out}");
    let report = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(report.lines().count(), 4, "{report}");
    // PHI (accessions, PatientIDs): the user's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&csv).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the report's mode");
    assert!(
        report.lines().any(|l| l.starts_with("RA1002,RA1002,MRN12345,20230615,") && l.ends_with(",moved")),
        "{report}"
    );
    assert_eq!(public_files(d.path()).len(), 8);

    // By patient ID and by date: Müller's study, then everything in 2023-2024 (Smith's second
    // study is in the index already and is skipped; Yamada's arrives).
    let by_patient = retrieve(&config, &["--patient-id", "DE-998877"]);
    assert!(by_patient.status.success(), "{}{}", stdout(&by_patient), stderr(&by_patient));
    assert!(row(&stdout(&by_patient), "DE-998877").contains("moved 4"), "{}", stdout(&by_patient));
    let by_date = retrieve(&config, &["--study-date", "20230101-20241231"]);
    let out = stdout(&by_date);
    assert!(by_date.status.success(), "{out}{}", stderr(&by_date));
    assert_eq!(
        out.lines().filter(|l| l.contains("already present") && l.contains("moved 0")).count(),
        2,
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("RA3001") && l.contains("moved 2") && l.ends_with("| moved")),
        "{out}"
    );

    // Exactly once, anonymized: one file per planted instance, none with PHI.
    let files = public_files(d.path());
    assert_eq!(files.len(), 14, "{files:?}");
    for f in &files {
        assert_no_phi(&f.display().to_string(), &std::fs::read(f).unwrap());
    }

    // A second run skips everything it holds and moves nothing.
    let again = retrieve(&config, &["--study-date", "20220101-"]);
    let out = stdout(&again);
    assert!(again.status.success(), "{out}{}", stderr(&again));
    assert_eq!(out.lines().filter(|l| l.ends_with("| already present")).count(), 4, "{out}");
    assert!(out.contains("0 moved, 4 already present"), "{out}");
    // --again moves a study anyway; the node stores it over itself: still one file each.
    let forced = retrieve(&config, &["--accessions", accessions.to_str().unwrap(), "--again"]);
    assert!(row(&stdout(&forced), "RA1002").contains("moved 3"), "{}", stdout(&forced));
    assert_eq!(public_files(d.path()).len(), 14);

    // No PHI in any log: the node's, and what retrieve wrote to stderr.
    let node_log = node.log();
    assert!(node_log.contains("association finished"), "{node_log}");
    assert_no_phi("the node's log", node_log.as_bytes());
    for o in [&dry, &first, &by_patient, &by_date, &again, &forced] {
        assert_no_phi("retrieve's stderr", &o.stderr);
    }
    node.stop();
}

#[test]
fn without_a_running_node_retrieve_receives_itself_and_names_an_unreachable_pacs() {
    let d = tempfile::tempdir().unwrap();
    let node_port = free_port();
    let pacs = pacs_with_corpus(d.path(), node_port);
    let config = node_config(d.path(), node_port, pacs.port);

    let study_uid = uid(1, &yamada(), &Shape { study: 4, ..Shape::default() }, 0);
    let run = retrieve(&config, &["--study-uid", &study_uid, "--modality", "CT"]);
    let out = stdout(&run);
    assert!(run.status.success(), "{out}{}", stderr(&run));
    assert!(stderr(&run).contains("receives for the duration"), "{}", stderr(&run));
    assert!(row(&out, &study_uid).contains("moved 2, warnings 0, failed 0, in index 2"), "{out}");
    assert_eq!(public_files(d.path()).len(), 2);
    assert_no_phi("retrieve's stderr", &run.stderr);

    // The modality filter: the planted studies are CT only.
    let mr = retrieve(&config, &["--patient-id", "MRN12345", "--modality", "MR"]);
    assert_eq!(mr.status.code(), Some(1), "{}", stdout(&mr));
    assert!(row(&stdout(&mr), "MRN12345").ends_with("| not found"), "{}", stdout(&mr));

    // The same patient from a file (kept out of `ps` and the history) selects the same studies;
    // the flag warns, the file does not.
    const WARNING: &str = "warning: --patient-id shows a patient identifier (PHI) in the process list";
    let by_flag = retrieve(&config, &["--patient-id", "MRN12345", "--dry-run"]);
    let id_file = put(d.path(), "patient.txt", b"  MRN12345 \n");
    let by_file = retrieve(&config, &["--patient-id-file", id_file.to_str().unwrap(), "--dry-run"]);
    assert!(by_flag.status.success(), "{}{}", stdout(&by_flag), stderr(&by_flag));
    assert_eq!(
        stdout(&by_flag).lines().filter(|l| l.contains("would move")).count(),
        2,
        "{}",
        stdout(&by_flag)
    );
    assert_eq!(stdout(&by_file), stdout(&by_flag));
    assert!(stderr(&by_flag).contains(WARNING), "{}", stderr(&by_flag));
    assert!(!stderr(&by_file).contains("warning"), "{}", stderr(&by_file));
    let two = put(d.path(), "two.txt", b"MRN12345\nDE-998877\n");
    let refused_file = retrieve(&config, &["--patient-id-file", two.to_str().unwrap()]);
    assert_eq!(refused_file.status.code(), Some(2), "{}", stderr(&refused_file));
    assert!(
        stderr(&refused_file).contains("expected one patient ID on one line"),
        "{}",
        stderr(&refused_file)
    );
    assert_no_phi("a refused patient ID file's error", &refused_file.stderr);

    // A PACS that does not know the node as a move destination: the report and the log give its
    // status and what it means, and no patient value.
    let stranger = dcmqrscp(&d.path().join("stranger"), "PACS", "SOMEONE_ELSE", 1);
    storescu_to(stranger.port, "PACS", &corpus(d.path())[..2]);
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("port: {} }}", pacs.port), &format!("port: {} }}", stranger.port));
    let elsewhere = put(d.path(), "stranger.yaml", yaml.as_bytes());
    let refused = retrieve(&elsewhere, &["--patient-id", "MRN12345"]);
    let out = stdout(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}{}", stderr(&refused));
    assert!(
        row(&out, "MRN12345").contains("failed: C-MOVE status 0xA801 (refused: move destination unknown)"),
        "{out}"
    );
    assert!(stderr(&refused).contains("0xA801"), "{}", stderr(&refused));
    assert_no_phi("retrieve's stderr", &refused.stderr);

    // A PACS nobody answers for: an error naming it, nothing else.
    let gone = binary()
        .arg("retrieve")
        .arg("--config")
        .arg(&config)
        .args(["--from", "gone", "--patient-id", "MRN12345", "--timeout-s", "5"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(2), "{}{}", stdout(&gone), stderr(&gone));
    assert!(
        stderr(&gone).contains("error: GONE@127.0.0.1:") && stderr(&gone).contains("cannot associate"),
        "{}",
        stderr(&gone)
    );
    // An unknown PACS name and a malformed date are refused before any network.
    let unknown = binary()
        .arg("retrieve")
        .arg("--config")
        .arg(&config)
        .args(["--from", "nope", "--study-uid", "1.2"])
        .output()
        .unwrap();
    assert!(
        stderr(&unknown).contains("--from \"nope\": no PACS of that name")
            && stderr(&unknown).contains("main"),
        "{}",
        stderr(&unknown)
    );
    let bad_date = retrieve(&config, &["--study-date", "2024-01-01"]);
    assert!(stderr(&bad_date).contains("expected YYYYMMDD-YYYYMMDD"), "{}", stderr(&bad_date));
    assert_eq!(public_files(d.path()).len(), 2);
}

/// Issue 23: `retrieve` makes sure the node that receives is this config's. A node serving
/// another storage dir on the configured port is refused before anything moves; and should the
/// moves reach a foreign node anyway (this config's node runs, on another port), a study the
/// PACS moved but this index does not hold is a failure, not "moved".
#[test]
fn retrieve_refuses_a_foreign_node_on_the_port_and_fails_a_move_that_missed_this_index() {
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let pacs = pacs_with_corpus(d.path(), port);
    let foreign_dir = d.path().join("foreign");
    let foreign = Node::start_with(&foreign_dir, &node_config(&foreign_dir, port, pacs.port));
    assert_eq!(foreign.port, port);
    let ours = d.path().join("ours");
    let config = node_config(&ours, port, pacs.port);

    let refused = retrieve(&config, &["--patient-id", "DE-998877"]);
    assert_eq!(refused.status.code(), Some(2), "{}{}", stdout(&refused), stderr(&refused));
    let said = stderr(&refused);
    assert!(
        said.contains("is another node") && said.contains(&ours.join("storage").display().to_string()),
        "{said}"
    );
    assert!(public_files(&foreign_dir).is_empty(), "moved into the foreign archive");

    // This config's node on another port holds its storage: the check above passes, the PACS
    // moves to the foreign node, and the report says so.
    let elsewhere = put(
        &ours,
        "elsewhere.yaml",
        std::fs::read_to_string(&config).unwrap().replace(&format!("port: {port}\n"), "port: 0\n").as_bytes(),
    );
    let own = Node::start_with(&ours, &elsewhere);
    let missed = retrieve(&config, &["--patient-id", "DE-998877"]);
    let out = stdout(&missed);
    assert_eq!(missed.status.code(), Some(1), "{out}{}", stderr(&missed));
    assert!(row(&out, "DE-998877").contains("moved 4 but 0 in this index"), "{out}");
    assert_eq!(public_files(&foreign_dir).len(), 4);
    assert!(public_files(&ours).is_empty());
    own.stop();
    foreign.stop();
}
