//! Other DICOM nodes this one talks to as an SCU: the PACS that `retrieve` pulls from, and the
//! destinations that export sends the queue to.

use serde::{Deserialize, Serialize};

use super::{valid_ae_title, Config};

/// A DICOM peer: where it listens and the AE title it answers to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DicomPeer {
    /// How the command line and `queue status` name it.
    pub name: String,
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

impl DicomPeer {
    /// `AE@host:port`, as logs and reports name a peer (no PHI).
    pub fn label(&self) -> String {
        format!("{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// DICOM destinations: every anonymized instance is sent to each, once.
    pub dicom: Vec<ExportDestination>,
    /// DICOMweb destinations, sent by STOW-RS: every anonymized instance to each, once.
    pub dicomweb: Vec<DicomwebDestination>,
}

impl ExportConfig {
    /// Every destination's name and how logs and the page show where it is, DICOM first.
    pub fn destinations(&self) -> Vec<(String, String)> {
        let dicom = self.dicom.iter().map(|d| (d.peer.name.clone(), d.peer.label()));
        dicom.chain(self.dicomweb.iter().map(|d| (d.name.clone(), d.label()))).collect()
    }
}

/// A STOW-RS destination of the queue (PS3.18 §10.5): `url` is its DICOMweb base, to which
/// `/studies` is added.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DicomwebDestination {
    pub name: String,
    /// `http://` or `https://`, the service's base (Orthanc: `http://host:8042/dicom-web`).
    pub url: String,
    #[serde(default)]
    pub auth: Option<DicomwebAuth>,
    /// PEM: the CA trusted for an `https://` URL (the only one).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Instances per request.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Requests in flight at once.
    #[serde(default = "default_requests")]
    pub requests: usize,
    /// Wait this long for a connection, and for each response.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
}

impl DicomwebDestination {
    /// The URL without any user information: what logs and the page show.
    pub fn label(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{host}")
            }
            None => self.url.clone(),
        }
    }
}

/// How the node signs in to a DICOMweb destination: a bearer token or HTTP basic, each secret
/// read from a file or an environment variable, never from this file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DicomwebAuth {
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub basic_user: Option<String>,
    #[serde(default)]
    pub basic_password_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub basic_password_env: Option<String>,
}

impl DicomwebAuth {
    /// The `Authorization` header value; `key` names the section in errors. Read at start: a
    /// secret that cannot be read stops it.
    pub fn header(&self, key: &str) -> Result<String, super::ConfigError> {
        use super::secret::SecretSource;
        let read = |what: &str, env: Option<&str>, file: Option<&std::path::Path>| {
            let secret = format!("{key}.{what}");
            SecretSource { key: &secret, env, file }.read()?.ok_or_else(|| {
                super::ConfigError::MissingSecret(format!("{key}: no token and no basic_user"))
            })
        };
        if let Some(user) = &self.basic_user {
            let password = read(
                "basic_password",
                self.basic_password_env.as_deref(),
                self.basic_password_file.as_deref(),
            )?;
            use base64::Engine;
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            return Ok(format!("Basic {pair}"));
        }
        let token = read("token", self.token_env.as_deref(), self.token_file.as_deref())?;
        Ok(format!("Bearer {token}"))
    }
}

fn default_batch() -> usize {
    16
}
fn default_requests() -> usize {
    2
}

/// A DICOM destination of the queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDestination {
    #[serde(flatten)]
    pub peer: DicomPeer,
    /// Associations open at once to this destination.
    #[serde(default = "default_associations")]
    pub associations: usize,
    /// Before sending, ask the destination with a C-FIND (IMAGE level, one per series) which of
    /// the instances it already holds, and send only the others (RSNA's rule). Needs a
    /// destination that answers Study Root C-FIND; one that does not is sent everything.
    #[serde(default)]
    pub check_existing: bool,
    /// Wait this long for an association, and for each response.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// DICOM TLS to this destination; plain TCP without it.
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// TLS as a client, to a DICOM or DICOMweb destination or to the PostgreSQL index (TLS 1.2 and
/// 1.3, the BCP 195 suites, as on the SCP).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The CA that signed the server's certificate (PEM): the only one trusted.
    pub ca_file: std::path::PathBuf,
    /// Our certificate and key, for a destination that asks for one (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// The name the destination's certificate must carry; default: `host`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl ClientTls {
    pub(crate) fn problems(&self, key: &str, p: &mut Vec<String>) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.push(format!("{key}: cert_file and key_file go together"));
        }
    }
}

