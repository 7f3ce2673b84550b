//! The node's configuration: the only code that reads YAML or the environment.
//!
//! Unknown keys are errors, defaults sit next to their fields, and `validate` reports every
//! problem at once, each naming its dotted key. Secrets are read from a file or an environment
//! variable named here, never from the YAML itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod peers;
mod projects;
mod secret;

pub use peers::{ClientTls, DicomPeer, DicomwebAuth, DicomwebDestination, ExportConfig, ExportDestination};
pub use secret::SecretSource;

use crate::anonymize::{
    AccessionFormat, DateDirection, ProfileOptions, Semantics, Settings, UnsupportedOps, Unverifiable,
};

/// One project's view of the configuration: its own identity, anonymization, filters, storage and
/// upload target, with the node-wide sections (listener, logging, http) alongside. A file with
/// `projects:` resolves to one of these per project (see `projects.rs`); everything that runs a
/// project (pipeline, SCP, uploader, the offline commands) takes exactly one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub project: ProjectConfig,
    #[serde(default)]
    pub scp: ScpConfig,
    #[serde(default)]
    pub upload: UploadConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// PACS the `retrieve` command may query and move from.
    #[serde(default)]
    pub pacs: Vec<DicomPeer>,
    /// Destinations of the queue besides S3.
    #[serde(default)]
    pub export: ExportConfig,
    /// Where the PHI index lives: SQLite in the storage directory, or a PostgreSQL database
    /// shared by several nodes.
    #[serde(default)]
    pub index: IndexConfig,
    /// This node among several on one index.
    #[serde(default)]
    pub node: NodeConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexBackend {
    /// `private/index.db` in the storage directory: one node's own.
    #[default]
    Sqlite,
    /// A PostgreSQL database: several nodes, one archive (README, "Several nodes").
    Postgres,
}

/// The PHI index's database. The connection string holds a password: it is read from a file or
/// an environment variable, never written in the configuration or on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    pub backend: IndexBackend,
    /// Environment variable holding the PostgreSQL connection string
    /// (`postgresql://user:password@host:port/database`).
    pub url_env: Option<String>,
    /// File holding it.
    pub url_file: Option<PathBuf>,
    /// The PostgreSQL schema of this project; absent: the project's name in lower case.
    pub schema: Option<String>,
    /// TLS to PostgreSQL, the server's certificate checked against `ca_file` and the URL's host
    /// (`hostaddr=` in the URL connects elsewhere while that name is checked); our certificate
    /// shown if given. Absent: plain TCP.
    pub tls: Option<ClientTls>,
}

impl IndexConfig {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        match self.backend {
            IndexBackend::Sqlite => {
                if self.url_env.is_some()
                    || self.url_file.is_some()
                    || self.schema.is_some()
                    || self.tls.is_some()
                {
                    p.push(
                        "index.url_env, index.url_file, index.schema, index.tls: only for index.backend: postgres"
                            .into(),
                    );
                }
            }
            IndexBackend::Postgres => {
                if self.url_env.is_none() == self.url_file.is_none() {
                    p.push(
                        "index.url_env or index.url_file: exactly one must name where the connection string is".into(),
                    );
                }
                if let Some(tls) = &self.tls {
                    if tls.server_name.is_some() {
                        p.push(
                            "index.tls.server_name: the name checked is the URL's host; connect elsewhere with hostaddr= in the URL"
                                .into(),
                        );
                    }
                    tls.problems("index.tls", &mut p);
                }
                if let Some(schema) = &self.schema {
                    if schema.is_empty() || schema.len() > 63 || schema.contains('\0') {
                        p.push(format!("index.schema: {schema:?} must be 1 to 63 bytes"));
                    }
                }
            }
        }
        p
    }

    /// The PostgreSQL schema of `project`.
    pub fn schema_of(&self, project: &str) -> String {
        self.schema.clone().unwrap_or_else(|| {
            project
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                .collect()
        })
    }

    /// Where the index is: reads the connection string of a PostgreSQL index.
    pub fn location(
        &self,
        project: &str,
        storage: &StorageConfig,
        node: &NodeConfig,
    ) -> Result<crate::index::Location, ConfigError> {
        use crate::index::Location;
        match self.backend {
            IndexBackend::Sqlite => Ok(Location::Sqlite(storage.index_path())),
            IndexBackend::Postgres => {
                let source = secret::SecretSource {
                    key: "index.url",
                    env: self.url_env.as_deref(),
                    file: self.url_file.as_deref(),
                };
                let url = source
                    .read()?
                    .ok_or_else(|| ConfigError::MissingSecret("index.url_env or index.url_file".into()))?;
                Ok(Location::Postgres {
                    url,
                    schema: self.schema_of(project),
                    node: node.id(),
                    tls: self.tls.clone(),
                })
            }
        }
    }
}

