//! One association: negotiate, then read messages and answer each, until release, abort, timeout
//! or shutdown. Each command is dispatched to one function; storing runs on the blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::association::Association;
use dicom_ul::pdu::{
    PDataValue, PDataValueType, Pdu, PresentationContextNegotiated, PresentationContextResultReason,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::dimse::{response, Command, Status};
use super::Node;
use crate::dicom::TransferSyntax;
use crate::incoming::{Incoming, Received};
use crate::index::{AuditRecord, Caller};
use crate::observe::activity::AssociationRecord;
use crate::observe::{ACTIVITY, METRICS};
use crate::pipeline::{Admission, Body, Outcome};
use crate::queue::Reason;

/// What one association did, for its closing log line.
#[derive(Debug, Default)]
struct Tally {
    instances: u64,
    bytes: u64,
    failures: u64,
    /// The last in-memory data set's buffer, emptied, for the next one: a fresh buffer per
    /// instance costs its growth copies and page faults again every time.
    spare: Vec<u8>,
}

/// The transport label of what the SCP counts.
const DIMSE: &str = "dimse";

/// Who is on the other end, for the audit trail and the logs.
struct Who {
    /// Our id for the association (its start time and a counter), its calling AE, its address.
    caller: Caller,
    /// `AE 'X' at ADDR`, as the index records an instance's source.
    source: String,
}

/// What the sender hears of a message, and what its audit row needs.
struct Answer {
    status: Status,
    comment: Option<String>,
    /// Where a quarantined instance went.
    reason: Option<Reason>,
    /// Stored: the pipeline committed the audit row, with the anonymized UIDs, with the instance.
    audited: bool,
}

impl Answer {
    fn said(status: Status, comment: Option<String>) -> Answer {
        Answer { status, comment, reason: None, audited: false }
    }
}

/// Association ids: unique within this process, and across restarts by the start time.
pub(crate) fn association_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static START: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| chrono::Utc::now().timestamp());
    format!("{}-{}", *START, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A message being assembled on one presentation context.
struct Message {
    pc_id: u8,
    command_bytes: Vec<u8>,
    command: Option<Command>,
    data: Option<Incoming>,
}

/// Run one accepted plain TCP connection to its end. Errors are logged here; nothing reaches the
/// listener.
pub async fn run(
    node: Arc<Node>,
    socket: TcpStream,
    peer: SocketAddr,
    calling: &str,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let acse = Duration::from_secs(node.scp.timeouts.acse_s);
    let assoc = match tokio::time::timeout(acse, node.options.establish_async(socket)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            // Rejections (unknown AE titles, no acceptable context) land here with their reason,
            // and with the calling AE title the peer gave: whom was refused is what ops look for.
            warn!(%peer, calling_ae = %calling.escape_debug(), error = %e, "association not established");
            rejected(peer, Some(calling), rejection_reason(&e));
            return;
        }
        Err(_) => {
            warn!(%peer, timeout_s = acse.as_secs(), "association request not received in time");
            rejected(peer, Some(calling), "timeout");
            return;
        }
    };
    run_established(node, assoc, peer, shutdown, started).await;
}

/// Serve an association negotiated on any stream (plain TCP or TLS) to its end.
pub async fn run_established<S: Stream>(
    node: Arc<Node>,
    mut assoc: AsyncServerAssociation<S>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    started: Instant,
) {
    METRICS.associations_accepted.inc();
    METRICS.associations_active.inc();
    let calling = assoc.peer_ae_title().to_string();
    let called = assoc.called_ae_title().to_string();
    let mut accepted: Vec<String> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| short_uid_name(&pc.abstract_syntax))
        .collect();
    let contexts = accepted.len();
    accepted.sort();
    accepted.dedup();
    let span = tracing::info_span!("association", calling_ae = %calling, %peer);
    span.in_scope(|| debug!(called_ae = %called, contexts, classes = ?accepted, "association accepted"));

    let who = Who {
        caller: Caller { association: association_id(), calling_ae: calling.clone(), peer: peer.to_string() },
        source: format!("AE '{calling}' at {peer}"),
    };
    let mut tally = Tally::default();
    let (how, label) = async {
        match serve(&node, &mut assoc, &who, &mut tally, &shutdown).await {
            End::Released => {
                let _ = assoc.send(&Pdu::ReleaseRP).await;
                ("released", "released")
            }
            End::PeerAborted => ("aborted by peer", "aborted_by_peer"),
            End::Closed => ("connection closed", "closed"),
            End::Abort(why) => {
                warn!(reason = why, "aborting association");
                let _ = assoc.abort().await;
                (why, "aborted")
            }
        }
    }
    .instrument(span.clone())
    .await;
    span.in_scope(|| {
        info!(
            called_ae = %called,
            contexts,
            duration_ms = started.elapsed().as_millis() as u64,
            instances = tally.instances,
            bytes = tally.bytes,
            failures = tally.failures,
            end = how,
            "association finished"
        )
    });
    METRICS.associations_active.dec();
    METRICS.associations_ended.with_label_values(&[label]).inc();
    ACTIVITY.association(AssociationRecord {
        ended: chrono::Utc::now(),
        calling_ae: Some(calling),
        peer,
        instances: tally.instances,
        failures: tally.failures,
        end: how,
    });
}

