//! The offline `anonymize` command end to end: real files in, real binary, output checked with
//! DCMTK's dcmdump and dicom3tools' dciodvfy.

mod common;

use std::path::{Path, PathBuf};

use common::node::text;
use common::*;

const SITE: &str = "99.99";
const ROOT: &str = "1.2.826.0.1.3680043.10.474";

/// A corpus covering every shape: syntaxes, multi-frame, fragments, character sets.
fn corpus(dir: &Path) -> Vec<(Patient, Shape, PathBuf)> {
    let shapes = [
        ("ct-explicit.dcm", smith(), Shape::default()),
        ("ct-implicit.dcm", smith(), Shape { transfer_syntax: IMPLICIT_LE, instance: 2, ..Shape::default() }),
        (
            "ct-bigendian.dcm",
            smith(),
            Shape { transfer_syntax: EXPLICIT_BE, instance: 3, ..Shape::default() },
        ),
        ("ct-multiframe.dcm", smith(), Shape { frames: 4, series: 2, ..Shape::default() }),
        (
            "ct-jpeg.dcm",
            smith(),
            Shape { transfer_syntax: JPEG_BASELINE, frames: 3, series: 3, ..Shape::default() },
        ),
        ("ct-deflated.dcm", smith(), Shape { transfer_syntax: DEFLATED, instance: 4, ..Shape::default() }),
        ("jp-utf8.dcm", yamada(), Shape::default()),
        ("de-latin1.dcm", mueller(), Shape::default()),
    ];
    shapes
        .into_iter()
        .map(|(name, p, s)| {
            let path = put(dir, name, &instance(&p, &s));
            (p, s, path)
        })
        .collect()
}

#[test]
fn no_original_phi_survives_and_every_output_is_valid_dicom() {
    no_phi_and_valid(&default_script());
}

#[test]
fn no_original_phi_survives_and_every_output_is_valid_dicom_under_the_ps315_profile() {
    no_phi_and_valid(&profile_script());
}

fn no_phi_and_valid(script: &Path) {
    let d = tempfile::tempdir().unwrap();
    let inputs = corpus(&d.path().join("in"));
    let config = config(d.path(), SITE, ROOT, script, "");
    let out = d.path().join("out");
    let run = anonymize(&config, &out, &[&d.path().join("in")]);
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let outputs = files_under(&out);
    assert_eq!(outputs.len(), inputs.len(), "{outputs:?}");

    for (patient, shape, input) in &inputs {
        // Find this input's output through its pixel bytes, which must pass through unchanged.
        let mut pixels = pixel_bytes(shape, 0);
        if shape.transfer_syntax == EXPLICIT_BE {
            pixels.chunks_mut(2).for_each(|w| w.swap(0, 1));
        }
        let probe = &pixels[..64];
        if shape.transfer_syntax != DEFLATED {
            assert!(contains(&std::fs::read(input).unwrap(), probe), "probe not in the input {input:?}");
        }
        let matching: Vec<&PathBuf> = outputs
            .iter()
            .filter(|o| {
                let b = std::fs::read(o).unwrap();
                contains(&b, probe) && o.to_string_lossy().contains(&format!("{SITE}-"))
            })
            .collect();
        assert!(!matching.is_empty(), "pixel data of {input:?} not found unchanged in any output");
        for output in matching {
            let bytes = std::fs::read(output).unwrap();
            for phi in phi_strings(patient) {
                if phi.len() >= 3 {
                    assert!(
                        !contains(&bytes, &phi),
                        "{:?} leaked into {output:?}",
                        String::from_utf8_lossy(&phi)
                    );
                }
            }
            assert!(!contains(output.to_string_lossy().as_bytes(), b"1.2.999.777"), "original UID in path");
            assert!(dcmdump_value(output, "SOPInstanceUID").is_some(), "dcmdump cannot read {output:?}");
            let before = dciodvfy_errors(input);
            let after = dciodvfy_errors(output);
            let new: Vec<&String> = after.iter().filter(|e| !before.contains(e)).collect();
            assert!(new.is_empty(), "dciodvfy errors in {output:?} that {input:?} did not have: {new:#?}");
            assert_eq!(dcmdump_value(output, "PatientIdentityRemoved").as_deref(), Some("YES"));
            assert_eq!(
                dcmdump_value(output, "LongitudinalTemporalInformationModified").as_deref(),
                Some("MODIFIED")
            );
            assert_eq!(dcmdump_value(output, "PatientAge").as_deref(), Some("045Y"));
            assert_eq!(dcmdump_value(output, "CodeValue").as_deref(), Some("T-D3000"), "codes survive");
        }
    }
    // Kept text keeps its character set: the Latin-1 file still says so.
    let latin =
        outputs.iter().find(|o| dcmdump_value(o, "SpecificCharacterSet").as_deref() == Some("ISO_IR 100"));
    assert!(latin.is_some(), "SpecificCharacterSet ISO_IR 100 was not kept");
}

