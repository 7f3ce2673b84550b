//! CTP lookup tables as RSNA 19 uses them: RSNA's own default script with `@ptid` and `@hashdate`
//! rewritten into `@lookup(this,ptid)` and `@lookup(this,dateoffset)`, run offline and through the
//! real node fed by DCMTK's storescu; a PatientID without an entry is quarantined as Lookup_Miss;
//! a malformed table stops the start with its line numbers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::node::*;
use common::*;

/// Entries for SMITH (in the corpus) and for a patient never sent. The unused entry must never
/// show up anywhere: the table is PHI-mapping data.
const TABLE: &str = "# LookupTable.properties\n\
                     ptid/MRN12345=TRIAL-001\n\
                     dateoffset/MRN12345=-42\n\
                     ptid/MRN-NEVER-SENT=TRIAL-999\n\
                     dateoffset/MRN-NEVER-SENT : 17\n\
                     site/Springfield\\ General=SITE-A\n";

/// RSNA's default script as RSNA 19 writes it with a lookup table, plus a value lookup of
/// InstitutionName (RSNA removes it).
fn rsna19_script(dir: &Path) -> PathBuf {
    let script = std::fs::read_to_string(rsna_script()).unwrap();
    let rewritten = script
        .replace(">@ptid<", ">@lookup(this,ptid)<")
        .replace(">@hashdate<", ">@lookup(this,dateoffset)<")
        .replace(r#"n="InstitutionName">@remove()<"#, r#"n="InstitutionName">@lookup(this,site)<"#);
    assert_eq!(rewritten.matches("@lookup(this,ptid)").count(), 2, "PatientName and PatientID");
    assert!(rewritten.matches("@lookup(this,dateoffset)").count() >= 7);
    assert!(!rewritten.contains("@ptid") && !rewritten.contains("@hashdate"));
    assert!(rewritten.contains("@lookup(this,site)"));
    put(dir, "rsna19.script", rewritten.as_bytes())
}

fn lookup_config(dir: &Path, table: &str) -> PathBuf {
    let table = put(dir, "LookupTable.properties", table.as_bytes());
    let extra = format!("  lookup_table: {}\n", table.display());
    config(dir, SITE, ROOT, &rsna19_script(dir), &extra)
}

/// The golden values for SMITH: the table's subject ID, dates 42 days earlier, the DT's time kept.
fn assert_golden(file: &Path) {
    assert_eq!(dcmdump_value(file, "PatientID").as_deref(), Some("TRIAL-001"));
    assert_eq!(dcmdump_value(file, "PatientName").as_deref(), Some("TRIAL-001"));
    assert_eq!(dcmdump_value(file, "StudyDate").as_deref(), Some("20211120"));
    assert_eq!(dcmdump_value(file, "ContentDate").as_deref(), Some("20211120"));
    assert_eq!(dcmdump_value(file, "AcquisitionDateTime").as_deref(), Some("20211120123000.5"));
    assert_eq!(dcmdump_value(file, "InstitutionName").as_deref(), Some("SITE-A"));
    let bytes = std::fs::read(file).unwrap();
    for phi in phi_strings(&smith()) {
        assert!(!contains(&bytes, &phi), "{:?} leaked into {file:?}", String::from_utf8_lossy(&phi));
    }
}

fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).collect()
}

/// No value from the table but the pseudonyms written into files may appear in `text`.
fn assert_table_not_shown(text: &str, what: &str) {
    for secret in ["MRN12345", "MRN-NEVER-SENT", "TRIAL-999", "Springfield"] {
        assert!(!text.contains(secret), "{secret:?} appears in {what}:\n{text}");
    }
}

