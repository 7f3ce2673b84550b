//! The uploader against a real emulator: moto_server for Cognito and S3, the real AWS SDK, the
//! real node binary fed by DCMTK's storescu.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::moto::*;
use common::node::*;
use common::*;

/// Instances for one patient; `big` adds one large enough to go multipart (over 5 MiB).
fn corpus(dir: &Path, n: u32, big: bool) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (0..n)
        .map(|i| {
            put(
                dir,
                &format!("{i}.dcm"),
                &instance(&smith(), &Shape { rows: 64, instance: i, series: 1 + i % 2, ..Shape::default() }),
            )
        })
        .collect();
    if big {
        files.push(put(
            dir,
            "big.dcm",
            &instance(&smith(), &Shape { rows: 1024, frames: 4, series: 5, ..Shape::default() }),
        ));
    }
    files
}

async fn wait_for_objects(url: &str, n: usize, node: &Node) -> Vec<(String, Vec<u8>, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let objects = objects(url).await;
        if objects.len() >= n {
            return objects;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} objects uploaded; node log:\n{}",
            objects.len(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Poll `queue status` until it says `expected`.
async fn wait_for_queue(node: &Node, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = binary().args(["queue", "status", "--config"]).arg(&node.config).output().unwrap();
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if text.contains(expected) && !text.contains("failed:") && !text.contains("queued:") {
            return;
        }
        assert!(Instant::now() < deadline, "queue never reached {expected:?}: {text}\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A temp dir, moto set up with pool, users and bucket, and a password file holding `password`.
async fn world(password: &str) -> (tempfile::TempDir, Moto, Aws, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let moto = Moto::start(d.path());
    let aws = setup(&moto.url()).await;
    let file = put(d.path(), "password", password.as_bytes());
    (d, moto, aws, file)
}

fn node_env(aws: &Aws) -> Vec<(&'static str, String)> {
    vec![("TEST_COGNITO_CLIENT_SECRET", aws.client_secret.clone())]
}

fn start(dir: &Path, upload: &str, aws: &Aws) -> Node {
    let env = node_env(aws);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Node::start_full(dir, "", "  min_free_bytes: 0\n", upload, &env)
}

/// Every uploaded object equals its local file, under RSNA's key layout, once.
fn check_objects(objects: &[(String, Vec<u8>, Option<String>)], node: &Node, aws: &Aws, moto: &Moto) {
    let local = files_under(&node.public());
    assert_eq!(objects.len(), local.len());
    for (key, body, content_type) in objects {
        let rel = key
            .strip_prefix(&format!("private/{}/TEST_PROJECT/", aws.sub))
            .unwrap_or_else(|| panic!("key {key} is not under private/<sub>/TEST_PROJECT/"));
        let file = node.public().join(rel);
        assert_eq!(&std::fs::read(&file).unwrap(), body, "{key} differs from {file:?}");
        assert_eq!(content_type.as_deref(), Some("application/dicom"));
        for phi in ["MRN12345", "SMITH", "1.2.999.777"] {
            assert!(!key.contains(phi), "PHI in key {key}");
        }
        let name = rel.rsplit('/').next().unwrap();
        assert!(
            moto.succeeded("PUT", name) <= 1 || moto.requests("POST", name) > 0,
            "{key} was put more than once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_uploads_every_instance_once_with_refreshes_and_multipart() {
    let (d, moto, aws, password) = world(PASSWORD).await;
    // moto's credentials live 90 s, less than the 600 s margin: the margin is clamped to half
    // their life (45 s), so the drain signs in once, where it refreshed before nearly every
    // object (issue 23: 298 refreshes for 300 objects), and the clamp is said once.
    let upload = upload_yaml(
        &aws,
        &moto.url(),
        "site-user",
        &password,
        "  multipart_threshold_bytes: 5242880\n  refresh_margin_s: 600\n",
    );
    let started = Instant::now();
    let node = start(d.path(), &upload, &aws);
    let files = corpus(&d.path().join("in"), 12, true);
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));
    let objects = wait_for_objects(&moto.url(), files.len(), &node).await;
    check_objects(&objects, &node, &aws, &moto);
    assert!(moto.requests("POST", "?uploads") >= 1, "the large instance went multipart");
    let obtained = |log: &str| log.matches("AWS credentials obtained through Cognito").count();
    let log = node.log();
    assert_eq!(obtained(&log), 1, "one sign-in for the drain, no refresh storm:\n{log}");
    assert_eq!(log.matches("longer than half the credentials' lifetime").count(), 1, "{log}");

    // Every instance ends `uploaded` in the queue (a multipart answer moto garbles is retried and
    // found already there, not sent again).
    wait_for_queue(&node, &format!("uploaded: {}", files.len())).await;

    // Past half their life the credentials are refreshed (REFRESH_TOKEN_AUTH, on which moto
    // checks SECRET_HASH) before the next upload. moto's lifetime is fixed, so this waits for it.
    let half_life = started + Duration::from_secs(50);
    tokio::time::sleep(half_life.saturating_duration_since(Instant::now())).await;
    let late = put(
        &d.path().join("late"),
        "late.dcm",
        &instance(&smith(), &Shape { instance: 99, ..Shape::default() }),
    );
    let out = storescu(node.port, &[late]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for_objects(&moto.url(), files.len() + 1, &node).await;
    let log = node.log();
    assert_eq!(obtained(&log), 2, "refreshed once, at half-life:\n{log}");
    assert!(
        !log.contains("token refresh failed"),
        "REFRESH_TOKEN_AUTH (which moto checks SECRET_HASH on) worked:\n{log}"
    );
    assert!(!log.contains(PASSWORD) && !log.contains(&aws.client_secret), "a secret reached the log");
    assert!(node.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_pauses_uploads_until_it_is_fixed() {
    let (d, moto, aws, password) = world("wrong-password").await;
    let node = start(d.path(), &upload_yaml(&aws, &moto.url(), "site-user", &password, ""), &aws);
    let files = corpus(&d.path().join("in"), 4, false);
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "intake goes on while uploads are paused: {}", text(&out));
    wait_until("uploads to pause", Duration::from_secs(30), || node.log().contains("uploads paused"));
    assert!(objects(&moto.url()).await.is_empty());
    let log = node.log();
    assert!(
        log.contains("uploads paused: cannot get AWS credentials") && log.contains("NotAuthorizedException"),
        "{log}"
    );
    assert!(log.matches("uploads paused").count() <= 4, "one line per backoff step, no storm:\n{log}");
    assert_eq!(files_under(&node.public()).len(), files.len(), "files are kept");
    // The operator fixes the password file; the next backoff step signs in.
    std::fs::write(&password, PASSWORD).unwrap();
    let objects = wait_for_objects(&moto.url(), files.len(), &node).await;
    check_objects(&objects, &node, &aws, &moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_change_password_is_answered_only_with_a_configured_new_password() {
    let (d, moto, aws, password) = world(PASSWORD).await;
    let login = |dir: &Path, extra: &str| {
        let yaml = format!(
            "project: {{ name: TEST_PROJECT, site_id: \"99.99\" }}\n{}",
            upload_yaml(&aws, &moto.url(), "new-user", &password, extra)
        );
        let config = put(dir, "login.yaml", yaml.as_bytes());
        binary()
            .args(["aws-login", "--config"])
            .arg(&config)
            .env("TEST_COGNITO_CLIENT_SECRET", &aws.client_secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    };
    let without = login(&d.path().join("a"), "");
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(!without.status.success());
    assert!(err.contains("NEW_PASSWORD_REQUIRED") && err.contains("upload.new_password_env"), "{err}");
    let new_password = put(d.path(), "new-password", NEW_PASSWORD.as_bytes());
    let with = login(&d.path().join("b"), &format!("  new_password_file: {}\n", new_password.display()));
    let out = String::from_utf8_lossy(&with.stdout);
    assert!(with.status.success(), "{}{out}", String::from_utf8_lossy(&with.stderr));
    assert!(out.contains("sub: ") && out.contains("identity id: "), "{out}");
    assert!(!out.contains(NEW_PASSWORD) && !out.contains(PASSWORD));
}

/// The network loses S3's answers: the puts arrive and are stored, the node hears nothing back.
/// Its retries must ask the bucket first (and find this version by its digest), so that no object
/// is put twice (the SDK's own retries would send each again, blind), and nothing is lost once
/// answers return. The answers are lost from the first put on, after the sign-in and the start-up
/// listing went through, so every object takes the retry path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_in_the_middle_of_a_drain_loses_and_repeats_nothing() {
    let d = tempfile::tempdir().unwrap();
    let moto = Moto::start(d.path());
    let aws = setup(&moto.url()).await;
    let proxy = Proxy::start(moto.port);
    let password = put(d.path(), "password", PASSWORD.as_bytes());
    let node = start(d.path(), &upload_yaml(&aws, &proxy.url(), "site-user", &password, ""), &aws);
    wait_until("the start-up listing", Duration::from_secs(60), || moto.succeeded("GET", "list-type=2") > 0);
    proxy.lose_answers();
    let files = corpus(&d.path().join("in"), 40, false);
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "intake is unaffected by the outage: {}", text(&out));
    wait_until("an upload to fail during the outage", Duration::from_secs(60), || {
        node.log().contains("upload failed")
    });
    proxy.restore();
    let objects = wait_for_objects(&moto.url(), files.len(), &node).await;
    wait_for_queue(&node, "uploaded: 40").await;
    check_objects(&objects, &node, &aws, &moto);
    let found =
        objects.iter().filter(|(key, ..)| moto.succeeded("HEAD", key.rsplit('/').next().unwrap()) > 0);
    assert!(found.count() > 0, "no retry found its object by HEAD:\n{}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_files_can_be_deleted_and_keys_already_in_the_bucket_are_not_sent_again() {
    let (d, moto, aws, password) = world(PASSWORD).await;
    let files = corpus(&d.path().join("in"), 3, false);

    // Node A uploads and then deletes its local copies.
    let a_dir = d.path().join("a");
    let a = start(
        &a_dir,
        &upload_yaml(&aws, &moto.url(), "site-user", &password, "  delete_after_upload: true\n"),
        &aws,
    );
    assert!(storescu(a.port, &files).status.success());
    wait_for_objects(&moto.url(), files.len(), &a).await;
    wait_for_queue(&a, "uploaded: 3").await;
    assert!(files_under(&a.public()).is_empty(), "uploaded files are deleted");
    assert!(a.stop().success());

    // Node B (same project, fresh storage) queues the same instances while uploads are off...
    let b_dir = d.path().join("b");
    let b = start(&b_dir, "", &aws);
    assert!(storescu(b.port, &files).status.success());
    let config = b.config.clone();
    assert!(b.stop().success());
    // ...then starts uploading: the listing finds every key already there, nothing is sent again.
    let yaml = std::fs::read_to_string(&config).unwrap().replace(
        "logging:",
        &format!("{}logging:", upload_yaml(&aws, &moto.url(), "site-user", &password, "")),
    );
    std::fs::write(&config, yaml).unwrap();
    let puts_before = moto.requests("PUT", "/research-archive/private/");
    let env = node_env(&aws);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b = Node::start_env(&b_dir, &config, &env);
    wait_for_queue(&b, "uploaded: 3").await;
    assert_eq!(moto.requests("PUT", "/research-archive/private/"), puts_before, "no object was sent twice");
    assert!(b.log().contains("already in the bucket: marked uploaded"), "{}", b.log());
    assert_eq!(files_under(&b.public()).len(), 3, "without delete_after_upload, files stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signed_up_and_confirmed_from_the_tool_logs_in_and_uploads() {
    let (d, moto, aws, password) = world(PASSWORD).await;
    let upload = upload_yaml(&aws, &moto.url(), "trial-uploader", &password, "");
    let yaml = format!("project: {{ name: TEST_PROJECT, site_id: \"99.99\" }}\n{upload}");
    let config = put(d.path(), "signup.yaml", yaml.as_bytes());
    let run = |args: &[&str]| {
        let out = binary()
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("TEST_COGNITO_CLIENT_SECRET", &aws.client_secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let said = text(&out);
        assert!(
            !said.contains(PASSWORD) && !said.contains(&aws.client_secret),
            "a secret was shown:\n{said}"
        );
        (out.status.success(), said)
    };
    let config_arg = format!("--config {}", config.display());

    let (ok, said) = run(&["aws-signup", "--email", "trial@example.org"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("not confirmed yet") && said.contains(&format!("aws-confirm {config_arg} --code")),
        "{said}"
    );
    let sub = said.split("(sub ").nth(1).and_then(|s| s.split(')').next()).unwrap().to_string();

    // Before the confirmation Cognito refuses the sign-in, and the message says what to do.
    let (ok, said) = run(&["aws-login"]);
    assert!(!ok && said.contains("UserNotConfirmedException") && said.contains("aws-confirm"), "{said}");
    // Signing up twice names the way forward instead of a bare error.
    let (ok, said) = run(&["aws-signup", "--email", "trial@example.org"]);
    assert!(!ok && said.contains("exists already") && said.contains("--resend"), "{said}");
    // The password never comes from the command line.
    let (ok, said) = run(&["aws-signup", "--email", "trial@example.org", "--password", "x"]);
    assert!(!ok && said.contains("--password"), "{said}");

    // moto accepts any code (it sends no e-mail); real Cognito checks it.
    let (ok, said) = run(&["aws-confirm", "--code", "123456"]);
    assert!(ok, "{said}");
    assert!(said.contains("Confirmed") && said.contains(&format!("aws-login {config_arg}")), "{said}");
    // moto 5.2 does not implement ResendConfirmationCode (HTTP 500): the call is made and its
    // failure named; a moto that has it answers with where the code went.
    let (ok, said) = run(&["aws-confirm", "--resend"]);
    assert!(
        (ok && said.contains("Sent a new confirmation code"))
            || (!ok && said.contains("ResendConfirmationCode")),
        "{said}"
    );
    let (ok, said) = run(&["aws-confirm", "--code", "123456", "--resend"]);
    assert!(!ok && said.contains("cannot be used with"), "--code and --resend exclude each other: {said}");

    let (ok, said) = run(&["aws-login"]);
    assert!(ok, "{said}");
    assert!(said.contains(&format!("sub: {sub}")), "{said}");

    // The node uploads as the new user, under its own sub.
    let node = start(d.path(), &upload, &aws);
    let files = corpus(&d.path().join("in"), 3, false);
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));
    let objects = wait_for_objects(&moto.url(), files.len(), &node).await;
    check_objects(&objects, &node, &Aws { sub, ..aws.clone() }, &moto);
}

/// Issue 23: a sender re-sending what it sent (a retry, a second route) costs no upload: the
/// anonymized bytes are those already in the bucket, so the instances are not queued again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_re_send_is_not_uploaded_again() {
    let (d, moto, aws, password) = world(PASSWORD).await;
    let upload = upload_yaml(&aws, &moto.url(), "site-user", &password, "");
    let node = start(d.path(), &upload, &aws);
    let files = corpus(&d.path().join("in"), 6, false);
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));
    wait_for_objects(&moto.url(), files.len(), &node).await;
    wait_for_queue(&node, &format!("uploaded: {}", files.len())).await;
    assert_eq!(moto.requests("PUT", ".dcm"), files.len());

    // The same files again, then a new one. The queue is empty only once every queued instance
    // is uploaded, so a re-sent one queued again would be put before the wait ends.
    let out = storescu(node.port, &files);
    assert!(out.status.success(), "{}", text(&out));
    let new = put(
        &d.path().join("new"),
        "new.dcm",
        &instance(&smith(), &Shape { instance: 50, ..Shape::default() }),
    );
    let out = storescu(node.port, &[new]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for_objects(&moto.url(), files.len() + 1, &node).await;
    wait_for_queue(&node, &format!("uploaded: {}", files.len() + 1)).await;
    assert_eq!(
        moto.requests("PUT", ".dcm"),
        files.len() + 1,
        "{}",
        std::fs::read_to_string(&moto.log).unwrap()
    );
    assert!(node.stop().success());
}
