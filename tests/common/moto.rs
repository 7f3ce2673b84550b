//! moto_server (Cognito user and identity pools, S3) on 127.0.0.1, set up through the real AWS
//! SDK, and a TCP proxy in front of it to simulate an outage.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use super::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "research-archive";
pub const PASSWORD: &str = "Corr3ct-Horse!";
pub const NEW_PASSWORD: &str = "N3w-Battery-Staple!";

pub struct Moto {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Moto {
    /// Start moto_server; its absence fails the test (it is never skipped).
    pub fn start(dir: &Path) -> Moto {
        let port = free_port();
        let log = dir.join("moto.log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server cannot start ({e}): pip install 'moto[server]' (.ci/run does)")
            });
        wait_for_port(port);
        Moto { child, port, log }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many requests moto logged for `method` and a path containing `fragment`.
    pub fn requests(&self, method: &str, fragment: &str) -> usize {
        self.logged(method, fragment, "")
    }

    /// Requests moto answered with 200: a put cut off by an outage is logged too, but delivered
    /// nothing.
    pub fn succeeded(&self, method: &str, fragment: &str) -> usize {
        self.logged(method, fragment, "\" 200 ")
    }

    fn logged(&self, method: &str, fragment: &str, status: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} ")) && l.contains(fragment) && l.contains(status))
            .count()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test created in moto.
#[derive(Debug, Clone)]
pub struct Aws {
    pub user_pool_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub identity_pool_id: String,
    pub sub: String,
}

async fn shared(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test"))
        .load()
        .await
}

pub async fn s3(url: &str) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared(url).await).force_path_style(true).build(),
    )
}

/// A user pool with an app client that has a secret, the confirmed user `site-user`, the user
/// `new-user` in FORCE_CHANGE_PASSWORD, an identity pool and the bucket.
pub async fn setup(url: &str) -> Aws {
    use aws_sdk_cognitoidentityprovider::types::ExplicitAuthFlowsType;
    let conf = shared(url).await;
    let idp = aws_sdk_cognitoidentityprovider::Client::new(&conf);
    let pool = idp.create_user_pool().pool_name("site").send().await.unwrap();
    let pool_id = pool.user_pool().unwrap().id().unwrap().to_string();
    let client = idp
        .create_user_pool_client()
        .user_pool_id(&pool_id)
        .client_name("gateway")
        .generate_secret(true)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserPasswordAuth)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
        .send()
        .await
        .unwrap();
    let client = client.user_pool_client().unwrap();
    let (client_id, client_secret) =
        (client.client_id().unwrap().to_string(), client.client_secret().unwrap().to_string());
    for (user, permanent) in [("site-user", true), ("new-user", false)] {
        create_user(&idp, &pool_id, user, permanent).await;
    }
    let user = idp.admin_get_user().user_pool_id(&pool_id).username("site-user").send().await.unwrap();
    let sub = user.user_attributes().iter().find(|a| a.name() == "sub").unwrap().value().unwrap().to_string();
    let identity = aws_sdk_cognitoidentity::Client::new(&conf);
    let provider = aws_sdk_cognitoidentity::types::CognitoIdentityProvider::builder()
        .provider_name(format!("cognito-idp.{REGION}.amazonaws.com/{pool_id}"))
        .client_id(&client_id)
        .build();
    let ip = identity
        .create_identity_pool()
        .identity_pool_name("site")
        .allow_unauthenticated_identities(false)
        .cognito_identity_providers(provider)
        .send()
        .await
        .unwrap();
    s3(url).await.create_bucket().bucket(BUCKET).send().await.unwrap();
    Aws {
        user_pool_id: pool_id,
        client_id,
        client_secret,
        identity_pool_id: ip.identity_pool_id().to_string(),
        sub,
    }
}

