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
    pub tls: Option<ExportTls>,
}

/// DICOM TLS as a client (TLS 1.2 and 1.3, the BCP 195 suites, as on the SCP).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTls {
    /// The CA that signed the destination's certificate (PEM): the only one trusted.
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

fn default_associations() -> usize {
    2
}
fn default_timeout_s() -> u64 {
    30
}

fn peer_problems(key: &str, peer: &DicomPeer, p: &mut Vec<String>) {
    if peer.name.trim().is_empty() || peer.name.chars().any(|c| c.is_control() || c == '/') {
        p.push(format!(
            "{key}.name: {:?} must be a non-empty name without '/' or control characters",
            peer.name
        ));
    }
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
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                p.push(format!("{key}.tls: cert_file and key_file go together"));
            }
        }
    }
    duplicate_names("export.dicom", config.export.dicom.iter().map(|d| d.peer.name.as_str()), &mut p);
    if config.upload.delete_after_upload && !config.export.dicom.is_empty() {
        p.push("upload.delete_after_upload: cannot be true with export.dicom destinations (they still need the file)".into());
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
}
