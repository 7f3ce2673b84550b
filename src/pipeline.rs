//! One instance, start to finish: parse, admit, capture PHI, anonymize, commit durably, record.
//! The offline `anonymize` command and the SCP both go through here.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::anonymize::{Engine, EngineError, Keyed, Keys, Labels, Original, Pseudonyms, Rsna, Script};
use crate::config::{Config, PseudonymMode};
use crate::dicom::{
    inflate, locate_pixel_data, read_dataset, write_dataset, write_meta, write_part10, DataSet, Part10,
    Part10Error, ReadError, SplitError, Tag, TransferSyntax,
};
use crate::durability::{Barrier, Durability};
use crate::index::{Capture, Index, IndexError, InstanceRecord, Owner};
use crate::queue::{Quarantine, Reason, Spool, SpoolError};

const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

/// Why an instance was not stored.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Unreadable(#[from] Part10Error),
    /// The large-instance scan found a broken element layout.
    #[error("data set does not parse: {0}")]
    Scan(SplitError),
    #[error(transparent)]
    Invalid(#[from] EngineError),
    /// The data set's UIDs differ from what the sender announced.
    #[error("{0} in the data set differs from the C-STORE request")]
    Mismatch(&'static str),
    /// A filter (modality) refused it; not the data's fault, nothing is quarantined.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Storage(#[from] SpoolError),
}

impl From<ReadError> for InstanceError {
    fn from(e: ReadError) -> Self {
        InstanceError::Unreadable(Part10Error::DataSet(e))
    }
}

impl InstanceError {
    /// The quarantine directory for an instance that failed through its own fault; `None` when
    /// the environment failed or a filter refused it (nothing is wrong with the data).
    pub fn reason(&self) -> Option<Reason> {
        Some(match self {
            InstanceError::Unreadable(Part10Error::NotDicom) => Reason::NotDicom,
            InstanceError::Unreadable(_) => Reason::Unreadable,
            InstanceError::Scan(SplitError::Io(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
                return None
            }
            InstanceError::Scan(_) => Reason::Unreadable,
            InstanceError::Invalid(EngineError::MissingAttributes(_)) | InstanceError::Mismatch(_) => {
                Reason::MissingAttributes
            }
            InstanceError::Invalid(EngineError::InvalidText(_)) => Reason::InvalidText,
            InstanceError::Invalid(EngineError::Unverifiable(_)) => Reason::Unverifiable,
            InstanceError::Index(IndexError::Conflict(_)) => Reason::IntegrityConflict,
            InstanceError::Refused(_) | InstanceError::Index(_) | InstanceError::Storage(_) => return None,
        })
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

/// A data set received over the network, encoded in the negotiated transfer syntax.
pub enum Body<'a> {
    Memory(&'a [u8]),
    /// Spilled to a file because it was large: its pixel data is copied file to file.
    File(&'a Path),
}

/// What a received instance must be: what the sender announced, and the node's filters.
pub struct Admission<'a> {
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    /// Accepted Modality values; empty: any.
    pub modalities: &'a [String],
}

pub struct Pipeline {
    engine: Engine,
    index: Index,
    spool: Spool,
    quarantine: Quarantine,
    keyed: bool,
    durability: Durability,
    barrier: Barrier,
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
    #[error("cannot open {path} to flush it: {source}")]
    Barrier { path: String, source: io::Error },
}

impl Pipeline {
    /// Build the engine, open the index and the spool rooted at `out`.
    pub fn open(config: &Config, out: &Path, durability: Durability) -> Result<Pipeline, SetupError> {
        let project = &config.project;
        let script = Script::load(&project.script, &project.script_settings())?;
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
        let index = Index::open(&config.index_path(), &Owner::for_site(&project.site_id))?;
        let spool = Spool::open(out)?;
        let index_dir = config.index_path().parent().map(Path::to_path_buf).unwrap_or_default();
        let barrier = Barrier::new(&[out, &index_dir])
            .map_err(|source| SetupError::Barrier { path: out.display().to_string(), source })?;
        let labels = Labels { project_name: project.name.clone(), site_id: project.site_id.clone() };
        Ok(Pipeline {
            engine: Engine::new(script, pseudonyms, labels),
            index,
            spool,
            quarantine: Quarantine::new(&config.quarantine_dir()),
            keyed: project.pseudonyms == PseudonymMode::Keyed,
            durability,
            barrier,
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    /// Remove temp files a crash left in the spool; returns how many.
    pub fn sweep(&self) -> usize {
        self.spool.sweep()
    }

    /// Anonymize one Part 10 file's bytes. `source` (a path or a peer) goes into the index only.
    pub fn process_file(&self, bytes: &[u8], source: &str) -> Result<Stored, InstanceError> {
        let file = Part10::parse(bytes)?;
        let ds = file.dataset()?;
        let ts = file.meta.transfer_syntax.clone();
        self.store(ds, source, |ds, w| write_part10(ds, &ts, w))
    }

    /// Anonymize a data set received in `ts`, once it passes `admission`.
    pub fn process_received(
        &self,
        body: Body<'_>,
        ts: &TransferSyntax,
        admission: &Admission<'_>,
        source: &str,
    ) -> Result<Stored, InstanceError> {
        let spill = match body {
            Body::Memory(bytes) => return self.received_in_memory(bytes, ts, admission, source),
            Body::File(path) => path,
        };
        let io_err = |e: io::Error| SpoolError::Io { path: spill.display().to_string(), source: e };
        let mut file = File::open(spill).map_err(io_err)?;
        let span = if ts.is_deflated() {
            None
        } else {
            locate_pixel_data(&mut file, ts.encoding()).map_err(InstanceError::Scan)?
        };
        let Some(span) = span else {
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_end(&mut bytes)).map_err(io_err)?;
            return self.received_in_memory(&bytes, ts, admission, source);
        };
        // Everything but the pixel data is read into memory and anonymized; the pixel data element
        // is copied from the spill file into the output as it is.
        let read_range = |file: &mut File, from: u64, len: u64| -> io::Result<Vec<u8>> {
            let mut v = vec![0; len as usize];
            file.seek(SeekFrom::Start(from))?;
            file.read_exact(&mut v)?;
            Ok(v)
        };
        let total = file.metadata().map_err(io_err)?.len();
        let head = read_range(&mut file, 0, span.start).map_err(io_err)?;
        let tail = read_range(&mut file, span.end, total - span.end).map_err(io_err)?;
        let mut ds = read_dataset(&head, ts.encoding())?;
        let after = read_dataset(&tail, ts.encoding())?;
        ds.elements.extend(after.elements);
        admit(&ds, admission)?;
        let keep_pixels = self.engine.keeps(PIXEL_DATA);
        self.store(ds, source, |ds, w| {
            let (before, after): (Vec<_>, Vec<_>) =
                ds.elements.iter().cloned().partition(|e| e.tag < PIXEL_DATA);
            write_part10(&DataSet { elements: before }, ts, w)?;
            if keep_pixels {
                io::Write::flush(w)?;
                let mut src = File::open(spill)?;
                src.seek(SeekFrom::Start(span.start))?;
                io::copy(&mut src.take(span.end - span.start), w.get_mut())?;
            }
            write_dataset(&DataSet { elements: after }, ts.encoding(), w)
        })
    }

    fn received_in_memory(
        &self,
        bytes: &[u8],
        ts: &TransferSyntax,
        admission: &Admission<'_>,
        source: &str,
    ) -> Result<Stored, InstanceError> {
        let inflated;
        let bytes = if ts.is_deflated() {
            inflated = inflate(bytes).map_err(Part10Error::Inflate)?;
            &inflated[..]
        } else {
            bytes
        };
        let ds = read_dataset(bytes, ts.encoding())?;
        admit(&ds, admission)?;
        self.store(ds, source, |ds, w| write_part10(ds, ts, w))
    }

    /// Capture, anonymize, commit and record one parsed data set; `write` encodes the file.
    fn store(
        &self,
        mut ds: DataSet<'_>,
        source: &str,
        write: impl FnOnce(&DataSet<'_>, &mut io::BufWriter<File>) -> Result<(), crate::dicom::WriteError>,
    ) -> Result<Stored, InstanceError> {
        let original = self.engine.read(&ds)?;
        let pseudonyms = self.engine.pseudonyms();
        // Computed once: the index records them and the engine writes them.
        let mut keys = self.engine.keys(&original, "");
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
            anon_study_uid: keys.study_uid.clone(),
            accession: original.accession.clone(),
            anon_accession: keys.accession.clone(),
            date_offset: keys.date_offset,
            study_date: original.study_date.clone(),
            source: source.to_string(),
            series_uid: original.series_uid.clone(),
            anon_series_uid: keys.series_uid.clone(),
            modality: original.modality.clone(),
            sop_uid: original.sop_uid.clone(),
        })?;

        keys.patient_id = anon_patient_id;
        let report = self.engine.apply(&mut ds, &original, keys);
        let keys = report.keys;
        let path: PathBuf =
            [&keys.patient_id, &keys.study_uid, &keys.series_uid, &format!("{}.dcm", keys.sop_uid)]
                .iter()
                .collect();
        let size = self.spool.commit(&path, |w| write(&ds, w))?;
        self.index.record(InstanceRecord {
            sop_uid: original.sop_uid.clone(),
            anon_sop_uid: keys.sop_uid.clone(),
            series_uid: original.series_uid.clone(),
            sop_class_uid: original.sop_class_uid.clone(),
            path: path.to_string_lossy().into_owned(),
            size,
            uid_map: report.uid_map,
        })?;
        if self.durability == Durability::EachInstance {
            // File, directory entry and index row are in the page cache; make them durable
            // together with whatever other instances are waiting (group commit).
            durable(&self.barrier, &self.spool)?;
        }
        Ok(Stored { keys, path, size, caught: report.caught })
    }

    /// Keep a received instance that failed through its own fault, as a Part 10 file.
    pub fn quarantine_received(
        &self,
        reason: Reason,
        detail: &str,
        source: &str,
        body: Body<'_>,
        ts: &TransferSyntax,
        admission: &Admission<'_>,
    ) -> io::Result<PathBuf> {
        self.quarantine.put_with(reason, detail, source, |f| {
            let mut w = io::BufWriter::new(f);
            write_meta(admission.sop_class_uid, admission.sop_instance_uid, ts, &mut w)
                .map_err(io::Error::other)?;
            match body {
                Body::Memory(bytes) => io::Write::write_all(&mut w, bytes)?,
                Body::File(path) => {
                    io::copy(&mut File::open(path)?, &mut w)?;
                }
            }
            io::Write::flush(&mut w)
        })
    }

    /// Stop the index writer and make everything durable.
    pub fn close(self) -> Result<(), SpoolError> {
        let Pipeline { index, barrier, spool, .. } = self;
        index.close();
        durable(&barrier, &spool)
    }
}

/// Wait at the barrier; a failed flush names the spool it was flushing.
fn durable(barrier: &Barrier, spool: &Spool) -> Result<(), SpoolError> {
    barrier.wait().map_err(|source| SpoolError::Io {
        path: format!("{} (flushing to disk)", spool.root().display()),
        source,
    })
}

/// The data set must be what the sender announced, and pass the modality filter.
fn admit(ds: &DataSet<'_>, admission: &Admission<'_>) -> Result<(), InstanceError> {
    use crate::anonymize::profile::tags;
    let text = |tag| ds.text(tag).unwrap_or_default();
    if text(tags::SOP_CLASS_UID).is_empty() || text(tags::SOP_INSTANCE_UID).is_empty() {
        Original::read(ds)?;
    }
    if text(tags::SOP_CLASS_UID) != admission.sop_class_uid {
        return Err(InstanceError::Mismatch("SOPClassUID"));
    }
    if text(tags::SOP_INSTANCE_UID) != admission.sop_instance_uid {
        return Err(InstanceError::Mismatch("SOPInstanceUID"));
    }
    if !admission.modalities.is_empty() {
        let modality = text(tags::MODALITY);
        if !admission.modalities.iter().any(|m| m == modality) {
            return Err(InstanceError::Refused(format!(
                "Modality {modality:?} is not accepted by this node"
            )));
        }
    }
    Ok(())
}
