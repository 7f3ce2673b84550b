//! Study Root C-MOVE of one study to our own AE title (PS3.4 §C.4.2): the PACS opens its own
//! association to us and sends every instance through the same anonymize-and-commit path as any
//! sender. Each pending response carries the sub-operation counts that drive the progress bar.

use std::time::Duration;

use crate::config::DicomPeer;
use crate::dicom::{TransferSyntax, VR};
use crate::scu::{command, Association, Kind, ScuError, SubOperations, UNCOMPRESSED};

use super::find::STUDY_INSTANCE_UID;

pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
use dicom_dictionary_std::tags::QUERY_RETRIEVE_LEVEL;

/// The final response of a C-MOVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub status: u16,
    pub completed: u64,
    pub failed: u64,
    pub warning: u64,
}

/// Move one study to `destination` (our AE title) on an association of its own. `progress`
/// sees every pending response's counts.
pub async fn move_study(
    pacs: &DicomPeer,
    calling: &str,
    destination: &str,
    study_uid: &str,
    timeout: Duration,
    mut progress: impl FnMut(SubOperations),
) -> Result<Moved, ScuError> {
    let contexts = [(STUDY_ROOT_MOVE.to_string(), UNCOMPRESSED.iter().map(|s| s.to_string()).collect())];
    let mut assoc = Association::open(pacs, calling, &contexts, timeout).await?;
    let result = exchange(&mut assoc, destination, study_uid, &mut progress).await;
    match &result {
        Ok(_) => assoc.release().await,
        Err(_) => assoc.abort().await,
    }
    result
}

async fn exchange(
    assoc: &mut Association,
    destination: &str,
    study_uid: &str,
    progress: &mut impl FnMut(SubOperations),
) -> Result<Moved, ScuError> {
    let (pc, ts) = assoc.context(STUDY_ROOT_MOVE, &UNCOMPRESSED).ok_or_else(|| ScuError::NoContext {
        peer: assoc.peer().to_string(),
        what: "Study Root C-MOVE".into(),
    })?;
    let keys = [(QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"), (STUDY_INSTANCE_UID, VR::UI, study_uid)];
    let identifier = command::identifier(&keys, TransferSyntax::new(&ts).encoding());
    let id = assoc.message_id();
    let rq = command::request(Kind::Move, id, STUDY_ROOT_MOVE, None, Some(destination));
    assoc.send(pc, rq, Some(&identifier)).await?;
    loop {
        let rsp = assoc.receive().await?.response;
        if rsp.is_pending() {
            progress(rsp.counts);
            continue;
        }
        let n = |v: Option<u16>| u64::from(v.unwrap_or(0));
        return Ok(Moved {
            status: rsp.status,
            completed: n(rsp.counts.completed),
            failed: n(rsp.counts.failed),
            warning: n(rsp.counts.warning),
        });
    }
}
