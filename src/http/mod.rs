//! The operations endpoint, on axum and the node's tokio runtime: `/healthz` (the process
//! answers), `/readyz` (it can take instances), `/metrics` (Prometheus text format) and `/`, the
//! status page. An optional bearer token guards everything but `/healthz`, which probes must reach
//! without a secret. Nothing served here holds PHI: counts, our own words, anonymized values, and
//! peers named by AE title and address, escaped.

mod dicomweb;
mod readiness;
mod serve;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use prometheus::core::Collector;

pub use readiness::Readiness;

use crate::export::status::Destination;
use crate::index::{Index, Reader};
use crate::observe::{activity, metrics, ACTIVITY, METRICS};

/// What the endpoint reads: the node's listeners, and each project's index and storage.
pub struct Ops {
    pub scp_addr: SocketAddr,
    /// "off", or the TLS listener's address and mode, for the status page.
    pub tls: String,
    /// Every project of the node, in config order; `/` shows the first, `/projects/NAME` each.
    pub projects: Vec<ProjectOps>,
    /// Required as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    pub started: DateTime<Utc>,
    /// `/readyz`'s one probe in flight.
    pub readiness: Readiness,
}

/// One project's identity, index and storage: what the page, the gauges and readiness read.
pub struct ProjectOps {
    pub name: String,
    pub site_id: String,
    pub ae_title: String,
    /// The writer, for the writability probe only.
    pub index: Index,
    /// Counts and queue state, read beside the writer.
    pub reader: Reader,
    pub index_path: PathBuf,
    pub storage_dir: PathBuf,
    /// Where anonymized files are created: readiness tries to create one there.
    pub public_dir: PathBuf,
    pub quarantine_dir: PathBuf,
    pub min_free_bytes: u64,
    pub uploader_enabled: bool,
    /// The export destinations (`export.dicom`, `export.dicomweb`) by name and where they are,
    /// whose queues the page and the gauges show.
    pub destinations: Vec<(String, String)>,
    /// Where its STOW-RS requests are stored.
    pub receiver: Arc<crate::dicomweb::Receiver>,
}

/// Serve on `listener` (HTTPS with `tls`) until `shutdown` completes; requests in progress are
/// finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: Arc<Ops>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(listener, router(ops), tls, shutdown).await
}

/// The status page and the metrics each read the index and the disk on the blocking pool: this
/// many at once, so a burst of requests queues here instead of growing the pool and the memory.
static PAGE_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Run `f` on the blocking pool once a [`PAGE_WORK`] permit is free.
async fn page_work<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    // Never closed.
    let _permit = PAGE_WORK.acquire().await.expect("open semaphore");
    tokio::task::spawn_blocking(f).await
}

fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/", get(first_project_page))
        .route("/projects/{name}", get(project_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(dicomweb::routes())
        // On the whole router, so an unknown path tells nothing without the token either.
        .layer(axum::middleware::from_fn_with_state(ops.clone(), authorize))
        .with_state(ops)
}

async fn authorize(State(ops): State<Arc<Ops>>, request: Request, next: Next) -> Response {
    let Some(token) = &ops.token else { return next.run(request).await };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // RFC 9110 §11.1: the scheme is case-insensitive.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    if presented.is_some_and(|p| same(p.trim().as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    // RFC 6750 §3: the challenge names the scheme.
    let mut rsp = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    rsp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"dicom-anon-gateway\""));
    rsp
}

/// Compare without stopping at the first difference, so timing does not reveal a prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> impl IntoResponse {
    json(StatusCode::OK, serde_json::json!({ "status": "alive" }))
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let answer = ops.readiness.answer(&ops).await;
    let (code, body) = &*answer;
    json(*code, body.clone()).into_response()
}

fn uploader_state(project: &ProjectOps) -> &'static str {
    if !project.uploader_enabled {
        "disabled"
    } else if METRICS.upload_paused.with_label_values(&[project.name.as_str()]).get() == 1 {
        "paused (no credentials)"
    } else {
        "running"
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    // A job that did not run leaves the gauges as they were; the counters are still worth scraping.
    let _ = page_work(move || refresh_gauges(&ops)).await;
    let mut rsp = METRICS.encode().into_response();
    rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
    rsp
}