#[test]
fn golden_values_match_rsna_anonymizer() {
    // The same pseudonyms whichever semantics or script: RSNA's script as RSNA runs it, RSNA's
    // script under CTP semantics, and the shipped PS3.15 profile. Dates move by the same days,
    // forward under RSNA's script, backward (one day more, never zero) under the profile.
    let rsna = "  accession_format: rsna\n";
    let ctp = "  accession_format: rsna\n  script_semantics: ctp\n";
    let sops: Vec<String> = [
        (rsna_script(), rsna, "20220921"),
        (rsna_script(), ctp, "20220921"),
        (profile_script(), rsna, "20210412"),
    ]
    .iter()
    .map(|(script, extra, date)| golden_values(script, extra, date))
    .collect();
    assert!(sops.iter().all(|s| *s == sops[0]), "{sops:?}");
}

/// Checks the golden values; returns the SOP Instance UID pseudonym.
fn golden_values(script: &Path, extra: &str, study_date: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let p =
        Patient { name: "DOE^JOHN", id: "12345", birth_date: "19700101", charset: None, name_bytes: None };
    let shape = Shape { accession: "2", study_date: "20220101", ..Shape::default() };
    let input = put(&d.path().join("in"), "a.dcm", &instance(&p, &shape));
    let config = config(d.path(), SITE, ROOT, script, extra);
    let out = d.path().join("out");
    let run = anonymize(&config, &out, &[&input]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let outputs = files_under(&out);
    assert_eq!(outputs.len(), 1);
    let o = &outputs[0];
    assert_eq!(dcmdump_value(o, "StudyDate").as_deref(), Some(study_date));
    assert_eq!(dcmdump_value(o, "AccessionNumber").as_deref(), Some("f7f69c29-67d4-4fd3"));
    assert_eq!(dcmdump_value(o, "PatientID").as_deref(), Some("99.99-000001"));
    assert_eq!(dcmdump_value(o, "PatientName").as_deref(), Some("99.99-000001"));
    // UID pseudonyms are RSNA's: md5 of the original, under <root>.<site>.2.
    let sop = dcmdump_value(o, "SOPInstanceUID").unwrap();
    assert!(sop.starts_with("1.2.826.0.1.3680043.10.474.99.99.2."), "{sop}");
    assert_eq!(o.file_name().unwrap().to_string_lossy(), format!("{sop}.dcm"));
    assert_eq!(dcmdump_value(o, "MediaStorageSOPInstanceUID").as_deref(), Some(sop.as_str()));
    sop
}

#[test]
fn pseudonyms_are_the_same_across_files_runs_and_restarts() {
    let d = tempfile::tempdir().unwrap();
    let config = config(d.path(), SITE, ROOT, &default_script(), "");
    let a = put(&d.path().join("in1"), "a.dcm", &instance(&smith(), &Shape::default()));
    let b =
        put(&d.path().join("in2"), "b.dcm", &instance(&smith(), &Shape { instance: 2, ..Shape::default() }));
    let c = put(&d.path().join("in3"), "c.dcm", &instance(&yamada(), &Shape::default()));
    let out = d.path().join("out");
    // Three separate processes: every run reopens the index.
    for input in [&a, &b, &c] {
        let run = anonymize(&config, &out, &[input]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let patients = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    assert_eq!(patients(&out), ["99.99-000001", "99.99-000002"]);
    let smith_study: Vec<String> = patients(&out.join("99.99-000001"));
    assert_eq!(smith_study.len(), 1, "both smith instances share one anonymized study");
    assert_eq!(files_under(&out.join("99.99-000001")).len(), 2);

    // A re-run of everything into a fresh output gives byte-identical files and no new patient.
    let out2 = d.path().join("out2");
    let run = anonymize(&config, &out2, &[&a, &b, &c]);
    assert!(run.status.success());
    let first: Vec<PathBuf> =
        files_under(&out).iter().map(|p| p.strip_prefix(&out).unwrap().to_path_buf()).collect();
    let second: Vec<PathBuf> =
        files_under(&out2).iter().map(|p| p.strip_prefix(&out2).unwrap().to_path_buf()).collect();
    assert_eq!(first, second);
    for rel in &first {
        assert_eq!(std::fs::read(out.join(rel)).unwrap(), std::fs::read(out2.join(rel)).unwrap(), "{rel:?}");
    }
}

#[test]
fn the_rsna_script_loads_and_runs() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()));
    let config = config(d.path(), SITE, ROOT, &rsna_script(), "");
    let out = d.path().join("out");
    let run = anonymize(&config, &out, &[&input]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let o = &files_under(&out)[0];
    let bytes = std::fs::read(o).unwrap();
    for phi in phi_strings(&smith()) {
        assert!(!contains(&bytes, &phi), "{:?} leaked", String::from_utf8_lossy(&phi));
    }
    // RSNA's script keeps TargetFrameOfReferenceUID-like UIDs blank-op; our net maps them anyway:
    // the FrameOfReferenceUID is mapped, at the top and nested (it is @uid at any depth).
    let original = dcmdump_value(&input, "FrameOfReferenceUID").unwrap();
    let mapped = dicom_anon_gateway::anonymize::Rsna::new(SITE, ROOT, Default::default()).unwrap();
    let mapped = dicom_anon_gateway::anonymize::Pseudonyms::uid(&mapped, &original);
    assert_eq!(dcmdump_value(o, "FrameOfReferenceUID").as_deref(), Some(mapped.as_str()));
    assert!(!contains(&bytes, original.as_bytes()), "the original FrameOfReferenceUID is left somewhere");
    assert!(dcmdump_value(o, "StudyDescription").is_some_and(|s| s.starts_with("CT CHEST for")));
}

#[test]
fn bad_input_is_quarantined_with_a_reason_and_the_rest_goes_through() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let good = put(&input, "good.dcm", &instance(&smith(), &Shape::default()));
    let full = std::fs::read(&good).unwrap();
    let text = put(&input, "notes.txt", b"this is not DICOM");
    let empty = put(&input, "empty.dcm", b"");
    let truncated = put(&input, "truncated.dcm", &full[..full.len() - 300]);
    // A declared length of 0xFFFFFFF0 for an element near the end: must not be allocated.
    let mut huge = full.clone();
    let pos = huge.windows(4).position(|w| w == [0xE0, 0x7F, 0x10, 0x00]).unwrap();
    huge[pos + 8..pos + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let huge = put(&input, "huge.dcm", &huge);
    let bad_utf8 =
        Patient { name_bytes: Some(b"SM\xffTH^J".to_vec()), charset: Some("ISO_IR 192"), ..smith() };
    let bad_utf8 = put(&input, "badname.dcm", &instance(&bad_utf8, &Shape { study: 9, ..Shape::default() }));

    let config = config(d.path(), SITE, ROOT, &default_script(), "");
    let out = d.path().join("out");
    let run = anonymize(&config, &out, &[&good, &text, &empty, &truncated, &huge, &bad_utf8]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "failures give a non-zero exit: {stdout}");
    assert!(stdout.contains("anonymized 1 files"), "{stdout}");
    let q = d.path().join("storage/private/quarantine");
    let count = |reason: &str| {
        files_under(&q.join(reason)).iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).count()
    };
    assert_eq!(count("Invalid_DICOM"), 2, "the text file and the empty file: {stdout}");
    assert_eq!(count("DICOM_Read_Error"), 2, "truncated and huge length: {stdout}");
    assert_eq!(count("Invalid_Text"), 1, "{stdout}");
    let sidecar = std::fs::read_to_string(
        files_under(&q.join("Invalid_Text")).into_iter().find(|p| p.extension().unwrap() == "json").unwrap(),
    )
    .unwrap();
    assert!(sidecar.contains("PatientName"), "{sidecar}");

    // Inside a folder walk, non-DICOM files are skipped rather than failed.
    let out2 = d.path().join("out2");
    let only = d.path().join("mixed");
    put(&only, "a.dcm", &full);
    put(&only, "README.txt", b"hello");
    let run = anonymize(&config, &out2, &[&only]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stdout));
    assert!(String::from_utf8_lossy(&run.stdout).contains("skipped 1 non-DICOM"));

    // A path that is not there is a mistake in the command, said as such: nothing is quarantined.
    let missing = d.path().join("no-such-folder");
    let run = anonymize(&config, &d.path().join("out3"), &[&good, &missing]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such-folder: No such file or directory"), "{stderr}");
    assert!(!d.path().join("out3").exists() && count("Not_Stored") == 0, "{stderr}");
}

