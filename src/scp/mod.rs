//! The DICOM listener: C-ECHO and C-STORE over dicom-ul on tokio, one task per association.
//! Every instance goes through the [`Pipeline`] and is durable before the sender hears success.

mod association;
mod client_certificate;
mod dimse;
mod listener;
mod routes;
mod storage_classes;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dicom_ul::association::server::{AccessControl, DefaultNegotiation, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

pub(crate) use association::association_id;
pub use dimse::Status;
pub use listener::{serve, Listeners};
pub use routes::Routes;
pub use tls::{
    check as check_tls, client_config as tls_client_config, common_name, http_server_config,
    reload_on_sighup, Tls, TlsError,
};

use crate::config::ScpConfig;
use crate::pipeline::Pipeline;

const VERIFICATION: &str = "1.2.840.10008.1.1";

/// PS3.8 §9.3.2.2: presentation context IDs are odd integers from 1 to 255, so one association
/// request holds at most 128 presentation contexts.
pub const MAX_PRESENTATION_CONTEXTS: usize = 128;

/// Everything an association needs, shared by all of them.
pub struct Node {
    pipeline: Arc<Pipeline>,
    scp: ScpConfig,
    options: ServerAssociationOptions<'static, Gate, DefaultNegotiation>,
    tmp: PathBuf,
    storage_dir: PathBuf,
    min_free_bytes: u64,
}

impl Node {
    /// `tmp` holds spilled data sets; it must exist. `storage_dir` is watched for free space.
    pub fn new(
        pipeline: Arc<Pipeline>,
        scp: ScpConfig,
        tmp: &Path,
        storage_dir: &Path,
        min_free_bytes: u64,
    ) -> Node {
        let options = options_for(&[&scp]);
        Node {
            pipeline,
            scp,
            options,
            tmp: tmp.to_path_buf(),
            storage_dir: storage_dir.to_path_buf(),
            min_free_bytes,
        }
    }

    /// Whether this AE title's filters take `class` in `ts`. Its own association options already
    /// say so; this matters where one negotiation served several projects (TLS).
    fn accepts(&self, class: &str, ts: &str) -> bool {
        accepts(&self.scp, class, ts)
    }
}

/// `Some(free bytes)` when the disk of `storage_dir` is below `min_free_bytes`. `statvfs` can
/// block on a slow or stuck disk: call it on the blocking pool, never on an async worker.
pub(crate) fn free_space_short(storage_dir: &Path, min_free_bytes: u64) -> Option<u64> {
    match fs4::available_space(storage_dir) {
        Ok(free) if free < min_free_bytes => Some(free),
        Ok(_) => None,
        // Unknown free space must not stop intake; a write failure still answers 0xA700.
        Err(_) => None,
    }
}

/// Whether `scp`'s filters take `class` in `ts` (UIDs as negotiated, maybe padded).
fn accepts(scp: &ScpConfig, class: &str, ts: &str) -> bool {
    let trim = |u: &str| u.trim_end_matches(['\0', ' ']).to_string();
    let (class, ts) = (trim(class), trim(ts));
    let class_ok = if scp.storage_classes.is_empty() {
        storage_classes::STORAGE_SOP_CLASSES.contains(&class.as_str())
    } else {
        scp.storage_classes.contains(&class)
    };
    class_ok && (scp.transfer_syntaxes.is_empty() || scp.transfer_syntaxes.contains(&ts))
}

type Options = ServerAssociationOptions<'static, Gate, DefaultNegotiation>;

/// Association options that accept the AE titles of `scps` with their filters: one project's
/// (plain TCP, routed before negotiation) or every project's together (TLS, where the called AE
/// title is inside the encrypted stream and negotiation routes). The node-wide settings (PDU
/// length) come from the first.
fn options_for(scps: &[&ScpConfig]) -> Options {
    let routes = scps.iter().map(|s| (s.ae_title.clone(), s.allowed_calling_ae_titles.clone())).collect();
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(Gate { routes })
        .ae_title(scps[0].ae_title.clone())
        .max_pdu_length(scps[0].max_pdu_length)
        .with_abstract_syntax(VERIFICATION);
    let mut classes: Vec<String> = Vec::new();
    for scp in scps {
        let own =
            if scp.storage_classes.is_empty() { storage_sop_classes() } else { scp.storage_classes.clone() };
        for class in own {
            if !classes.contains(&class) {
                classes.push(class);
            }
        }
    }
    for class in classes {
        options = options.with_abstract_syntax(class);
    }
    // With no transfer syntax listed, dicom-ul accepts every syntax its registry can read,
    // including encapsulated ones whose pixel data we pass through. One project without a list
    // means no list for the union.
    if scps.iter().all(|s| !s.transfer_syntaxes.is_empty()) {
        let mut listed: Vec<&String> = scps.iter().flat_map(|s| &s.transfer_syntaxes).collect();
        listed.dedup();
        for ts in listed {
            options = options.with_transfer_syntax(ts.clone());
        }
    }
    options
}

tokio::task_local! {
    /// The calling AE title of the request the gate last judged in this task. Over TLS the
    /// request arrives inside the encrypted stream and dicom-ul reads it, so a refusal would not
    /// otherwise know whom it refused; `tls::establish` reads it back (see [`calling_seen`]).
    static CALLING_AE: std::cell::RefCell<Option<String>>;
}

/// Run `negotiation` (dicom-ul's establish) and return its result with the calling AE title the
/// gate saw during it, if the request got that far.
pub(crate) async fn calling_seen<T>(
    negotiation: impl std::future::Future<Output = T>,
) -> (T, Option<String>) {
    CALLING_AE
        .scope(std::cell::RefCell::new(None), async {
            let result = negotiation.await;
            (result, CALLING_AE.with(|c| c.borrow_mut().take()))
        })
        .await
}

/// Called AE title must be one of ours; calling AE title must be on that AE title's allow-list
/// when it has one.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Our AE titles, each with its allowed calling AE titles (empty: any).
    routes: Vec<(String, Vec<String>)>,
}