/// The gauges read from each project's disk and index, labelled with the project. A project whose
/// index cannot be read keeps its queue gauges' last values, says so, and stops no other.
fn refresh_gauges(ops: &Ops) {
    let m = &*METRICS;
    for p in &ops.projects {
        let project = p.name.as_str();
        if let Ok(free) = fs4::available_space(&p.storage_dir) {
            m.storage_free_bytes.with_label_values(&[project]).set(free as i64);
        }
        m.storage_min_free_bytes.with_label_values(&[project]).set(p.min_free_bytes as i64);
        m.index_size_bytes.with_label_values(&[project]).set(index_size(p) as i64);
        m.upload_enabled.with_label_values(&[project]).set(i64::from(p.uploader_enabled));
        if let Err(e) = queue_gauges(p) {
            // The rest is still worth scraping.
            tracing::warn!(project, error = %e, "metrics: cannot read the queues");
        }
    }
}

/// One project's upload and destination queue gauges.
fn queue_gauges(p: &ProjectOps) -> Result<(), crate::index::IndexError> {
    let m = &*METRICS;
    let project = p.name.as_str();
    let queue = p.reader.queue_status()?;
    for state in metrics::QUEUE_STATES {
        let n = queue.counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        m.upload_queue.with_label_values(&[project, state]).set(n as i64);
    }
    m.upload_oldest_queued_age.with_label_values(&[project]).set(age_s(queue.oldest_queued.as_deref()));
    destination_gauges(project, &destinations(p)?);
    Ok(())
}

/// Set `project`'s destinations' gauges from their queues now.
fn destination_gauges(project: &str, destinations: &[Destination]) {
    let m = &*METRICS;
    for d in destinations {
        let name = d.name.as_str();
        for (state, n) in &d.counts {
            m.export_queue.with_label_values(&[project, name, state]).set(*n as i64);
        }
        m.export_oldest_queued_age
            .with_label_values(&[project, name])
            .set(age_s(d.oldest_waiting.as_deref()));
        m.export_unreachable.with_label_values(&[project, name]).set(i64::from(d.unreachable));
    }
}