#[test]
fn index_export_writes_rsnas_twelve_columns() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()));
    let no_acc = put(
        &d.path().join("in"),
        "b.dcm",
        &instance(&yamada(), &Shape { accession: "", ..Shape::default() }),
    );
    let config = config(d.path(), SITE, ROOT, &default_script(), "");
    let out = d.path().join("out");
    assert!(anonymize(&config, &out, &[&input, &no_acc]).status.success());
    let csv = d.path().join("phi.csv");
    let run =
        binary().args(["index", "export", "--config"]).arg(&config).arg("--out").arg(&csv).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "ANON-PatientID,ANON-PatientName,PHI-PatientName,PHI-PatientID,DateOffset,PHI-StudyDate,ANON-AccNo,PHI-AccNo,ANON-StudyUID,PHI-StudyUID,Series,Instances"
    );
    let rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(str::to_string).collect()).collect();
    assert_eq!(rows.len(), 2);
    let smith = rows.iter().find(|r| r[3] == "MRN12345").unwrap();
    assert_eq!(smith[2], "SMITH^ELIZABETH");
    assert_eq!(smith[5], "20220101");
    assert_eq!(smith[7], "ACC7654321");
    assert_eq!(smith[6].len(), 16);
    assert_eq!((smith[10].as_str(), smith[11].as_str()), ("1", "1"));
    let yamada = rows.iter().find(|r| r[3] == "JP-556677").unwrap();
    assert_eq!(yamada[2], "山田^太郎=やまだ^たろう", "UTF-8 names export as UTF-8");
    assert_eq!((yamada[6].as_str(), yamada[7].as_str()), ("", ""), "no accession: empty cells");
}

