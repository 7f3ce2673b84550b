//! STOW-RS (PS3.18 §10.5): a `multipart/related` body of `application/dicom` parts, each a
//! Part 10 file, stored through the same pipeline as a C-STORE, with the same filters, index and
//! durability. The answer is sent once every stored part is durable.
//!
//! Parts stream: each is collected as a C-STORE data set is (in memory while small, spilled past
//! that, refused past `scp.max_instance_bytes`), and while one part is stored the next is read,
//! so several parts of one request share a flush of the group commit.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::Stream;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::multipart::{Multipart, MultipartError};
use super::response::{Failure, Reply, Stow};
use crate::dicom::{is_part10, Part10};
use crate::incoming::{Incoming, Received};
use crate::index::{AuditRecord, Caller};
use crate::observe::METRICS;
use crate::pipeline::{Body, Filters, Outcome, Pipeline};
use crate::queue::Reason;

/// Parts stored at once per request, while the next is read.
const IN_FLIGHT: usize = 4;
/// Parts per request; a request with more is refused (413) at the first part past this.
pub const MAX_PARTS: usize = 5000;
/// The transport label of what STOW-RS counts.
pub const TRANSPORT: &str = "stow-rs";

/// What a project's STOW-RS endpoint needs: its pipeline and the limits and filters its DICOM
/// listener applies.
pub struct Receiver {
    pub project: String,
    pub pipeline: Arc<Pipeline>,
    pub modalities: Vec<String>,
    pub max_instance_bytes: u64,
    /// Where large parts spill.
    pub tmp: PathBuf,
    pub storage_dir: PathBuf,
    pub min_free_bytes: u64,
    /// `scp.tls_allowed_subjects`: when set, only a client certificate with one of these common
    /// names may send (over HTTPS with client certificates; otherwise nobody may).
    pub allowed_subjects: Vec<String>,
}

impl Receiver {
    /// Whether a client whose certificate names `subject` may send to this project.
    pub fn admits(&self, subject: Option<&str>) -> bool {
        self.allowed_subjects.is_empty()
            || subject.is_some_and(|s| self.allowed_subjects.iter().any(|a| a == s))
    }
}

/// Something that shows the request is alive (the connection's lifetime is measured from it).
pub trait Progress: Send + Sync {
    fn touch(&self);
}

/// One request: what it is for and who sent it.
pub struct Request<'a> {
    pub content_type: Option<&'a str>,
    /// From the URL: every part must be of this study.
    pub study: Option<String>,
    pub peer: SocketAddr,
    pub progress: &'a dyn Progress,
}

/// Store every part of `body` and say how it went, as PS3.18 answers.
pub async fn store<S, E>(receiver: &Arc<Receiver>, request: Request<'_>, body: S) -> Reply
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let Some(content_type) = request.content_type else {
        return Reply::refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the request has no Content-Type");
    };
    let Some((boundary, part_type)) = super::multipart::related(content_type) else {
        return Reply::refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "STOW-RS takes multipart/related with a boundary",
        );
    };
    if part_type.as_deref().is_some_and(|t| !is_dicom(t)) {
        return Reply::refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this node takes multipart/related; type=\"application/dicom\" only",
        );
    }
    let caller = Caller {
        association: format!("stow-{}", crate::scp::association_id()),
        calling_ae: "STOW-RS".into(),
        peer: request.peer.to_string(),
    };
    let mut run = Run::new(receiver.clone(), caller, request.study.clone());
    let mut parts = Multipart::new(body, &boundary);
    let ended = run.read(&mut parts, request.progress).await;
    let mut stow = run.settle(request.progress).await;
    match ended {
        Ok(()) => {}
        Err(End::Malformed(e)) => {
            warn!(project = %receiver.project, error = %e, "STOW-RS request refused: malformed body");
            stow.refusal = Some((StatusCode::BAD_REQUEST, format!("malformed multipart body: {e}")));
        }
        Err(End::TooLarge(what)) => {
            warn!(project = %receiver.project, reason = %what, "STOW-RS request refused");
            stow.refusal = Some((StatusCode::PAYLOAD_TOO_LARGE, what));
        }
        Err(End::Unavailable(what)) => {
            stow.refusal = Some((StatusCode::SERVICE_UNAVAILABLE, what));
        }
    }
    Reply::Stow(stow)
}

/// Why reading the body stopped early.
enum End {
    Malformed(MultipartError),
    TooLarge(String),
    /// The node could not buffer a part (its disk, its tmp directory).
    Unavailable(String),
}

/// What became of one part: its UIDs as the sender gave them, and whether it was stored. The
/// outcome is judged, counted and audited by the part's own job, so a request that goes away
/// (a client that disconnects) loses no audit row.
struct PartResult {
    uids: Option<(String, String)>,
    answer: Result<(), Failure>,
}