/// Seconds since `oldest` (RFC 3339), or 0 when nothing waits.
fn age_s(oldest: Option<&str>) -> f64 {
    let oldest = oldest.and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    let age = oldest.map_or(0.0, |t| (Utc::now() - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1e3);
    age.max(0.0)
}

/// Each DICOM destination's queue now.
fn destinations(p: &ProjectOps) -> Result<Vec<Destination>, crate::index::IndexError> {
    Ok(crate::export::status::destinations(&p.ae_title, &p.destinations, &p.reader.destination_status()?))
}

fn index_size(p: &ProjectOps) -> u64 {
    let wal = p.index_path.with_extension("db-wal");
    [&p.index_path, &wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

async fn first_project_page(State(ops): State<Arc<Ops>>) -> Response {
    page(ops, 0).await
}

async fn project_page(State(ops): State<Arc<Ops>>, Path(name): Path<String>) -> Response {
    match ops.projects.iter().position(|p| p.name == name) {
        Some(i) => page(ops, i).await,
        None => (StatusCode::NOT_FOUND, "no such project on this node\n").into_response(),
    }
}

/// The page of project number `shown`, with every project's summary.
async fn page(ops: Arc<Ops>, shown: usize) -> Response {
    let page = page_work(move || gather(&ops, shown)).await;
    match page {
        Ok(p) => {
            let mut rsp = status::render(&p).into_response();
            let headers = rsp.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            // Nothing to load from anywhere, and nothing to run.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            rsp
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("status page failed: {e}\n")).into_response(),
    }
}

fn gather(ops: &Ops, shown: usize) -> status::Page {
    let m = &*METRICS;
    let quarantined = m.instances_quarantined.collect();
    let refused = m.instances_refused.collect();
    let p = &ops.projects[shown];
    // Each project's index and quarantine are read once: for its line in the projects table and,
    // the shown one's, for its boxes.
    let several = ops.projects.len() > 1;
    let mut reads: Vec<Option<ProjectRead>> =
        ops.projects.iter().enumerate().map(|(i, p)| (several || i == shown).then(|| read(p))).collect();
    let projects = if several {
        ops.projects.iter().zip(&reads).filter_map(|(p, r)| r.as_ref().map(|r| summary(p, r))).collect()
    } else {
        Vec::new()
    };
    let ProjectRead { counts, queue, destinations, quarantine } =
        reads.swap_remove(shown).expect("the shown project is read");
    status::Page {
        project: p.name.clone(),
        site_id: p.site_id.clone(),
        ae_title: p.ae_title.clone(),
        scp_addr: ops.scp_addr.to_string(),
        tls: ops.tls.clone(),
        projects,
        listener_up: m.listener_up.get() == 1,
        flush_failure: crate::durability::failure().map(ToString::to_string),
        audit_rows_dropped: m.audit_rows_dropped.get(),
        started: ops.started,
        now: Utc::now(),
        counts,
        since_start: status::SinceStart {
            received: total(&m.instances_received.collect()),
            stored: total(&m.instances_stored.collect()),
            stored_by_stow: m.instances_stored.with_label_values(&[crate::dicomweb::stow::TRANSPORT]).get(),
            quarantined: total(&quarantined),
            refused: total(&refused),
        },
        recent: ACTIVITY.recent(),
        quarantine,
        uploader: uploader_state(p),
        queue,
        destinations,
        free_bytes: fs4::available_space(&p.storage_dir).ok(),
        min_free_bytes: p.min_free_bytes,
        per_minute: p
            .reader
            .stored_per_minute(Utc::now(), activity::MINUTES)
            .unwrap_or_else(|_| vec![0; activity::MINUTES]),
        pixels: pixel_reads(),
    }
}

/// What the page shows of one project's index and quarantine; `Err`: why it could not be read.
struct ProjectRead {
    counts: Result<crate::index::Counts, String>,
    queue: Result<crate::index::QueueStatus, String>,
    destinations: Result<Vec<Destination>, String>,
    quarantine: Vec<(String, u64)>,
}

fn read(p: &ProjectOps) -> ProjectRead {
    ProjectRead {
        counts: p.reader.counts().map_err(|e| e.to_string()),
        queue: p.reader.queue_status().map_err(|e| e.to_string()),
        destinations: destinations(p).map_err(|e| e.to_string()),
        quarantine: quarantine_counts(&p.quarantine_dir),
    }
}

/// One line of the projects table, from what was read of the project.
fn summary(p: &ProjectOps, read: &ProjectRead) -> status::ProjectSummary {
    let waiting = |q: &crate::index::QueueStatus, states: &[&str]| {
        q.counts.iter().filter(|(s, _)| states.contains(&s.as_str())).map(|(_, n)| *n).sum::<u64>()
    };
    let queue = read.queue.as_ref().ok();
    let destinations = read.destinations.as_deref().unwrap_or_default();
    status::ProjectSummary {
        name: p.name.clone(),
        ae_title: p.ae_title.clone(),
        instances: read.counts.as_ref().map(|c| c.instances).map_err(Clone::clone),
        upload_waiting: queue.map(|q| waiting(q, &["queued", "uploading"])),
        upload_failed: queue.map(|q| waiting(q, &["failed"])),
        uploader: uploader_state(p),
        export_waiting: destinations.iter().map(|d| d.count("queued") + d.count("sending")).sum(),
        export_failed: destinations.iter().map(|d| d.count("failed")).sum(),
        quarantined: read.quarantine.iter().map(|(_, n)| n).sum(),
    }
}

/// The pixel stage's counters since start.
fn pixel_reads() -> status::PixelReads {
    let m = &*METRICS;
    let outcome = |o: &str| m.pixel_reads.with_label_values(&[o]).get();
    status::PixelReads {
        in_progress: m.pixel_reads_in_progress.get().max(0) as u64,
        clean: outcome("clean"),
        masked: outcome("masked"),
        held: outcome("held"),
        kept_unread: outcome("kept_unread"),
    }
}

/// Instances in quarantine by reason directory: the `.dcm` files, each with its `.json` beside it.
fn quarantine_counts(dir: &std::path::Path) -> Vec<(String, u64)> {
    let Ok(reasons) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, u64)> = reasons
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let n = std::fs::read_dir(e.path())
                .map(|files| {
                    files.flatten().filter(|f| f.path().extension().is_some_and(|x| x == "dcm")).count()
                        as u64
                })
                .unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    out.sort();
    out
}

/// The sum over every label of a counter family.
fn total(families: &[prometheus::proto::MetricFamily]) -> u64 {
    families.iter().flat_map(|f| f.get_metric()).map(|c| c.get_counter().get_value() as u64).sum()
}

fn json(code: StatusCode, body: serde_json::Value) -> Response {
    let mut rsp = (code, format!("{body}\n")).into_response();
    rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(super::same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!super::same(b"0123456789abcdeF", b"0123456789abcdef"));
        assert!(!super::same(b"0123456789abcde", b"0123456789abcdef"));
    }
}