#[test]
fn keyed_mode_nodes_agree_without_sharing_an_index() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()));
    let secret = put(d.path(), "secret", b"a-project-secret-of-some-length\n");
    let extra = format!("  pseudonyms: keyed\n  secret_file: {}\n", secret.display());
    let mut trees = Vec::new();
    for node in ["node1", "node2"] {
        let dir = d.path().join(node);
        let config = config(&dir, SITE, ROOT, &default_script(), &extra);
        let out = dir.join("out");
        let run = anonymize(&config, &out, &[&input]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let files = files_under(&out);
        assert_eq!(files.len(), 1);
        trees.push((files[0].strip_prefix(&out).unwrap().to_path_buf(), std::fs::read(&files[0]).unwrap()));
    }
    assert_eq!(trees[0], trees[1]);
    assert!(!trees[0].0.to_string_lossy().contains("000001"), "keyed ids are not numbered: {:?}", trees[0].0);

    // Without the secret, keyed mode refuses to start and says what to set.
    let dir = d.path().join("node3");
    let config = config(
        &dir,
        SITE,
        ROOT,
        &default_script(),
        "  pseudonyms: keyed\n  secret_env: NO_SUCH_SECRET_VAR\n",
    );
    let run = anonymize(&config, &dir.join("out"), &[&input]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("NO_SUCH_SECRET_VAR"));
}