fn default_associations() -> usize {
    2
}
fn default_timeout_s() -> u64 {
    30
}

/// A peer's or destination's `name`: ours, shown in logs and metric labels, never a path.
fn name_problems(key: &str, name: &str, p: &mut Vec<String>) {
    if name.trim().is_empty() || name.chars().any(|c| c.is_control() || c == '/') {
        p.push(format!("{key}.name: {name:?} must be a non-empty name without '/' or control characters"));
    }
}

fn peer_problems(key: &str, peer: &DicomPeer, p: &mut Vec<String>) {
    name_problems(key, &peer.name, p);
    if !valid_ae_title(&peer.ae_title) {
        p.push(format!("{key}.ae_title: {:?} is not a valid AE title", peer.ae_title));
    }
    if peer.host.trim().is_empty() {
        p.push(format!("{key}.host: must not be empty"));
    }
    if peer.port == 0 {
        p.push(format!("{key}.port: must not be 0"));
    }
}

fn duplicate_names<'a>(key: &str, names: impl Iterator<Item = &'a str>, p: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            p.push(format!("{key}: the name {name:?} is used twice"));
        }
    }
}

fn dicomweb_problems(key: &str, d: &DicomwebDestination, p: &mut Vec<String>) {
    name_problems(key, &d.name, p);
    let https = d.url.starts_with("https://");
    if !(https || d.url.starts_with("http://")) || d.url.contains(char::is_whitespace) {
        p.push(format!("{key}.url: {:?} must be an http:// or https:// URL", d.label()));
    } else if d.url.split_once("://").is_some_and(|(_, rest)| rest.contains('@')) {
        p.push(format!(
            "{key}.url: holds credentials; put them in {key}.auth, read from a file or the environment"
        ));
    }
    // Credentials cross the network in clear over http://, except to this machine: the URL's
    // host, read as the client reads it (`StowClient::new`), is localhost or a loopback address.
    let host = d
        .url
        .parse::<hyper::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()));
    let loopback = host.is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    if d.auth.is_some() && !https && !loopback {
        p.push(format!("{key}.auth: would be sent in clear over http://; use an https:// URL"));
    }
    if https && d.ca_file.is_none() {
        p.push(format!("{key}.ca_file: an https:// destination needs the CA that signed its certificate"));
    }
    if !(1..=1000).contains(&d.batch) {
        p.push(format!("{key}.batch: {} must be between 1 and 1000", d.batch));
    }
    if !(1..=32).contains(&d.requests) {
        p.push(format!("{key}.requests: {} must be between 1 and 32", d.requests));
    }
    if d.timeout_s == 0 {
        p.push(format!("{key}.timeout_s: must be at least 1 second"));
    }
    if let Some(a) = &d.auth {
        let token = a.token_file.is_some() || a.token_env.is_some();
        let basic = a.basic_user.is_some();
        let password = a.basic_password_file.is_some() || a.basic_password_env.is_some();
        if token == basic {
            p.push(format!(
                "{key}.auth: give a token (token_file or token_env) or basic_user, not both or neither"
            ));
        }
        if basic != password {
            p.push(format!("{key}.auth: basic_user needs basic_password_file or basic_password_env"));
        }
    }
}

