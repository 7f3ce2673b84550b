//! The DICOMweb routes: `{base}/studies` and `{base}/studies/{StudyInstanceUID}` take STOW-RS
//! requests, where `{base}` is `/projects/{name}/dicomweb` for any project, and `/dicomweb` on a
//! node with one project. The path chooses the project, as the called AE title does for DIMSE.
//! Here the request is only translated: `dicomweb::stow` decides what becomes of each part.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};

use super::serve::Connection;
use super::Ops;
use crate::dicomweb::{self, Reply};

/// The routes, to merge into the endpoint's router.
pub fn routes() -> Router<Arc<Ops>> {
    Router::new()
        .route("/dicomweb/studies", post(only_project))
        .route("/dicomweb/studies/{study}", post(only_project_study))
        .route("/projects/{name}/dicomweb/studies", post(project))
        .route("/projects/{name}/dicomweb/studies/{study}", post(project_study))
}

async fn only_project(State(ops): State<Arc<Ops>>, c: Extension<Arc<Connection>>, r: Request) -> Response {
    stow(&ops, None, None, c, r).await
}

async fn only_project_study(
    State(ops): State<Arc<Ops>>,
    Path(study): Path<String>,
    c: Extension<Arc<Connection>>,
    r: Request,
) -> Response {
    stow(&ops, None, Some(study), c, r).await
}

async fn project(
    State(ops): State<Arc<Ops>>,
    Path(name): Path<String>,
    c: Extension<Arc<Connection>>,
    r: Request,
) -> Response {
    stow(&ops, Some(name), None, c, r).await
}

async fn project_study(
    State(ops): State<Arc<Ops>>,
    Path((name, study)): Path<(String, String)>,
    c: Extension<Arc<Connection>>,
    r: Request,
) -> Response {
    stow(&ops, Some(name), Some(study), c, r).await
}

/// Find the project, then store the request's parts through its pipeline.
async fn stow(
    ops: &Ops,
    name: Option<String>,
    study: Option<String>,
    Extension(connection): Extension<Arc<Connection>>,
    request: Request,
) -> Response {
    let receiver = match &name {
        Some(name) => ops.projects.iter().find(|p| &p.name == name),
        None if ops.projects.len() == 1 => ops.projects.first(),
        None => {
            let why = "this node serves several projects: send to /projects/{name}/dicomweb/studies";
            return (StatusCode::NOT_FOUND, format!("{why}\n")).into_response();
        }
    };
    let Some(receiver) = receiver.map(|p| &p.receiver) else {
        return (StatusCode::NOT_FOUND, "no such project on this node\n").into_response();
    };
    if !receiver.admits(connection.subject.as_deref()) {
        tracing::warn!(peer = %connection.peer, project = %receiver.project, subject = %connection.subject.as_deref().unwrap_or("(none)").escape_debug(), "STOW-RS request refused: certificate subject not allowed for this project");
        return (
            StatusCode::FORBIDDEN,
            "this project takes studies only from the clients its scp.tls_allowed_subjects names\n",
        )
            .into_response();
    }
    // From the first moment of a stop, as the DICOM listener: the sender keeps its copy.
    if crate::observe::METRICS.listener_up.get() == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n").into_response();
    }
    let (parts, body) = request.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let request =
        dicomweb::Request { content_type, study, peer: connection.peer, progress: connection.as_ref() };
    let reply: Reply = dicomweb::stow::store(receiver, request, body.into_data_stream()).await;
    reply.into_response(&parts.headers)
}