/// Class 3 of issue 21: the project secret is read one way wherever it comes from, and a changed
/// secret stops the start instead of giving every patient a second pseudonym.
#[test]
fn a_secret_moved_into_a_file_keeps_every_pseudonym_and_a_changed_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()));
    let dir = d.path().join("node");
    let run = |extra: &str, env: &[(&str, &str)], out: &str| {
        let config = config(&dir, SITE, ROOT, &default_script(), &format!("  pseudonyms: keyed\n{extra}"));
        binary()
            .args(["anonymize", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(d.path().join(out))
            .arg(&input)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let tree = |out: &str| {
        let root = d.path().join(out);
        files_under(&root)
            .iter()
            .map(|f| (f.strip_prefix(&root).unwrap().to_path_buf(), std::fs::read(f).unwrap()))
            .collect::<Vec<_>>()
    };
    let value = "a-project-secret-of-some-length";
    let from_env =
        run("  secret_env: DAG_TEST_PROJECT_SECRET\n", &[("DAG_TEST_PROJECT_SECRET", value)], "env");
    assert!(from_env.status.success(), "{}", text(&from_env));
    // `echo SECRET > file` adds a newline: the same secret, the same pseudonyms, the same index.
    let file = put(d.path(), "secret", format!("{value}\n").as_bytes());
    let from_file = run(&format!("  secret_file: {}\n", file.display()), &[], "file");
    assert!(from_file.status.success(), "{}", text(&from_file));
    assert_eq!(tree("env"), tree("file"));
    assert_eq!(tree("env").len(), 1);

    let other = put(d.path(), "other", b"another-secret-of-some-length\n");
    let changed = run(&format!("  secret_file: {}\n", other.display()), &[], "changed");
    let said = text(&changed);
    assert!(!changed.status.success() && said.contains("another project secret"), "{said}");
    assert!(!said.contains("another-secret") && !said.contains(value), "a secret was printed: {said}");
    assert!(tree("changed").is_empty());
}

#[test]
fn unsupported_ctp_operations_are_refused_unless_configured_away() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()));
    let script = put(
        d.path(),
        "ctp.script",
        b"<script>\n<e en=\"T\" t=\"00080016\" n=\"SOPClassUID\"></e>\n<e en=\"T\" t=\"00100020\" n=\"PatientID\">@hashptid(@SITEID,PatientID)</e>\n</script>\n",
    );
    let config1 = config(&d.path().join("a"), SITE, ROOT, &script, "");
    let run = anonymize(&config1, &d.path().join("out1"), &[&input]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2));
    assert!(err.contains("line 3") && err.contains("@hashptid"), "{err}");
    let config2 = config(&d.path().join("b"), SITE, ROOT, &script, "  unsupported_ops: remove\n");
    let out = d.path().join("out2");
    let run = anonymize(&config2, &out, &[&input]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bytes = std::fs::read(&files_under(&out)[0]).unwrap();
    assert!(!contains(&bytes, b"MRN12345"));
}

#[test]
fn a_study_seen_under_two_patient_ids_is_an_integrity_conflict() {
    let d = tempfile::tempdir().unwrap();
    // Same digits, other order: the generator derives the same study UID for both.
    let other = Patient { id: "MRN12354", ..smith() };
    let a = put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()));
    let b = put(&d.path().join("in"), "b.dcm", &instance(&other, &Shape { instance: 2, ..Shape::default() }));
    let config = config(d.path(), SITE, ROOT, &default_script(), "");
    let out = d.path().join("out");
    assert!(anonymize(&config, &out, &[&a]).status.success());
    let run = anonymize(&config, &out, &[&b]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("Capture_PHI_Error") && stdout.contains("another PatientID"), "{stdout}");
    assert_eq!(files_under(&out).len(), 1, "the conflicting instance is not stored");
    let q = d.path().join("storage/private/quarantine/Capture_PHI_Error");
    assert_eq!(files_under(&q).iter().filter(|p| p.extension().unwrap() == "dcm").count(), 1);
}

