//! One association: negotiate, then read messages and answer each, until release, abort, timeout
//! or shutdown. Each command is dispatched to one function; storing runs on the blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::association::Association;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::dimse::{response, Command, Status};
use super::receive::{Incoming, Received};
use super::Node;
use crate::dicom::TransferSyntax;
use crate::pipeline::{Admission, Body, InstanceError};

/// What one association did, for its closing log line.
#[derive(Debug, Default)]
struct Tally {
    instances: u64,
    bytes: u64,
    failures: u64,
}

/// A message being assembled on one presentation context.
struct Message {
    pc_id: u8,
    command_bytes: Vec<u8>,
    command: Option<Command>,
    data: Option<Incoming>,
}

/// Run one accepted connection to its end. Errors are logged here; nothing reaches the listener.
pub async fn run(node: Arc<Node>, socket: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let started = Instant::now();
    let acse = Duration::from_secs(node.scp.timeouts.acse_s);
    let mut assoc = match tokio::time::timeout(acse, node.options.establish_async(socket)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            // Rejections (unknown AE titles, no acceptable context) land here with their reason.
            warn!(%peer, error = %e, "association not established");
            return;
        }
        Err(_) => {
            warn!(%peer, timeout_s = acse.as_secs(), "association request not received in time");
            return;
        }
    };
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

    let source = format!("AE '{calling}' at {peer}");
    let mut tally = Tally::default();
    let how = async {
        match serve(&node, &mut assoc, &source, &mut tally, &shutdown).await {
            End::Released => {
                let _ = assoc.send(&Pdu::ReleaseRP).await;
                "released"
            }
            End::PeerAborted => "aborted by peer",
            End::Closed => "connection closed",
            End::Abort(why) => {
                warn!(reason = why, "aborting association");
                let _ = assoc.abort().await;
                why
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
}

enum End {
    Released,
    PeerAborted,
    Closed,
    Abort(&'static str),
}

async fn serve(
    node: &Node,
    assoc: &mut AsyncServerAssociation<TcpStream>,
    source: &str,
    tally: &mut Tally,
    shutdown: &CancellationToken,
) -> End {
    let idle = Duration::from_secs(node.scp.timeouts.idle_s);
    let dimse = Duration::from_secs(node.scp.timeouts.dimse_s);
    let mut message: Option<Message> = None;
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
            match on_pdv(node, &mut message, pdv).await {
                Ok(Some(done)) => {
                    if let Err(end) = dispatch(node, assoc, done, source, tally).await {
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
async fn on_pdv(node: &Node, message: &mut Option<Message>, pdv: PDataValue) -> Result<Option<Message>, End> {
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
                    m.data = Some(Incoming::new(node.scp.max_instance_bytes, &node.tmp));
                } else {
                    return Ok(message.take());
                }
            }
        }
        PDataValueType::Data => {
            let Some(data) = m.data.as_mut() else {
                return Err(End::Abort("data set before its command"));
            };
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
async fn dispatch(
    node: &Node,
    assoc: &mut AsyncServerAssociation<TcpStream>,
    message: Message,
    source: &str,
    tally: &mut Tally,
) -> Result<(), End> {
    let Some(command) = message.command else { return Ok(()) };
    let (status, comment) = match &command {
        Command::Echo { .. } => (Status::SUCCESS, None),
        Command::Store { sop_class_uid, sop_instance_uid, .. } => {
            let data = match message.data {
                Some(d) => d.finish().await,
                None => return Err(End::Abort("C-STORE without a data set")),
            };
            let context = assoc.presentation_contexts().iter().find(|pc| pc.id == message.pc_id);
            let outcome = match (data, context) {
                (Err(e), _) => {
                    warn!(error = %e, "cannot complete the spilled data set");
                    (Status::OUT_OF_RESOURCES, Some("cannot buffer the data set".to_string()))
                }
                (Ok(_), None) => (Status::CANNOT_UNDERSTAND, Some("unknown presentation context".into())),
                (Ok(received), Some(pc)) => {
                    if pc.abstract_syntax != *sop_class_uid {
                        (
                            Status::SOP_CLASS_NOT_SUPPORTED,
                            Some("SOP class differs from the presentation context".into()),
                        )
                    } else {
                        let ts = TransferSyntax::new(&pc.transfer_syntax);
                        store(node, received, ts, sop_class_uid, sop_instance_uid, source, tally).await
                    }
                }
            };
            if outcome.0 != Status::SUCCESS {
                tally.failures += 1;
            }
            outcome
        }
        Command::Other { command_field, .. } => {
            // Any data set it carried has been read with the message and is dropped.
            warn!(command_field = format!("0x{command_field:04X}"), "unsupported DIMSE command");
            (Status::UNRECOGNIZED_OPERATION, Some("only C-ECHO and C-STORE are supported".into()))
        }
    };
    let rsp = response(&command, status, comment.as_deref());
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: message.pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: rsp,
        }],
    };
    assoc.send(&pdu).await.map_err(|e| {
        debug!(error = %e, "cannot send the response");
        End::Closed
    })
}

/// Check resources, run the pipeline on the blocking pool, and turn the outcome into a status.
async fn store(
    node: &Node,
    received: Received,
    ts: TransferSyntax,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    source: &str,
    tally: &mut Tally,
) -> (Status, Option<String>) {
    let received = match received {
        Received::TooLarge(n) => {
            warn!(
                bytes = n,
                limit = node.scp.max_instance_bytes,
                "instance refused: larger than scp.max_instance_bytes"
            );
            return (Status::OUT_OF_RESOURCES, Some("instance larger than this node accepts".into()));
        }
        other => other,
    };
    if let Some(free) = node.free_space_short() {
        warn!(
            free_bytes = free,
            min_free_bytes = node.min_free_bytes,
            "instance refused: disk below storage.min_free_bytes"
        );
        return (Status::OUT_OF_RESOURCES, Some("storage is full".into()));
    }
    let pipeline = node.pipeline.clone();
    let modalities = node.scp.modalities.clone();
    let (class, instance, source) =
        (sop_class_uid.to_string(), sop_instance_uid.to_string(), source.to_string());
    let job = tokio::task::spawn_blocking(move || {
        let admission =
            Admission { sop_class_uid: &class, sop_instance_uid: &instance, modalities: &modalities };
        let result = pipeline.process_received(body_of(&received), &ts, &admission, &source);
        if let Some(reason) = result.as_ref().err().and_then(InstanceError::reason) {
            let detail = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
            let kept =
                pipeline.quarantine_received(reason, &detail, &source, body_of(&received), &ts, &admission);
            if let Err(q) = kept {
                warn!(%reason, error = %q, "cannot quarantine a failed instance");
            }
        }
        result
    });
    match job.await {
        Ok(Ok(stored)) => {
            tally.instances += 1;
            tally.bytes += stored.size;
            debug!(sop = %stored.keys.sop_uid, series = %stored.keys.series_uid, size = stored.size, "stored");
            (Status::SUCCESS, None)
        }
        Ok(Err(e)) => {
            let status = status_of(&e);
            // Instance errors name attributes and offsets, never values.
            warn!(status = %status, reason = e.reason().map(|r| r.dir_name()).unwrap_or("not quarantined"), error = %e, "instance not stored");
            (status, Some(e.to_string()))
        }
        Err(join) => {
            warn!(error = %join, "the storing task failed");
            (Status::OUT_OF_RESOURCES, Some("internal error while storing".into()))
        }
    }
}

fn body_of(received: &Received) -> Body<'_> {
    match received {
        Received::Memory(b) => Body::Memory(b),
        Received::File(spill) => Body::File(spill.path()),
        // Refused before the pipeline: there is no body.
        Received::TooLarge(_) => Body::Memory(&[]),
    }
}

/// The C-STORE status for a failure (PS3.4 §B.2.3).
fn status_of(e: &InstanceError) -> Status {
    use crate::anonymize::EngineError;
    use crate::index::IndexError;
    match e {
        InstanceError::Invalid(EngineError::MissingAttributes(_)) | InstanceError::Mismatch(_) => {
            Status::DATA_SET_MISMATCH
        }
        InstanceError::Refused(_) => Status::NOT_AUTHORIZED,
        InstanceError::Unreadable(_)
        | InstanceError::Invalid(EngineError::InvalidText(_))
        | InstanceError::Invalid(EngineError::Unverifiable(_))
        | InstanceError::Index(IndexError::Conflict(_)) => Status::CANNOT_UNDERSTAND,
        InstanceError::Scan(_) if e.reason().is_some() => Status::CANNOT_UNDERSTAND,
        InstanceError::Scan(_) | InstanceError::Index(_) | InstanceError::Storage(_) => {
            Status::OUT_OF_RESOURCES
        }
    }
}

/// A readable name for a SOP class in logs.
fn short_uid_name(uid: &str) -> String {
    use dicom_core::dictionary::UidDictionary;
    dicom_dictionary_std::StandardSopClassDictionary
        .by_uid(uid)
        .map_or_else(|| uid.to_string(), |e| e.alias.to_string())
}
