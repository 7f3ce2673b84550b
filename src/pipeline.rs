//! One instance, start to finish: read, admit, capture PHI, anonymize, check, commit durably,
//! record. The SCP and the offline command both go through here, and this is the only place that
//! decides what a failure means (see [`Outcome`]): the callers only translate it into a status or
//! an exit code.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::anonymize::pixels::{self, Cleaning, PixelError, PixelStage};
use crate::anonymize::{
    Engine, EngineError, Keyed, Keys, Labels, LookupTable, Original, Pseudonyms, Rsna, Script, Unverifiable,
};
use crate::config::{Config, ProjectConfig, PseudonymMode, StorageConfig};
use crate::dicom::{
    check_values, check_vrs, inflate_into, locate_pixel_data, read_dataset, repair_values, write_dataset,
    write_meta, write_part10, DataSet, Element, InflateError, Part10, Part10Error, ReadError, SplitError,
    Tag, TransferSyntax, Value, ValueError, WriteError, EXPLICIT_VR_LE, VR,
};
use crate::durability::{Barrier, Durability};
use crate::index::{AuditRecord, Caller, Capture, Committed, Index, IndexError, InstanceRecord, Phrases};
use crate::memory_budget::{MemoryBudget, OverBudget, Reservation};
use crate::observe::METRICS;
use crate::path_component::{component, ComponentError};
use crate::queue::{Quarantine, Reason, Spill, Spool, SpoolError, StageWriter, Staged};
use crate::recovery::{self, Recovered, RecoveryError};
use crate::storage_lock::{LockError, StorageLock};

use dicom_dictionary_std::tags::PIXEL_DATA;

/// Data sets up to this size are held in memory whole; larger ones are worked on from a file (a
/// spill, or the input file offline) with only the part around their pixel data in memory.
pub const IN_MEMORY_UP_TO: usize = 2 << 20;
/// A Part 10 file's meta group must fit in this much of its beginning.
const MAX_META: usize = 1 << 20;

/// What became of one instance.
#[derive(Debug)]
pub enum Outcome {
    /// Anonymized, durable in the spool and recorded in the index.
    Stored(Stored),
    /// A data fault: the bytes the sender sent are at fault (whatever their size). The instance is
    /// kept in quarantine, as received, with the reason.
    Quarantined { reason: Reason, detail: String, path: PathBuf },
    /// A filter of this node does not accept it; nothing is wrong with the data, nothing is kept.
    Refused(String),
    /// Not the instance the request is for (a STOW-RS part of another study than its URL
    /// names); nothing is kept.
    Conflict(String),
    /// An environment fault: disk, index or a limit of this node. Nothing was written; the sender
    /// keeps its copy and may try again. `detail` is for the log (it names paths); `told` is
    /// what a peer may hear: what failed, in our words, never where.
    Failed { detail: String, told: String },
}

/// What a peer hears after a failed flush (the log says when and what the kernel said).
/// How long an instance waits for the node-wide memory budget before it is refused (0xA700):
/// long enough for the instances ahead of it to finish, short of a sender's DIMSE timeout.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const FLUSH_FAILED_TOLD: &str = "a flush to this node's storage failed; it takes nothing until restarted";