/// Who this node is among those sharing an index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stamped on the instances this node stores: its upload and export queues take only
    /// those, since the files are on its disk. Absent: the host name.
    pub id: Option<String>,
}

impl NodeConfig {
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(host_name)
    }

    fn validate(&self) -> Vec<String> {
        match &self.id {
            Some(id)
                if id.is_empty()
                    || id.len() > 64
                    || id.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                vec![format!("node.id: {id:?} must be 1 to 64 characters, none of them blank or control")]
            }
            _ => Vec::new(),
        }
    }
}

/// The machine's host name (`localhost` if it has none).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PseudonymMode {
    /// RSNA DICOM Anonymizer 18.x: numbered patients, md5 UIDs (keeps an RSNA archive consistent).
    #[default]
    Rsna,
    /// HMAC-SHA256 under `secret_file`/`secret_env`: stateless, needs no shared index.
    Keyed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Written into (0013,1003) and used in upload keys.
    pub name: String,
    /// Written into every pseudonym; cannot change once the index exists.
    pub site_id: String,
    #[serde(default = "default_uid_root")]
    pub uid_root: String,
    /// The anonymizer script; a relative path is relative to the config file's directory, and a
    /// shipped script's name (`config/ps315-basic-profile.script`) that is not found there is
    /// read from the copy built into the binary.
    #[serde(default = "default_script")]
    pub script: PathBuf,
    #[serde(default)]
    pub pseudonyms: PseudonymMode,
    #[serde(default)]
    pub accession_format: AccessionFormat,
    #[serde(default)]
    pub unsupported_ops: UnsupportedOps,
    /// `rsna` (an attribute without a rule is removed) or `ctp` (kept, through the safety net);
    /// absent: read from the script (README, "Anonymization scripts").
    #[serde(default)]
    pub script_semantics: Option<Semantics>,
    /// The PS3.15 options a profile script is applied with; (0012,0064) lists those applied.
    #[serde(default)]
    pub profile_options: ProfileOptions,
    /// Encapsulated documents, and images whose pixels cannot be read for burned-in text:
    /// quarantine (default), remove or keep.
    #[serde(default)]
    pub unverifiable: Unverifiable,
    /// The burned-in text stage: OCR, region rules, which images are read.
    #[serde(default)]
    pub pixels: crate::anonymize::pixels::PixelConfig,
    /// `backward` or `forward`; absent: backward under a profile script or in keyed mode,
    /// forward (RSNA's rule) otherwise.
    #[serde(default)]
    pub date_shift: Option<DateDirection>,
    /// File holding the project secret (keyed mode).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the project secret (keyed mode), if no file is given.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// CTP lookup table (Java properties, `ptid/<PatientID>=<subject ID>`,
    /// `dateoffset/<PatientID>=<days>`) for the script's `@lookup` rules; checked whole at start.
    #[serde(default)]
    pub lookup_table: Option<PathBuf>,
}

impl ProjectConfig {
    /// What the script loader needs from the project.
    pub fn script_settings(&self) -> Settings {
        Settings {
            unsupported: self.unsupported_ops,
            semantics: self.script_semantics,
            options: self.profile_options,
            unverifiable: self.unverifiable,
            date_shift: self
                .date_shift
                .or((self.pseudonyms == PseudonymMode::Keyed).then_some(DateDirection::Backward)),
        }
    }
}