/// Problems with `pacs` and `export`, each naming its dotted key.
pub(super) fn validate(config: &Config) -> Vec<String> {
    let mut p = Vec::new();
    for (i, peer) in config.pacs.iter().enumerate() {
        peer_problems(&format!("pacs[{i}]"), peer, &mut p);
    }
    duplicate_names("pacs", config.pacs.iter().map(|x| x.name.as_str()), &mut p);
    for (i, d) in config.export.dicom.iter().enumerate() {
        let key = format!("export.dicom[{i}]");
        peer_problems(&key, &d.peer, &mut p);
        if !(1..=32).contains(&d.associations) {
            p.push(format!("{key}.associations: {} must be between 1 and 32", d.associations));
        }
        if d.timeout_s == 0 {
            p.push(format!("{key}.timeout_s: must be at least 1 second"));
        }
        if let Some(tls) = &d.tls {
            tls.problems(&format!("{key}.tls"), &mut p);
        }
    }
    for (i, d) in config.export.dicomweb.iter().enumerate() {
        dicomweb_problems(&format!("export.dicomweb[{i}]"), d, &mut p);
    }
    let names = config.export.destinations();
    duplicate_names("export", names.iter().map(|(n, _)| n.as_str()), &mut p);
    if config.upload.delete_after_upload && !names.is_empty() {
        p.push(
            "upload.delete_after_upload: cannot be true with export destinations (they still need the file)"
                .into(),
        );
    }
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn peers_are_checked_by_key_and_names_are_unique() {
        let yaml = "project: { name: P, site_id: '1' }\n\
                    pacs: [{ name: a, ae_title: PACS, host: 127.0.0.1, port: 104 }, { name: a, ae_title: '', host: h, port: 0 }]\n\
                    export: { dicom: [{ name: d, ae_title: DEST, host: 127.0.0.1, port: 104, associations: 0 }] }\n";
        let c: super::Config = serde_norway::from_str(yaml).unwrap();
        let problems = c.validate().join("\n");
        for key in ["pacs[1].ae_title", "pacs[1].port", "pacs: the name", "export.dicom[0].associations"] {
            assert!(problems.contains(key), "{key} missing from:\n{problems}");
        }
        assert!(!problems.contains("pacs[0]"), "{problems}");
        assert_eq!(c.export.dicom[0].peer.label(), "DEST@127.0.0.1:104");
    }

    #[test]
    fn dicomweb_destinations_are_checked_and_share_names_with_dicom_ones() {
        let yaml = "project: { name: P, site_id: '1' }\n\
                    export:\n  dicom: [{ name: a, ae_title: DEST, host: 127.0.0.1, port: 104 }]\n  dicomweb:\n\
                    \x20   - { name: a, url: 'https://user:pw@h/dw', batch: 0, auth: { token_env: T, basic_user: u } }\n\
                    \x20   - { name: b, url: 'ftp://h', requests: 33, auth: { basic_user: u } }\n\
                    \x20   - { name: c, url: 'http://pacs.example.org/dw', auth: { token_env: T } }\n\
                    \x20   - { name: d, url: 'http://127.evil.example/dw', auth: { token_env: T } }\n\
                    \x20   - { name: ok, url: 'http://127.0.0.1:8042/dicom-web', auth: { basic_user: u, basic_password_env: P } }\n";
        let c: super::Config = serde_norway::from_str(yaml).unwrap();
        let problems = c.validate().join("\n");
        for key in [
            "export: the name \"a\" is used twice",
            "export.dicomweb[0].url: holds credentials",
            "export.dicomweb[0].ca_file",
            "export.dicomweb[0].batch",
            "export.dicomweb[0].auth: give a token",
            "export.dicomweb[1].url",
            "export.dicomweb[1].requests",
            "export.dicomweb[1].auth: basic_user needs",
            "export.dicomweb[2].auth: would be sent in clear",
            "export.dicomweb[3].auth: would be sent in clear",
        ] {
            assert!(problems.contains(key), "{key} missing from:\n{problems}");
        }
        assert!(!problems.contains("export.dicomweb[4]"), "{problems}");
        assert!(!problems.contains("pw"), "a password in a URL is never repeated: {problems}");
    }
}
