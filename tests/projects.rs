//! Several projects on one node: DCMTK's storescu calls each project's AE title, and each project
//! keeps its own archive, pseudonyms, PHI index and upload (moto_server, its own Cognito user).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::http::*;
use common::moto::*;
use common::node::*;
use common::*;

const TBI_SITE: &str = "972149";
const STROKE_SITE: &str = "972150";

fn config(dir: &Path, aws: &Aws, url: &str, password: &Path, secret: &Path) -> PathBuf {
    let script = default_script();
    let yaml = format!(
        "scp: {{ host: 127.0.0.1, port: 0 }}
storage: {{ min_free_bytes: 0 }}
upload:
  enabled: true
  region: {REGION}
  account_id: \"123456789012\"
  user_pool_id: {pool}
  app_client_id: {client}
  client_secret_env: TEST_COGNITO_CLIENT_SECRET
  identity_pool_id: \"{identity}\"
  password_env: null
  password_file: {password}
  bucket: {BUCKET}
  endpoint_url: {url}
  concurrency: 4
http: {{ listen: 127.0.0.1:0 }}
logging: {{ level: debug }}
projects:
  - {{ name: TBI, ae_title: TBI_ANON, site_id: \"{TBI_SITE}\", uid_root: \"{ROOT}\", script: {script},
      storage: {{ dir: {tbi} }}, upload: {{ username: tbi-user, prefix: tbi }} }}
  - {{ name: STROKE, ae_title: STROKE_ANON, site_id: \"{STROKE_SITE}\", uid_root: \"{ROOT}\", script: {script},
      pseudonyms: keyed, secret_file: {secret}, allowed_calling_ae_titles: [STROKE_CT],
      storage: {{ dir: {stroke} }}, upload: {{ username: stroke-user, prefix: stroke }} }}
",
        pool = aws.user_pool_id,
        client = aws.client_id,
        identity = aws.identity_pool_id,
        password = password.display(),
        script = script.display(),
        secret = secret.display(),
        tbi = dir.join("tbi").display(),
        stroke = dir.join("stroke").display(),
    );
    put(dir, "projects.yaml", yaml.as_bytes())
}

fn store(port: u16, calling: &str, called: &str, files: &[PathBuf]) -> Output {
    dcmtk("storescu")
        .args(["-aet", calling, "-aec", called, "127.0.0.1", &port.to_string()])
        .args(files)
        .output()
        .unwrap()
}

fn corpus(dir: &Path, patient: &Patient, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let shape = Shape { rows: 32, instance: i, series: 1 + i % 2, ..Shape::default() };
            put(dir, &format!("{i}.dcm"), &instance(patient, &shape))
        })
        .collect()
}