/// The DICOM listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScpConfig {
    /// Our AE title: the called AE title of every association must equal it.
    pub ae_title: String,
    pub host: String,
    /// 0 picks a free port (printed at start).
    pub port: u16,
    /// Calling AE titles allowed to associate; empty: any peer.
    pub allowed_calling_ae_titles: Vec<String>,
    /// Concurrent associations; the next one is rejected (transient, local limit exceeded).
    pub max_associations: usize,
    /// The largest PDU we accept and announce.
    pub max_pdu_length: u32,
    /// Larger instances are refused with 0xA700 (a Deflated one counts inflated).
    pub max_instance_bytes: u64,
    /// The most of one data set held in memory: everything but its pixel data. A data set with
    /// more is refused with 0xA700, so no instance can take the host's memory.
    pub max_in_memory_bytes: u64,
    /// The most of all data sets held in memory at once, node-wide: `max_in_memory_bytes` times
    /// `max_associations` would be over 2 GiB. An instance that does not fit waits briefly for
    /// others to finish, then is refused with 0xA700.
    pub max_in_memory_total_bytes: u64,
    pub timeouts: Timeouts,
    /// Accepted values of Modality (0008,0060); empty: any.
    pub modalities: Vec<String>,
    /// Accepted SOP classes; empty: every standard storage SOP class.
    pub storage_classes: Vec<String>,
    /// Accepted transfer syntaxes; empty: every syntax we can parse (compressed pixel data passes
    /// through untouched).
    pub transfer_syntaxes: Vec<String>,
    /// DICOM TLS (PS3.15 Annex B, BCP 195) on a second port, or instead of plain TCP.
    pub tls: Option<TlsConfig>,
    /// Client certificate subjects (their common name, CN) allowed to call this AE title over TLS;
    /// empty: any certificate the client CA signed. A list also closes the plain port to this AE
    /// title (plain TCP has no certificate to check). Needs `scp.tls.client_ca_file`.
    pub tls_allowed_subjects: Vec<String>,
}

/// The TLS listener. Certificate files are read at start and again on SIGHUP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// 2762 is DICOM's registered TLS port; 0 picks a free port (printed at start).
    #[serde(default = "default_tls_port")]
    pub port: u16,
    /// PEM: our certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM: the private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the CA(s) whose certificates clients must present (mutual TLS); absent: no client
    /// certificate is asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// TLS only: no plain listener on `scp.port`.
    #[serde(default)]
    pub only: bool,
}

fn default_tls_port() -> u16 {
    2762
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Association negotiation.
    pub acse_s: u64,
    /// The next PDU of a message that has started.
    pub dimse_s: u64,
    /// The next message on an open association.
    pub idle_s: u64,
}

impl Default for ScpConfig {
    fn default() -> Self {
        ScpConfig {
            ae_title: "ANONYMIZER".into(),
            host: "0.0.0.0".into(),
            port: 11112,
            allowed_calling_ae_titles: Vec::new(),
            max_associations: 32,
            max_pdu_length: 65536,
            max_instance_bytes: 4 << 30,
            max_in_memory_bytes: 64 << 20,
            max_in_memory_total_bytes: 256 << 20,
            timeouts: Timeouts::default(),
            modalities: Vec::new(),
            storage_classes: Vec::new(),
            transfer_syntaxes: Vec::new(),
            tls: None,
            tls_allowed_subjects: Vec::new(),
        }
    }
}

impl ScpConfig {
    /// The most of all data sets in memory at once, and what it would be without the node-wide
    /// budget (every association at `max_in_memory_bytes`), for `check-config`.
    pub fn worst_case_in_memory(&self) -> (u64, u64) {
        let unbounded =
            crate::memory_budget::cost(self.max_in_memory_bytes).saturating_mul(self.max_associations as u64);
        (self.max_in_memory_total_bytes.min(unbounded), unbounded)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { acse_s: 30, dimse_s: 60, idle_s: 120 }
    }
}

/// The background uploader (RSNA's field names where RSNA has them).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    pub enabled: bool,
    pub auth: UploadAuth,
    pub region: String,
    pub account_id: String,
    pub user_pool_id: String,
    pub app_client_id: String,
    /// Environment variable or file holding the app client secret (only if the client has one).
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub identity_pool_id: String,
    pub username: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Used only to answer NEW_PASSWORD_REQUIRED.
    pub new_password_env: Option<String>,
    pub new_password_file: Option<PathBuf>,
    pub bucket: String,
    pub prefix: String,
    /// An S3-compatible store or a local emulator; also used for Cognito when set.
    pub endpoint_url: Option<String>,
    pub concurrency: usize,
    pub multipart_threshold_bytes: u64,
    pub delete_after_upload: bool,
    /// Refresh credentials this long before they expire.
    pub refresh_margin_s: u64,
    /// On start, list the bucket under our prefix and count existing keys as uploaded.
    pub reconcile_on_start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadAuth {
    /// Cognito user pool sign-in, then identity-pool credentials.
    #[default]
    Cognito,
    /// The AWS SDK's usual credentials (IAM role, environment, profile).
    DefaultChain,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: false,
            auth: UploadAuth::Cognito,
            region: "us-east-1".into(),
            account_id: String::new(),
            user_pool_id: String::new(),
            app_client_id: String::new(),
            client_secret_env: None,
            client_secret_file: None,
            identity_pool_id: String::new(),
            username: String::new(),
            password_env: Some("COGNITO_PASSWORD".into()),
            password_file: None,
            new_password_env: None,
            new_password_file: None,
            bucket: String::new(),
            prefix: "private".into(),
            endpoint_url: None,
            concurrency: 8,
            multipart_threshold_bytes: 16 << 20,
            delete_after_upload: false,
            refresh_margin_s: 600,
            reconcile_on_start: true,
        }
    }
}

