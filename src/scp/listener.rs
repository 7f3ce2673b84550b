//! The accept loop. A connection takes an association slot only once its A-ASSOCIATE-RQ has
//! arrived: until then it is a *pending handshake*, bounded per peer address and timed out quickly,
//! so connections that send nothing cannot keep a real PACS out. The request is looked at (not
//! consumed) before a slot is taken: over the limit it is rejected, not queued, and a maximum PDU
//! length too small to carry our responses is refused then, not discovered at the first response.
//! The called AE title in that request chooses the project; an unknown one is rejected there.
//! TLS connections cannot be looked into before their handshake; `tls::serve` reads theirs.
//! Shutdown stops accepting and lets running associations finish their current instance.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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

use super::{association, tls, Routes, Tls};
use crate::observe::METRICS;

/// How long running associations get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a connection may take to send its A-ASSOCIATE-RQ.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending handshakes per peer address; a newer connection from the same address evicts the
/// oldest, so a real sender, which sends its request at once, always gets through.
const PENDING_PER_PEER: usize = 8;
/// Pending handshakes in all, so silent connections from many addresses cannot exhaust descriptors;
/// past it the oldest is closed.
const PENDING_TOTAL: usize = 512;
/// How long an evicted connection still has to send its request. A sender that opens many
/// associations at once (16 storescu processes started together did) may connect and be
/// descheduled before it writes, while its siblings connect and push it out; it must not be cut
/// off for that. Silent connections still go, this much later.
const EVICTION_GRACE: Duration = Duration::from_millis(250);
/// Evicted connections waiting out their grace at once; past it an eviction closes at once, so a
/// flood of silent connections holds at most this many descriptors more than [`PENDING_TOTAL`].
const IN_GRACE: usize = 64;
/// The largest A-ASSOCIATE-RQ accepted (real ones are a few hundred bytes to a few KiB).
const MAX_REQUEST: usize = 64 * 1024;

/// What the node listens on: plain TCP, TLS, or both.
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<(TcpListener, Arc<Tls>)>,
}

/// The next connection on `listener`, or never when there is none.
async fn next(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serve associations on `listeners` until `shutdown` completes, each answered by the project
/// whose AE title it calls. Each connection gets a task of its own ([`plain`] or [`over_tls`]);
/// shutdown stops accepting, then waits for them a grace period.
pub async fn serve(listeners: Listeners, routes: Arc<Routes>, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(routes.first().scp.max_associations));
    let pending = Arc::new(Pending::default());
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut backoff = Duration::from_millis(10);
    let tls = listeners.tls.as_ref().map(|(_, t)| t.clone());
    tokio::pin!(shutdown);
    loop {
        let (accepted, over_tls_listener) = tokio::select! {
            _ = &mut shutdown => break,
            a = next(listeners.plain.as_ref()) => (a, false),
            a = next(listeners.tls.as_ref().map(|(l, _)| l)) => (a, true),
        };
        let (socket, peer) = match accepted {
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
        };
        // Nagle's algorithm costs ~40 ms per small PDU exchange; dicom-ul does not turn it off.
        let _ = socket.set_nodelay(true);
        let connection = Connection {
            socket,
            peer,
            handshake: pending.admit(peer.ip()),
            routes: routes.clone(),
            limit: limit.clone(),
            stop: stop.clone(),
        };
        if over_tls_listener {
            let tls = tls.clone().expect("a TLS connection comes from the TLS listener");
            tracker.spawn(over_tls(tls, connection));
        } else {
            tracker.spawn(plain(connection));
        }
    }
    info!("shutting down: no new associations; waiting for running ones");
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "associations still running after the grace period");
    }
}

/// One accepted connection, as its task takes it from the accept loop.
struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    /// Pending, and evictable, until its association request is in.
    handshake: Handshake,
    routes: Arc<Routes>,
    /// The association slots.
    limit: Arc<Semaphore>,
    stop: CancellationToken,
}

