//! One instance, start to finish: parse, capture PHI, anonymize, commit durably, record.
//! The offline `anonymize` command and the SCP both go through here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::anonymize::{Engine, EngineError, Keyed, Keys, Labels, Original, Pseudonyms, Rsna, Script};
use crate::config::{Config, PseudonymMode};
use crate::dicom::{write_part10, Part10, Part10Error, Tag};
use crate::durability::Durability;
use crate::index::{Capture, Index, IndexError, InstanceRecord, Owner};
use crate::queue::{Quarantine, Reason, Spool, SpoolError};

/// Why an instance was not stored. Every variant but `Index` is the instance's own fault.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Unreadable(#[from] Part10Error),
    #[error(transparent)]
    Invalid(#[from] EngineError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Storage(#[from] SpoolError),
}

impl InstanceError {
    pub fn reason(&self) -> Reason {
        match self {
            InstanceError::Unreadable(Part10Error::NotDicom) => Reason::NotDicom,
            InstanceError::Unreadable(_) => Reason::Unreadable,
            InstanceError::Invalid(EngineError::MissingAttributes(_)) => Reason::MissingAttributes,
            InstanceError::Invalid(EngineError::InvalidText(_)) => Reason::InvalidText,
            InstanceError::Index(IndexError::Conflict(_)) => Reason::IntegrityConflict,
            InstanceError::Index(_) | InstanceError::Storage(_) => Reason::StorageError,
        }
    }
}

/// An instance that is durable in the spool and recorded in the index.
#[derive(Debug, Clone)]
pub struct Stored {
    pub keys: Keys,
    /// Relative to the spool root.
    pub path: PathBuf,
    pub size: u64,
    /// Tags the safety net changed.
    pub caught: Vec<Tag>,
}

pub struct Pipeline {
    engine: Engine,
    index: Index,
    spool: Spool,
    quarantine: Quarantine,
    keyed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Script(#[from] crate::anonymize::ScriptError),
    #[error(transparent)]
    Pseudonym(#[from] crate::anonymize::pseudonym::PseudonymError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl Pipeline {
    /// Build the engine, open the index and the spool rooted at `out`.
    pub fn open(config: &Config, out: &Path, durability: Durability) -> Result<Pipeline, SetupError> {
        let project = &config.project;
        let script = Script::load(&project.script, project.unsupported_ops)?;
        let pseudonyms: Arc<dyn Pseudonyms> = match project.pseudonyms {
            PseudonymMode::Rsna => {
                Arc::new(Rsna::new(&project.site_id, &project.uid_root, project.accession_format)?)
            }
            PseudonymMode::Keyed => Arc::new(Keyed::new(
                &project.site_id,
                &project.uid_root,
                &config.project_secret()?,
                project.accession_format,
            )?),
        };
        let owner =
            Owner { site_id: project.site_id.clone(), default_patient_id: pseudonyms.default_patient_id() };
        let index = Index::open(&config.index_path(), &owner, durability)?;
        let labels = Labels { project_name: project.name.clone(), site_id: project.site_id.clone() };
        Ok(Pipeline {
            engine: Engine::new(script, pseudonyms, labels),
            index,
            spool: Spool::open(out, durability)?,
            quarantine: Quarantine::new(&config.quarantine_dir()),
            keyed: project.pseudonyms == PseudonymMode::Keyed,
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    /// Anonymize one Part 10 file's bytes. `source` (a path or a peer) goes into the index only.
    pub fn process_file(&self, bytes: &[u8], source: &str) -> Result<Stored, InstanceError> {
        let file = Part10::parse(bytes)?;
        let mut ds = file.dataset()?;
        let original = Original::read(&ds)?;
        let pseudonyms = self.engine.pseudonyms();
        let provisional = self.engine.keys(&original, "");
        let stateless_id = match (self.keyed, original.patient_id.is_empty()) {
            (false, _) => None,
            (true, true) => Some(pseudonyms.default_patient_id()),
            (true, false) => pseudonyms.patient_id(&original.patient_id),
        };
        let anon_patient_id = self.index.capture(Capture {
            patient_id: original.patient_id.clone(),
            patient_name: original.patient_name.clone(),
            sex: original.sex.clone(),
            birth_date: original.birth_date.clone(),
            anon_patient_id: stateless_id,
            study_uid: original.study_uid.clone(),
            anon_study_uid: provisional.study_uid,
            accession: original.accession.clone(),
            anon_accession: provisional.accession,
            date_offset: provisional.date_offset,
            study_date: original.study_date.clone(),
            source: source.to_string(),
            series_uid: original.series_uid.clone(),
            anon_series_uid: provisional.series_uid,
            modality: original.modality.clone(),
            sop_uid: original.sop_uid.clone(),
        })?;

        let report = self.engine.apply(&mut ds, &original, &anon_patient_id);
        let keys = report.keys;
        let path: PathBuf =
            [&keys.patient_id, &keys.study_uid, &keys.series_uid, &format!("{}.dcm", keys.sop_uid)]
                .iter()
                .collect();
        let size = self.spool.commit(&path, |w| write_part10(&ds, &file.meta.transfer_syntax, w))?;
        self.index.record(InstanceRecord {
            sop_uid: original.sop_uid.clone(),
            anon_sop_uid: keys.sop_uid.clone(),
            series_uid: original.series_uid.clone(),
            sop_class_uid: original.sop_class_uid.clone(),
            path: path.to_string_lossy().into_owned(),
            size,
            uid_map: report.uid_map,
        })?;
        Ok(Stored { keys, path, size, caught: report.caught })
    }

    /// Make everything durable and stop the index writer.
    pub fn close(self) -> Result<(), SpoolError> {
        let flushed = self.spool.flush();
        self.index.close();
        flushed
    }
}
