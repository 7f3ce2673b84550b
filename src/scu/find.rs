//! One Study Root C-FIND (PS3.4 §C.6.2) on an open association: send the identifier, collect
//! every match. `retrieve` lists studies and instances with it; export asks a destination what
//! it already holds.

use super::{command, status_meaning, Association, Kind, ScuError, UNCOMPRESSED};
use crate::dicom::{read_dataset, trim_padding, DataSet, Tag, TransferSyntax, VR};

pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

pub use dicom_dictionary_std::tags::{
    QUERY_RETRIEVE_LEVEL, SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID,
};

/// The context to propose for it.
pub fn context() -> (String, Vec<String>) {
    (STUDY_ROOT_FIND.to_string(), UNCOMPRESSED.iter().map(|s| s.to_string()).collect())
}

/// Every match of `keys` (an empty value asks for the attribute), each read through `read`.
pub async fn study_root<T>(
    assoc: &mut Association,
    keys: &[(Tag, VR, &str)],
    read: impl Fn(&DataSet<'_>) -> T,
) -> Result<Vec<T>, ScuError> {
    let (pc, ts) = assoc.context(STUDY_ROOT_FIND, &UNCOMPRESSED).ok_or_else(|| ScuError::NoContext {
        peer: assoc.peer().to_string(),
        what: "Study Root C-FIND".into(),
    })?;
    let encoding = TransferSyntax::new(&ts).encoding();
    let id = assoc.message_id();
    let rq = command::request(Kind::Find, id, STUDY_ROOT_FIND, None, None);
    assoc.send(pc, rq, Some(&command::identifier(keys, encoding))).await?;
    let mut out = Vec::new();
    loop {
        let message = assoc.receive().await?;
        let rsp = &message.response;
        if rsp.is_pending() {
            if let Some(data) = &message.data {
                let ds = read_dataset(data, encoding).map_err(|e| ScuError::Protocol {
                    peer: assoc.peer().to_string(),
                    what: format!("a C-FIND match does not parse: {e}"),
                })?;
                out.push(read(&ds));
            }
            continue;
        }
        return match rsp.status {
            0x0000 => Ok(out),
            status => Err(ScuError::Refused {
                peer: assoc.peer().to_string(),
                operation: "C-FIND",
                status,
                meaning: status_meaning(status),
            }),
        };
    }
}

/// A text value, lossy for character sets other than UTF-8 (it is only compared and printed).
pub fn text(ds: &DataSet<'_>, tag: Tag) -> String {
    ds.bytes(tag).map(|b| String::from_utf8_lossy(trim_padding(b)).into_owned()).unwrap_or_default()
}

/// The SOP Instance UIDs of one series that the peer holds.
pub async fn instances_of_series(
    assoc: &mut Association,
    study_uid: &str,
    series_uid: &str,
) -> Result<Vec<String>, ScuError> {
    let keys = [
        (QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
        (SOP_INSTANCE_UID, VR::UI, ""),
        (STUDY_INSTANCE_UID, VR::UI, study_uid),
        (SERIES_INSTANCE_UID, VR::UI, series_uid),
    ];
    let mut out = study_root(assoc, &keys, |ds| text(ds, SOP_INSTANCE_UID)).await?;
    out.retain(|u| !u.is_empty());
    Ok(out)
}