/// A TLS connection: pending (and evictable) until negotiated, exactly as on plain TCP; then
/// `tls::serve` reads its request inside the session.
async fn over_tls(tls: Arc<Tls>, c: Connection) {
    let Connection { socket, peer, handshake, routes, limit, stop } = c;
    let started = std::time::Instant::now();
    let assoc = tokio::select! {
        biased;
        a = tls::establish(&tls, socket, peer, HANDSHAKE_TIMEOUT) => a,
        () = handshake.closed_out() => {
            debug!(%peer, "pending TLS connection closed: newer connections are waiting");
            METRICS.connections_dropped.with_label_values(&["evicted"]).inc();
            return;
        }
    };
    drop(handshake);
    if let Some(assoc) = assoc {
        tls::serve(assoc, routes, peer, limit, stop, started).await;
    }
}

/// A plain TCP connection: its association request looked at (in time, evictable meanwhile),
/// checked against the project it calls, then served under a slot or rejected with the reason.
async fn plain(c: Connection) {
    let Connection { socket, peer, handshake, routes, limit, stop } = c;
    let request = tokio::select! {
        // A request already there wins over an eviction.
        biased;
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, peek_request(&socket)) => r,
        () = handshake.closed_out() => {
            debug!(%peer, "pending connection closed: newer connections are waiting");
            METRICS.connections_dropped.with_label_values(&["evicted"]).inc();
            return;
        }
    };
    drop(handshake);
    let request = match request {
        Err(_) => {
            // Debug, not warn: a flood of these is counted (connections_dropped_total), not
            // written line by line.
            debug!(%peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "connection closed: no association request in time");
            METRICS.connections_dropped.with_label_values(&["no_request"]).inc();
            return;
        }
        Ok(Err(e)) => {
            // Not an A-ASSOCIATE-RQ we can read: it never gets a slot.
            debug!(%peer, error = %e, "connection closed before an association");
            METRICS.connections_dropped.with_label_values(&["not_a_request"]).inc();
            return;
        }
        Ok(Ok(request)) => request,
    };
    let node = match accept(&routes, peer, &request) {
        Ok(node) => node,
        Err((result, source)) => return reject(socket, result, source).await,
    };
    match limit.try_acquire_owned() {
        Ok(permit) => {
            association::run(node, socket, peer, &request.calling, stop).await;
            drop(permit);
        }
        Err(_) => {
            let limit = routes.first().scp.max_associations;
            warn!(%peer, limit, "association rejected: scp.max_associations reached");
            association::rejected(peer, Some(&request.calling), "busy");
            // Transient, service provider presentation, local limit exceeded (PS3.8 §9.3.4).
            let busy = AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            );
            reject(socket, AssociationRJResult::Transient, busy).await;
        }
    }
}

/// The project a plain request calls, or why it is refused (logged and counted here).
fn accept(
    routes: &Routes,
    peer: SocketAddr,
    request: &Request,
) -> Result<Arc<super::Node>, (AssociationRJResult, AssociationRJSource)> {
    let Request { max_pdu, called, calling, contexts } = request;
    let no_reason = AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven);
    let Some(node) = routes.get(called).cloned() else {
        warn!(%peer, called_ae = %called.escape_debug(), "association rejected: called AE title is none of this node's");
        association::rejected(peer, Some(calling), "called_ae");
        let unknown =
            AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        return Err((AssociationRJResult::Permanent, unknown));
    };
    if !node.scp.tls_allowed_subjects.is_empty() {
        // Certificate subjects mean nothing without a certificate: such an AE title is
        // reachable over TLS only, or plain TCP would go around its allow-list.
        warn!(%peer, called_ae = %node.scp.ae_title, "association rejected: this AE title lists certificate subjects and takes TLS only");
        association::rejected(peer, Some(calling), "tls_only");
        return Err((AssociationRJResult::Permanent, no_reason));
    }
    if association::too_many_contexts(peer, calling, *contexts) {
        return Err((AssociationRJResult::Permanent, no_reason));
    }
    if let Some(n) = max_pdu.filter(|&n| n != 0 && n < MINIMUM_PDU_SIZE) {
        warn!(%peer, max_pdu_length = n, minimum = MINIMUM_PDU_SIZE, "association rejected: the peer's maximum PDU length cannot carry a response");
        association::rejected(peer, Some(calling), "max_pdu");
        return Err((AssociationRJResult::Permanent, no_reason));
    }
    Ok(node)
}

