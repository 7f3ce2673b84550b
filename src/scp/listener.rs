//! The accept loop. A connection takes an association slot only once its A-ASSOCIATE-RQ has
//! arrived: until then it is a *pending handshake*, bounded per peer address and timed out quickly,
//! so connections that send nothing cannot keep a real PACS out. The request is looked at (not
//! consumed) before a slot is taken: over the limit it is rejected, not queued, and a maximum PDU
//! length too small to carry our responses is refused then, not discovered at the first response.
//! Shutdown stops accepting and lets running associations finish their current instance.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_ul::pdu::{
    read_pdu, write_pdu, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, Pdu, UserVariableItem, MINIMUM_PDU_SIZE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{association, Node};
use crate::http::METRICS;

/// How long running associations get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a connection may take to send its A-ASSOCIATE-RQ.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending handshakes per peer address; a newer connection from the same address evicts the
/// oldest, so a real sender, which sends its request at once, always gets through.
const PENDING_PER_PEER: usize = 8;
/// Pending handshakes in all, so silent connections from many addresses cannot exhaust descriptors.
const PENDING_TOTAL: usize = 512;
/// The largest A-ASSOCIATE-RQ looked at before negotiation; a larger one goes to dicom-ul as is.
const MAX_REQUEST: usize = 64 * 1024;

/// Serve associations on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(node.scp.max_associations));
    let pending = Arc::new(Pending::default());
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    // Out of descriptors and the like: wait, then try again, never spin.
                    warn!(error = %e, retry_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        // Nagle's algorithm costs ~40 ms per small PDU exchange; dicom-ul does not turn it off.
        let _ = socket.set_nodelay(true);
        let Some(handshake) = pending.admit(peer.ip()) else {
            warn!(%peer, limit = PENDING_TOTAL, "connection closed: too many connections waiting to associate");
            METRICS.connections_dropped.with_label_values(&["too_many_pending"]).inc();
            continue;
        };
        let (node, stop, limit) = (node.clone(), stop.clone(), limit.clone());
        tracker.spawn(async move {
            let request = tokio::select! {
                _ = handshake.evicted.cancelled() => {
                    debug!(%peer, "pending connection closed: newer connections from the same address");
                    METRICS.connections_dropped.with_label_values(&["evicted"]).inc();
                    return;
                }
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, peek_request(&socket)) => r,
            };
            drop(handshake);
            let max_pdu = match request {
                Err(_) => {
                    warn!(%peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "connection closed: no association request in time");
                    METRICS.connections_dropped.with_label_values(&["no_request"]).inc();
                    return;
                }
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "connection closed before an association request");
                    return;
                }
                Ok(Ok(max_pdu)) => max_pdu,
            };
            if let Some(n) = max_pdu.filter(|&n| n != 0 && n < MINIMUM_PDU_SIZE) {
                warn!(%peer, max_pdu_length = n, minimum = MINIMUM_PDU_SIZE, "association rejected: the peer's maximum PDU length cannot carry a response");
                association::rejected(peer, "max_pdu");
                reject(socket, AssociationRJResult::Permanent, AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven)).await;
                return;
            }
            match limit.try_acquire_owned() {
                Ok(permit) => {
                    association::run(node, socket, peer, stop).await;
                    drop(permit);
                }
                Err(_) => {
                    warn!(%peer, limit = node.scp.max_associations, "association rejected: scp.max_associations reached");
                    association::rejected(peer, "busy");
                    // Transient, service provider presentation, local limit exceeded (PS3.8 §9.3.4).
                    let busy = AssociationRJSource::ServiceProviderPresentation(
                        AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                    );
                    reject(socket, AssociationRJResult::Transient, busy).await;
                }
            }
        });
    }
    info!("shutting down: no new associations; waiting for running ones");
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "associations still running after the grace period");
    }
}

/// Wait until the whole first PDU has arrived and look at it without consuming it. Returns the
/// maximum PDU length an A-ASSOCIATE-RQ asks for (`None`: not a request we can read here; dicom-ul
/// answers it as it sees fit).
async fn peek_request(socket: &TcpStream) -> std::io::Result<Option<u32>> {
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let n = socket.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if n >= 6 {
            if buf[0] != 0x01 {
                return Ok(None);
            }
            let total = 6 + u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
            if total > buf.len() {
                return Ok(None);
            }
            if n >= total {
                let max = match read_pdu(&buf[..total], MAX_REQUEST as u32, false) {
                    Ok(Some(Pdu::AssociationRQ(rq))) => rq.user_variables.iter().find_map(|v| match v {
                        UserVariableItem::MaxLength(n) => Some(*n),
                        _ => None,
                    }),
                    _ => None,
                };
                return Ok(max);
            }
        }
        // The rest of the request is on its way; peek does not wait for more than is there.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Answer an association request with A-ASSOCIATE-RJ, after reading the request so the peer sees
/// the answer rather than a reset.
async fn reject(mut socket: TcpStream, result: AssociationRJResult, source: AssociationRJSource) {
    let read_request = async {
        let mut header = [0u8; 6];
        socket.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]).min(1 << 20);
        let mut rest = vec![0; len as usize];
        socket.read_exact(&mut rest).await?;
        std::io::Result::Ok(())
    };
    if tokio::time::timeout(HANDSHAKE_TIMEOUT, read_request).await.is_err() {
        return;
    }
    let mut out = Vec::new();
    if write_pdu(&mut out, &Pdu::AssociationRJ(AssociationRJ { result, source })).is_ok() {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    }
}

/// Connections waiting for their A-ASSOCIATE-RQ, per peer address, oldest first.
#[derive(Default)]
struct Pending {
    waiting: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    by_peer: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    total: usize,
    next: u64,
}

/// One pending handshake; leaves the set when dropped.
struct Handshake {
    pending: Arc<Pending>,
    ip: IpAddr,
    id: u64,
    /// Cancelled when newer connections from the same address push this one out.
    evicted: CancellationToken,
}

impl Pending {
    /// Register a new connection from `ip`, evicting that address's oldest pending one when it has
    /// too many. `None`: too many pending in all.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Handshake> {
        let mut s = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if s.total >= PENDING_TOTAL {
            return None;
        }
        s.next += 1;
        let id = s.next;
        let evicted = CancellationToken::new();
        let queue = s.by_peer.entry(ip).or_default();
        let mut evicted_one = false;
        if queue.len() >= PENDING_PER_PEER {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.cancel();
                evicted_one = true;
            }
        }
        queue.push_back((id, evicted.clone()));
        if !evicted_one {
            s.total += 1;
        }
        Some(Handshake { pending: self.clone(), ip, id, evicted })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut s = self.pending.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = s.by_peer.get_mut(&self.ip) else { return };
        // An evicted handshake has already left the queue, and the total.
        let before = queue.len();
        queue.retain(|(id, _)| *id != self.id);
        let left = before != queue.len();
        if queue.is_empty() {
            s.by_peer.remove(&self.ip);
        }
        if left {
            s.total -= 1;
        }
    }
}
