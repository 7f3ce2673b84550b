//! The operations endpoint's connections, served by hand with hyper's HTTP/1.1 under limits of
//! our own. Any local process can connect to this port, and it shares the process's file table
//! with the DICOM port: without a cap, idle connections alone fill the table and stop DICOM intake.
//!
//! - at most [`MAX_CONNECTIONS`] at once; the next waits in the kernel's listen backlog, where it
//!   holds no descriptor of ours (a permit is taken before `accept`, as in mini-redis);
//! - a request's head must arrive within [`HEADER_TIMEOUT`], which hyper also applies to a kept-
//!   alive connection waiting for its next request (the idle timeout);
//! - no connection lives [`CONNECTION_LIFETIME`] past its last sign of progress, whatever it does
//!   (a client that never reads). Pages and metrics show none, so they get that long in all; a
//!   STOW-RS request shows progress with every chunk of its body and every part stored, so a
//!   study of gigabytes is not cut off while it moves, and one that stalls is.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once: ops tools, a scraper, a few browsers.
pub const MAX_CONNECTIONS: usize = 64;
/// For a request's head, and for a kept-alive connection between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest any connection is kept after its last sign of progress.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// After a failed `accept` (out of descriptors, mostly): wait before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve `router` on `listener` until `shutdown` completes; requests in progress are finished.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            // The semaphore is never closed.
            permit = slots.clone().acquire_owned() => permit.expect("open semaphore"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "operations endpoint: cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (router, stop, tls) = (router.clone(), stop.clone(), tls.clone());
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, Connection::new(peer, None), router, stop).await,
                Some(acceptor) => {
                    // The handshake is bounded as a request's head is.
                    let stream = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "operations endpoint: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "operations endpoint: TLS handshake not done in time");
                            return;
                        }
                    };
                    let subject = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| crate::scp::common_name(der));
                    serve_connection(stream, Connection::new(peer, subject), router, stop).await
                }
            }
        });
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serve one connection's requests until it closes, outlives its progress, or the endpoint stops.
async fn serve_connection<I>(io: I, connection: Connection, router: Router, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new(connection);
    let service = TowerToHyperService::new(router.layer(Extension(connection.clone())));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let outcome = loop {
        let deadline = connection.last_progress() + CONNECTION_LIFETIME;
        tokio::select! {
            outcome = served.as_mut() => break Some(outcome),
            () = stop.cancelled() => {
                served.as_mut().graceful_shutdown();
                break tokio::time::timeout_at(deadline, served.as_mut()).await.ok();
            }
            () = tokio::time::sleep_until(deadline) => {
                if connection.last_progress() + CONNECTION_LIFETIME <= Instant::now() {
                    break None;
                }
            }
        }
    };
    match outcome {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(error = %e, "operations endpoint: connection ended"),
        None => tracing::debug!("operations endpoint: connection closed after its lifetime without progress"),
    }
}

/// One connection, as its requests see it (an extension of each): who is on the other end, and
/// when it last showed progress.
pub struct Connection {
    pub peer: SocketAddr,
    /// The common name of the client's certificate, over HTTPS with client certificates.
    pub subject: Option<String>,
    started: Instant,
    /// Milliseconds from `started` to the last progress.
    progress_ms: AtomicU64,
}

impl Connection {
    fn new(peer: SocketAddr, subject: Option<String>) -> Connection {
        Connection { peer, subject, started: Instant::now(), progress_ms: AtomicU64::new(0) }
    }

    fn last_progress(&self) -> Instant {
        self.started + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed))
    }
}

impl crate::dicomweb::Progress for Connection {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.progress_ms.fetch_max(ms, Ordering::Relaxed);
    }
}