/// What the listener reads from an association request before it takes a slot.
struct Request {
    /// The maximum PDU length it asks for (`None`: it names none).
    max_pdu: Option<u32>,
    /// Chooses the project.
    called: String,
    /// Who asks: listed with a rejection.
    calling: String,
    /// How many presentation contexts it proposes.
    contexts: usize,
}

/// Wait until the whole first PDU has arrived and look at it without consuming it: it must be an
/// A-ASSOCIATE-RQ of at most 64 KiB that parses. Anything else is refused here, before it can
/// hold an association slot.
async fn peek_request(socket: &TcpStream) -> std::io::Result<Request> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut header = [0u8; 6];
    let mut wait = Duration::from_millis(2);
    let total = loop {
        let n = socket.peek(&mut header).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if n == header.len() {
            break 6 + u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        }
        // The rest is on its way; peek does not wait for more than is there, so back off.
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    };
    if header[0] != 0x01 {
        return Err(invalid("the first PDU is not an A-ASSOCIATE-RQ"));
    }
    if total > MAX_REQUEST {
        return Err(invalid("the A-ASSOCIATE-RQ is larger than 64 KiB"));
    }
    let mut buf = vec![0u8; total];
    loop {
        let n = socket.peek(&mut buf).await?;
        if n == total {
            break;
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
    match read_pdu(&buf[..], MAX_REQUEST as u32, false) {
        Ok(Some(Pdu::AssociationRQ(rq))) => {
            let max_pdu = rq.user_variables.iter().find_map(|v| match v {
                UserVariableItem::MaxLength(n) => Some(*n),
                _ => None,
            });
            Ok(Request {
                max_pdu,
                called: rq.called_ae_title.trim().to_string(),
                calling: rq.calling_ae_title.trim().to_string(),
                contexts: rq.presentation_contexts.len(),
            })
        }
        _ => Err(invalid("the A-ASSOCIATE-RQ does not parse")),
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

/// Connections waiting for their A-ASSOCIATE-RQ, oldest first.
#[derive(Default)]
struct Pending {
    waiting: Mutex<PendingState>,
    /// Evicted connections now in their grace.
    in_grace: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct PendingState {
    queue: VecDeque<(u64, IpAddr, CancellationToken)>,
    next: u64,
}

/// One pending handshake; leaves the set when dropped.
struct Handshake {
    pending: Arc<Pending>,
    id: u64,
    /// Cancelled when newer connections push this one out.
    evicted: CancellationToken,
}

impl Pending {
    /// Register a new connection from `ip`. When that address already has [`PENDING_PER_PEER`]
    /// waiting, its oldest is closed; when [`PENDING_TOTAL`] are waiting, the oldest of all is. A
    /// real sender sends its request at once, so it is never the oldest for long; many silent
    /// connections, from one address or many, only ever push out each other.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Handshake {
        let mut s = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let from_peer = s.queue.iter().filter(|(_, from, _)| *from == ip).count();
        let oldest = if from_peer >= PENDING_PER_PEER {
            s.queue.iter().position(|(_, from, _)| *from == ip)
        } else if s.queue.len() >= PENDING_TOTAL {
            Some(0)
        } else {
            None
        };
        if let Some((_, _, token)) = oldest.and_then(|i| s.queue.remove(i)) {
            token.cancel();
        }
        s.next += 1;
        let id = s.next;
        let evicted = CancellationToken::new();
        s.queue.push_back((id, ip, evicted.clone()));
        Handshake { pending: self.clone(), id, evicted }
    }
}

impl Handshake {
    /// Resolves once newer connections have pushed this one out and its grace, if there is room
    /// for one, has passed.
    async fn closed_out(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.evicted.cancelled().await;
        let in_grace = &self.pending.in_grace;
        if in_grace.fetch_update(Relaxed, Relaxed, |n| (n < IN_GRACE).then_some(n + 1)).is_ok() {
            // Leaves the count however the grace ends: also when the request arrives meanwhile
            // and this future is dropped.
            let _counted = Counted(in_grace);
            tokio::time::sleep(EVICTION_GRACE).await;
        }
    }
}

/// One connection in its grace, counted until dropped.
struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut s = self.pending.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // An evicted handshake has already left the queue.
        if let Some(i) = s.queue.iter().position(|(id, _, _)| *id == self.id) {
            s.queue.remove(i);
        }
    }
}