impl UploadConfig {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let mut need = |key: &str, v: &str| {
            if v.trim().is_empty() {
                p.push(format!("upload.{key}: must be set when upload.enabled is true"));
            }
        };
        need("region", &self.region);
        need("bucket", &self.bucket);
        if self.auth == UploadAuth::Cognito {
            need("user_pool_id", &self.user_pool_id);
            need("app_client_id", &self.app_client_id);
            need("identity_pool_id", &self.identity_pool_id);
            need("username", &self.username);
            need("account_id", &self.account_id);
            if self.password_env.is_none() && self.password_file.is_none() {
                p.push(
                    "upload.password_env or upload.password_file: one must name where the password is".into(),
                );
            }
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            p.push(format!("upload.concurrency: {} must be between 1 and 256", self.concurrency));
        }
        if self.multipart_threshold_bytes < 5 << 20 {
            p.push(format!(
                "upload.multipart_threshold_bytes: {} is below S3's 5 MiB minimum part size",
                self.multipart_threshold_bytes
            ));
        }
        if self.prefix.contains("..") || self.prefix.starts_with('/') {
            p.push(format!("upload.prefix: {:?} must be a relative key prefix", self.prefix));
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!("upload.endpoint_url: {url:?} must start with http:// or https://"));
            }
        }
        p
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_storage_dir")]
    pub dir: PathBuf,
    /// Refuse new instances (0xA700) when the disk has less free space than this.
    #[serde(default = "default_min_free")]
    pub min_free_bytes: u64,
}

/// The operations endpoint: `/metrics`, `/healthz`, `/readyz` and the status page `/`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Address and port; port 0 picks a free one (printed at start).
    pub listen: String,
    /// Environment variable holding a bearer token required on every path but `/healthz`.
    pub token_env: Option<String>,
    /// File holding that token (takes precedence over `token_env`).
    pub token_file: Option<PathBuf>,
    /// HTTPS on `listen` instead of HTTP (BCP 195, as the DICOM TLS listener); with
    /// `client_ca_file`, clients must present a certificate, and a project's
    /// `scp.tls_allowed_subjects` then also says who may send it studies by STOW-RS.
    pub tls: Option<HttpTlsConfig>,
}

/// The HTTPS listener's certificates: read at start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM: our certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM: its private key.
    pub key_file: PathBuf,
    /// PEM: the CA(s) whose certificates clients must present; absent: none asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            token_env: None,
            token_file: None,
            tls: None,
        }
    }
}

/// Shortest bearer token accepted: a guessable one is worse than none, since it looks like a lock.
const MIN_TOKEN_LEN: usize = 16;

impl HttpConfig {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("http.listen: {:?} is not an address and port like 127.0.0.1:8080", self.listen));
        }
        if matches!(&self.token_env, Some(v) if v.trim().is_empty()) {
            p.push("http.token_env: must name an environment variable".into());
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("cert_file", Some(&tls.cert_file)), ("key_file", Some(&tls.key_file))]
                .into_iter()
                .chain([("client_ca_file", tls.client_ca_file.as_ref())])
            {
                if path.is_some_and(|p| p.as_os_str().is_empty()) {
                    p.push(format!("http.tls.{key}: must name a PEM file"));
                }
            }
        }
        p
    }

    /// The bearer token, when one is configured. A configured token that cannot be read is an
    /// error: the endpoint never falls back to open.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let source = SecretSource {
            key: "http.token",
            env: self.token_env.as_deref(),
            file: self.token_file.as_deref(),
        };
        let Some(token) = source.read_at_least(MIN_TOKEN_LEN)? else { return Ok(None) };
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ConfigError::MissingSecret("http.token: a bearer token holds no spaces".into()));
        }
        Ok(Some(token))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_uid_root() -> String {
    "1.2.826.0.1.3680043.10.474.2".into()
}
fn default_script() -> PathBuf {
    "config/ps315-basic-profile.script".into()
}
fn default_secret_env() -> String {
    "DICOM_ANON_PROJECT_SECRET".into()
}
fn default_storage_dir() -> PathBuf {
    "./data".into()
}
fn default_min_free() -> u64 {
    1 << 30
}
fn default_level() -> String {
    "info".into()
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { dir: default_storage_dir(), min_free_bytes: default_min_free() }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: default_level(), format: LogFormat::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {}", in_words(&source.to_string()))]
    Parse { path: String, source: serde_norway::Error },
    #[error("{path} has problems:\n  {}", problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
    #[error("a secret is missing: {0}")]
    MissingSecret(String),
}