/// What an association runs over: a TCP stream, or TLS on one.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

/// Count a request turned down before an association existed, and list it on the status page
/// with the calling AE title it gave, when it could be read: whom was refused is what an operator
/// looks for.
pub(super) fn rejected(peer: SocketAddr, calling: Option<&str>, reason: &'static str) {
    METRICS.associations_rejected.with_label_values(&[reason]).inc();
    ACTIVITY.association(AssociationRecord {
        ended: chrono::Utc::now(),
        calling_ae: calling.map(str::to_string),
        peer,
        instances: 0,
        failures: 0,
        end: match reason {
            "called_ae" => "rejected: called AE title not ours",
            "calling_ae" => "rejected: calling AE title not allowed",
            "no_context" => "rejected: no acceptable presentation context",
            "busy" => "rejected: scp.max_associations reached",
            "max_pdu" => "rejected: maximum PDU length too small",
            "protocol" => "rejected: protocol or application context",
            "timeout" => "rejected: no request in time",
            "tls_subject" => "rejected: certificate subject not allowed",
            "tls_only" => "rejected: this AE title takes TLS only",
            _ => "rejected",
        },
    });
}

/// Whether a request proposing `n` presentation contexts holds more than PS3.8 allows; if so it
/// is logged with the count and counted as a protocol rejection, and the caller refuses it whole.
/// Negotiating a subset would answer a request the peer did not make: contexts past the 128th
/// reuse an ID or use an even one, so their P-DATA could not be told apart.
pub(super) fn too_many_contexts(peer: SocketAddr, calling: &str, n: usize) -> bool {
    if n <= super::MAX_PRESENTATION_CONTEXTS {
        return false;
    }
    warn!(
        %peer,
        calling_ae = %calling.escape_debug(),
        contexts = n,
        limit = super::MAX_PRESENTATION_CONTEXTS,
        "association refused: more presentation contexts than PS3.8 §9.3.2.2 allows (odd IDs 1 to 255)"
    );
    rejected(peer, Some(calling), "protocol");
    true
}

/// The metrics label for why dicom-ul did not establish an association.
pub(super) fn rejection_reason(e: &dicom_ul::association::Error) -> &'static str {
    use dicom_ul::association::Error;
    use dicom_ul::pdu::{AssociationRJServiceUserReason as User, AssociationRJSource};
    match e {
        Error::Rejected { association_rj, .. } => match &association_rj.source {
            AssociationRJSource::ServiceUser(User::CalledAETitleNotRecognized) => "called_ae",
            AssociationRJSource::ServiceUser(User::CallingAETitleNotRecognized) => "calling_ae",
            AssociationRJSource::ServiceUser(_) => "protocol",
            _ => "other",
        },
        Error::NoAcceptedPresentationContexts { .. } => "no_context",
        _ => "other",
    }
}