/// Parts in the pipeline at once, node-wide, from every STOW-RS request together: the bound
/// crash recovery counts on (with the associations), and the blocking pool's share.
pub const PIPELINE_SLOTS: usize = 16;
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PIPELINE_SLOTS);
/// Bytes of body that count as a sign of progress: a client trickling a byte a minute does not
/// keep its connection.
const PROGRESS_BYTES: u64 = 64 << 10;
/// While a part is in the pipeline (OCR, a flush), the request is alive: said this often.
const WORKING: std::time::Duration = std::time::Duration::from_secs(10);

/// One request's parts, in order.
struct Run {
    receiver: Arc<Receiver>,
    caller: Caller,
    study: Option<String>,
    pending: VecDeque<JoinHandle<PartResult>>,
    done: Vec<PartResult>,
}

impl Run {
    fn new(receiver: Arc<Receiver>, caller: Caller, study: Option<String>) -> Run {
        Run { receiver, caller, study, pending: VecDeque::new(), done: Vec::new() }
    }

    /// Read every part and hand each on as it completes.
    async fn read<S, E>(&mut self, parts: &mut Multipart<S>, progress: &dyn Progress) -> Result<(), End>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut count = 0;
        let mut unsaid = 0u64;
        while let Some(headers) = parts.next_part().await.map_err(End::Malformed)? {
            count += 1;
            if count > MAX_PARTS {
                return Err(End::TooLarge(format!("more than {MAX_PARTS} parts in one request")));
            }
            let max = self.receiver.max_instance_bytes;
            let mut incoming = Incoming::new(max, &self.receiver.tmp, Vec::new());
            while let Some(chunk) = parts.chunk().await.map_err(End::Malformed)? {
                unsaid += chunk.len() as u64;
                if unsaid >= PROGRESS_BYTES {
                    progress.touch();
                    unsaid = 0;
                }
                if let Err(e) = incoming.push(&chunk).await {
                    warn!(error = %e, "cannot spill a STOW-RS part");
                    return Err(End::Unavailable("the node cannot buffer the part".into()));
                }
                // Past the limit: refused now, without reading the rest.
                if incoming.received() > max {
                    break;
                }
            }
            METRICS.instances_received.with_label_values(&[TRANSPORT]).inc();
            let bytes = incoming.received();
            let received = incoming.finish().await.map_err(|e| {
                warn!(error = %e, "cannot complete a spilled STOW-RS part");
                End::Unavailable("the node cannot buffer the part".into())
            })?;
            let too_large = matches!(received, Received::TooLarge(_));
            let dicom = headers.content_type.as_deref().is_none_or(is_dicom);
            self.start(dicom, received, bytes).await;
            if too_large {
                return Err(End::TooLarge(format!(
                    "a part of more than {max} bytes is larger than this node accepts (scp.max_instance_bytes)"
                )));
            }
            while self.pending.len() >= IN_FLIGHT {
                self.finish_one(progress).await;
            }
        }
        Ok(())
    }

    /// Begin storing one complete part, once a pipeline slot is free.
    async fn start(&mut self, dicom: bool, received: Received, bytes: u64) {
        // Never closed.
        let slot = SLOTS.acquire().await.expect("open semaphore");
        let r = self.receiver.clone();
        let caller = self.caller.clone();
        let study = self.study.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let (uids, outcome) = run_part(&r, &caller, study.as_deref(), dicom, &received, bytes);
            let answer = answer(outcome, &r.project);
            if let Err(failure) = &answer {
                let reason = failure.reason.map(|r| r.dir_name());
                if let Err(e) = r.pipeline.index().audit(AuditRecord::answered(
                    &caller,
                    &failure.code_text(),
                    reason,
                    bytes,
                )) {
                    METRICS.audit_rows_dropped.inc();
                    warn!(error = %e, "cannot record the audit row of a STOW-RS part");
                }
            }
            PartResult { uids, answer }
        });
        self.pending.push_back(job);
    }

    /// Wait for the oldest part in flight (saying the request is alive while it works).
    async fn finish_one(&mut self, progress: &dyn Progress) {
        let Some(mut job) = self.pending.pop_front() else { return };
        let joined = loop {
            tokio::select! {
                joined = &mut job => break joined,
                () = tokio::time::sleep(WORKING) => progress.touch(),
            }
        };
        let result = joined.unwrap_or_else(|e| PartResult {
            uids: None,
            answer: Err(Failure {
                environment: true,
                ..Failure::new(Failure::OUT_OF_RESOURCES, &format!("the storing task did not run: {e}"))
            }),
        });
        progress.touch();
        self.done.push(result);
    }

    /// Every part's answer, once all are settled.
    async fn settle(mut self, progress: &dyn Progress) -> Stow {
        while !self.pending.is_empty() {
            self.finish_one(progress).await;
        }
        let mut stow = Stow::default();
        for part in self.done {
            let (class, instance) = part.uids.unwrap_or_default();
            match part.answer {
                Ok(()) => stow.stored.push((class, instance)),
                Err(failure) => stow.failed.push((class, instance, failure)),
            }
        }
        stow
    }
}