#[test]
fn a_ctp_script_keeps_what_it_does_not_name_and_rsna_semantics_remove_it() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "a.dcm", &instance(&smith(), &Shape::default()));
    // CTP's own layout: parameters, @hashuid, @date, @hash, <r> removals; KVP has no rule.
    let script = put(
        d.path(),
        "ctp.script",
        br#"<script>
  <p t="UIDROOT">1.2.3.4</p>
  <e en="T" t="00080018" n="SOPInstanceUID">@hashuid(@UIDROOT,this)</e>
  <e en="T" t="0020000d" n="StudyInstanceUID">@hashuid(@UIDROOT,this)</e>
  <e en="T" t="0020000e" n="SeriesInstanceUID">@hashuid(@UIDROOT,this)</e>
  <e en="T" t="00080020" n="StudyDate">@date()</e>
  <e en="T" t="00100010" n="PatientName">@hash(this, 64)</e>
  <e en="T" t="00100020" n="PatientID">@hash(this, 64)</e>
  <e en="T" t="00080080" n="InstitutionName">@remove()</e>
  <e en="T" t="00081030" n="StudyDescription">@keep()</e>
  <r en="T" t="curves">Remove curves</r>
  <r en="T" t="overlays">Remove overlays</r>
  <r en="T" t="privategroups">Remove private groups</r>
</script>
"#,
    );
    let run_with = |name: &str, extra: &str| {
        let out = d.path().join(name);
        let run = anonymize(
            &config(&d.path().join(format!("{name}-cfg")), SITE, ROOT, &script, extra),
            &out,
            &[&input],
        );
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        files_under(&out).into_iter().next().unwrap()
    };
    let ctp = run_with("ctp", "");
    assert_eq!(dcmdump_value(&ctp, "KVP").as_deref(), Some("120"), "kept: no rule under CTP semantics");
    assert!(dcmdump_value(&ctp, "InstitutionName").is_none());
    assert_eq!(dcmdump_value(&ctp, "StudyDescription").as_deref(), Some("CT CHEST for *** ***"));
    let bytes = std::fs::read(&ctp).unwrap();
    // HOUSE: a kept PN the net empties.
    for phi in [
        &b"MRN12345"[..],
        b"HOUSE",
        b"20220101",
        b"1.2.999.777",
        b"Private SMITH",
        b"overlay of",
        b"curve ELIZ",
    ] {
        assert!(!contains(&bytes, phi), "{:?}", String::from_utf8_lossy(phi));
    }
    let rsna = run_with("rsna", "  script_semantics: rsna\n");
    assert!(dcmdump_value(&rsna, "KVP").is_none(), "removed: no rule under RSNA semantics");
    let sop = |f: &Path| dcmdump_value(f, "SOPInstanceUID");
    assert_eq!(sop(&ctp), sop(&rsna), "@hashuid is our UID pseudonym");
    assert_eq!(dcmdump_value(&ctp, "PatientID"), dcmdump_value(&rsna, "PatientID"));
}

/// Issue 19, class 7: the pixel data's rule is the same whatever the instance's size. An instance
/// over 2 MiB is worked on from its file; it gets `@empty()` or `@remove()` as a small one does
/// (it lost the element to `@empty()` and kept its pixels under a dummy).
#[test]
fn the_pixel_datas_rule_does_not_depend_on_the_instance_size() {
    for (rule, present) in [("@empty()", true), ("@remove()", false)] {
        let d = tempfile::tempdir().unwrap();
        let line = format!("  <e en=\"T\" t=\"7FE00010\" n=\"PixelData\">{rule}</e>\n</script>");
        let script_text = std::fs::read_to_string(profile_script()).unwrap().replace("</script>", &line);
        let script = put(d.path(), "pixels.script", script_text.as_bytes());
        // The stage reads neither (a volume over its limit passes unread), so the big one stays in
        // its file all the way.
        let config = config(d.path(), SITE, ROOT, &script, "  pixels:\n    max_pixel_bytes: 1048576\n");
        let small = put(&d.path().join("in"), "small.dcm", &instance(&smith(), &Shape::default()));
        let big = Shape { rows: 1100, instance: 2, series: 2, ..Shape::default() };
        let big = put(&d.path().join("in"), "big.dcm", &instance(&smith(), &big));
        assert!(std::fs::metadata(&big).unwrap().len() > 2 << 20);
        let out = d.path().join("out");
        let run = anonymize(&config, &out, &[&small, &big]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stdout));
        let outputs = files_under(&out);
        assert_eq!(outputs.len(), 2);
        for file in outputs {
            let obj = dicom_object::open_file(&file).unwrap();
            let pixels =
                obj.element(dicom_core::Tag(0x7FE0, 0x0010)).ok().map(|e| e.to_bytes().unwrap().len());
            assert_eq!(pixels, present.then_some(0), "{rule}: {}", file.display());
        }
    }
}