/// A parse error with Rust's type names said as the values they take (`expected u16` means
/// nothing to someone editing a YAML file).
fn in_words(message: &str) -> String {
    const TYPES: [(&str, &str); 5] = [
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected a boolean", "expected true or false"),
    ];
    TYPES.iter().fold(message.to_string(), |m, (rust, words)| m.replace(rust, words))
}

impl Config {
    /// The file's only project. A file with several projects is an error that names them: the
    /// commands that act on one project take `--project` and call [`Config::load_project`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_project(path, None)
    }

    /// The project called `name`, or the only one when `name` is `None`.
    pub fn load_project(path: &Path, name: Option<&str>) -> Result<Config, ConfigError> {
        let all = Config::load_all(path)?;
        projects::choose(all, name).map_err(|problem| ConfigError::Invalid {
            path: path.display().to_string(),
            problems: vec![problem],
        })
    }

    /// Every project in the file, each resolved over the shared defaults and validated.
    pub fn load_all(path: &Path) -> Result<Vec<Config>, ConfigError> {
        let read = |source| ConfigError::Read { path: path.display().to_string(), source };
        let text = std::fs::read_to_string(path).map_err(read)?;
        let mut configs = projects::parse(&text).map_err(|e| match e {
            projects::ParseError::Yaml(source) => {
                ConfigError::Parse { path: path.display().to_string(), source }
            }
            projects::ParseError::Invalid(problems) => {
                ConfigError::Invalid { path: path.display().to_string(), problems }
            }
        })?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).map_err(read)?;
        for config in &mut configs {
            config.resolve_paths(&dir);
        }
        Ok(configs)
    }

    /// Make every relative path in the file relative to the file's directory (`dir`), not to the
    /// working directory: a service manager starts the node from `/`, and where it was started
    /// must not decide which script, secret or storage directory a project gets. A program name
    /// without a `/` (`pixels.tesseract: tesseract`) is still looked up on `PATH`.
    fn resolve_paths(&mut self, dir: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        let project = &mut self.project;
        at(&mut project.script);
        project.secret_file.iter_mut().for_each(at);
        project.lookup_table.iter_mut().for_each(at);
        project.pixels.regions.iter_mut().for_each(at);
        if project.pixels.tesseract.components().count() > 1 {
            at(&mut project.pixels.tesseract);
        }
        let upload = &mut self.upload;
        for file in [&mut upload.client_secret_file, &mut upload.password_file, &mut upload.new_password_file]
        {
            file.iter_mut().for_each(at);
        }
        at(&mut self.storage.dir);
        self.http.token_file.iter_mut().for_each(at);
        if let Some(tls) = &mut self.http.tls {
            at(&mut tls.cert_file);
            at(&mut tls.key_file);
            tls.client_ca_file.iter_mut().for_each(at);
        }
        if let Some(tls) = &mut self.scp.tls {
            at(&mut tls.cert_file);
            at(&mut tls.key_file);
            tls.client_ca_file.iter_mut().for_each(at);
        }
        for d in &mut self.export.dicomweb {
            d.ca_file.iter_mut().for_each(at);
            if let Some(auth) = &mut d.auth {
                auth.token_file.iter_mut().for_each(at);
                auth.basic_password_file.iter_mut().for_each(at);
            }
        }
        for tls in self.export.dicom.iter_mut().filter_map(|d| d.tls.as_mut()) {
            at(&mut tls.ca_file);
            tls.cert_file.iter_mut().for_each(at);
            tls.key_file.iter_mut().for_each(at);
        }
    }

    /// Every problem, each naming the dotted key. Nothing is clamped or replaced silently.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let project = &self.project;
        if project.name.trim().is_empty() {
            p.push("project.name: must not be empty".into());
        } else if project.name.len() > 16
            || project.name.contains(['\\', '/'])
            || project.name.starts_with('.')
            || project.name.chars().any(char::is_control)
        {
            p.push(format!("project.name: {:?} must be at most 16 characters, not starting with '.', with no '\\', '/' or control characters (it is written as SH and used in upload keys)", project.name));
        }
        if project.site_id.is_empty()
            || project.site_id.len() > 16
            || !project.site_id.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            || project.site_id.starts_with('.')
            || project.site_id.ends_with('.')
        {
            p.push(format!("project.site_id: {:?} must be 1 to 16 digits and dots, like \"972149\" (it becomes part of every UID)", project.site_id));
        }
        let root = project.uid_root.trim();
        if root.is_empty()
            || !root.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            || root.split('.').any(|c| c.is_empty() || (c.len() > 1 && c.starts_with('0')))
        {
            p.push(format!(
                "project.uid_root: {:?} is not a valid UID root (digits separated by dots, no leading zeros)",
                project.uid_root
            ));
        } else if root.len() + project.site_id.len() + 4 >= 64 - 10 {
            p.push(format!("project.uid_root: {root:?} with site_id {:?} leaves fewer than 10 digits for pseudonym UIDs within 64 characters", project.site_id));
        }
        if project.profile_options.retain_safe_private {
            p.push("project.profile_options.retain_safe_private: not supported; private attributes are always removed (their values cannot be checked)".into());
        }
        p.extend(self.scp.validate());
        p.extend(self.upload.validate());
        p.extend(self.http.validate());
        p.extend(self.index.validate());
        p.extend(self.node.validate());
        // The list is checked on whichever listener asks for client certificates: DICOM TLS for
        // associations, HTTPS for STOW-RS requests.
        let dicom = self.scp.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        let https = self.http.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        if !self.scp.tls_allowed_subjects.is_empty() && !dicom && !https {
            p.push("scp.tls_allowed_subjects: needs client certificates, scp.tls.client_ca_file or http.tls.client_ca_file (without them there is no subject to check)".into());
        }
        p.extend(peers::validate(self));
        let level = self.logging.level.as_str();
        let plain_level = ["trace", "debug", "info", "warn", "error", "off"].contains(&level);
        let directives =
            level.contains('=') && level.parse::<tracing_subscriber::filter::EnvFilter>().is_ok();
        if !plain_level && !directives {
            p.push(format!(
                "logging.level: {:?} is not a level (trace, debug, info, warn, error, off) or a filter like info,dicom_anon_gateway=debug",
                self.logging.level
            ));
        }
        p
    }

    /// The effective configuration as YAML, for `check-config`. Holds no secret: only where
    /// secrets come from.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    /// Everything that holds PHI (see [`StorageConfig::private_dir`]).
    pub fn private_dir(&self) -> PathBuf {
        self.storage.private_dir()
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.storage.tmp_dir()
    }

    pub fn index_path(&self) -> PathBuf {
        self.storage.index_path()
    }

    /// Where this project's PHI index is (a PostgreSQL one's connection string read now).
    pub fn index_location(&self) -> Result<crate::index::Location, ConfigError> {
        self.index.location(&self.project.name, &self.storage, &self.node)
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.storage.quarantine_dir()
    }

    pub fn public_dir(&self) -> PathBuf {
        self.storage.public_dir()
    }
}

