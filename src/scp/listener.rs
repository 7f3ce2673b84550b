//! The accept loop: a permit per association (the one over the limit is rejected, not queued), one
//! task per association, and a shutdown that stops accepting and lets running associations finish
//! their current instance.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::pdu::{
    write_pdu, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, Pdu,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{association, Node};

/// How long running associations get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serve associations on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(node.scp.max_associations));
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
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let (node, stop) = (node.clone(), stop.clone());
                tracker.spawn(async move {
                    association::run(node, socket, peer, stop).await;
                    drop(permit);
                });
            }
            Err(_) => {
                warn!(%peer, limit = node.scp.max_associations, "association rejected: scp.max_associations reached");
                tracker.spawn(reject_busy(socket));
            }
        }
    }
    info!("shutting down: no new associations; waiting for running ones");
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "associations still running after the grace period");
    }
}

/// Answer an association request with A-ASSOCIATE-RJ (transient, service provider presentation,
/// local limit exceeded: PS3.8 §9.3.4), after reading the request so the peer sees the answer
/// rather than a reset.
async fn reject_busy(mut socket: TcpStream) {
    let read_request = async {
        let mut header = [0u8; 6];
        socket.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]).min(1 << 20);
        let mut rest = vec![0; len as usize];
        socket.read_exact(&mut rest).await?;
        std::io::Result::Ok(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read_request).await.is_err() {
        return;
    }
    let mut out = Vec::new();
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    if write_pdu(&mut out, &rj).is_ok() {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    }
}
