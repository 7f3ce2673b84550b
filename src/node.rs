//! The node as a library: [`start`] binds the DICOM listener and the operations endpoint, opens
//! the pipeline and starts the uploader on the current tokio runtime, and returns a [`Handle`]
//! with the bound addresses once the node accepts associations. It runs until the `shutdown`
//! future completes; [`Handle::stopped`] then resolves after the drain and the index's close.
//!
//! Metrics and the status page's activity are process-wide (see `observe::metrics`): two nodes in one
//! process share them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::durability::Durability;
use crate::export::stow::StowClient;
use crate::export::{self, Exporter};
use crate::http;
use crate::index::{IndexError, Reader};
use crate::memory_budget::MemoryBudget;
use crate::observe::METRICS;
use crate::pipeline::{Pipeline, SetupError};
use crate::queue::SpoolError;
use crate::scp;
use crate::scu::ClientTls;
use crate::upload::{AuthError, Credentials, Target, Uploader};

/// How long puts in flight get to finish at shutdown.
const UPLOAD_GRACE: Duration = Duration::from_secs(60);
/// How long the operations endpoint gets to finish its requests at shutdown.
const HTTP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    #[error(transparent)]
    Upload(#[from] AuthError),
    #[error("closing the spool: {0}")]
    Close(#[from] SpoolError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the node's task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Tls(scp::TlsError),
    #[error(transparent)]
    Stow(crate::export::stow::StowSetupError),
    /// One project of several could not start: which one.
    #[error("project {name}: {source}")]
    Project { name: String, source: Box<NodeError> },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// A running node.
pub struct Handle {
    /// Where the DICOM listener accepts associations: plain TCP, or TLS with `scp.tls.only`.
    pub scp_addr: SocketAddr,
    /// Where the TLS listener accepts associations; `None` without `scp.tls`.
    pub tls_addr: Option<SocketAddr>,
    /// Where the operations endpoint answers; `None` with `http.enabled: false`.
    pub http_addr: Option<SocketAddr>,
    done: JoinHandle<Result<(), NodeError>>,
}

impl Handle {
    /// Resolves once the node has stopped: associations drained, uploads settled, index closed.
    pub async fn stopped(self) -> Result<(), NodeError> {
        self.done.await.map_err(|e| NodeError::Task(e.to_string()))?
    }
}

/// Start a node with one project; it stops when `shutdown` completes.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Handle, NodeError> {
    start_projects(vec![config], shutdown).await
}

/// One project's parts: what the listener routes to and what the drain waits for.
struct Project {
    config: Config,
    pipeline: Arc<Pipeline>,
    node: Arc<scp::Node>,
}

/// Open one project's pipeline (its own index, spool, quarantine) and its SCP view.
fn open_project(config: Config, memory: &Arc<MemoryBudget>) -> Result<Project, NodeError> {
    // First, as it takes the storage directory's lock: a second node on it stops here, before it
    // touches the first one's files.
    let pipeline = Arc::new(
        Pipeline::open(&config, &config.public_dir(), Durability::EachInstance)?
            .with_memory_budget(memory.clone()),
    );
    let tmp = config.tmp_dir();
    crate::file_modes::private_dir(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    // Spilled data sets of a previous run were never acknowledged: their senders still have them.
    for stale in std::fs::read_dir(&tmp).map_err(io_err(format!("reading {}", tmp.display())))?.flatten() {
        let _ = std::fs::remove_file(stale.path());
    }
    // Instances between commit and acknowledgement at once: an association's each, and the
    // STOW-RS parts in the pipeline when the HTTP listener takes them.
    let stow = if config.http.enabled { crate::dicomweb::stow::PIPELINE_SLOTS } else { 0 };
    let in_flight = config.scp.max_associations + stow;
    let recovered = pipeline.recover(in_flight)?;
    if recovered.temp_files > 0 {
        tracing::info!(project = %config.project.name, files = recovered.temp_files, "removed temp files an interrupted commit left in public/");
    }
    if recovered.forgotten_rows > 0 {
        tracing::info!(project = %config.project.name, instances = recovered.forgotten_rows, "forgot index rows of instances an interrupted commit never placed in public/ (never acknowledged)");
    }
    if recovered.orphans > 0 {
        tracing::warn!(project = %config.project.name, instances = recovered.orphans, "moved files found in public/ without an index row after a crash to quarantine as Orphan_After_Crash (never acknowledged)");
    }
    let node = Arc::new(scp::Node::new(
        pipeline.clone(),
        config.scp.clone(),
        &tmp,
        &config.storage.dir,
        config.storage.min_free_bytes,
    ));
    Ok(Project { config, pipeline, node })
}

/// The project's uploader, when its upload is enabled.
async fn start_uploader(p: &Project, stop: &CancellationToken) -> Result<Option<JoinHandle<()>>, NodeError> {
    let config = &p.config;
    if !config.upload.enabled {
        return Ok(None);
    }
    let credentials = Arc::new(Credentials::new(&config.upload).await?);
    let u = &config.upload;
    let target = Target {
        bucket: u.bucket.clone(),
        prefix: u.prefix.clone(),
        project: config.project.name.clone(),
        multipart_threshold: u.multipart_threshold_bytes,
    };
    let uploader = Arc::new(Uploader {
        index: p.pipeline.index().clone(),
        public: config.public_dir(),
        target,
        credentials,
        concurrency: u.concurrency,
        delete_after_upload: u.delete_after_upload,
        reconcile_on_start: u.reconcile_on_start,
    });
    tracing::info!(project = %config.project.name, bucket = %u.bucket, concurrency = u.concurrency, "uploader started");
    Ok(Some(tokio::spawn(uploader.run(stop.clone()))))
}

/// Start a node serving `configs` (one per project, as `Config::load_all` returns them; the
/// node-wide sections are taken from the first). Returns once every listener is bound.
///
/// In steps: open every project (each takes its storage lock and recovers), bind every socket,
/// start the operations endpoint and the workers (uploaders, exporters), then hand the listeners
/// to the drain, which runs until `shutdown` and stops everything in order.
pub async fn start_projects(
    configs: Vec<Config>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Handle, NodeError> {
    let Some(first) = configs.first().cloned() else {
        return Err(NodeError::Task("no project to serve".into()));
    };
    // A token that is configured but unreadable stops the start: the endpoint never opens unguarded.
    let token = if first.http.enabled { first.http.token()? } else { None };
    // Node-wide, as the association limit: every project's instances draw on one budget.
    let memory = MemoryBudget::new(first.scp.max_in_memory_total_bytes);
    let projects = configs
        .into_iter()
        .map(|config| {
            let name = config.project.name.clone();
            open_project(config, &memory).map_err(|e| NodeError::Project { name, source: Box::new(e) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let routes = Arc::new(scp::Routes::new(projects.iter().map(|p| p.node.clone()).collect()));
    let mut bound = bind(&first, &routes).await?;
    METRICS.listener_up.set(1);
    announce(&projects, &bound);

    let stop = CancellationToken::new();
    let reload =
        tokio::spawn(scp::reload_on_sighup(bound.tls.as_ref().map(|(_, state)| state.clone()), stop.clone()));
    let operations = match bound.http.take() {
        Some(listener) => Some(start_operations(listener, &bound, &projects, token)?),
        None => None,
    };
    let workers = start_workers(&projects).await?;
    let (scp_addr, tls_addr) = (bound.scp_addr, bound.tls_addr);
    let http_addr = operations.as_ref().map(|o| o.addr);
    let pipelines: Vec<Arc<Pipeline>> = projects.into_iter().map(|p| p.pipeline).collect();
    let listeners = scp::Listeners { plain: bound.plain, tls: bound.tls };
    let done = tokio::spawn(async move {
        let stopping = async {
            shutdown.await;
            // Not ready from the first moment of the drain.
            METRICS.listener_up.set(0);
        };
        scp::serve(listeners, routes, stopping).await;
        stop.cancel();
        let _ = reload.await;
        drain(workers, operations, pipelines).await
    });
    Ok(Handle { scp_addr, tls_addr, http_addr, done })
}

/// Every socket of the node, bound before anything is spawned: a port in use stops the start.
struct Bound {
    plain: Option<tokio::net::TcpListener>,
    tls: Option<(tokio::net::TcpListener, Arc<scp::Tls>)>,
    http: Option<tokio::net::TcpListener>,
    /// The plain listener's address, or the TLS one's with `scp.tls.only`.
    scp_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
}

async fn bind(first: &Config, routes: &Arc<scp::Routes>) -> Result<Bound, NodeError> {
    let host = first.scp.host.as_str();
    let tls_only = first.scp.tls.as_ref().is_some_and(|t| t.only);
    let plain = if tls_only {
        None
    } else {
        let l = tokio::net::TcpListener::bind((host, first.scp.port))
            .await
            .map_err(io_err(format!("cannot listen on {host}:{} (scp.host, scp.port)", first.scp.port)))?;
        Some(l)
    };
    let tls = match &first.scp.tls {
        Some(cfg) => {
            let state = Arc::new(scp::Tls::new(cfg, routes).map_err(NodeError::Tls)?);
            let l = tokio::net::TcpListener::bind((host, cfg.port))
                .await
                .map_err(io_err(format!("cannot listen on {host}:{} (scp.host, scp.tls.port)", cfg.port)))?;
            Some((l, state))
        }
        None => None,
    };
    let tls_addr = match &tls {
        Some((l, _)) => Some(l.local_addr().map_err(io_err("the TLS listener's address"))?),
        None => None,
    };
    let scp_addr = match &plain {
        Some(l) => l.local_addr().map_err(io_err("the listener's address"))?,
        None => tls_addr.expect("TLS only means a TLS listener"),
    };
    let http = if first.http.enabled {
        let l = tokio::net::TcpListener::bind(first.http.listen.as_str())
            .await
            .map_err(io_err(format!("cannot listen on {} (http.listen)", first.http.listen)))?;
        Some(l)
    } else {
        None
    };
    Ok(Bound { plain, tls, http, scp_addr, tls_addr })
}

/// The log lines that say the node is up: each project, then the listeners.
fn announce(projects: &[Project], bound: &Bound) {
    for p in projects {
        tracing::info!(project = %p.config.project.name, ae_title = %p.config.scp.ae_title, storage = %p.config.storage.dir.display(), "project ready");
    }
    let ae_titles: Vec<&str> = projects.iter().map(|p| p.config.scp.ae_title.as_str()).collect();
    let ae_titles = ae_titles.join(",");
    match bound.tls_addr {
        Some(tls) => tracing::info!(addr = %bound.scp_addr, %tls, ae_titles = %ae_titles, "listening"),
        None => tracing::info!(addr = %bound.scp_addr, ae_titles = %ae_titles, "listening"),
    }
}

/// The operations endpoint, running, and how to stop it.
struct Operations {
    addr: SocketAddr,
    task: JoinHandle<io::Result<()>>,
    stop: CancellationToken,
}

/// Serve the operations endpoint on `listener` over every project's index and storage.
fn start_operations(
    listener: tokio::net::TcpListener,
    bound: &Bound,
    projects: &[Project],
    token: Option<String>,
) -> Result<Operations, NodeError> {
    let addr = listener.local_addr().map_err(io_err("the operations endpoint's address"))?;
    let http = &projects[0].config.http;
    // Unreadable certificates stop the start, as the DICOM TLS listener's do.
    let https = http.tls.as_ref().map(scp::http_server_config).transpose().map_err(NodeError::Tls)?;
    tracing::info!(http_addr = %addr, token = token.is_some(), tls = https.is_some(), "operations endpoint listening");
    let tls = match (&bound.tls, bound.tls_addr) {
        (Some((_, state)), Some(addr)) => {
            let mode = if state.mutual() { "client certificates required" } else { "no client certificates" };
            format!("on {addr} ({mode})")
        }
        _ => "off".into(),
    };
    let mut each = Vec::with_capacity(projects.len());
    for p in projects {
        each.push(http::ProjectOps {
            name: p.config.project.name.clone(),
            site_id: p.config.project.site_id.clone(),
            ae_title: p.config.scp.ae_title.clone(),
            index: p.pipeline.index().clone(),
            reader: Reader::open_at(&p.config.index_location()?).map_err(|e| NodeError::Project {
                name: p.config.project.name.clone(),
                source: Box::new(e.into()),
            })?,
            index_path: p.config.index_path(),
            storage_dir: p.config.storage.dir.clone(),
            public_dir: p.config.public_dir(),
            quarantine_dir: p.config.quarantine_dir(),
            min_free_bytes: p.config.storage.min_free_bytes,
            uploader_enabled: p.config.upload.enabled,
            destinations: p.config.export.destinations(),
            receiver: Arc::new(crate::dicomweb::Receiver {
                project: p.config.project.name.clone(),
                pipeline: p.pipeline.clone(),
                modalities: p.config.scp.modalities.clone(),
                max_instance_bytes: p.config.scp.max_instance_bytes,
                tmp: p.config.tmp_dir(),
                storage_dir: p.config.storage.dir.clone(),
                min_free_bytes: p.config.storage.min_free_bytes,
                allowed_subjects: p.config.scp.tls_allowed_subjects.clone(),
            }),
        });
    }
    let ops = Arc::new(http::Ops {
        scp_addr: bound.scp_addr,
        tls,
        projects: each,
        token,
        started: chrono::Utc::now(),
        readiness: http::Readiness::default(),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(http::serve(listener, ops, https, stop.clone().cancelled_owned()));
    Ok(Operations { addr, task, stop })
}

/// The tasks that drain each project's queue, and the token that stops them.
struct Workers {
    uploaders: Vec<JoinHandle<()>>,
    exporters: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

/// Each project's uploader (when enabled) and one exporter per destination (DICOM, STOW-RS): each project's
/// queue goes to every destination, each on its own schedule, calling as that project's AE title.
async fn start_workers(projects: &[Project]) -> Result<Workers, NodeError> {
    let stop = CancellationToken::new();
    let mut uploaders = Vec::new();
    for p in projects {
        uploaders.extend(start_uploader(p, &stop).await?);
    }
    let mut exporters = Vec::new();
    for p in projects {
        for (destination, tls) in
            p.config.export.dicom.iter().zip(export_tls(&p.config).map_err(NodeError::Tls)?)
        {
            let exporter = Exporter {
                index: p.pipeline.index().clone(),
                public: p.config.public_dir(),
                calling: p.config.scp.ae_title.clone(),
                target: export::Target::Dicom { destination: Box::new(destination.clone()), tls },
            };
            exporters.push(tokio::spawn(exporter.run(stop.clone())));
        }
        for client in stow_clients(&p.config)? {
            let exporter = Exporter {
                index: p.pipeline.index().clone(),
                public: p.config.public_dir(),
                calling: p.config.scp.ae_title.clone(),
                target: export::Target::Stow(Arc::new(client)),
            };
            exporters.push(tokio::spawn(exporter.run(stop.clone())));
        }
    }
    Ok(Workers { uploaders, exporters, stop })
}

/// After the listener has stopped: workers finish what is in flight (the rest stays queued for
/// the next start), the operations endpoint goes last so the drain can be watched, and each
/// project's index closes.
async fn drain(
    workers: Workers,
    operations: Option<Operations>,
    pipelines: Vec<Arc<Pipeline>>,
) -> Result<(), NodeError> {
    workers.stop.cancel();
    if tokio::time::timeout(UPLOAD_GRACE, futures_all(workers.uploaders)).await.is_err() {
        tracing::warn!("uploads still in flight after 60 s; they are queued again at the next start");
    }
    for task in workers.exporters {
        if tokio::time::timeout(UPLOAD_GRACE, task).await.is_err() {
            tracing::warn!("DICOM sends still in flight after 60 s; they are queued again at the next start");
        }
    }
    // It holds an index handle, which must go before close.
    if let Some(ops) = operations {
        ops.stop.cancel();
        let mut task = ops.task;
        match tokio::time::timeout(HTTP_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "operations endpoint failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "operations endpoint task failed"),
            Err(_) => {
                // A STOW-RS request still running holds its project's pipeline: it is cut (its
                // sender gets no answer and keeps its copy; what it stored is durable), so the
                // index still closes.
                tracing::warn!("operations endpoint still answering after 5 s; its requests are cut");
                task.abort();
                let _ = task.await;
            }
        }
    }
    for pipeline in pipelines {
        // A part still in the blocking pool holds the pipeline until it is done.
        let deadline = tokio::time::Instant::now() + HTTP_GRACE;
        while Arc::strong_count(&pipeline) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match Arc::try_unwrap(pipeline) {
            Ok(p) => p.close()?,
            // An association outlived the grace period; its index writes are committed as they go.
            Err(_) => tracing::warn!("associations still running at exit"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Wait for every task; a task that panicked has already logged.
async fn futures_all(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// A client for each of `config`'s STOW-RS destinations, its certificates and secrets read now.
pub fn stow_clients(config: &Config) -> Result<Vec<StowClient>, NodeError> {
    let each = config.export.dicomweb.iter().enumerate();
    each.map(|(i, d)| StowClient::new(&format!("export.dicomweb[{i}]"), d).map_err(NodeError::Stow)).collect()
}

/// The DICOM TLS client of each of `config`'s export destinations (`None`: plain TCP), its files
/// read now: a destination whose certificates cannot be read stops the start.
pub fn export_tls(config: &Config) -> Result<Vec<Option<ClientTls>>, scp::TlsError> {
    config
        .export
        .dicom
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.tls
                .as_ref()
                .map(|tls| {
                    Ok(ClientTls {
                        config: scp::tls_client_config(&format!("export.dicom[{i}].tls"), tls)?,
                        server_name: tls.server_name.clone().unwrap_or_else(|| d.peer.host.clone()),
                    })
                })
                .transpose()
        })
        .collect()
}