/// Every key in the bucket with its bytes and content type.
pub async fn objects(url: &str) -> Vec<(String, Vec<u8>, Option<String>)> {
    let s3 = s3(url).await;
    let mut out = Vec::new();
    let listed = s3.list_objects_v2().bucket(BUCKET).max_keys(1000).send().await.unwrap();
    for o in listed.contents() {
        let key = o.key().unwrap().to_string();
        let got = s3.get_object().bucket(BUCKET).key(&key).send().await.unwrap();
        let ct = got.content_type().map(str::to_string);
        let body = got.body.collect().await.unwrap().into_bytes().to_vec();
        out.push((key, body, ct));
    }
    out
}

/// The `upload:` section for a node that signs in as `user`; the password is in `password_file`.
pub fn upload_yaml(aws: &Aws, url: &str, user: &str, password_file: &Path, extra: &str) -> String {
    format!(
        "upload:\n  enabled: true\n  region: {REGION}\n  account_id: \"123456789012\"\n  user_pool_id: {}\n  app_client_id: {}\n  \
         client_secret_env: TEST_COGNITO_CLIENT_SECRET\n  identity_pool_id: \"{}\"\n  username: {user}\n  password_env: null\n  \
         password_file: {}\n  bucket: {BUCKET}\n  prefix: private\n  endpoint_url: {url}\n  concurrency: 4\n{extra}",
        aws.user_pool_id,
        aws.client_id,
        aws.identity_pool_id,
        password_file.display()
    )
}

/// A TCP proxy to moto whose answers can be lost: requests still reach moto (objects are stored),
/// but the client's connection is closed when the answer comes, as when a network drops between
/// an S3 write and its reply. The harshest outage for "nothing is sent twice".
pub struct Proxy {
    pub port: u16,
    answers_lost: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let p = Proxy { port: listener.local_addr().unwrap().port(), answers_lost: Arc::default() };
        let lost = p.answers_lost.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), None);
                pipe(server, client, Some(lost.clone()));
            }
        });
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on every answer is lost (requests still arrive).
    pub fn lose_answers(&self) {
        self.answers_lost.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.answers_lost.store(false, Ordering::SeqCst);
    }
}

/// Copy `from` to `to`; when `lost` is set at the time bytes arrive, they are dropped and `to` is
/// closed instead (the rest of the answer is read and discarded, so the server finishes normally).
fn pipe(mut from: TcpStream, mut to: TcpStream, lost: Option<Arc<AtomicBool>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        let mut dropping = false;
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if dropping || lost.as_ref().is_some_and(|l| l.load(Ordering::SeqCst)) {
                        dropping = true;
                        let _ = to.shutdown(Shutdown::Both);
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A user with an email (attributes first, so that `sub` is not the first attribute, as in real
/// pools); `permanent`: confirmed with [`PASSWORD`], else left in FORCE_CHANGE_PASSWORD.
async fn create_user(
    idp: &aws_sdk_cognitoidentityprovider::Client,
    pool_id: &str,
    user: &str,
    permanent: bool,
) {
    use aws_sdk_cognitoidentityprovider::types::AttributeType;
    idp.admin_create_user()
        .user_pool_id(pool_id)
        .username(user)
        .temporary_password(PASSWORD)
        .user_attributes(
            AttributeType::builder().name("email").value(format!("{user}@example.org")).build().unwrap(),
        )
        .user_attributes(AttributeType::builder().name("email_verified").value("true").build().unwrap())
        .send()
        .await
        .unwrap();
    if permanent {
        idp.admin_set_user_password()
            .user_pool_id(pool_id)
            .username(user)
            .password(PASSWORD)
            .permanent(true)
            .send()
            .await
            .unwrap();
    }
}

/// Another confirmed user in the test's pool, with the password [`PASSWORD`]; returns its sub.
pub async fn add_user(url: &str, aws: &Aws, user: &str) -> String {
    let idp = aws_sdk_cognitoidentityprovider::Client::new(&shared(url).await);
    create_user(&idp, &aws.user_pool_id, user, true).await;
    let got = idp.admin_get_user().user_pool_id(&aws.user_pool_id).username(user).send().await.unwrap();
    got.user_attributes().iter().find(|a| a.name() == "sub").unwrap().value().unwrap().to_string()
}
