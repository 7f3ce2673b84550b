//! Study Root C-FIND (PS3.4 §C.6.2): the studies a selection names, and the instances of one
//! study (SERIES, then IMAGE level, which every PACS answers, relational or not).

use crate::dicom::{read_dataset, DataSet, Tag, TransferSyntax, VR};
use crate::scu::{command, status_meaning, Association, Kind, ScuError};

use super::RetrieveError;

pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

const QUERY_RETRIEVE_LEVEL: Tag = Tag(0x0008, 0x0052);
const STUDY_DATE: Tag = Tag(0x0008, 0x0020);
const ACCESSION_NUMBER: Tag = Tag(0x0008, 0x0050);
const MODALITY: Tag = Tag(0x0008, 0x0060);
const MODALITIES_IN_STUDY: Tag = Tag(0x0008, 0x0061);
const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
const PATIENT_ID: Tag = Tag(0x0010, 0x0020);
pub const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);
const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
const NUMBER_OF_STUDY_RELATED_INSTANCES: Tag = Tag(0x0020, 0x1208);

/// A study the PACS holds. PHI: it goes to the report on stdout and the CSV, never to a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Study {
    pub study_uid: String,
    pub accession: String,
    pub patient_id: String,
    pub study_date: String,
    pub modalities: String,
    /// NumberOfStudyRelatedInstances, when the PACS returns it.
    pub instances: Option<u64>,
}

/// What to match at STUDY level; empty fields are return keys.
#[derive(Debug, Clone, Default)]
pub struct StudyKeys {
    pub accession: String,
    pub patient_id: String,
    pub study_uid: String,
    pub study_date: String,
    pub modality: String,
}

/// The studies matching `keys`.
pub async fn studies(assoc: &mut Association, keys: &StudyKeys) -> Result<Vec<Study>, RetrieveError> {
    let identifier = [
        (QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
        (STUDY_DATE, VR::DA, keys.study_date.as_str()),
        (ACCESSION_NUMBER, VR::SH, keys.accession.as_str()),
        (MODALITIES_IN_STUDY, VR::CS, keys.modality.as_str()),
        (PATIENT_ID, VR::LO, keys.patient_id.as_str()),
        (STUDY_INSTANCE_UID, VR::UI, keys.study_uid.as_str()),
        (NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, ""),
    ];
    let mut found = find(assoc, &identifier, |ds| Study {
        study_uid: text(ds, STUDY_INSTANCE_UID),
        accession: text(ds, ACCESSION_NUMBER),
        patient_id: text(ds, PATIENT_ID),
        study_date: text(ds, STUDY_DATE),
        modalities: text(ds, MODALITIES_IN_STUDY),
        instances: text(ds, NUMBER_OF_STUDY_RELATED_INSTANCES).trim().parse().ok(),
    })
    .await?;
    found.retain(|s| !s.study_uid.is_empty());
    if keys.modality.is_empty() {
        return Ok(found);
    }
    // A PACS may ignore ModalitiesInStudy as a matching key (dcmqrscp does, and returns it
    // empty): then the study's series say which modalities it has.
    let mut kept = Vec::with_capacity(found.len());
    for mut study in found {
        if study.modalities.is_empty() {
            let mut modalities = series_modalities(assoc, &study.study_uid).await?;
            modalities.sort();
            modalities.dedup();
            study.modalities = modalities.join("\\");
        }
        if study.modalities.split('\\').any(|m| m.trim() == keys.modality) {
            kept.push(study);
        }
    }
    Ok(kept)
}

/// The Modality of each series of a study.
async fn series_modalities(assoc: &mut Association, study_uid: &str) -> Result<Vec<String>, RetrieveError> {
    let keys = [
        (QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES"),
        (MODALITY, VR::CS, ""),
        (STUDY_INSTANCE_UID, VR::UI, study_uid),
        (SERIES_INSTANCE_UID, VR::UI, ""),
    ];
    find(assoc, &keys, |ds| text(ds, MODALITY)).await
}

/// The SOP Instance UIDs of a study, series by series.
pub async fn instances(assoc: &mut Association, study_uid: &str) -> Result<Vec<String>, RetrieveError> {
    let series = find(
        assoc,
        &[
            (QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES"),
            (STUDY_INSTANCE_UID, VR::UI, study_uid),
            (SERIES_INSTANCE_UID, VR::UI, ""),
        ],
        |ds| text(ds, SERIES_INSTANCE_UID),
    )
    .await?;
    let mut out = Vec::new();
    for s in series.iter().filter(|s| !s.is_empty()) {
        let keys = [
            (QUERY_RETRIEVE_LEVEL, VR::CS, "IMAGE"),
            (SOP_INSTANCE_UID, VR::UI, ""),
            (STUDY_INSTANCE_UID, VR::UI, study_uid),
            (SERIES_INSTANCE_UID, VR::UI, s.as_str()),
        ];
        out.extend(
            find(assoc, &keys, |ds| text(ds, SOP_INSTANCE_UID)).await?.into_iter().filter(|u| !u.is_empty()),
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// One C-FIND: send the identifier, collect every pending match through `read`.
async fn find<T>(
    assoc: &mut Association,
    keys: &[(Tag, VR, &str)],
    read: impl Fn(&DataSet<'_>) -> T,
) -> Result<Vec<T>, RetrieveError> {
    let (pc, ts) = assoc.context(STUDY_ROOT_FIND, &crate::scu::UNCOMPRESSED).ok_or_else(|| {
        ScuError::NoContext { peer: assoc.peer().to_string(), what: "Study Root C-FIND".into() }
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
            status => Err(RetrieveError::Pacs {
                peer: assoc.peer().to_string(),
                operation: "C-FIND",
                status,
                meaning: status_meaning(status),
            }),
        };
    }
}

/// A text value, lossy for character sets other than UTF-8 (it is only compared and printed).
fn text(ds: &DataSet<'_>, tag: Tag) -> String {
    ds.bytes(tag)
        .map(|b| String::from_utf8_lossy(crate::dicom::trim_padding(b)).into_owned())
        .unwrap_or_default()
}