enum End {
    Released,
    PeerAborted,
    Closed,
    Abort(&'static str),
}

async fn serve<S: Stream>(
    node: &Node,
    assoc: &mut AsyncServerAssociation<S>,
    who: &Who,
    tally: &mut Tally,
    shutdown: &CancellationToken,
) -> End {
    let idle = Duration::from_secs(node.scp.timeouts.idle_s);
    let dimse = Duration::from_secs(node.scp.timeouts.dimse_s);
    let mut message: Option<Message> = None;
    let accepted: Vec<u8> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| pc.id)
        .collect();
    loop {
        // Shutdown is honoured only between messages, so an instance in flight is carried through.
        let wait = if message.is_some() { dimse } else { idle };
        let pdu = tokio::select! {
            _ = shutdown.cancelled(), if message.is_none() => return End::Abort("node shutting down"),
            r = tokio::time::timeout(wait, assoc.receive()) => r,
        };
        let pdu = match pdu {
            Err(_) => return End::Abort(if message.is_some() { "DIMSE timeout" } else { "idle timeout" }),
            Ok(Err(e)) => {
                debug!(error = %e, "receive failed");
                return End::Closed;
            }
            Ok(Ok(pdu)) => pdu,
        };
        let values = match pdu {
            Pdu::PData { data } => data,
            Pdu::ReleaseRQ => return End::Released,
            Pdu::AbortRQ { .. } => return End::PeerAborted,
            _ => return End::Abort("unexpected PDU"),
        };
        for pdv in values {
            // A PDV must travel on a context this association accepted (PS3.8 §9.3.5).
            if !accepted.contains(&pdv.presentation_context_id) {
                return End::Abort("PDV on a presentation context that was not accepted");
            }
            match on_pdv(node, &mut message, pdv, &mut tally.spare).await {
                Ok(Some(done)) => {
                    if let Err(end) = dispatch(node, assoc, done, who, tally).await {
                        return end;
                    }
                }
                Ok(None) => {}
                Err(end) => return end,
            }
        }
    }
}

/// Add one PDV to the message in progress; returns the message once it is complete.
async fn on_pdv(
    node: &Node,
    message: &mut Option<Message>,
    pdv: PDataValue,
    spare: &mut Vec<u8>,
) -> Result<Option<Message>, End> {
    let m = message.get_or_insert_with(|| Message {
        pc_id: pdv.presentation_context_id,
        command_bytes: Vec::new(),
        command: None,
        data: None,
    });
    if pdv.presentation_context_id != m.pc_id {
        return Err(End::Abort("PDV on another presentation context in the middle of a message"));
    }
    match pdv.value_type {
        PDataValueType::Command => {
            if m.command.is_some() {
                return Err(End::Abort("command fragment after the command was complete"));
            }
            m.command_bytes.extend_from_slice(&pdv.data);
            if m.command_bytes.len() > 64 * 1024 {
                return Err(End::Abort("command set larger than 64 KiB"));
            }
            if pdv.is_last {
                let command = match Command::parse(&m.command_bytes) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "unreadable command set");
                        return Err(End::Abort("unreadable command set"));
                    }
                };
                let wants_data = command.has_data_set();
                m.command = Some(command);
                if wants_data {
                    m.data =
                        Some(Incoming::new(node.scp.max_instance_bytes, &node.tmp, std::mem::take(spare)));
                } else {
                    return Ok(message.take());
                }
            }
        }
        PDataValueType::Data => {
            let Some(data) = m.data.as_mut() else {
                return Err(End::Abort("data set before its command"));
            };
            METRICS.received_bytes.inc_by(pdv.data.len() as u64);
            if let Err(e) = data.push(&pdv.data).await {
                warn!(error = %e, "cannot spill the incoming data set to private/tmp");
                return Err(End::Abort("cannot buffer the data set"));
            }
            if pdv.is_last {
                return Ok(message.take());
            }
        }
    }
    Ok(None)
}

/// Answer a complete message.
async fn dispatch<S: Stream>(
    node: &Node,
    assoc: &mut AsyncServerAssociation<S>,
    message: Message,
    who: &Who,
    tally: &mut Tally,
) -> Result<(), End> {
    let Some(command) = message.command else { return Ok(()) };
    let complete = Instant::now();
    let mut bytes = 0;
    let answer = match &command {
        Command::Cancel => {
            debug!("C-CANCEL ignored: a C-STORE cannot be cancelled");
            return Ok(());
        }
        Command::Echo { .. } => Answer::said(Status::SUCCESS, None),
        Command::Store { sop_class_uid, sop_instance_uid, .. } => {
            let Some(data) = message.data else { return Err(End::Abort("C-STORE without a data set")) };
            bytes = data.received();
            let context = assoc.presentation_contexts().iter().find(|pc| pc.id == message.pc_id);
            let answer = answer_store(node, data, context, sop_class_uid, sop_instance_uid, who, tally).await;
            if answer.status != Status::SUCCESS {
                tally.failures += 1;
            }
            answer
        }
        Command::Other { command_field, .. } => {
            // Any data set it carried has been read with the message and is dropped.
            warn!(command_field = format!("0x{command_field:04X}"), "unsupported DIMSE command");
            Answer::said(Status::UNRECOGNIZED_OPERATION, Some("only C-ECHO and C-STORE are supported".into()))
        }
    };
    let rsp = response(&command, answer.status, answer.comment.as_deref());
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: message.pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: rsp,
        }],
    };
    let sent = assoc.send(&pdu).await.map_err(|e| {
        debug!(error = %e, "cannot send the response");
        End::Closed
    });
    if matches!(command, Command::Store { .. }) {
        if sent.is_ok() {
            METRICS.ack_latency.observe(complete.elapsed().as_secs_f64());
        }
        if !answer.audited {
            let reason = answer.reason.map(|r| r.dir_name());
            let status = answer.status.to_string();
            audit_after_response(node, AuditRecord::answered(&who.caller, &status, reason, bytes)).await;
        }
    }
    sent
}