/// Why an instance was not stored. [`InstanceError::fault`] says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Unreadable(#[from] Part10Error),
    #[error(transparent)]
    Inflate(#[from] InflateError),
    #[error(transparent)]
    Invalid(#[from] EngineError),
    #[error("kept value cannot leave: {0}")]
    Value(#[from] ValueError),
    /// The pixels of an image that may carry burned-in text could not be read, or still show
    /// the instance's PHI after masking: held.
    #[error("held: {0}")]
    Pixels(#[from] PixelError),
    /// A value that names a directory or file of the spool is not one normal path component.
    #[error("the anonymized {what} cannot name a file or directory: it {why}")]
    PathComponent { what: &'static str, why: ComponentError },
    /// The data set's UIDs differ from what the sender announced.
    #[error(
        "{0} in the data set differs from what the sender announced (the C-STORE request, or the file meta)"
    )]
    Mismatch(&'static str),
    /// A filter (modality) refused it.
    #[error("{0}")]
    Refused(String),
    /// A STOW-RS request for one study sent an instance of another (PS3.18 §10.5).
    #[error("StudyInstanceUID differs from the study the request is for")]
    OtherStudy,
    /// The in-memory part of the data set is larger than this node allows.
    #[error("{what} is {size} bytes, more than {limit} allows ({bound} bytes)")]
    TooLarge { what: &'static str, size: u64, limit: &'static str, bound: u64 },
    /// The node-wide budget for data sets in memory stayed taken by other instances.
    #[error(transparent)]
    Memory(#[from] OverBudget),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Storage(#[from] SpoolError),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    /// A bug met on this input. It is the input that found it, so it is treated as a data fault.
    #[error("internal error while processing the instance: {0}")]
    Panic(String),
}

impl From<ReadError> for InstanceError {
    fn from(e: ReadError) -> Self {
        InstanceError::Unreadable(Part10Error::DataSet(e))
    }
}

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Data(Reason),
    Refused,
    Conflict,
    Environment,
}

impl InstanceError {
    /// What a peer is told of an environment fault: which part of this node failed, never a path
    /// of its storage (the log has those).
    fn told(&self) -> String {
        match self {
            InstanceError::TooLarge { .. } | InstanceError::Inflate(InflateError::TooLarge { .. }) => {
                self.to_string()
            }
            InstanceError::Memory(_) => {
                "the node's memory for data sets is taken by other instances; send it again later".into()
            }
            InstanceError::Index(_) => "the node's index could not record the instance".into(),
            InstanceError::Storage(_) => "the node could not write the instance to its storage".into(),
            InstanceError::Inflate(_) | InstanceError::Io { .. } => {
                "the node could not read back its buffered copy of the instance".into()
            }
            _ => "the node could not store the instance".into(),
        }
    }

    /// The one place that decides: every failure is the data's, a filter's or the environment's.
    fn fault(&self) -> Fault {
        use Fault::{Data, Environment};
        match self {
            InstanceError::Unreadable(Part10Error::NotDicom) => Data(Reason::NotDicom),
            InstanceError::Unreadable(_) | InstanceError::Inflate(InflateError::Corrupt(_)) => {
                Data(Reason::Unreadable)
            }
            InstanceError::Invalid(EngineError::MissingAttributes(_)) | InstanceError::Mismatch(_) => {
                Data(Reason::MissingAttributes)
            }
            InstanceError::Invalid(EngineError::InvalidText(_))
            | InstanceError::Value(ValueError::Forbidden { .. })
            | InstanceError::PathComponent { .. } => Data(Reason::InvalidText),
            InstanceError::Value(_) => Data(Reason::Unreadable),
            InstanceError::Invalid(EngineError::Unverifiable(_)) => Data(Reason::Unverifiable),
            InstanceError::Invalid(EngineError::LookupMiss { .. }) => Data(Reason::LookupMiss),
            InstanceError::Pixels(e) if e.is_readable_text() => Data(Reason::BurnedInText),
            InstanceError::Pixels(_) => Data(Reason::PixelUnverified),
            InstanceError::Index(IndexError::Conflict(_)) => Data(Reason::IntegrityConflict),
            InstanceError::Storage(SpoolError::Encode(_)) => Data(Reason::CannotEncode),
            InstanceError::Panic(_) | InstanceError::Index(IndexError::Panicked(_)) => {
                Data(Reason::ProcessingError)
            }
            InstanceError::Refused(_) => Fault::Refused,
            InstanceError::OtherStudy => Fault::Conflict,
            InstanceError::Inflate(_)
            | InstanceError::TooLarge { .. }
            | InstanceError::Memory(_)
            | InstanceError::Index(_)
            | InstanceError::Storage(_)
            | InstanceError::Io { .. } => Environment,
        }
    }
}

impl From<SplitError> for InstanceError {
    fn from(e: SplitError) -> Self {
        match e {
            SplitError::Malformed(e) => e.into(),
            SplitError::Io(source) => InstanceError::Io { path: "the spilled data set".into(), source },
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

/// Where a data set's bytes are, encoded in its transfer syntax.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Memory(&'a [u8]),
    /// In a file from `offset` to its end: a spilled data set (offset 0), or a Part 10 file after
    /// its meta group. Its pixel data is copied file to file.
    File {
        path: &'a Path,
        offset: u64,
    },
}

impl Body<'_> {
    /// Write the bytes as they are to `w`: an instance kept in quarantine as it came.
    fn copy_to(&self, w: &mut impl Write) -> io::Result<()> {
        match *self {
            Body::Memory(bytes) => w.write_all(bytes),
            Body::File { path, offset } => {
                let mut src = File::open(path)?;
                src.seek(SeekFrom::Start(offset))?;
                io::copy(&mut src, w).map(drop)
            }
        }
    }
}

/// What a received instance must be: what the sender announced, and the node's filters.
pub struct Admission<'a> {
    /// The C-STORE request's UIDs, or a Part 10 file's media storage UIDs (empty: not given).
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    /// Accepted Modality values; empty: any.
    pub modalities: &'a [String],
    /// The study a STOW-RS request names in its URL: an instance of another is not stored.
    pub study_instance_uid: Option<&'a str>,
    /// Who sent it and how many bytes, for the audit row a stored instance gets, committed with
    /// it; the caller audits every other outcome, after its response.
    pub audit: Option<(&'a Caller, u64)>,
}

/// What a Part 10 file received whole must be besides what its meta group announces: the
/// [`Admission`] of a STOW-RS part, less the UIDs, which come from the file.
pub struct Filters<'a> {
    pub modalities: &'a [String],
    pub study_instance_uid: Option<&'a str>,
    pub audit: Option<(&'a Caller, u64)>,
}

impl<'a> Filters<'a> {
    fn admit<'m>(&self, meta: &'m crate::dicom::FileMeta) -> Admission<'m>
    where
        'a: 'm,
    {
        Admission {
            sop_class_uid: &meta.media_storage_sop_class_uid,
            sop_instance_uid: &meta.media_storage_sop_instance_uid,
            modalities: self.modalities,
            study_instance_uid: self.study_instance_uid,
            audit: self.audit,
        }
    }
}

pub struct Pipeline {
    engine: Engine,
    pixels: PixelStage,
    /// `project.unverifiable`: what happens to an image whose pixels cannot be read.
    unverifiable: Unverifiable,
    index: Index,
    spool: Spool,
    quarantine: Quarantine,
    keyed: bool,
    durability: Durability,
    barrier: Barrier,
    /// Where Deflated data sets inflate when they are large.
    tmp: PathBuf,
    limits: Limits,
    /// Where the index is, and whose it is: what `recover` checks the spool against.
    index_path: PathBuf,
    site_id: String,
    /// Tags already reported as longer than their VR allows: each is logged once per process.
    over_long: Mutex<HashSet<Tag>>,
    /// The storage directory is ours (index, spool, queue) while the pipeline is open.
    _lock: StorageLock,
    /// The node's budget for data sets in memory, shared with its other projects; none offline.
    memory: Option<Arc<MemoryBudget>>,
}

/// The sizes a data set may have, whole and held in memory rather than spilled
/// (`scp.max_instance_bytes`, `scp.max_in_memory_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub instance: u64,
    pub in_memory: u64,
}

/// The sections of the configuration the pipeline reads: the project's rules and pseudonyms,
/// where its storage is, and the sizes a data set may have. Nothing else of the tree.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub project: &'a ProjectConfig,
    pub storage: &'a StorageConfig,
    pub index: &'a crate::config::IndexConfig,
    pub node: &'a crate::config::NodeConfig,
    pub limits: Limits,
}

impl<'a> From<&'a Config> for Sections<'a> {
    fn from(config: &'a Config) -> Self {
        Sections {
            project: &config.project,
            storage: &config.storage,
            index: &config.index,
            node: &config.node,
            limits: Limits {
                instance: config.scp.max_instance_bytes,
                in_memory: config.scp.max_in_memory_bytes,
            },
        }
    }
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
    Lookup(#[from] crate::anonymize::LookupError),
    #[error("project.pixels.regions: {0}")]
    Regions(#[from] crate::anonymize::pixels::regions::RulesError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot prepare {path}: {source}")]
    Dir { path: String, source: io::Error },
    #[error(transparent)]
    Locked(#[from] LockError),
}

impl Pipeline {
    /// Build the engine, open the index and the spool rooted at `out`.
    pub fn open<'a>(
        sections: impl Into<Sections<'a>>,
        out: &Path,
        durability: Durability,
    ) -> Result<Pipeline, SetupError> {
        let Sections { project, storage, index, node, limits } = sections.into();
        // First: a second writer learns who holds the directory before anything else is done.
        let lock = StorageLock::acquire(&storage.dir)?;
        let engine = Self::engine(project)?;
        // A batch (the offline commands) has the machine to itself: one OCR process per core. A
        // node keeps to `pixels.workers`, so that the intake beside the OCR keeps a core.
        let mut pixel_config = project.pixels.clone();
        if durability == Durability::AtEnd {
            pixel_config.workers = std::thread::available_parallelism().map_or(1, usize::from);
        }
        let pixels = PixelStage::new(&pixel_config)?;
        pixels.announce();
        let private = storage.private_dir();
        crate::file_modes::private_dir(&private)
            .map_err(|source| SetupError::Dir { path: private.display().to_string(), source })?;
        let owner = project.index_owner()?;
        let index_path = storage.index_path();
        let index = Index::open_at(&index.location(&project.name, storage, node)?, &owner)?;
        let spool = Spool::open(out, durability == Durability::EachInstance)?;
        let tmp = storage.tmp_dir();
        crate::file_modes::private_dir(&tmp)
            .map_err(|source| SetupError::Dir { path: tmp.display().to_string(), source })?;
        let index_dir = index_path.parent().map(Path::to_path_buf).unwrap_or_default();
        // The index's directory first: the probe file goes there when both share a file system,
        // so that nothing but anonymized files is ever in `out`.
        let barrier = Barrier::new(&[&index_dir, out])
            .map_err(|source| SetupError::Dir { path: out.display().to_string(), source })?;
        Ok(Pipeline {
            engine,
            pixels,
            unverifiable: project.unverifiable,
            index,
            spool,
            quarantine: Quarantine::new(&storage.quarantine_dir()),
            keyed: project.pseudonyms == PseudonymMode::Keyed,
            durability,
            barrier,
            tmp,
            limits,
            index_path,
            site_id: project.site_id.clone(),
            over_long: Mutex::new(HashSet::new()),
            _lock: lock,
            memory: None,
        })
    }

    /// Take the bytes of every data set read into memory from `budget` (a node's, shared by its
    /// projects), waiting briefly when others hold it.
    pub fn with_memory_budget(self, budget: Arc<MemoryBudget>) -> Pipeline {
        Pipeline { memory: Some(budget), ..self }
    }

    /// What a data set of `bytes` in memory costs, from the memory budget, held until the
    /// instance is done; nothing without a budget.
    fn hold(&self, bytes: u64) -> Result<Option<Reservation>, InstanceError> {
        let cost = crate::memory_budget::cost(bytes);
        Ok(self.memory.as_ref().map(|b| b.reserve(cost, MEMORY_WAIT)).transpose()?)
    }

    /// The project's engine: its script, lookup table and pseudonyms, with the secret they need.
    /// `check-config` builds it too, so that it refuses what a start would refuse.
    pub fn engine(project: &ProjectConfig) -> Result<Engine, SetupError> {
        let script = Script::load(&project.script, &project.script_settings())?;
        let lookup = LookupTable::for_script(project.lookup_table.as_deref(), &script.lookups)?;
        let pseudonyms: Arc<dyn Pseudonyms> = match project.pseudonyms {
            PseudonymMode::Rsna => {
                Arc::new(Rsna::new(&project.site_id, &project.uid_root, project.accession_format)?)
            }
            PseudonymMode::Keyed => Arc::new(Keyed::new(
                &project.site_id,
                &project.uid_root,
                &project.secret()?,
                project.accession_format,
            )?),
        };
        let labels = Labels { project_name: project.name.clone(), site_id: project.site_id.clone() };
        let engine = Engine::new(script, pseudonyms, labels);
        Ok(match lookup {
            Some(table) => engine.with_lookup(table),
            None => engine,
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Put right what a crash left, or refuse an index older than its files (see `recovery`).
    /// `in_flight`: how many instances can be between commit and acknowledgement at once.
    pub fn recover(&self, in_flight: usize) -> Result<Recovered, RecoveryError> {
        recovery::recover(
            &self.spool,
            &self.index,
            &self.quarantine,
            &self.index_path,
            in_flight,
            &self.site_id,
        )
    }

    /// Anonymize one Part 10 file from disk. `source` (a path) goes into the index only.
    pub fn process_file(&self, path: &Path, source: &str) -> Outcome {
        if let Some(failed) = self.after_failed_flush() {
            return failed;
        }
        let result = guarded(|| self.run_file(path, 0, None, source));
        self.settle(result, source, |f| Body::File { path, offset: 0 }.copy_to(f))
    }

    /// After a failed flush nothing more is written, not even to quarantine (see durability):
    /// what every entry point answers then.
    fn after_failed_flush(&self) -> Option<Outcome> {
        let failed = self.barrier.failure()?;
        Some(Outcome::Failed { detail: failed.to_string(), told: FLUSH_FAILED_TOLD.into() })
    }

    /// Anonymize a data set received in `ts`, once it passes `admission`.
    pub fn process_received(
        &self,
        body: Body<'_>,
        ts: &TransferSyntax,
        admission: &Admission<'_>,
        source: &str,
    ) -> Outcome {
        if let Some(failed) = self.after_failed_flush() {
            return failed;
        }
        let result = guarded(|| self.run_body(body, ts, Some(admission), source));
        // Kept as a Part 10 file, so it can be inspected and imported again as it came.
        self.settle(result, source, |f| {
            let mut w = BufWriter::new(f);
            write_meta(admission.sop_class_uid, admission.sop_instance_uid, ts, &mut w)
                .map_err(io::Error::other)?;
            body.copy_to(&mut w)?;
            w.flush()
        })
    }

    /// Anonymize a Part 10 file received whole (a STOW-RS part), in memory or in a spill file:
    /// its meta group announces its SOP class and instance, which the data set must match, as a
    /// C-STORE's must match its request. `filters` says the rest of what it must be.
    pub fn process_part10(&self, file: Body<'_>, filters: &Filters<'_>, source: &str) -> Outcome {
        if let Some(failed) = self.after_failed_flush() {
            return failed;
        }
        let result = guarded(|| match file {
            Body::Memory(bytes) => {
                let p10 = Part10::parse(bytes)?;
                let admission = filters.admit(&p10.meta);
                self.run_body(Body::Memory(p10.body), &p10.meta.transfer_syntax, Some(&admission), source)
            }
            Body::File { path, offset } => self.run_file(path, offset, Some(filters), source),
        });
        self.settle(result, source, |f| file.copy_to(f))
    }

    /// Turn a result into an outcome: a data fault is quarantined with `keep`, which writes the
    /// instance as it came. A quarantine that cannot be written is an environment fault.
    fn settle(
        &self,
        result: Result<Stored, InstanceError>,
        source: &str,
        keep: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Outcome {
        let e = match result {
            Ok(stored) => return Outcome::Stored(stored),
            Err(e) => e,
        };
        let detail = e.to_string();
        match e.fault() {
            Fault::Data(reason) => match self.quarantine.put_with(reason, &detail, source, keep) {
                Ok(path) => Outcome::Quarantined { reason, detail, path },
                Err(q) => Outcome::Failed {
                    detail: format!("{detail}; and it cannot be quarantined: {q}"),
                    told: "the node could not write the instance to its quarantine".into(),
                },
            },
            Fault::Refused => Outcome::Refused(detail),
            Fault::Conflict => Outcome::Conflict(detail),
            Fault::Environment => Outcome::Failed { told: e.told(), detail },
        }
    }

    /// A Part 10 file from `start` in `path`: whole in memory when small, else its meta group,
    /// and the data set read from the file. With `filters`, it is admitted as a received one.
    fn run_file(
        &self,
        path: &Path,
        start: u64,
        filters: Option<&Filters<'_>>,
        source: &str,
    ) -> Result<Stored, InstanceError> {
        let io_err = io_error(path);
        let mut file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len().saturating_sub(start);
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let mut head = Vec::new();
        let want = if len <= IN_MEMORY_UP_TO as u64 { len } else { MAX_META as u64 };
        (&mut file).take(want).read_to_end(&mut head).map_err(io_err)?;
        let p10 = Part10::parse(&head)?;
        let ts = p10.meta.transfer_syntax.clone();
        let admission = filters.map(|f| f.admit(&p10.meta));
        if head.len() as u64 == len {
            return self.run_body(Body::Memory(p10.body), &ts, admission.as_ref(), source);
        }
        let offset = start + p10.body_offset(&head) as u64;
        self.run_body(Body::File { path, offset }, &ts, admission.as_ref(), source)
    }

    /// Read, admit and store a data set in `ts`.
    fn run_body(
        &self,
        body: Body<'_>,
        ts: &TransferSyntax,
        admission: Option<&Admission<'_>>,
        source: &str,
    ) -> Result<Stored, InstanceError> {
        if ts.is_deflated() {
            let plain = ts.for_output();
            return match self.inflate(body)? {
                Inflated::Memory(bytes) => self.run_body(Body::Memory(&bytes), &plain, admission, source),
                Inflated::File(spill) => {
                    self.run_body(Body::File { path: spill.path(), offset: 0 }, &plain, admission, source)
                }
            };
        }
        match body {
            Body::Memory(bytes) => {
                let _held = self.hold(bytes.len() as u64)?;
                let ds = read_dataset(bytes, ts.encoding())?;
                if let Some(admission) = admission {
                    admit(&ds, admission)?;
                }
                self.store(ds, ts, source, admission, write_part10)
            }
            Body::File { path, offset } => self.run_spilled(path, offset, ts, admission, source),
        }
    }

    /// A data set spilled to `path` from `offset`: everything but its pixel data is read into
    /// memory and anonymized; the pixel data is copied from the file into the output as it is,
    /// unless the image is to be read for burned-in text (then all of it comes into memory).
    fn run_spilled(
        &self,
        path: &Path,
        offset: u64,
        ts: &TransferSyntax,
        admission: Option<&Admission<'_>>,
        source: &str,
    ) -> Result<Stored, InstanceError> {
        let io_err = io_error(path);
        let mut file = File::open(path).map_err(io_err)?;
        let total = file.metadata().map_err(io_err)?.len();
        let span = locate_pixel_data(&mut file, offset, ts.encoding())?;
        let (head_end, tail_start) = span.map_or((total, total), |s| (s.start, s.end));
        let in_memory = (head_end - offset) + (total - tail_start);
        if in_memory > self.limits.in_memory {
            return Err(InstanceError::TooLarge {
                what: "the data set without its pixel data",
                size: in_memory,
                limit: "scp.max_in_memory_bytes",
                bound: self.limits.in_memory,
            });
        }
        let _held = self.hold(in_memory)?;
        let head = read_range(&mut file, offset, head_end).map_err(io_err)?;
        let tail = read_range(&mut file, tail_start, total).map_err(io_err)?;
        let mut ds = read_dataset(&head, ts.encoding())?;
        let after = read_dataset(&tail, ts.encoding())?;
        if let Some(first) = after.elements.first().filter(|e| e.tag <= PIXEL_DATA) {
            return Err(ReadError::Unexpected {
                found: crate::dicom::tag_str(first.tag),
                offset: tail_start as usize,
                expected: "elements after Pixel Data in ascending order",
            }
            .into());
        }
        ds.elements.extend(after.elements);
        if let Some(admission) = admission {
            admit(&ds, admission)?;
        }
        let series = ds.text(crate::anonymize::profile::tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let pixel_bytes = span.map_or(0, |s| s.end - s.start);
        let read_pixels = span.is_some()
            && self.pixels.will_read(&ds, series, pixel_bytes).or_else(|e| self.unread(e).map(|()| false))?;
        if read_pixels {
            // An image read for burned-in text is worked on in memory, pixels and all.
            let whole = read_range(&mut file, offset, total).map_err(io_err)?;
            return self.run_body(Body::Memory(&whole), ts, admission, source);
        }
        let keep_pixels = span.is_some() && self.engine.keeps_value(PIXEL_DATA);
        if let (Some(span), false) = (span, keep_pixels) {
            // Any other rule gives what it gives a small instance's pixel data (empty, a dummy,
            // a set value, nothing) whatever the value: it is applied to the element without
            // its value, which is never read.
            let vr = match read_range(&mut file, span.start + 4, span.start + 6).map_err(io_err)?.as_slice() {
                b"OB" if ts.encoding().explicit_vr => VR::OB,
                _ => VR::OW,
            };
            ds.put(Element { tag: PIXEL_DATA, vr, value: Value::Bytes(Cow::Borrowed(&[])) });
        }
        self.store(ds, ts, source, admission, |ds, ts, w| {
            let split = ds.elements.partition_point(|e| e.tag < PIXEL_DATA);
            write_part10(&DataSet { elements: ds.elements[..split].to_vec() }, ts, w)?;
            if let (true, Some(span)) = (keep_pixels, span) {
                let reading =
                    |e: io::Error| io::Error::new(e.kind(), format!("reading {}: {e}", path.display()));
                let mut src = File::open(path).map_err(reading)?;
                src.seek(SeekFrom::Start(span.start)).map_err(reading)?;
                w.copy_from(&mut src.take(span.end - span.start), path)?;
            }
            write_dataset(&DataSet { elements: ds.elements[split..].to_vec() }, ts.encoding(), w)
        })
    }

    /// Inflate a Deflated data set as a stream: into memory while it is small, into a spill file
    /// once it is not, and never past `scp.max_instance_bytes`.
    fn inflate(&self, body: Body<'_>) -> Result<Inflated, InstanceError> {
        let mut sink = Inflating { tmp: &self.tmp, out: Inflated::Memory(Vec::new()), writer: None };
        let limit = self.limits.instance;
        match body {
            Body::Memory(bytes) => inflate_into(bytes, limit, &mut sink)?,
            Body::File { path, offset } => {
                let io_err = io_error(path);
                let mut file = File::open(path).map_err(io_err)?;
                file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
                inflate_into(io::BufReader::new(file), limit, &mut sink)?
            }
        };
        sink.flush().map_err(InflateError::Io)?;
        Ok(sink.out)
    }

    /// Capture, anonymize, check, commit and record one parsed data set in `enc`; `write` encodes
    /// the file.
    ///
    /// One round trip to the index per instance: the patient's pseudonym, needed before
    /// anonymizing, comes from memory once the patient is known; the file is staged, then the
    /// index records patient, study, series, instance and audit row in one transaction, and only
    /// then is the file renamed into `public/`.
    fn store(
        &self,
        mut ds: DataSet<'_>,
        ts: &TransferSyntax,
        source: &str,
        admission: Option<&Admission<'_>>,
        write: impl FnOnce(&DataSet<'_>, &TransferSyntax, &mut StageWriter) -> Result<(), WriteError>,
    ) -> Result<Stored, InstanceError> {
        // Odd values real devices send are repaired before anything reads them.
        repair_values(&mut ds, ts.encoding())?;
        let original = self.engine.read(&ds)?;
        check_vrs(&ds)?;
        // Pixels are read before anything of the instance is recorded: a held image leaves
        // nothing in the index.
        let cleaning = self.clean_pixels(&mut ds, ts, &original)?;
        let (capture, keys) = self.patient(&original, source)?;
        // What the patient's other instances, and any instance, stated may be typed into this
        // one's free text.
        let seen = self.index.seen(&original.patient_id)?;
        let mut original = original;
        original.add_seen(&seen.names, &[seen.places, seen.institutions].concat());
        let report = self.engine.apply(&mut ds, &original, keys)?;
        if let Some(cleaning) = &cleaning {
            pixels::mark(&mut ds, cleaning);
        }
        // The last look before anything is written: no kept value may hold bytes its VR forbids.
        for tag in check_values(&ds, ts.encoding())? {
            self.report_over_long(tag);
        }
        let keys = report.keys;
        let path = spool_path(&keys)?;
        // Pixel data that was decompressed to be cleaned goes out uncompressed.
        let out = match &cleaning {
            Some(c) if c.decompressed => TransferSyntax::new(EXPLICIT_VR_LE),
            _ => ts.clone(),
        };
        let staged = self.spool.stage(&path, |w| write(&ds, &out, w))?;
        let size = staged.size();
        let audit = admission.and_then(|a| a.audit).map(|(caller, bytes)| {
            let masked = cleaning.as_ref().filter(|c| c.changed());
            AuditRecord::stored(
                caller,
                bytes,
                (keys.study_uid.clone(), keys.series_uid.clone(), keys.sop_uid.clone()),
                masked.map(|c| format!("frames={} regions={} words={}", c.frames, c.regions, c.words)),
            )
        });
        let record = InstanceRecord {
            sop_uid: original.sop_uid.clone(),
            anon_sop_uid: keys.sop_uid.clone(),
            series_uid: original.series_uid.clone(),
            sop_class_uid: original.sop_class_uid.clone(),
            path: path.to_string_lossy().into_owned(),
            size,
            digest: staged.digest(),
            uid_map: report.uid_map,
        };
        self.commit(capture, record, audit, &keys.patient_id, staged, &path)?;
        Ok(Stored { keys, path, size, caught: report.caught })
    }

    /// The instance's patient as the index knows it: what the index records of it ([`Capture`]),
    /// and the keys the engine writes, with the patient's pseudonym settled (assigned, stateless,
    /// or numbered by the index).
    fn patient(&self, original: &Original, source: &str) -> Result<(Capture, Keys), InstanceError> {
        let pseudonyms = self.engine.pseudonyms();
        // Computed once: the index records them and the engine writes them.
        let assigned = self.engine.assigned_patient_id(original)?;
        let instance = self.engine.instance_keys(original)?;
        let stateless_id = match (&assigned, self.keyed, original.patient_id.is_empty()) {
            (Some(id), _, _) => Some(id.clone()),
            (None, false, _) => None,
            (None, true, true) => Some(pseudonyms.default_patient_id()),
            (None, true, false) => pseudonyms.patient_id(&original.patient_id),
        };
        let capture = Capture {
            original: original.identity.clone(),
            anon_patient_id: stateless_id,
            anon_study_uid: instance.study_uid.clone(),
            anon_accession: instance.accession.clone(),
            date_offset: instance.date_offset,
            source: source.to_string(),
            anon_series_uid: instance.series_uid.clone(),
            phrases: {
                let [names, places, institutions] = original.stated().clone();
                Phrases { names, places, institutions }
            },
        };
        let known = match self.index.known_patient(&original.patient_id) {
            Some(known) => Ok(known),
            // A patient new to this process: the index decides (and may number) its pseudonym.
            None => self.index.capture(capture.clone()),
        };
        let patient_id = match &assigned {
            Some(id) => agree(id, known)?,
            None => known?,
        };
        Ok((capture, instance.of_patient(patient_id)))
    }

    /// Record the instance, put its file in place and, per instance, make both durable at the
    /// barrier; whatever fails after the index row is undone.
    fn commit(
        &self,
        capture: Capture,
        record: InstanceRecord,
        audit: Option<AuditRecord>,
        patient_id: &str,
        staged: Staged,
        path: &Path,
    ) -> Result<(), InstanceError> {
        let committed = self.index.commit(capture, record, audit, patient_id)?;
        let dest = self.spool.root().join(path);
        if let Err(e) = staged.publish() {
            return Err(self.undo(committed, false, &dest, e.into()));
        }
        if self.durability == Durability::EachInstance {
            // File, directory entry and index row are in the page cache; make them durable
            // together with whatever other instances are waiting (group commit).
            if let Err(e) = durable(&self.barrier, &self.spool) {
                return Err(self.undo(committed, true, &dest, e.into()));
            }
        }
        Ok(())
    }

    /// The pixel stage, under the project's policy for what it cannot read.
    fn clean_pixels(
        &self,
        ds: &mut DataSet<'_>,
        ts: &TransferSyntax,
        original: &Original,
    ) -> Result<Option<Cleaning>, InstanceError> {
        let reading = ReadingPixels::start();
        let result = self.pixels.clean(ds, ts, original);
        reading.finish(&result, self.unverifiable);
        match result {
            Ok(Some(cleaning)) => {
                if cleaning.changed() {
                    tracing::info!(
                        frames = cleaning.frames,
                        regions = cleaning.regions,
                        words = cleaning.words,
                        "burned-in text masked"
                    );
                }
                Ok(Some(cleaning))
            }
            Ok(None) => Ok(None),
            Err(e) => self.unread(e).map(|()| None),
        }
    }

    /// Pixels that could not be read: held, unless the project keeps what it cannot check.
    /// Text that was read and could not be masked is held whatever the policy.
    fn unread(&self, e: PixelError) -> Result<(), InstanceError> {
        if self.unverifiable == Unverifiable::Keep && !e.is_readable_text() {
            tracing::warn!(error = %e, "pixels not read, archived as they are (project.unverifiable: keep)");
            return Ok(());
        }
        Err(e.into())
    }

    /// After a failure that followed the commit: take back the success audit row (the caller
    /// audits the failure) and, if the file never reached `dest`, the instance row. Returns the
    /// failure; an index that cannot be put right is logged (the next start forgets rows whose
    /// file is missing).
    fn undo(
        &self,
        committed: Committed,
        published: bool,
        dest: &Path,
        failure: InstanceError,
    ) -> InstanceError {
        // Only an unpublished instance's row is put right, from the file still at its path.
        let on_disk = if published {
            None
        } else {
            std::fs::metadata(dest).ok().filter(std::fs::Metadata::is_file).map(|m| m.len())
        };
        if let Err(e) = self.index.undo(committed, published, on_disk) {
            tracing::error!(error = %e, "cannot take back the index rows of an instance that failed after its commit");
        }
        failure
    }

    /// Real devices write values longer than their VR allows: they are kept (the free-text scrub
    /// has applied to them), and each tag is logged once.
    fn report_over_long(&self, tag: Tag) {
        let first = self.over_long.lock().map(|mut seen| seen.insert(tag)).unwrap_or(false);
        if first {
            tracing::info!(tag = %crate::dicom::tag_str(tag), "kept a value longer than its VR allows (logged once per tag)");
        }
    }

    /// Stop the index writer and make everything durable.
    pub fn close(self) -> Result<(), SpoolError> {
        let Pipeline { index, barrier, spool, .. } = self;
        index.close();
        durable(&barrier, &spool)
    }
}

/// The index must agree with a pseudonym the lookup table assigns. A PatientID that already has
/// another pseudonym is a conflict for someone to review (quarantined), not this node's error to
/// retry; so is a pseudonym that already belongs to another PatientID, which the index reports.
fn agree(assigned: &str, captured: Result<String, IndexError>) -> Result<String, IndexError> {
    match captured {
        Ok(id) if id == assigned => Ok(id),
        Ok(_) => Err(IndexError::Conflict(
            "the PatientID has another pseudonym in the index than project.lookup_table assigns".into(),
        )),
        Err(e) => Err(e),
    }
}

/// Run `f`; a panic (a bug some input found) becomes an error about that input, so the instance
/// is quarantined and the sender told, instead of a dead task and an endless retry.
fn guarded(f: impl FnOnce() -> Result<Stored, InstanceError>) -> Result<Stored, InstanceError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(InstanceError::Panic(crate::index::panic_message(&*payload))))
}

/// An I/O error on `path`: the node's fault, never the sender's.
fn io_error(path: &Path) -> impl Fn(io::Error) -> InstanceError + Copy + '_ {
    move |source| InstanceError::Io { path: path.display().to_string(), source }
}

fn read_range(file: &mut File, from: u64, to: u64) -> io::Result<Vec<u8>> {
    let mut v = vec![0; (to - from) as usize];
    file.seek(SeekFrom::Start(from))?;
    file.read_exact(&mut v)?;
    Ok(v)
}

/// An inflated data set.
enum Inflated {
    Memory(Vec<u8>),
    File(Spill),
}

/// A writer that keeps what it is given in memory up to [`IN_MEMORY_UP_TO`], then moves it to a
/// spill file and goes on there.
struct Inflating<'a> {
    tmp: &'a Path,
    out: Inflated,
    writer: Option<BufWriter<File>>,
}

impl Write for Inflating<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Inflated::Memory(v) = &mut self.out {
            if v.len() + buf.len() <= IN_MEMORY_UP_TO {
                v.extend_from_slice(buf);
                return Ok(buf.len());
            }
            let (spill, file) = Spill::create(self.tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            w.write_all(v)?;
            self.writer = Some(w);
            self.out = Inflated::File(spill);
        }
        match &mut self.writer {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("inflate sink has no file")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().map_or(Ok(()), Write::flush)
    }
}

/// One image in the pixel stage, as `/metrics` and the status page count it.
struct ReadingPixels(std::time::Instant);

impl ReadingPixels {
    fn start() -> ReadingPixels {
        METRICS.pixel_reads_in_progress.inc();
        ReadingPixels(std::time::Instant::now())
    }

    /// Count the outcome of an image that was read (one the stage passed over is not counted).
    fn finish(self, result: &Result<Option<Cleaning>, PixelError>, unverifiable: Unverifiable) {
        METRICS.pixel_reads_in_progress.dec();
        let outcome = match result {
            Ok(None) => return,
            Ok(Some(c)) if c.changed() => "masked",
            Ok(Some(_)) => "clean",
            Err(e) if unverifiable == Unverifiable::Keep && !e.is_readable_text() => "kept_unread",
            Err(_) => "held",
        };
        METRICS.pixel_reads.with_label_values(&[outcome]).inc();
        METRICS.pixel_read_seconds.observe(self.0.elapsed().as_secs_f64());
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
    // Empty: not announced (a Part 10 file without its media storage UIDs).
    let announced = |uid: &str| !uid.is_empty();
    if announced(admission.sop_class_uid) && text(tags::SOP_CLASS_UID) != admission.sop_class_uid {
        return Err(InstanceError::Mismatch("SOPClassUID"));
    }
    if announced(admission.sop_instance_uid) && text(tags::SOP_INSTANCE_UID) != admission.sop_instance_uid {
        return Err(InstanceError::Mismatch("SOPInstanceUID"));
    }
    if admission.study_instance_uid.is_some_and(|study| text(tags::STUDY_INSTANCE_UID) != study) {
        return Err(InstanceError::OtherStudy);
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

/// `<patient>/<study>/<series>/<sop>.dcm`, each step checked: a lookup table's subject ID or a
/// UID the script keeps comes from outside and must not climb out of `public/`.
fn spool_path(keys: &Keys) -> Result<PathBuf, InstanceError> {
    let step = |what: &'static str, value: &str| {
        component(value).map(drop).map_err(|why| InstanceError::PathComponent { what, why })
    };
    step("PatientID", &keys.patient_id)?;
    step("StudyInstanceUID", &keys.study_uid)?;
    step("SeriesInstanceUID", &keys.series_uid)?;
    step("SOPInstanceUID", &keys.sop_uid)?;
    Ok([&keys.patient_id, &keys.study_uid, &keys.series_uid, &format!("{}.dcm", keys.sop_uid)]
        .iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_path_is_four_normal_steps_or_a_data_fault() {
        let keys = |patient: &str, study: &str| Keys {
            patient_id: patient.into(),
            study_uid: study.into(),
            series_uid: "1.3".into(),
            sop_uid: "1.4".into(),
            accession: None,
            date_offset: None,
        };
        assert_eq!(spool_path(&keys("TRIAL-1", "1.2")).unwrap(), Path::new("TRIAL-1/1.2/1.3/1.4.dcm"));
        for (patient, study) in
            [("../x", "1.2"), ("..", "1.2"), ("TRIAL-1", ".."), ("", "1.2"), ("a\0", "1.2")]
        {
            let e = spool_path(&keys(patient, study)).unwrap_err();
            assert_eq!(e.fault(), Fault::Data(Reason::InvalidText), "{patient:?} {study:?}");
            assert!(!e.to_string().contains(patient) || patient.is_empty(), "{e}");
        }
    }

    fn read_error() -> ReadError {
        ReadError::Truncated { offset: 8, what: "value of (0010,0010)".into(), needed: 10, available: 2 }
    }

    /// Each class of failure, and whose fault it is.
    #[test]
    fn every_failure_is_the_datas_a_filters_or_the_environments() {
        use crate::anonymize::pixels::PixelError;
        use crate::path_component::ComponentError;
        use Fault::{Data, Environment};
        let io = || io::Error::other("EIO");
        let cases: Vec<(InstanceError, Fault)> = vec![
            (Part10Error::NotDicom.into(), Data(Reason::NotDicom)),
            (Part10Error::Meta(read_error()).into(), Data(Reason::Unreadable)),
            (Part10Error::MetaMissing("TransferSyntaxUID (0002,0010)").into(), Data(Reason::Unreadable)),
            (read_error().into(), Data(Reason::Unreadable)),
            (SplitError::Malformed(ReadError::TooDeep).into(), Data(Reason::Unreadable)),
            (InflateError::Corrupt(io()).into(), Data(Reason::Unreadable)),
            (EngineError::MissingAttributes(vec!["SOPInstanceUID"]).into(), Data(Reason::MissingAttributes)),
            (InstanceError::Mismatch("SOPClassUID"), Data(Reason::MissingAttributes)),
            (EngineError::InvalidText("PatientName (0010,0010)").into(), Data(Reason::InvalidText)),
            (
                ValueError::Forbidden { tag: "(0010,4000)".into(), vr: "LO", byte: 0x0A }.into(),
                Data(Reason::InvalidText),
            ),
            (
                InstanceError::PathComponent { what: "PatientID", why: ComponentError::Separator },
                Data(Reason::InvalidText),
            ),
            (
                ValueError::Swallowed { tag: "(0018,1030)".into(), vr: "LO", at: 4 }.into(),
                Data(Reason::Unreadable),
            ),
            (
                ValueError::VrMismatch { tag: "(0008,1030)".into(), found: "TM", expected: "LO" }.into(),
                Data(Reason::Unreadable),
            ),
            (EngineError::Unverifiable("an encapsulated document".into()).into(), Data(Reason::Unverifiable)),
            (
                EngineError::LookupMiss { what: "PatientID (0010,0020)".into(), keytype: "ptid".into() }
                    .into(),
                Data(Reason::LookupMiss),
            ),
            (PixelError::StillReadable(3).into(), Data(Reason::BurnedInText)),
            (PixelError::Codec("JPEG-LS".into()).into(), Data(Reason::PixelUnverified)),
            (PixelError::Ocr("timed out".into()).into(), Data(Reason::PixelUnverified)),
            (IndexError::Conflict("study under two patients".into()).into(), Data(Reason::IntegrityConflict)),
            (
                SpoolError::Encode(WriteError::TooLong { tag: "(0008,1115)".into(), vr: "UI", len: 70_000 })
                    .into(),
                Data(Reason::CannotEncode),
            ),
            (InstanceError::Panic("index out of bounds".into()), Data(Reason::ProcessingError)),
            (IndexError::Panicked("a bug".into()).into(), Data(Reason::ProcessingError)),
            (InstanceError::Refused("Modality \"SR\" is not accepted".into()), Fault::Refused),
            (InflateError::TooLarge { limit: 1 << 30 }.into(), Environment),
            (InflateError::Io(io()).into(), Environment),
            (
                InstanceError::TooLarge {
                    what: "the data set without its pixel data",
                    size: 300 << 20,
                    limit: "scp.max_in_memory_bytes",
                    bound: 256 << 20,
                },
                Environment,
            ),
            (
                OverBudget { needed: 96 << 20, limit: 256 << 20, in_use: 200 << 20, waited: MEMORY_WAIT }
                    .into(),
                Environment,
            ),
            (IndexError::Closed.into(), Environment),
            (IndexError::Db(crate::index::db::DbError::NoRow).into(), Environment),
            (SpoolError::Io { path: "/srv/dag/public/x.part".into(), source: io() }.into(), Environment),
            (InstanceError::Io { path: "/srv/dag/private/tmp/1.spill".into(), source: io() }, Environment),
            (SplitError::Io(io()).into(), Environment),
        ];
        for (e, fault) in &cases {
            assert_eq!(e.fault(), *fault, "{e:?}");
        }
    }

    /// A peer hears which part of the node failed, never where its storage is; a limit it hit is
    /// named so that its sender can tell why.
    #[test]
    fn what_a_peer_is_told_of_an_environment_fault_names_no_path() {
        let io = || io::Error::other("EIO on /srv/dag");
        let told: Vec<(InstanceError, &str)> = vec![
            (SpoolError::Io { path: "/srv/dag/public/x.part".into(), source: io() }.into(), "its storage"),
            (
                InstanceError::Io { path: "/srv/dag/private/tmp/1.spill".into(), source: io() },
                "buffered copy",
            ),
            (InflateError::Io(io()).into(), "buffered copy"),
            (IndexError::Db(crate::index::db::DbError::NoRow).into(), "index"),
            (
                OverBudget { needed: 1, limit: 2, in_use: 2, waited: MEMORY_WAIT }.into(),
                "memory for data sets is taken",
            ),
        ];
        for (e, says) in &told {
            assert_eq!(e.fault(), Fault::Environment);
            let t = e.told();
            assert!(t.contains(says) && !t.contains("/srv"), "{e:?} told {t:?}");
        }
        let limit = InstanceError::TooLarge {
            what: "the data set without its pixel data",
            size: 300,
            limit: "scp.max_in_memory_bytes",
            bound: 256,
        };
        assert_eq!(limit.told(), limit.to_string());
        assert!(limit.told().contains("scp.max_in_memory_bytes"), "{}", limit.told());
        let inflated: InstanceError = InflateError::TooLarge { limit: 1000 }.into();
        assert!(inflated.told().contains("1000"), "{}", inflated.told());
    }

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    /// A small CT instance without pixel data, in Explicit VR Little Endian.
    fn instance(sop: &str, modality: &str) -> Vec<u8> {
        let mut ds = DataSet::default();
        for (tag, vr, value) in [
            (Tag(0x0008, 0x0016), VR::UI, CT),
            (Tag(0x0008, 0x0018), VR::UI, sop),
            (Tag(0x0008, 0x0060), VR::CS, modality),
            (Tag(0x0010, 0x0010), VR::PN, "DOE^JOHN"),
            (Tag(0x0010, 0x0020), VR::LO, "MRN-0042"),
            (Tag(0x0020, 0x000D), VR::UI, "1.2.3.1"),
            (Tag(0x0020, 0x000E), VR::UI, "1.2.3.1.1"),
        ] {
            ds.put_text(tag, vr, value);
        }
        let mut out = Vec::new();
        write_dataset(&ds, crate::dicom::Encoding::EXPLICIT_LE, &mut out).unwrap();
        out
    }

    fn open(dir: &Path, scp: &str) -> (Config, Pipeline) {
        let yaml =
            format!("project: {{ name: P, site_id: '99' }}\nstorage: {{ dir: '{}' }}\n{scp}", dir.display());
        let config: Config = serde_norway::from_str(&yaml).unwrap();
        let pipeline = Pipeline::open(&config, &config.public_dir(), Durability::AtEnd).unwrap();
        (config, pipeline)
    }

    fn admission<'a>(sop: &'a str, modalities: &'a [String]) -> Admission<'a> {
        Admission {
            sop_class_uid: CT,
            sop_instance_uid: sop,
            modalities,
            study_instance_uid: None,
            audit: None,
        }
    }

    /// What `settle` makes of each class, through `process_received`.
    #[test]
    fn a_received_instance_is_stored_quarantined_refused_or_failed() {
        let d = tempfile::tempdir().unwrap();
        let (config, pipeline) = open(d.path(), "scp: { max_instance_bytes: 100000 }");
        let ts = TransferSyntax::new(EXPLICIT_VR_LE);
        let only_ct = ["CT".to_string()];

        let body = instance("1.2.3.1.1.1", "CT");
        match pipeline.process_received(Body::Memory(&body), &ts, &admission("1.2.3.1.1.1", &only_ct), "t") {
            Outcome::Stored(stored) => {
                assert_ne!(stored.keys.sop_uid, "1.2.3.1.1.1");
                assert_eq!(stored.path.extension().and_then(|e| e.to_str()), Some("dcm"));
                let file = std::fs::read(config.public_dir().join(&stored.path)).unwrap();
                assert_eq!(file.len() as u64, stored.size);
                let p10 = Part10::parse(&file).unwrap();
                let out = read_dataset(p10.body, ts.encoding()).unwrap();
                assert_eq!(out.text(Tag(0x0008, 0x0018)), Some(stored.keys.sop_uid.as_str()));
                assert_ne!(out.text(Tag(0x0010, 0x0010)), Some("DOE^JOHN"));
            }
            other => panic!("expected Stored, got {other:?}"),
        }

        // Data faults: kept in quarantine under their reason, as received.
        let other = instance("1.2.3.1.1.2", "CT");
        match pipeline.process_received(Body::Memory(&other), &ts, &admission("1.2.3.1.1.9", &only_ct), "t") {
            Outcome::Quarantined { reason, detail, path } => {
                assert_eq!(reason, Reason::MissingAttributes);
                assert!(detail.contains("SOPInstanceUID"), "{detail}");
                assert!(path.starts_with(config.quarantine_dir().join("Missing_Attributes")), "{path:?}");
                let kept = std::fs::read(&path).unwrap();
                let p10 = Part10::parse(&kept).unwrap();
                assert_eq!(p10.body, &other[..], "the data set as it came, behind a meta group");
            }
            other => panic!("expected Quarantined, got {other:?}"),
        }
        let cut = &body[..body.len() - 3];
        match pipeline.process_received(Body::Memory(cut), &ts, &admission("1.2.3.1.1.1", &only_ct), "t") {
            Outcome::Quarantined { reason, .. } => assert_eq!(reason, Reason::Unreadable),
            other => panic!("expected Quarantined, got {other:?}"),
        }

        // A filter: refused, nothing kept.
        let mr = instance("1.2.3.1.1.3", "MR");
        match pipeline.process_received(Body::Memory(&mr), &ts, &admission("1.2.3.1.1.3", &only_ct), "t") {
            Outcome::Refused(why) => assert!(why.contains("\"MR\""), "{why}"),
            other => panic!("expected Refused, got {other:?}"),
        }

        // The environment: a Deflated data set that inflates past scp.max_instance_bytes.
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&vec![0u8; 200_000]).unwrap();
        let bomb = z.finish().unwrap();
        let deflated = TransferSyntax::new("1.2.840.10008.1.2.1.99");
        match pipeline.process_received(Body::Memory(&bomb), &deflated, &admission("1.2.3.1.1.4", &[]), "t") {
            Outcome::Failed { told, .. } => assert!(told.contains("100000"), "{told}"),
            other => panic!("expected Failed, got {other:?}"),
        }
        let held = Quarantine::new(&config.quarantine_dir()).list(None).unwrap();
        assert_eq!(held.len(), 2, "only the data faults are kept");
        pipeline.close().unwrap();
    }

    /// A data fault whose quarantine cannot be written becomes the node's fault: the sender keeps
    /// its copy.
    #[test]
    fn a_data_fault_that_cannot_be_quarantined_is_an_environment_fault() {
        let d = tempfile::tempdir().unwrap();
        let (config, pipeline) = open(d.path(), "");
        std::fs::write(config.quarantine_dir(), b"not a directory").unwrap();
        let body = instance("1.2.3.1.1.2", "CT");
        let ts = TransferSyntax::new(EXPLICIT_VR_LE);
        match pipeline.process_received(Body::Memory(&body), &ts, &admission("1.2.3.1.1.9", &[]), "t") {
            Outcome::Failed { detail, told } => {
                assert!(
                    detail.contains("SOPInstanceUID") && detail.contains("cannot be quarantined"),
                    "{detail}"
                );
                assert!(told.contains("quarantine"), "{told}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        pipeline.close().unwrap();
    }

    #[test]
    fn admission_checks_the_announced_uids_then_the_modality_filter() {
        let body = instance("1.2.3.1.1.1", "CT");
        let ds = read_dataset(&body, crate::dicom::Encoding::EXPLICIT_LE).unwrap();
        let any: [String; 0] = [];
        let ct_mr = ["MR".to_string(), "CT".to_string()];
        assert!(admit(&ds, &admission("1.2.3.1.1.1", &any)).is_ok());
        assert!(admit(&ds, &admission("1.2.3.1.1.1", &ct_mr)).is_ok());
        let wrong_class =
            Admission { sop_class_uid: "1.2.840.10008.5.1.4.1.1.4", ..admission("1.2.3.1.1.1", &any) };
        assert!(matches!(admit(&ds, &wrong_class), Err(InstanceError::Mismatch("SOPClassUID"))));
        assert!(matches!(
            admit(&ds, &admission("1.2.3.1.1.2", &any)),
            Err(InstanceError::Mismatch("SOPInstanceUID"))
        ));
        let us = ["US".to_string()];
        let e = admit(&ds, &admission("1.2.3.1.1.1", &us)).unwrap_err();
        assert_eq!(e.fault(), Fault::Refused, "{e}");
        // No SOP Instance UID at all: missing, not merely different.
        let mut bare = ds.clone();
        bare.elements.retain(|e| e.tag != Tag(0x0008, 0x0018));
        let e = admit(&bare, &admission("1.2.3.1.1.1", &any)).unwrap_err();
        assert!(
            matches!(&e, InstanceError::Invalid(EngineError::MissingAttributes(m)) if m == &["SOPInstanceUID"]),
            "{e:?}"
        );
    }
}