/// Issue 23: relative paths in a config are relative to the config file, whatever the working
/// directory (a service manager starts the node from `/`), and a shipped script named by a path
/// that does not exist there is read from the copy built into the binary.
#[test]
fn relative_paths_follow_the_config_file_not_the_working_directory() {
    let d = tempfile::tempdir().unwrap();
    let input = put(&d.path().join("in"), "1.dcm", &instance(&smith(), &Shape::default()));
    std::fs::create_dir_all(d.path().join("etc/scripts")).unwrap();
    std::fs::copy(default_script(), d.path().join("etc/scripts/mine.script")).unwrap();
    put(&d.path().join("etc"), "secret", b"0123456789abcdef0123456789abcdef\n");
    let run = |script: &str, out: &str| {
        let yaml = format!(
            "project:\n  name: TEST_PROJECT\n  site_id: \"{SITE}\"\n  uid_root: \"{ROOT}\"\n  script: {script}\n  \
             pseudonyms: keyed\n  secret_file: secret\n  secret_env: DAG_TEST_UNSET_SECRET\n\
             storage:\n  dir: ../storage\n  min_free_bytes: 0\nlogging:\n  level: warn\n"
        );
        let config = put(&d.path().join("etc"), "config.yaml", yaml.as_bytes());
        let out = d.path().join(out);
        let o = binary()
            .current_dir("/")
            .env_remove("DAG_TEST_UNSET_SECRET")
            .args(["anonymize", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .arg(&input)
            .output()
            .unwrap();
        assert!(o.status.success(), "script {script}: {}", text(&o));
        assert!(text(&o).contains("anonymized 1 files"), "{}", text(&o));
        assert_eq!(files_under(&out).len(), 1, "{}", text(&o));
    };
    run("scripts/mine.script", "out-own");
    assert!(d.path().join("storage/private/index.db").exists(), "the index is beside etc/, not under /");
    run("config/ps315-basic-profile.script", "out-shipped");
}

/// Issue 23: a patient CD's DICOMDIR is an index of the medium, not an instance: `anonymize`
/// skips it with a count and succeeds, named or met in a folder.
#[test]
fn a_dicomdir_made_by_dcmtk_is_skipped_with_a_count() {
    let d = tempfile::tempdir().unwrap();
    let cd = d.path().join("cd");
    for i in 1..=2 {
        let shape = Shape { instance: i, ..Shape::default() };
        put(&cd.join("IMAGES"), &format!("IM{i}"), &instance(&smith(), &shape));
    }
    let made = std::process::Command::new(tool("/usr/bin/dcmmkdir", "dcmtk"))
        .current_dir(&cd)
        .args(["+r", "+I", "+D", "DICOMDIR", "IMAGES"])
        .output()
        .unwrap();
    assert!(made.status.success() && cd.join("DICOMDIR").exists(), "dcmmkdir: {}", text(&made));
    let config = config(d.path(), SITE, ROOT, &default_script(), "");
    let out = d.path().join("out");
    let run = anonymize(&config, &out, &[&cd]);
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", text(&run));
    assert!(said.contains("anonymized 2 files") && said.contains("1 DICOMDIR"), "{said}");
    assert_eq!(files_under(&out).len(), 2);
    let named = anonymize(&config, &out, &[&cd.join("DICOMDIR")]);
    assert!(named.status.success(), "{}", text(&named));
    assert!(String::from_utf8_lossy(&named.stdout).contains("1 DICOMDIR"), "{}", text(&named));
}