impl StorageConfig {
    /// Everything that holds PHI: index, quarantine, spills, retrieve reports.
    pub fn private_dir(&self) -> PathBuf {
        self.dir.join("private")
    }

    /// Data sets spilled while they arrive.
    pub fn tmp_dir(&self) -> PathBuf {
        self.private_dir().join("tmp")
    }

    /// The PHI index.
    pub fn index_path(&self) -> PathBuf {
        self.private_dir().join("index.db")
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.private_dir().join("quarantine")
    }

    /// The anonymized files, the only part of the storage directory without PHI.
    pub fn public_dir(&self) -> PathBuf {
        self.dir.join("public")
    }
}

impl ProjectConfig {
    /// Who the index belongs to, checked each time it opens: the site, and in keyed mode the
    /// fingerprint of the secret (two nodes with different secrets must not share an index).
    pub fn index_owner(&self) -> Result<crate::index::Owner, ConfigError> {
        use crate::index::Owner;
        Ok(match self.pseudonyms {
            PseudonymMode::Keyed => Owner::keyed(&self.site_id, &self.secret()?),
            PseudonymMode::Rsna => Owner::for_site(&self.site_id),
        })
    }

    /// The project secret for keyed pseudonyms: from `secret_file`, else from `secret_env`.
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        let source = SecretSource {
            key: "project.secret",
            env: Some(&self.secret_env),
            file: self.secret_file.as_deref(),
        };
        let secret = source.read_at_least(16)?.ok_or_else(|| {
            ConfigError::MissingSecret(format!(
                "set project.secret_file, or put the secret in ${}",
                self.secret_env
            ))
        })?;
        Ok(secret.into_bytes())
    }
}

