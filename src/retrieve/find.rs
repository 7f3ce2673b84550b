//! Study Root C-FIND (PS3.4 §C.6.2): the studies a selection names, and the instances of one
//! study (SERIES, then IMAGE level, which every PACS answers, relational or not).

use crate::dicom::VR;
use crate::scu::find::{self, text, QUERY_RETRIEVE_LEVEL, SERIES_INSTANCE_UID};
use crate::scu::Association;

use super::RetrieveError;

pub use crate::scu::find::STUDY_INSTANCE_UID;

use dicom_dictionary_std::tags::{
    ACCESSION_NUMBER, MODALITIES_IN_STUDY, MODALITY, NUMBER_OF_STUDY_RELATED_INSTANCES, PATIENT_ID,
    STUDY_DATE,
};

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
    let mut found = find::study_root(assoc, &identifier, |ds| Study {
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
    Ok(find::study_root(assoc, &keys, |ds| text(ds, MODALITY)).await?)
}

/// The SOP Instance UIDs of a study, series by series.
pub async fn instances(assoc: &mut Association, study_uid: &str) -> Result<Vec<String>, RetrieveError> {
    let series = find::study_root(
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
        out.extend(find::instances_of_series(assoc, study_uid, s).await?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}
