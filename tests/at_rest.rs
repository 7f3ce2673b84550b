//! PHI at rest: what a real run of the binary leaves on disk (index, quarantine, a spill while it
//! arrives, anonymized files, exported CSVs) is readable by the node's user only.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::node::*;
use common::*;

/// Every directory and file under `root` (itself included) with any permission for group or others.
fn loose(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let mode = e.metadata().ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then(|| format!("{:o} {}", mode, e.path().display()))
        })
        .collect()
}

fn has(root: &Path, what: impl Fn(&Path) -> bool) -> bool {
    walkdir::WalkDir::new(root).into_iter().filter_map(Result::ok).any(|e| what(e.path()))
}

#[test]
fn what_a_run_writes_is_its_users_alone() {
    let d = tempfile::tempdir().unwrap();
    let node = Node::start(d.path(), "", "  min_free_bytes: 0\n");
    let storage = d.path().join("storage");

    let files: Vec<PathBuf> = (1..=2)
        .map(|i| {
            put(
                d.path(),
                &format!("{i}.dcm"),
                &instance(&smith(), &Shape { instance: i, ..Shape::default() }),
            )
        })
        .collect();
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));
    // Cut short: quarantined with its sidecar.
    let shape = Shape { instance: 9, ..Shape::default() };
    let body = dicom_anon_gateway::dicom::Part10::parse(&instance(&yamada(), &shape)).unwrap().body.to_vec();
    assert_eq!(
        rawscu::store_raw(node.port, AE, CT_IMAGE, &sop_uid(&yamada(), &shape), &body[..body.len() / 2]),
        0xC000
    );
    // A data set larger than what is held in memory, still arriving: it sits in a spill file.
    let mut scu = rawscu::associate(node.port, "RAWSCU", AE, CT_IMAGE, "1.2.840.10008.1.2.1");
    let big = vec![0u8; 3 << 20];
    rawscu::send_store(&mut scu, CT_IMAGE, "1.2.3.4", &big, false);
    let tmp = storage.join("private/tmp");
    wait_until("a spill file", std::time::Duration::from_secs(20), || {
        has(&tmp, |p| p.extension().is_some_and(|e| e == "spill"))
    });

    for (what, present) in [
        ("the index", storage.join("private/index.db").exists()),
        ("its WAL", storage.join("private/index.db-wal").exists()),
        ("a quarantined instance", has(&node.quarantine(), |p| p.extension().is_some_and(|e| e == "dcm"))),
        ("its sidecar", has(&node.quarantine(), |p| p.extension().is_some_and(|e| e == "json"))),
        ("an anonymized file", has(&node.public(), |p| p.extension().is_some_and(|e| e == "dcm"))),
    ] {
        assert!(present, "{what} is missing; log:\n{}", node.log());
    }
    assert_eq!(loose(&storage), Vec::<String>::new(), "open to group or others");
    let _ = scu.abort();
    let config = node.config.clone();
    assert!(node.stop().success());

    // Exports: a new file, a new directory, and a file that was there before with a loose mode.
    let exports = d.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    std::fs::set_permissions(&exports, std::fs::Permissions::from_mode(0o700)).unwrap();
    let old = put(&exports, "audit.csv", b"old");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |args: &[&str]| {
        let out = binary().args(args).arg("--config").arg(&config).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    run(&["index", "export", "--out", exports.join("studies.csv").to_str().unwrap()]);
    run(&["index", "export", "--mapping", "--out", exports.join("mapping").to_str().unwrap()]);
    run(&["audit", "export", "--out", old.to_str().unwrap()]);
    for csv in ["studies.csv", "mapping/uid_mapping.csv", "mapping/patient_id_mapping.csv", "audit.csv"] {
        assert!(exports.join(csv).exists(), "{csv} was not written");
    }
    assert_eq!(loose(&exports), Vec::<String>::new(), "open to group or others");
}