impl ScpConfig {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !valid_ae_title(&self.ae_title) {
            p.push(format!("scp.ae_title: {:?} must be 1 to 16 characters, not all spaces, with no '\\' or control characters", self.ae_title));
        }
        for (i, ae) in self.allowed_calling_ae_titles.iter().enumerate() {
            if !valid_ae_title(ae) {
                p.push(format!("scp.allowed_calling_ae_titles[{i}]: {ae:?} is not a valid AE title"));
            }
        }
        if self.host.parse::<std::net::IpAddr>().is_err() {
            p.push(format!(
                "scp.host: {:?} is not an IP address (use 0.0.0.0 for every interface)",
                self.host
            ));
        }
        if self.max_associations == 0 {
            p.push("scp.max_associations: must be at least 1".into());
        }
        if !(4096..=131_072).contains(&self.max_pdu_length) {
            p.push(format!("scp.max_pdu_length: {} must be between 4096 and 131072", self.max_pdu_length));
        }
        if self.max_instance_bytes < 1024 {
            p.push(format!(
                "scp.max_instance_bytes: {} is too small for any instance",
                self.max_instance_bytes
            ));
        }
        if self.max_in_memory_bytes < 4 << 20 {
            p.push(format!(
                "scp.max_in_memory_bytes: {} must be at least 4194304 (instances up to 2 MiB are held whole)",
                self.max_in_memory_bytes
            ));
        }
        let largest = crate::memory_budget::cost(self.max_in_memory_bytes);
        if self.max_in_memory_total_bytes < largest {
            p.push(format!(
                "scp.max_in_memory_total_bytes: {} must be at least {largest}, what one data set of \
                 scp.max_in_memory_bytes costs in memory (1.5 times its bytes)",
                self.max_in_memory_total_bytes
            ));
        }
        for (key, v) in [
            ("acse_s", self.timeouts.acse_s),
            ("dimse_s", self.timeouts.dimse_s),
            ("idle_s", self.timeouts.idle_s),
        ] {
            if v == 0 {
                p.push(format!("scp.timeouts.{key}: must be at least 1 second"));
            }
        }
        for (i, uid) in self.storage_classes.iter().enumerate() {
            if !valid_uid(uid) {
                p.push(format!("scp.storage_classes[{i}]: {uid:?} is not a UID"));
            }
        }
        for (i, uid) in self.transfer_syntaxes.iter().enumerate() {
            if !valid_uid(uid) {
                p.push(format!("scp.transfer_syntaxes[{i}]: {uid:?} is not a UID"));
            } else if !dicom_ul::association::server::is_supported(uid) {
                p.push(format!(
                    "scp.transfer_syntaxes[{i}]: {uid} is not a transfer syntax this node can read"
                ));
            }
        }
        for (i, s) in self.tls_allowed_subjects.iter().enumerate() {
            if s.trim().is_empty() || s.chars().any(char::is_control) {
                p.push(format!("scp.tls_allowed_subjects[{i}]: {s:?} is not a certificate common name"));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.port != 0 && tls.port == self.port && !tls.only {
                p.push(format!("scp.tls.port: {} is also scp.port; the plain and TLS listeners need their own ports (or set scp.tls.only)", tls.port));
            }
            for (key, file) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if file.as_os_str().is_empty() {
                    p.push(format!("scp.tls.{key}: must name a PEM file"));
                }
            }
        }
        p
    }
}

fn valid_ae_title(ae: &str) -> bool {
    !ae.trim().is_empty() && ae.len() <= 16 && !ae.contains('\\') && !ae.chars().any(char::is_control)
}

fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c.len() == 1 || !c.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, String> {
        serde_norway::from_str::<Config>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn tls_subjects_need_a_client_ca() {
        let c = parse("project: { name: P, site_id: '1' }\nscp: { tls: { cert_file: c.pem, key_file: k.pem }, tls_allowed_subjects: [pacs] }").unwrap();
        let problems = c.validate().join("\n");
        assert!(problems.contains("scp.tls_allowed_subjects: needs client certificates"), "{problems}");
        let https = "project: { name: P, site_id: '1' }\nscp: { tls_allowed_subjects: [pacs] }\nhttp: { tls: { cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem } }";
        let c = parse(https).unwrap();
        assert!(!c.validate().iter().any(|p| p.contains("tls_allowed_subjects")), "{:?}", c.validate());
        let c = parse("project: { name: P, site_id: '1' }\nscp: { port: 2762, tls: { cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem } }").unwrap();
        assert!(c.validate().iter().any(|p| p.starts_with("scp.tls.port")), "{:?}", c.validate());
    }

    /// `index.tls` is for PostgreSQL only, checks the URL's host (no other name), and takes our
    /// certificate with its key or not at all.
    #[test]
    fn index_tls_is_postgres_only_and_checks_the_urls_host() {
        let problems = |index: &str| {
            parse(&format!("project: {{ name: P, site_id: '1' }}\nindex: {index}"))
                .unwrap()
                .validate()
                .join("\n")
        };
        let pg = "{ backend: postgres, url_env: U, tls: { ca_file: ca.pem";
        assert!(!problems(&format!("{pg} }} }}")).contains("index."), "{}", problems(&format!("{pg} }} }}")));
        assert!(!problems(&format!("{pg}, cert_file: c.pem, key_file: k.pem }} }}")).contains("index."));
        assert!(
            problems("{ tls: { ca_file: ca.pem } }").contains("index.tls: only for index.backend: postgres")
        );
        assert!(problems(&format!("{pg}, server_name: db }} }}")).contains("index.tls.server_name"));
        assert!(problems(&format!("{pg}, cert_file: c.pem }} }}"))
            .contains("index.tls: cert_file and key_file go together"));
    }

    #[test]
    fn the_node_wide_memory_budget_bounds_the_worst_case_and_holds_the_largest_data_set() {
        let c = parse("project: { name: P, site_id: '1' }").unwrap();
        // 32 associations at 64 MiB (96 MiB in memory each) would be 3 GiB; the budget is 256 MiB.
        assert_eq!(c.scp.worst_case_in_memory(), (256 << 20, 32 * (96 << 20)));
        assert!(!c.validate().iter().any(|p| p.contains("max_in_memory")), "{:?}", c.validate());
        let c = parse("project: { name: P, site_id: '1' }\nscp: { max_in_memory_total_bytes: 67108864 }")
            .unwrap();
        let problems = c.validate().join("\n");
        assert!(
            problems.contains("scp.max_in_memory_total_bytes: 67108864 must be at least 100663296"),
            "{problems}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = parse("project: { name: P, site_id: '1', colour: blue }").unwrap_err();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn parse_errors_name_the_dotted_key_of_a_nested_field() {
        let err = parse("project: { name: P, site_id: '1' }\nscp: { timeouts: { acse: 5 } }").unwrap_err();
        assert!(err.contains("scp.timeouts"), "{err}");
        assert!(err.contains("acse"), "{err}");
        let err = parse("project: { name: P, site_id: '1' }\nscp: { port: many }").unwrap_err();
        assert!(err.contains("scp.port"), "{err}");
        assert!(in_words(&err).contains("a whole number from 0 to 65535"), "{}", in_words(&err));
    }

    #[test]
    fn yaml_1_1_words_stay_strings() {
        // YAML 1.1 reads `no` as false; under 1.2 (our crate) a site id or name of NO stays text.
        let c = parse("project: { name: NO, site_id: '1' }").unwrap();
        assert_eq!(c.project.name, "NO");
    }

    #[test]
    fn validation_reports_every_problem_with_its_key() {
        let c =
            parse("project: { name: '', site_id: 'abc', uid_root: '1.02.3' }\nlogging: { level: 'lots' }")
                .unwrap();
        let problems = c.validate().join("\n");
        for key in ["project.name", "project.site_id", "project.uid_root", "logging.level"] {
            assert!(problems.contains(key), "{key} missing from:\n{problems}");
        }
    }

    #[test]
    fn defaults_fill_a_minimal_project() {
        let c = parse("project: { name: P, site_id: '972149' }").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.project.uid_root, "1.2.826.0.1.3680043.10.474.2");
        assert_eq!(c.project.pseudonyms, PseudonymMode::Rsna);
        assert_eq!(c.storage.min_free_bytes, 1 << 30);
        assert!(c.http.enabled);
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.http.token().unwrap(), None);
    }

    #[test]
    fn an_http_token_that_is_configured_but_missing_or_short_is_an_error() {
        let c = parse("project: { name: P, site_id: '1' }\nhttp: { listen: 'nowhere', token_env: DAG_TEST_UNSET_TOKEN }")
            .unwrap();
        assert!(c.validate().iter().any(|p| p.starts_with("http.listen")), "{:?}", c.validate());
        assert!(c.http.token().is_err());
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("token");
        std::fs::write(&file, "short\n").unwrap();
        let mut http = HttpConfig { token_file: Some(file.clone()), ..HttpConfig::default() };
        assert!(http.token().is_err());
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        assert_eq!(http.token().unwrap().as_deref(), Some("0123456789abcdef0123"));
        http.token_file = None;
        assert_eq!(http.token().unwrap(), None);
    }
}
