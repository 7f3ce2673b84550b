//! Drains the queue: oldest first, `concurrency` puts in flight, failures retried with capped
//! exponential backoff and full jitter, never given up and never blocking the objects behind them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::credentials::{Access, Credentials};
use super::s3::{PutError, Target};
use crate::index::{Index, IndexError, Pending};
use crate::observe::METRICS;
use crate::retry::{backoff, backoff_ceiling, BACKOFF_BASE};

/// How often an idle uploader looks for new instances.
const POLL: Duration = Duration::from_millis(250);

/// The uploader's parts; `run` drives it.
pub struct Uploader {
    pub index: Index,
    /// The spool root: queue paths are relative to it.
    pub public: PathBuf,
    pub target: Target,
    pub credentials: Arc<Credentials>,
    pub concurrency: usize,
    pub delete_after_upload: bool,
    pub reconcile_on_start: bool,
}

enum Outcome {
    Uploaded { etag: Option<String>, skipped: bool },
    Failed(PutError),
}

impl Uploader {
    /// Run until `stop`; then finish the puts in flight and leave the rest queued.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        self.requeue_claims("interrupted by the last stop").await;
        let mut reconciled = !self.reconcile_on_start;
        let mut inflight: JoinSet<(Pending, Outcome)> = JoinSet::new();
        let mut auth_failures = 0u32;
        let mut last_put_warning: Option<Instant> = None;
        let mut put_failures = 0u32;
        // Claims left `uploading` because the index could not be told what became of them.
        let mut orphaned = false;
        loop {
            if stop.is_cancelled() {
                break;
            }
            if orphaned && inflight.is_empty() {
                orphaned = !self.requeue_claims("their outcome could not be recorded").await;
            }
            // The listing comes before any claim, so that nothing already there is sent again.
            if !reconciled {
                let Some(access) = self.access_or_pause(&mut auth_failures, &stop).await else { continue };
                reconciled = self.reconcile(&access).await;
                if !reconciled {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff_ceiling(2)) => continue,
                    }
                }
            }
            let room = self.concurrency.saturating_sub(inflight.len());
            let claimed = if room > 0 { self.claim(room).await } else { Vec::new() };
            if !claimed.is_empty() {
                let Some(access) = self.access_or_pause(&mut auth_failures, &stop).await else {
                    let uids = claimed.into_iter().map(|p| p.anon_sop_uid).collect();
                    if let Err(e) = self.blocking(move |i| i.unclaim(uids)).await {
                        warn!(error = %e, "cannot return claimed uploads to the queue");
                        orphaned = true;
                    }
                    continue;
                };
                for item in claimed {
                    let (this, access) = (self.clone(), access.clone());
                    inflight.spawn(async move {
                        let outcome = this.upload(&access, &item).await;
                        (item, outcome)
                    });
                }
            }
            let idle = inflight.is_empty() || (room > 0 && inflight.len() < self.concurrency);
            tokio::select! {
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    let recorded = match done {
                        Ok((item, outcome)) => self.settle(item, outcome, &mut put_failures, &mut last_put_warning).await,
                        // A task that did not finish (a bug, caught): its claim is an orphan.
                        Err(_) => false,
                    };
                    orphaned |= !recorded;
                }
                _ = tokio::time::sleep(POLL), if idle => {}
                _ = stop.cancelled() => {}
            }
        }
        while let Some(done) = inflight.join_next().await {
            if let Ok((item, outcome)) = done {
                self.settle(item, outcome, &mut put_failures, &mut last_put_warning).await;
            }
        }
        let (sign_ins, refreshes) = self.credentials.counts();
        info!(sign_ins, refreshes, "uploader stopped");
    }

    /// Credentials, or `None` after one log line and one backoff step: a wrong password or no
    /// endpoint pauses uploads while intake goes on and nothing is deleted.
    async fn access_or_pause(&self, failures: &mut u32, stop: &CancellationToken) -> Option<Access> {
        match self.credentials.access().await {
            Ok(access) => {
                METRICS.upload_paused.with_label_values(&[self.target.project.as_str()]).set(0);
                METRICS.credentials(&self.target.project, self.credentials.counts());
                if *failures > 0 {
                    info!("signed in again; uploads resume");
                }
                *failures = 0;
                Some(access)
            }
            Err(e) => {
                let wait = backoff(*failures).max(BACKOFF_BASE);
                *failures += 1;
                METRICS.credential_failures.inc();
                METRICS.upload_paused.with_label_values(&[self.target.project.as_str()]).set(1);
                METRICS.credentials(&self.target.project, self.credentials.counts());
                warn!(error = %e, retry_in_s = format_args!("{:.1}", wait.as_secs_f32()), attempt = *failures, "uploads paused: cannot get AWS credentials");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                None
            }
        }
    }

    async fn claim(&self, n: usize) -> Vec<Pending> {
        match self.blocking(move |i| i.claim(n)).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "cannot read the upload queue");
                Vec::new()
            }
        }
    }

    /// RSNA's rule on start: keys already under our prefix count as uploaded. `true` when done.
    async fn reconcile(&self, access: &Access) -> bool {
        let base = self.target.base(access.sub.as_deref());
        match self.target.list(&access.client, &base).await {
            Ok(keys) => match self.blocking(move |i| i.mark_present(keys)).await {
                Ok(n) => {
                    if n > 0 {
                        info!(instances = n, "already in the bucket: marked uploaded");
                    }
                    true
                }
                Err(e) => {
                    warn!(error = %e, "cannot record the bucket listing");
                    false
                }
            },
            Err(e) => {
                warn!(error = %e, "cannot list the bucket; will try again");
                false
            }
        }
    }

    async fn upload(&self, access: &Access, item: &Pending) -> Outcome {
        let key = match self.target.key(access.sub.as_deref(), &item.path) {
            Ok(key) => key,
            Err(e) => return Outcome::Failed(e),
        };
        let file = self.public.join(&item.path);
        // Only an object tried before can already be there (a put whose answer was lost).
        if item.attempts > 0 {
            match self
                .target
                .already_there(&access.client, &key, &file, item.size, item.digest.as_deref())
                .await
            {
                Ok(Some(etag)) => return Outcome::Uploaded { etag, skipped: true },
                Ok(None) => {}
                Err(e) => return Outcome::Failed(e),
            }
        }
        match self.target.put(&access.client, &key, &file, item.size, item.digest.as_deref()).await {
            Ok(etag) => Outcome::Uploaded { etag, skipped: false },
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Record what became of an upload. `false` when the index could not be told: the row is
    /// left `uploading`, for [`Uploader::requeue_claims`] to queue again.
    async fn settle(
        &self,
        item: Pending,
        outcome: Outcome,
        failures: &mut u32,
        last_warning: &mut Option<Instant>,
    ) -> bool {
        match outcome {
            Outcome::Uploaded { etag, skipped } => {
                *failures = 0;
                METRICS.uploads.with_label_values(&[if skipped { "skipped" } else { "uploaded" }]).inc();
                if !skipped {
                    METRICS.upload_bytes.inc_by(item.size);
                }
                let claimed = item.clone();
                match self.blocking(move |i| i.mark_uploaded(&claimed, etag)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Its file is the new version's now: kept, and uploaded in its turn.
                        info!(sop = %item.anon_sop_uid, "re-sent while it was being uploaded; the new version is queued");
                        return true;
                    }
                    Err(e) => {
                        warn!(sop = %item.anon_sop_uid, error = %e, "uploaded, but cannot record it; it will be checked again");
                        return false;
                    }
                }
                debug!(sop = %item.anon_sop_uid, size = item.size, skipped, "uploaded");
                if self.delete_after_upload {
                    // Only after the upload is recorded: a crash before this leaves a file, never a gap.
                    if let Err(e) = tokio::fs::remove_file(self.public.join(&item.path)).await {
                        warn!(sop = %item.anon_sop_uid, error = %e, "cannot delete the uploaded file");
                    }
                }
                true
            }
            Outcome::Failed(e) => {
                METRICS.uploads.with_label_values(&["failed"]).inc();
                if matches!(e, PutError::Auth(_)) {
                    self.credentials.invalidate().await;
                }
                *failures += 1;
                let wait = backoff(item.attempts);
                let step = backoff_ceiling(*failures);
                if last_warning.is_none_or(|t| t.elapsed() >= step) {
                    warn!(sop = %item.anon_sop_uid, attempt = item.attempts + 1, retry_in_s = format_args!("{:.1}", wait.as_secs_f32()), error = %e, "upload failed; will retry");
                    *last_warning = Some(Instant::now());
                } else {
                    debug!(sop = %item.anon_sop_uid, error = %e, "upload failed");
                }
                let next = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                let (claimed, error) = (item.clone(), e.to_string());
                match self.blocking(move |i| i.mark_failed(&claimed, &error, next)).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(sop = %item.anon_sop_uid, error = %e, "cannot record a failed upload");
                        false
                    }
                }
            }
        }
    }

    /// Queue again every claim still `uploading`, counted as an attempt so that each asks the
    /// bucket first. Only while nothing is in flight: at start (the last stop interrupted them),
    /// and after the index could not be told what became of some (`why` says which). `true`
    /// when done.
    async fn requeue_claims(&self, why: &'static str) -> bool {
        match self.blocking(|i| i.requeue_interrupted()).await {
            Ok(n) => {
                if n > 0 {
                    info!(instances = n, why, "uploads queued again");
                }
                true
            }
            Err(e) => {
                warn!(error = %e, why, "cannot queue uploads again");
                false
            }
        }
    }

    /// Index calls block on the writer thread: run them off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || f(&index)).await.unwrap_or(Err(IndexError::Closed))
    }
}
