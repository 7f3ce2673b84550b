//! The DICOM listener: C-ECHO and C-STORE over dicom-ul on tokio, one task per association.
//! Every instance goes through the [`Pipeline`] and is durable before the sender hears success.

mod association;
mod dimse;
mod listener;
mod receive;
mod storage_classes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dicom_ul::association::server::{AccessControl, DefaultNegotiation, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

pub use dimse::Status;
pub use listener::serve;

use crate::config::ScpConfig;
use crate::pipeline::Pipeline;

const VERIFICATION: &str = "1.2.840.10008.1.1";

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
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(Gate { allowed: scp.allowed_calling_ae_titles.clone() })
            .ae_title(scp.ae_title.clone())
            .max_pdu_length(scp.max_pdu_length)
            .with_abstract_syntax(VERIFICATION);
        let classes: Vec<String> =
            if scp.storage_classes.is_empty() { storage_sop_classes() } else { scp.storage_classes.clone() };
        for class in classes {
            options = options.with_abstract_syntax(class);
        }
        // With no transfer syntax listed, dicom-ul accepts every syntax its registry can read,
        // including encapsulated ones whose pixel data we pass through.
        for ts in &scp.transfer_syntaxes {
            options = options.with_transfer_syntax(ts.clone());
        }
        Node {
            pipeline,
            scp,
            options,
            tmp: tmp.to_path_buf(),
            storage_dir: storage_dir.to_path_buf(),
            min_free_bytes,
        }
    }

    /// `Some(free bytes)` when the storage disk is below `storage.min_free_bytes`.
    fn free_space_short(&self) -> Option<u64> {
        match fs4::available_space(&self.storage_dir) {
            Ok(free) if free < self.min_free_bytes => Some(free),
            Ok(_) => None,
            // Unknown free space must not stop intake; a write failure still answers 0xA700.
            Err(_) => None,
        }
    }
}

/// Called AE title must be ours; calling AE title must be allowed when an allow-list is set.
#[derive(Debug, Clone)]
pub struct Gate {
    allowed: Vec<String>,
}

impl AccessControl for Gate {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title != this_ae_title {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a == calling_ae_title) {
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
        let open = Gate { allowed: vec![] };
        assert_eq!(open.check_access("ANON", "ANY", "ANON", None), Ok(()));
        assert_eq!(
            open.check_access("ANON", "ANY", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        let closed = Gate { allowed: vec!["PACS".into()] };
        assert_eq!(closed.check_access("ANON", "PACS", "ANON", None), Ok(()));
        assert_eq!(
            closed.check_access("ANON", "STRANGER", "ANON", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }
}
