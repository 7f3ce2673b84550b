//! The operations endpoint's connections, served by hand with hyper's HTTP/1.1 under limits of
//! our own. Any local process can connect to this port, and it shares the process's file table
//! with the DICOM port: without a cap, idle connections alone fill the table and stop DICOM intake.
//!
//! - at most [`MAX_CONNECTIONS`] at once; the next waits in the kernel's listen backlog, where it
//!   holds no descriptor of ours (a permit is taken before `accept`, as in mini-redis);
//! - a request's head must arrive within [`HEADER_TIMEOUT`], which hyper also applies to a kept-
//!   alive connection waiting for its next request (the idle timeout);
//! - no connection outlives [`CONNECTION_LIFETIME`], whatever it does (a client that never reads).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once: ops tools, a scraper, a few browsers.
pub const MAX_CONNECTIONS: usize = 64;
/// For a request's head, and for a kept-alive connection between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest any connection is kept.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// After a failed `accept` (out of descriptors, mostly): wait before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve `router` on `listener` until `shutdown` completes; requests in progress are finished.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "operations endpoint: cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::time::timeout(CONNECTION_LIFETIME, async {
                tokio::select! {
                    served = connection.as_mut() => served,
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.as_mut().await
                    }
                }
            });
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "operations endpoint: connection ended"),
                Err(_) => tracing::debug!("operations endpoint: connection closed after its lifetime"),
            }
        });
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}
