//! The DICOMweb routes: `{base}/studies` and `{base}/studies/{StudyInstanceUID}` take STOW-RS
//! requests, where `{base}` is `/projects/{name}/dicomweb` for any project, and `/dicomweb` on a
//! node with one project. The path chooses the project, as the called AE title does for DIMSE.
//! Here the request is only translated: `dicomweb::stow` decides what becomes of each part.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};

use super::serve::Connection;
use super::Ops;
use crate::dicomweb::{self, Reply};

/// STOW-RS requests served at once. The rest of the listener's connections stay free for what
/// must always answer (`/healthz`, `/readyz`, `/metrics`, the page): a request past this is told
/// to come back (503 with Retry-After) rather than hold a connection.
pub const MAX_REQUESTS: usize = super::serve::MAX_CONNECTIONS * 3 / 4;
static REQUESTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_REQUESTS);

/// The routes, to merge into the endpoint's router: one handler, the path's parameters saying
/// which project (none: the node's only one) and which study (none: any).
pub fn routes() -> Router<Arc<Ops>> {
    Router::new()
        .route("/dicomweb/studies", post(stow))
        .route("/dicomweb/studies/{study}", post(stow))
        .route("/projects/{name}/dicomweb/studies", post(stow))
        .route("/projects/{name}/dicomweb/studies/{study}", post(stow))
}

/// Find the project, then store the request's parts through its pipeline.
async fn stow(
    State(ops): State<Arc<Ops>>,
    Path(mut params): Path<HashMap<String, String>>,
    Extension(connection): Extension<Arc<Connection>>,
    request: Request,
) -> Response {
    let (name, study) = (params.remove("name"), params.remove("study"));
    let (parts, body) = request.into_parts();
    let mut body = body.into_data_stream();
    let receiver = match admit(&ops, name.as_deref(), &connection) {
        Ok(receiver) => receiver,
        Err(refusal) => {
            linger(&mut body).await;
            return *refusal;
        }
    };
    let Ok(_request) = REQUESTS.try_acquire() else {
        tracing::warn!(peer = %connection.peer, limit = MAX_REQUESTS, "STOW-RS request refused: as many are being served as the node takes at once");
        let mut rsp =
            (StatusCode::SERVICE_UNAVAILABLE, "too many STOW-RS requests at once; send it again shortly\n")
                .into_response();
        rsp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        linger(&mut body).await;
        return rsp;
    };
    let _counted = InProgress::new();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let request =
        dicomweb::Request { content_type, study, peer: connection.peer, progress: connection.as_ref() };
    let reply: Reply = dicomweb::stow::store(receiver, request, &mut body).await;
    // A request refused part-way (a part too large, a malformed body) has bytes still coming.
    linger(&mut body).await;
    closing(reply.into_response(&parts.headers))
}

/// `rsp` with `Connection: close`: a STOW-RS client holds one of the listener's connections only
/// while its request runs, never idle between requests, so the slots left to probes stay free.
fn closing(mut rsp: Response) -> Response {
    rsp.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    rsp
}

/// A STOW-RS request counted in `stow_requests_in_progress` while it lives.
struct InProgress;

impl InProgress {
    fn new() -> InProgress {
        crate::observe::METRICS.stow_requests_in_progress.inc();
        InProgress
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        crate::observe::METRICS.stow_requests_in_progress.dec();
    }
}

/// The project a request is for, if it may send to it now; else the answer it gets.
fn admit<'o>(
    ops: &'o Ops,
    name: Option<&str>,
    connection: &Connection,
) -> Result<&'o Arc<dicomweb::Receiver>, Box<Response>> {
    let project = match name {
        Some(name) => ops.projects.iter().find(|p| p.name == name),
        None if ops.projects.len() == 1 => ops.projects.first(),
        None => {
            let why = "this node serves several projects: send to /projects/{name}/dicomweb/studies";
            return Err(Box::new((StatusCode::NOT_FOUND, format!("{why}\n")).into_response()));
        }
    };
    let Some(receiver) = project.map(|p| &p.receiver) else {
        return Err(Box::new((StatusCode::NOT_FOUND, "no such project on this node\n").into_response()));
    };
    if !receiver.admits(connection.subject.as_deref()) {
        tracing::warn!(peer = %connection.peer, project = %receiver.project, subject = %connection.subject.as_deref().unwrap_or("(none)").escape_debug(), "STOW-RS request refused: certificate subject not allowed for this project");
        let why = "this project takes studies only from the clients its scp.tls_allowed_subjects names\n";
        return Err(Box::new((StatusCode::FORBIDDEN, why).into_response()));
    }
    // From the first moment of a stop, as the DICOM listener: the sender keeps its copy.
    if crate::observe::METRICS.listener_up.get() == 0 {
        return Err(Box::new((StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n").into_response()));
    }
    Ok(receiver)
}

/// Read and drop what is left of a refused request's body, up to [`LINGER_BYTES`] or for
/// [`LINGER`], before answering: a connection closed with unread bytes is reset, and a sender
/// that writes its whole body before reading would lose the answer (HTTP's lingering close).
async fn linger<S, E>(body: &mut S)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    use futures_util::StreamExt;
    let mut left = LINGER_BYTES;
    let drained = async {
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

/// How much of a refused body is read, at most, and for how long.
const LINGER_BYTES: usize = 1 << 20;
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