#[test]
fn offline_golden_values_and_a_miss_quarantined_as_lookup_miss() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let known = put(&input, "smith.dcm", &instance(&smith(), &Shape::default()));
    let unknown = put(&input, "yamada.dcm", &instance(&yamada(), &Shape { study: 2, ..Shape::default() }));
    let config = lookup_config(d.path(), TABLE);
    let out = d.path().join("out");
    let run = anonymize(&config, &out, &[&known, &unknown]);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(1), "the miss is a failure: {stdout}{stderr}");
    assert!(stdout.contains("Lookup_Miss: 1") && stdout.contains("no ptid/ entry"), "{stdout}");

    let written = dcm_files(&out);
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(written[0].starts_with(out.join("TRIAL-001")), "{:?}", written[0]);
    assert_golden(&written[0]);

    let held = dcm_files(&d.path().join("storage/private/quarantine/Lookup_Miss"));
    assert_eq!(held.len(), 1, "the unknown patient is kept as received");
    assert_eq!(std::fs::read(&held[0]).unwrap(), std::fs::read(&unknown).unwrap());
    assert_table_not_shown(&format!("{stdout}{stderr}"), "the command's output");
    for phi in phi_strings(&yamada()) {
        assert!(!contains(stdout.as_bytes(), &phi), "{:?} in the output", String::from_utf8_lossy(&phi));
    }

    // The PHI index records the table's pseudonym and offset, so re-identification still works.
    let mapping = d.path().join("mapping");
    let export = binary()
        .args(["index", "export", "--mapping", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&mapping)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let patients = std::fs::read_to_string(mapping.join("patient_id_mapping.csv")).unwrap();
    assert!(patients.contains("MRN12345,TRIAL-001"), "{patients}");
    assert!(!patients.contains("JP-556677"), "a quarantined miss is not recorded: {patients}");
}

#[test]
fn through_the_node_the_known_patient_is_stored_and_the_miss_answered_like_a_data_fault() {
    let d = tempfile::tempdir().unwrap();
    let table = put(d.path(), "LookupTable.properties", TABLE.as_bytes());
    let yaml = format!(
        "project:\n  name: TEST_PROJECT\n  site_id: \"{SITE}\"\n  uid_root: \"{ROOT}\"\n  script: {}\n  lookup_table: {}\n\
         scp:\n  ae_title: {AE}\n  host: 127.0.0.1\n  port: 0\nstorage:\n  dir: {}\n  min_free_bytes: 0\n\
         http:\n  listen: 127.0.0.1:0\nlogging:\n  level: debug\n",
        rsna19_script(d.path()).display(),
        table.display(),
        d.path().join("storage").display()
    );
    let config = put(d.path(), "node.yaml", yaml.as_bytes());
    let node = Node::start_with(d.path(), &config);
    let input = d.path().join("in");
    let known: Vec<PathBuf> = (1..=2)
        .map(|i| {
            put(
                &input,
                &format!("smith{i}.dcm"),
                &instance(&smith(), &Shape { instance: i, ..Shape::default() }),
            )
        })
        .collect();
    let unknown = put(&input, "yamada.dcm", &instance(&yamada(), &Shape { study: 2, ..Shape::default() }));

    let sent = storescu(node.port, &known);
    assert!(sent.status.success(), "{}", text(&sent));
    let refused = storescu(node.port, std::slice::from_ref(&unknown));
    let said = text(&refused).to_lowercase().replace(' ', "");
    assert!(said.contains("cannotunderstand") || said.contains("0xc000"), "{said}");

    let stored = dcm_files(&node.public());
    assert_eq!(stored.len(), 2, "{stored:?}\n{}", node.log());
    for file in &stored {
        assert!(file.starts_with(node.public().join("TRIAL-001")), "{file:?}");
        assert_golden(file);
    }
    let held = dcm_files(&node.quarantine().join("Lookup_Miss"));
    assert_eq!(held.len(), 1, "{}", node.log());

    // The status page and the metrics count the reason; nothing of the table is shown anywhere.
    let metrics = ureq::get(format!("{}/metrics", node.http_base()))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(metrics.lines().any(|l| l.contains("Lookup_Miss") && l.trim_end().ends_with(" 1")), "{metrics}");
    let page =
        ureq::get(format!("{}/", node.http_base())).call().unwrap().into_body().read_to_string().unwrap();
    assert!(page.contains("quarantine-Lookup_Miss"), "{page}");
    let status = node.stop();
    assert!(status.success());
    let log = std::fs::read_to_string(d.path().join("node.log")).unwrap();
    assert!(log.contains("lookup table loaded"), "{log}");
    for (text, what) in [(&log, "the node's log"), (&metrics, "the metrics"), (&page, "the status page")] {
        assert_table_not_shown(text, what);
        for phi in phi_strings(&yamada()).into_iter().chain(phi_strings(&smith())) {
            assert!(!contains(text.as_bytes(), &phi), "{:?} in {what}", String::from_utf8_lossy(&phi));
        }
    }
}