impl AccessControl for Gate {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        // Outside `calling_seen` (plain TCP, where the listener read the request itself) there is
        // no slot, and nothing to record.
        let _ = CALLING_AE.try_with(|c| *c.borrow_mut() = Some(calling_ae_title.to_string()));
        let Some((_, allowed)) = self.routes.iter().find(|(ae, _)| ae == called_ae_title) else {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        };
        if !allowed.is_empty() && !allowed.iter().any(|a| a == calling_ae_title) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// The storage SOP classes accepted when `scp.storage_classes` is empty.
pub fn storage_sop_classes() -> Vec<String> {
    storage_classes::STORAGE_SOP_CLASSES.iter().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_class_list_holds_image_storage_and_nothing_else() {
        let classes = storage_sop_classes();
        assert!(classes.contains(&"1.2.840.10008.5.1.4.1.1.2".to_string()), "CT Image Storage");
        assert!(classes.contains(&"1.2.840.10008.5.1.4.1.1.4".to_string()), "MR Image Storage");
        assert!(classes.contains(&"1.2.840.10008.5.1.4.1.1.88.22".to_string()), "Enhanced SR Storage");
        assert!(!classes.contains(&"1.2.840.10008.1.20.1".to_string()), "Storage Commitment");
        assert!(!classes.contains(&"1.2.840.10008.1.3.10".to_string()), "Media Storage Directory");
        assert!(!classes.iter().any(|c| c == "1.2.840.10008.5.1.4.1.2.2.1"), "Q/R FIND");
        assert!(classes.len() > 100, "{}", classes.len());
    }

    #[test]
    fn the_gate_checks_called_then_calling_ae_titles() {
        let open = Gate { routes: vec![("ANON".into(), vec![])] };
        assert_eq!(open.check_access("ANON", "ANY", "ANON", None), Ok(()));
        assert_eq!(
            open.check_access("ANON", "ANY", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        let closed = Gate { routes: vec![("ANON".into(), vec!["PACS".into()]), ("OTHER".into(), vec![])] };
        assert_eq!(closed.check_access("ANON", "PACS", "ANON", None), Ok(()));
        assert_eq!(
            closed.check_access("ANON", "STRANGER", "ANON", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        // Each AE title has its own allow-list.
        assert_eq!(closed.check_access("ANON", "STRANGER", "OTHER", None), Ok(()));
    }

    #[test]
    fn a_node_accepts_only_its_own_classes_and_syntaxes() {
        let scp = ScpConfig {
            storage_classes: vec!["1.2.840.10008.5.1.4.1.1.2".into()],
            transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into()],
            ..ScpConfig::default()
        };
        let node_accepts = accepts;
        assert!(node_accepts(&scp, "1.2.840.10008.5.1.4.1.1.2\0", "1.2.840.10008.1.2.1"));
        assert!(!node_accepts(&scp, "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1"));
        assert!(!node_accepts(&scp, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2"));
        assert!(node_accepts(&ScpConfig::default(), "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2"));
    }
}