/// Issue 23: the status page lists both projects and shows each one's own boxes (headless
/// Chromium), the gauges read from an index carry the project, and `/readyz` checks every
/// project's index and disk.
fn each_project_is_shown_by_the_operations_endpoint(node: &Node, planted: &[Vec<u8>]) {
    let m = scrape(node);
    for (project, n) in [("TBI", 4.0), ("STROKE", 3.0)] {
        let rows: f64 = ["queued", "uploading", "uploaded", "failed"]
            .iter()
            .map(|s| {
                value(
                    &m,
                    &format!("dicom_anon_upload_queue_instances{{project=\"{project}\",state=\"{s}\"}}"),
                )
            })
            .sum();
        assert_eq!(rows, n, "{project}'s upload queue");
        assert!(value(&m, &format!("dicom_anon_index_size_bytes{{project=\"{project}\"}}")) > 0.0);
    }

    let (code, ready) = get(node.http_port.unwrap(), "/readyz", None);
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(code, 200, "{ready}");
    let checked: Vec<&str> =
        ready["projects"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(checked, ["TBI", "STROKE"], "{ready}");
    assert!(ready["projects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["index"]["ok"] == true && p["spool"]["ok"] == true));

    let chromium = chromium();
    let profile = tempfile::tempdir().unwrap();
    let dom = |path: &str| {
        let url = format!("{}{path}", node.http_base());
        String::from_utf8(headless(&chromium, &url, profile.path(), &["--dump-dom"]).stdout).unwrap()
    };
    let first = dom("/");
    assert!(first.contains("id=\"projects\"") && first.contains("<b>TBI</b> (shown)"), "{first}");
    assert!(first.contains("<a href=\"/projects/STROKE\">STROKE</a>"), "{first}");
    assert!(first.contains("id=\"count-instances\">4<"), "TBI's own count:\n{first}");
    let row = first.split("<tr ").find(|r| r.starts_with("id=\"project-STROKE\"")).expect("a row for STROKE");
    assert!(row.contains("<td>STROKE_ANON</td><td class=\"n\">3</td>"), "STROKE's own instances: {row}");
    let stroke = dom("/projects/STROKE");
    assert!(
        stroke.contains("<b>STROKE</b> (shown)") && stroke.contains("id=\"count-instances\">3<"),
        "{stroke}"
    );
    assert!(stroke.contains("(project STROKE)</h2>"), "the chart is STROKE's");
    for page in [&first, &stroke] {
        for phi in planted {
            assert!(!contains(page.as_bytes(), phi), "{:?} on the page", String::from_utf8_lossy(phi));
        }
    }
    assert_eq!(get(node.http_port.unwrap(), "/projects/NOPE", None).0, 404);
}

fn cli(args: &[&str], config: &Path) -> Output {
    binary().args(args).arg("--config").arg(config).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projects_keep_archives_pseudonyms_indexes_and_uploads_apart() {
    let d = tempfile::tempdir().unwrap();
    let moto = Moto::start(d.path());
    let aws = setup(&moto.url()).await;
    let tbi_sub = add_user(&moto.url(), &aws, "tbi-user").await;
    let stroke_sub = add_user(&moto.url(), &aws, "stroke-user").await;
    let password = put(d.path(), "password", PASSWORD.as_bytes());
    let secret = put(d.path(), "stroke-secret", b"a stroke project secret of 32 b");
    let config = config(d.path(), &aws, &moto.url(), &password, &secret);

    let checked = cli(&["check-config"], &config);
    let shown = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        shown.contains("# project TBI (AE title TBI_ANON)") && shown.contains("# project STROKE"),
        "{shown}"
    );
    // What a start would refuse, check-config refuses too, naming the project and the key.
    let yaml = std::fs::read_to_string(&config).unwrap();
    let unkeyed = yaml.replace(&secret.display().to_string(), "/nonexistent/stroke-secret");
    let refused = cli(&["check-config"], &put(d.path(), "unkeyed.yaml", unkeyed.as_bytes()));
    assert!(
        !refused.status.success()
            && text(&refused).contains("project STROKE")
            && text(&refused).contains("secret_file"),
        "{}",
        text(&refused)
    );

    let mut node = Node::start_env(d.path(), &config, &[("TEST_COGNITO_CLIENT_SECRET", &aws.client_secret)]);
    let tbi_files = corpus(&d.path().join("in/tbi"), &smith(), 4);
    let stroke_files = corpus(&d.path().join("in/stroke"), &yamada(), 3);
    let out = store(node.port, "TESTSCU", "TBI_ANON", &tbi_files);
    assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    let out = store(node.port, "STROKE_CT", "STROKE_ANON", &stroke_files);
    assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    // STROKE's calling-AE allow-list is its own; an unknown AE title is no project's.
    let stranger = store(node.port, "TESTSCU", "STROKE_ANON", &stroke_files[..1]);
    assert!(text(&stranger).contains("Calling AE Title Not Recognized"), "{}", text(&stranger));
    let nobody = echoscu(node.port, "TESTSCU", "NOBODY");
    assert!(text(&nobody).contains("Called AE Title Not Recognized"), "{}", text(&nobody));
    assert!(echoscu(node.port, "TESTSCU", "TBI_ANON").status.success());
    // SIGHUP without TLS is logged and ignored, not the end of the node.
    // SAFETY: kill(2) with the PID of the node this test spawned and still owns.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    wait_until("the SIGHUP log line", Duration::from_secs(10), || node.log().contains("nothing to reload"));
    assert!(echoscu(node.port, "TESTSCU", "TBI_ANON").status.success(), "{}", node.log());

    // Each archive holds its own studies only, under its own site id and pseudonym scheme.
    let tbi = files_under(&d.path().join("tbi/public"));
    let stroke = files_under(&d.path().join("stroke/public"));
    assert_eq!((tbi.len(), stroke.len()), (4, 3), "{}", node.log());
    for (files, site, other_site, mode) in
        [(&tbi, TBI_SITE, STROKE_SITE, "rsna"), (&stroke, STROKE_SITE, TBI_SITE, "keyed")]
    {
        for f in files.iter() {
            let pid = dcmdump_value(f, "PatientID").unwrap();
            assert!(pid.starts_with(&format!("{site}-")), "{}: PatientID {pid}", f.display());
            if mode == "rsna" {
                assert_eq!(pid, format!("{site}-000001"), "RSNA numbering starts at 1 in each project");
            }
            let study = dcmdump_value(f, "StudyInstanceUID").unwrap();
            assert!(study.starts_with(&format!("{ROOT}.{site}.")), "{study}");
            assert!(!study.contains(&format!(".{other_site}.")), "{study}");
        }
    }
    let all: Vec<Vec<u8>> = tbi.iter().chain(&stroke).map(|f| std::fs::read(f).unwrap()).collect();
    let planted: Vec<Vec<u8>> = phi_strings(&smith()).into_iter().chain(phi_strings(&yamada())).collect();
    for (bytes, f) in all.iter().zip(tbi.iter().chain(&stroke)) {
        for phi in &planted {
            assert!(!contains(bytes, phi), "{} holds {:?}", f.display(), String::from_utf8_lossy(phi));
        }
    }

    each_project_is_shown_by_the_operations_endpoint(&node, &planted);

    // Each upload goes under its own prefix, signed in as its own user, and nowhere else.
    let deadline = Instant::now() + Duration::from_secs(90);
    let objects = loop {
        let objects = objects(&moto.url()).await;
        if objects.len() >= 7 {
            break objects;
        }
        assert!(Instant::now() < deadline, "{} of 7 uploaded:\n{}", objects.len(), node.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(objects.len(), 7);
    let under = |prefix: &str| objects.iter().filter(|(k, _, _)| k.starts_with(prefix)).count();
    assert_eq!(
        under(&format!("tbi/{tbi_sub}/TBI/{TBI_SITE}-000001/")),
        4,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert_eq!(under(&format!("stroke/{stroke_sub}/STROKE/{STROKE_SITE}-")), 3);
    for (key, body, _) in &objects {
        for phi in &planted {
            assert!(!contains(key.as_bytes(), phi) && !contains(body, phi), "PHI under {key}");
        }
    }

    // The per-project commands: queue and index export answer for the project named.
    for (project, n) in [("STROKE", 3), ("TBI", 4)] {
        let queue = || {
            String::from_utf8_lossy(&cli(&["queue", "status", "--project", project], &config).stdout)
                .into_owned()
        };
        let expected = format!("uploaded: {n}");
        wait_until(&format!("{project}'s queue to say {expected}"), Duration::from_secs(30), || {
            let shown = queue();
            shown.contains(&expected) && !shown.contains("queued:")
        });
    }
    let ambiguous = cli(&["queue", "status"], &config);
    assert!(!ambiguous.status.success());
    assert!(String::from_utf8_lossy(&ambiguous.stderr).contains("--project"), "{}", text(&ambiguous));
    let csv = |project: &str| {
        let out = d.path().join(format!("{project}.csv"));
        let run = binary()
            .args(["index", "export", "--project", project, "--out"])
            .arg(&out)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", text(&run));
        std::fs::read_to_string(out).unwrap()
    };
    let (tbi_csv, stroke_csv) = (csv("TBI"), csv("STROKE"));
    assert!(tbi_csv.contains(smith().id) && !tbi_csv.contains(yamada().id), "{tbi_csv}");
    assert!(stroke_csv.contains(yamada().id) && !stroke_csv.contains(smith().id), "{stroke_csv}");

    // No planted value in the node's log.
    let log = node.log();
    for phi in &planted {
        assert!(!contains(log.as_bytes(), phi), "the log holds {:?}", String::from_utf8_lossy(phi));
    }
    assert!(node.is_running());
    assert!(node.stop().success());

    // Offline anonymize writes through the named project's index and pseudonyms.
    let out_dir = d.path().join("offline");
    let run = binary()
        .args(["anonymize", "--project", "STROKE", "--out"])
        .arg(&out_dir)
        .arg("--config")
        .arg(&config)
        .arg(&stroke_files[0])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    let written = files_under(&out_dir);
    assert_eq!(written.len(), 1);
    let stroke_pid = dcmdump_value(&stroke[0], "PatientID").unwrap();
    assert_eq!(dcmdump_value(&written[0], "PatientID").unwrap(), stroke_pid, "same patient, same pseudonym");
}