#[test]
fn a_malformed_table_stops_the_start_with_its_line_numbers() {
    let d = tempfile::tempdir().unwrap();
    let bad = "ptid/MRN12345=TRIAL-001\n\
               # a comment\n\
               ptid/MRN12345=TRIAL-002\n\
               dateoffset/MRN12345=six weeks\n\
               MRN777=TRIAL-777\n";
    let malformed = lookup_config(d.path(), bad);
    let serve = binary().arg("serve").arg("--config").arg(&malformed).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&serve.stderr).into_owned();
    assert!(!serve.status.success(), "the node must not start: {stderr}");
    for expected in [
        "LookupTable.properties",
        "line 3: duplicates the key on line 1",
        "line 4: a dateoffset",
        "line 5: expected keytype/",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    assert!(String::from_utf8_lossy(&serve.stdout).is_empty(), "nothing listened");
    for secret in ["MRN12345", "TRIAL-00", "six weeks", "MRN777"] {
        assert!(!stderr.contains(secret), "{secret:?} shown:\n{stderr}");
    }

    let check = binary().args(["check-config", "--config"]).arg(&malformed).output().unwrap();
    let said = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(!check.status.success() && said.contains("line 3: duplicates the key on line 1"), "{said}");

    // A script that looks up a key type the table lacks, and a script whose table is not set.
    let partial = lookup_config(d.path(), "ptid/MRN12345=TRIAL-001\n");
    let run = anonymize(
        &partial,
        &d.path().join("out"),
        &[&put(d.path(), "x.dcm", &instance(&smith(), &Shape::default()))],
    );
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(!run.status.success() && stderr.contains("dateoffset, site"), "{stderr}");
    let unset = config(d.path(), SITE, ROOT, &rsna19_script(d.path()), "");
    let run = anonymize(&unset, &d.path().join("out"), &[&d.path().join("x.dcm")]);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(!run.status.success() && stderr.contains("project.lookup_table is not set"), "{stderr}");
}

#[test]
fn a_table_value_that_is_a_path_is_refused_with_its_line_and_nothing_lands_outside_out() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "smith.dcm", &instance(&smith(), &Shape::default()));
    let out = d.path().join("a/b/out");
    for (value, why) in
        [("../../../escaped", "holds a path separator"), ("..", "starts with '.'"), ("SITE/1", "separator")]
    {
        let table = format!("dateoffset/MRN12345=-42\nptid/MRN12345={value}\nsite/Springfield\\ General=S\n");
        let config = lookup_config(d.path(), &table);
        let run = anonymize(&config, &out, &[&input]);
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(!d.path().join("escaped").exists(), "written outside --out: {:?}", files_under(d.path()));
        assert_eq!(run.status.code(), Some(2), "{value}: {stderr}");
        assert!(
            stderr.contains("line 2: a ptid replacement names a directory") && stderr.contains(why),
            "{stderr}"
        );
        assert!(
            value.len() < 3 || !stderr.contains(value),
            "the value is a pseudonym, not for messages: {stderr}"
        );
    }
    assert!(
        !d.path().join("escaped").exists() && dcm_files(d.path()).len() == 1,
        "{:?}",
        files_under(d.path())
    );
}

#[test]
fn a_table_that_contradicts_the_index_is_a_conflict_to_review_not_a_retry() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let smith1 = put(&input, "smith1.dcm", &instance(&smith(), &Shape::default()));
    // Before the table: SMITH is numbered by the index as RSNA does.
    let plain = config(d.path(), SITE, ROOT, &default_script(), "");
    let run = anonymize(&plain, &d.path().join("out"), &[&smith1]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stdout));
    assert!(dcm_files(&d.path().join("out/99.99-000001")).len() == 1);

    // The table gives SMITH another subject ID, and SMITH's number to YAMADA.
    let table = format!("{TABLE}ptid/{id}=99.99-000001\ndateoffset/{id}=3\n", id = yamada().id);
    let with_table = lookup_config(d.path(), &table);
    let smith2 = put(&input, "smith2.dcm", &instance(&smith(), &Shape { instance: 2, ..Shape::default() }));
    let yamada1 = put(&input, "yamada.dcm", &instance(&yamada(), &Shape { study: 2, ..Shape::default() }));
    let run = anonymize(&with_table, &d.path().join("out2"), &[&smith2, &yamada1]);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("Capture_PHI_Error: 2"), "{stdout}");
    assert!(stdout.contains("another pseudonym in the index"), "{stdout}");
    assert!(stdout.contains("belongs to another PatientID"), "{stdout}");
    assert!(dcm_files(&d.path().join("out2")).is_empty());
}