/// A C-STORE's answer: its data set completed, checked against the presentation context it came
/// on and the AE title's filters, then stored (or refused here, with the reason).
async fn answer_store(
    node: &Node,
    data: Incoming,
    context: Option<&PresentationContextNegotiated>,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    who: &Who,
    tally: &mut Tally,
) -> Answer {
    let bytes = data.received();
    let data = data.finish().await;
    METRICS.instances_received.with_label_values(&[DIMSE]).inc();
    match (data, context) {
        (Err(e), _) => {
            warn!(error = %e, "cannot complete the spilled data set");
            refused(Status::OUT_OF_RESOURCES, "cannot buffer the data set")
        }
        (Ok(_), None) => {
            refused_here(Status::CANNOT_UNDERSTAND, "unknown presentation context", sop_class_uid)
        }
        (Ok(_), Some(pc)) if pc.abstract_syntax != sop_class_uid => refused_here(
            Status::SOP_CLASS_NOT_SUPPORTED,
            "SOP class differs from the presentation context",
            sop_class_uid,
        ),
        // Negotiated for the node's projects together (TLS), outside this one's filters.
        (Ok(_), Some(pc)) if !node.accepts(&pc.abstract_syntax, &pc.transfer_syntax) => refused_here(
            Status::SOP_CLASS_NOT_SUPPORTED,
            "SOP class or transfer syntax not accepted by this AE title",
            sop_class_uid,
        ),
        (Ok(received), Some(pc)) => {
            let ts = TransferSyntax::new(&pc.transfer_syntax);
            store(node, received, ts, sop_class_uid, sop_instance_uid, who, bytes, tally).await
        }
    }
}

/// The audit row of a C-STORE whose outcome the pipeline did not record, written after the
/// response (sent or not: the outcome stands). The sender does not wait for it; the association
/// does, so a stop cannot lose it. A row that cannot be written (a full disk) is a gap in the
/// trail: counted, so it shows on /metrics and the status page and not only in a log that may be
/// full as well.
async fn audit_after_response(node: &Node, record: AuditRecord) {
    let index = node.pipeline.index().clone();
    match tokio::task::spawn_blocking(move || index.audit(record)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            METRICS.audit_rows_dropped.inc();
            warn!(error = %e, "cannot record the audit row");
        }
        Err(e) => {
            METRICS.audit_rows_dropped.inc();
            warn!(error = %e, "the audit task did not run");
        }
    }
}

/// A C-STORE answered with a failure and nothing kept: counted by its status.
/// A refusal decided here, before the pipeline, with its log line: every failure status sent has
/// one (the README promises it). The SOP class UID is the peer's word, so it is escaped.
fn refused_here(status: Status, comment: &str, sop_class_uid: &str) -> Answer {
    warn!(%status, sop_class = %sop_class_uid.escape_debug(), reason = comment, "instance refused");
    refused(status, comment)
}

fn refused(status: Status, comment: &str) -> Answer {
    METRICS.refused(&status.to_string(), DIMSE);
    Answer::said(status, Some(comment.to_string()))
}

