//! The node as a library: [`start`] binds the DICOM listener and the operations endpoint, opens
//! the pipeline and starts the uploader on the current tokio runtime, and returns a [`Handle`]
//! with the bound addresses once the node accepts associations. It runs until the `shutdown`
//! future completes; [`Handle::stopped`] then resolves after the drain and the index's close.
//!
//! Metrics and the status page's activity are process-wide (see `http::metrics`): two nodes in one
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
use crate::export::Exporter;
use crate::http::{self, METRICS};
use crate::index::{IndexError, Reader};
use crate::pipeline::{Pipeline, SetupError};
use crate::queue::SpoolError;
use crate::scp;
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
    Upload(#[from] AuthError),
    #[error("closing the spool: {0}")]
    Close(#[from] SpoolError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the node's task failed: {0}")]
    Task(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// A running node.
pub struct Handle {
    /// Where the DICOM listener accepts associations.
    pub scp_addr: SocketAddr,
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

/// Start a node; it stops when `shutdown` completes. Returns once both listeners are bound.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Handle, NodeError> {
    // A token that is configured but unreadable stops the start: the endpoint never opens unguarded.
    let token = if config.http.enabled { config.http.token()? } else { None };
    let tmp = config.tmp_dir();
    std::fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    // Spilled data sets of a previous run were never acknowledged: their senders still have them.
    for stale in std::fs::read_dir(&tmp).map_err(io_err(format!("reading {}", tmp.display())))?.flatten() {
        let _ = std::fs::remove_file(stale.path());
    }
    let pipeline = Arc::new(Pipeline::open(&config, &config.public_dir(), Durability::EachInstance)?);
    let swept = pipeline.sweep();
    if swept > 0 {
        tracing::info!(files = swept, "removed temp files an interrupted commit left in public/");
    }
    let node = Arc::new(scp::Node::new(
        pipeline.clone(),
        config.scp.clone(),
        &tmp,
        &config.storage.dir,
        config.storage.min_free_bytes,
    ));
    let bind = (config.scp.host.as_str(), config.scp.port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(io_err(format!("cannot listen on {}:{} (scp.host, scp.port)", bind.0, bind.1)))?;
    let scp_addr = listener.local_addr().map_err(io_err("the listener's address"))?;
    let http_listener = if config.http.enabled {
        let l = tokio::net::TcpListener::bind(config.http.listen.as_str())
            .await
            .map_err(io_err(format!("cannot listen on {} (http.listen)", config.http.listen)))?;
        Some(l)
    } else {
        None
    };
    METRICS.listener_up.set(1);
    tracing::info!(addr = %scp_addr, ae_title = %config.scp.ae_title, storage = %config.storage.dir.display(), "listening");

    let http_stop = CancellationToken::new();
    let (http_addr, http_task) = match http_listener {
        Some(l) => {
            let http_addr = l.local_addr().map_err(io_err("the operations endpoint's address"))?;
            tracing::info!(%http_addr, token = token.is_some(), "operations endpoint listening");
            let ops = Arc::new(http::Ops {
                project: config.project.name.clone(),
                site_id: config.project.site_id.clone(),
                ae_title: config.scp.ae_title.clone(),
                scp_addr,
                index: pipeline.index().clone(),
                reader: Reader::open(&config.index_path())?,
                index_path: config.index_path(),
                storage_dir: config.storage.dir.clone(),
                quarantine_dir: config.quarantine_dir(),
                min_free_bytes: config.storage.min_free_bytes,
                uploader_enabled: config.upload.enabled,
                token,
                started: chrono::Utc::now(),
            });
            (Some(http_addr), Some(tokio::spawn(http::serve(l, ops, http_stop.clone().cancelled_owned()))))
        }
        None => (None, None),
    };

    let uploads = CancellationToken::new();
    let uploader = if config.upload.enabled {
        let credentials = Arc::new(Credentials::new(&config.upload).await?);
        let u = &config.upload;
        let target = Target {
            bucket: u.bucket.clone(),
            prefix: u.prefix.clone(),
            project: config.project.name.clone(),
            multipart_threshold: u.multipart_threshold_bytes,
        };
        let uploader = Arc::new(Uploader {
            index: pipeline.index().clone(),
            public: config.public_dir(),
            target,
            credentials,
            concurrency: u.concurrency,
            delete_after_upload: u.delete_after_upload,
            reconcile_on_start: u.reconcile_on_start,
        });
        tracing::info!(bucket = %u.bucket, concurrency = u.concurrency, "uploader started");
        Some(tokio::spawn(uploader.run(uploads.clone())))
    } else {
        None
    };

    // Each DICOM destination drains the same queue on its own schedule; the stop is the uploader's.
    let exporters: Vec<JoinHandle<()>> = config
        .export
        .dicom
        .iter()
        .map(|destination| {
            let exporter = Exporter {
                index: pipeline.index().clone(),
                public: config.public_dir(),
                destination: destination.clone(),
                calling: config.scp.ae_title.clone(),
            };
            tokio::spawn(exporter.run(uploads.clone()))
        })
        .collect();

    let done = tokio::spawn(async move {
        let stopping = async {
            shutdown.await;
            // Not ready from the first moment of the drain.
            METRICS.listener_up.set(0);
        };
        scp::serve(listener, node, stopping).await;
        uploads.cancel();
        if let Some(task) = uploader {
            // Puts in flight finish; the rest stays queued for the next start.
            if tokio::time::timeout(UPLOAD_GRACE, task).await.is_err() {
                tracing::warn!("uploads still in flight after 60 s; they are queued again at the next start");
            }
        }
        for task in exporters {
            // Sends in flight finish; the rest stays queued for the next start.
            if tokio::time::timeout(UPLOAD_GRACE, task).await.is_err() {
                tracing::warn!(
                    "DICOM sends still in flight after 60 s; they are queued again at the next start"
                );
            }
        }
        // Last, so the drain can be watched; it holds an index handle, which must go before close.
        http_stop.cancel();
        if let Some(task) = http_task {
            match tokio::time::timeout(HTTP_GRACE, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "operations endpoint failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "operations endpoint task failed"),
                Err(_) => tracing::warn!("operations endpoint still answering after 5 s"),
            }
        }
        match Arc::try_unwrap(pipeline) {
            Ok(p) => p.close()?,
            // An association outlived the grace period; its index writes are committed as they go.
            Err(_) => tracing::warn!("associations still running at exit"),
        }
        tracing::info!("stopped");
        Ok(())
    });
    Ok(Handle { scp_addr, http_addr, done })
}