/// One part through the pipeline (on the blocking pool): its announced UIDs, and its outcome or
/// why it never reached the pipeline.
fn run_part(
    r: &Receiver,
    caller: &Caller,
    study: Option<&str>,
    dicom: bool,
    received: &Received,
    bytes: u64,
) -> (Option<(String, String)>, Result<Outcome, Failure>) {
    if !dicom {
        return (None, Err(Failure::new(Failure::CANNOT_UNDERSTAND, "the part is not application/dicom")));
    }
    if let Received::TooLarge(_) = received {
        let why = "the part is larger than this node accepts (scp.max_instance_bytes)";
        return (None, Err(Failure { environment: true, ..Failure::new(Failure::OUT_OF_RESOURCES, why) }));
    }
    // Read here, off the runtime: a spilled part's head is read from its file.
    let Some(uids) = announced(received) else {
        return (None, Err(Failure::new(Failure::CANNOT_UNDERSTAND, "the part is not a DICOM Part 10 file")));
    };
    if let Some(free) = crate::scp::free_space_short(&r.storage_dir, r.min_free_bytes) {
        warn!(
            free_bytes = free,
            min_free_bytes = r.min_free_bytes,
            "STOW-RS part refused: disk below storage.min_free_bytes"
        );
        let full =
            Failure { environment: true, ..Failure::new(Failure::OUT_OF_RESOURCES, "storage is full") };
        return (Some(uids), Err(full));
    }
    let filters =
        Filters { modalities: &r.modalities, study_instance_uid: study, audit: Some((caller, bytes)) };
    let source = format!("STOW-RS from {}", caller.peer);
    let body = match received {
        Received::Memory(b) => Body::Memory(b),
        Received::File(spill) => Body::File { path: spill.path(), offset: 0 },
        Received::TooLarge(_) => Body::Memory(&[]),
    };
    (Some(uids), Ok(r.pipeline.process_part10(body, &filters, &source)))
}

/// What the sender hears of one part, counted and logged as the SCP does for a C-STORE.
fn answer(outcome: Result<Outcome, Failure>, project: &str) -> Result<(), Failure> {
    let outcome = outcome.inspect_err(|failure| {
        warn!(project, status = %failure.code_text(), reason = %failure.comment, "STOW-RS part refused");
        METRICS.refused(&failure.code_text(), TRANSPORT);
    })?;
    match outcome {
        Outcome::Stored(stored) => {
            METRICS.instances_stored.with_label_values(&[TRANSPORT]).inc();
            METRICS.stored_bytes.inc_by(stored.size);
            debug!(project, sop = %stored.keys.sop_uid, size = stored.size, "stored (STOW-RS)");
            Ok(())
        }
        Outcome::Quarantined { reason, detail, .. } => {
            let code = if reason == Reason::MissingAttributes {
                Failure::DATA_SET_MISMATCH
            } else {
                Failure::CANNOT_UNDERSTAND
            };
            warn!(project, %reason, error = %detail, "STOW-RS part quarantined");
            METRICS.quarantined(reason, TRANSPORT);
            Err(Failure { reason: Some(reason), ..Failure::new(code, &detail) })
        }
        Outcome::Refused(detail) => {
            warn!(project, error = %detail, "STOW-RS part refused by a filter");
            METRICS.refused(&Failure::text(Failure::NOT_AUTHORIZED), TRANSPORT);
            Err(Failure::new(Failure::NOT_AUTHORIZED, &detail))
        }
        Outcome::Conflict(detail) => {
            warn!(project, error = %detail, "STOW-RS part refused");
            METRICS.refused(&Failure::text(Failure::PROCESSING_FAILURE), TRANSPORT);
            Err(Failure { conflict: true, ..Failure::new(Failure::PROCESSING_FAILURE, &detail) })
        }
        Outcome::Failed { detail, told } => {
            warn!(project, error = %detail, "STOW-RS part not stored");
            METRICS.refused(&Failure::text(Failure::OUT_OF_RESOURCES), TRANSPORT);
            Err(Failure { environment: true, ..Failure::new(Failure::OUT_OF_RESOURCES, &told) })
        }
    }
}

/// Whether a media type is `application/dicom` (parameters such as `transfer-syntax` aside).
fn is_dicom(media_type: &str) -> bool {
    media_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/dicom"))
}

/// The SOP class and instance a part's meta group announces (empty when it does not), or
/// `None` when the part is not a Part 10 file at all: not an instance, so nothing is kept.
fn announced(received: &Received) -> Option<(String, String)> {
    use std::io::Read;
    /// Enough for any real meta group; a longer one is the pipeline's to judge.
    const HEAD: u64 = 64 << 10;
    let mut file_head = Vec::new();
    let head: &[u8] = match received {
        Received::Memory(b) => b,
        Received::File(spill) => {
            std::fs::File::open(spill.path()).ok()?.take(HEAD).read_to_end(&mut file_head).ok()?;
            &file_head
        }
        Received::TooLarge(_) => return None,
    };
    if !is_part10(head) {
        return None;
    }
    Some(match Part10::parse(head) {
        Ok(p) => (p.meta.media_storage_sop_class_uid, p.meta.media_storage_sop_instance_uid),
        Err(_) => Default::default(),
    })
}