/// Check resources, run the pipeline on the blocking pool, and turn the outcome into a status.
/// A stored instance's audit row (`who`, `bytes`) is committed with it by the pipeline.
#[allow(clippy::too_many_arguments)]
async fn store(
    node: &Node,
    received: Received,
    ts: TransferSyntax,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    who: &Who,
    bytes: u64,
    tally: &mut Tally,
) -> Answer {
    let received = match received {
        Received::TooLarge(n) => {
            warn!(
                bytes = n,
                limit = node.scp.max_instance_bytes,
                "instance refused: larger than scp.max_instance_bytes"
            );
            return refused(Status::OUT_OF_RESOURCES, "instance larger than this node accepts");
        }
        other => other,
    };
    let pipeline = node.pipeline.clone();
    let (storage_dir, min_free_bytes) = (node.storage_dir.clone(), node.min_free_bytes);
    let modalities = node.scp.modalities.clone();
    let (class, instance, source) =
        (sop_class_uid.to_string(), sop_instance_uid.to_string(), who.source.clone());
    let caller = who.caller.clone();
    let job = tokio::task::spawn_blocking(move || {
        // Here rather than before the job: statvfs blocks.
        if let Some(free) = super::free_space_short(&storage_dir, min_free_bytes) {
            return (Err(free), received);
        }
        let admission = Admission {
            sop_class_uid: &class,
            sop_instance_uid: &instance,
            modalities: &modalities,
            study_instance_uid: None,
            audit: Some((&caller, bytes)),
        };
        let outcome = pipeline.process_received(body_of(&received), &ts, &admission, &source);
        (Ok(outcome), received)
    });
    let outcome = match job.await {
        Ok((Err(free), _)) => {
            warn!(free_bytes = free, min_free_bytes, "instance refused: disk below storage.min_free_bytes");
            return refused(Status::OUT_OF_RESOURCES, "storage is full");
        }
        Ok((Ok(outcome), received)) => {
            // Kept only while small, so idle associations hold little.
            if let Received::Memory(mut buffer) = received {
                if buffer.capacity() <= crate::pipeline::IN_MEMORY_UP_TO {
                    buffer.clear();
                    tally.spare = buffer;
                }
            }
            outcome
        }
        // The pipeline catches panics; this is the blocking pool itself failing (shutdown).
        Err(join) => Outcome::Failed {
            detail: format!("the storing task did not run: {join}"),
            told: "the node is stopping".into(),
        },
    };
    answer(outcome, tally)
}

/// What the sender hears of the pipeline's outcome, counted and logged: the SCP only translates.
fn answer(outcome: Outcome, tally: &mut Tally) -> Answer {
    match outcome {
        Outcome::Stored(stored) => {
            tally.instances += 1;
            tally.bytes += stored.size;
            METRICS.instances_stored.with_label_values(&[DIMSE]).inc();
            METRICS.stored_bytes.inc_by(stored.size);
            debug!(sop = %stored.keys.sop_uid, series = %stored.keys.series_uid, size = stored.size, "stored");
            Answer { audited: true, ..Answer::said(Status::SUCCESS, None) }
        }
        Outcome::Quarantined { reason, detail, .. } => {
            // The sender's data is at fault (PS3.4 §B.2.3): 0xA900 when it is not the instance it
            // claims to be or lacks its identity, 0xC000 for everything else.
            let status = if reason == Reason::MissingAttributes {
                Status::DATA_SET_MISMATCH
            } else {
                Status::CANNOT_UNDERSTAND
            };
            // Instance errors name attributes and offsets, never values.
            warn!(status = %status, %reason, error = %detail, "instance quarantined");
            METRICS.quarantined(reason, DIMSE);
            Answer { reason: Some(reason), ..Answer::said(status, Some(detail)) }
        }
        // Only a STOW-RS request names a study; a C-STORE never conflicts with its request.
        Outcome::Conflict(detail) | Outcome::Refused(detail) => {
            warn!(status = %Status::NOT_AUTHORIZED, error = %detail, "instance refused by a filter");
            refused(Status::NOT_AUTHORIZED, &detail)
        }
        Outcome::Failed { detail, told } => {
            warn!(status = %Status::OUT_OF_RESOURCES, error = %detail, "instance not stored");
            refused(Status::OUT_OF_RESOURCES, &told)
        }
    }
}

fn body_of(received: &Received) -> Body<'_> {
    match received {
        Received::Memory(b) => Body::Memory(b),
        Received::File(spill) => Body::File { path: spill.path(), offset: 0 },
        // Refused before the pipeline: there is no body.
        Received::TooLarge(_) => Body::Memory(&[]),
    }
}

/// A readable name for a SOP class in logs.
fn short_uid_name(uid: &str) -> String {
    use dicom_core::dictionary::UidDictionary;
    dicom_dictionary_std::StandardSopClassDictionary
        .by_uid(uid)
        .map_or_else(|| uid.to_string(), |e| e.alias.to_string())
}
