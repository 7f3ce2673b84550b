//! Destinations of the queue besides S3: one [`Exporter`] per `export.dicom` entry (C-STORE) and
//! per `export.dicomweb` entry (STOW-RS), each with its own state per instance in the index
//! (`deliveries`).
//!
//! The shape is the uploader's: claim, send, record, back off. Instances are claimed oldest
//! first, split over `associations` associations, and each gets its own outcome. A destination
//! that cannot be reached pauses only itself (capped exponential backoff with full jitter); an
//! instance it refuses is retried on its own schedule and never holds back the ones behind it.
//! After a restart, whatever was being sent is queued again: a destination may see an instance
//! twice only when a crash or a lost response came between its store and our record of it, and
//! `check_existing` (a C-FIND per series before sending, RSNA's rule) closes even that gap for
//! destinations that answer C-FIND.

pub mod status;
mod store;
pub mod stow;

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ExportDestination;
use crate::index::{Delivery, DeliveryRecord, Index, IndexError};
use crate::observe::METRICS;
use crate::retry::backoff;
use crate::scu::ClientTls;

pub use store::{contexts, Sent};

/// Instances sent on one association before it is released and the queue looked at again.
const PER_ASSOCIATION: usize = 200;
/// How often an idle exporter looks for new instances.
const POLL: Duration = Duration::from_millis(250);

/// One destination's worker.
pub struct Exporter {
    pub index: Index,
    /// The spool root: queue paths are relative to it.
    pub public: PathBuf,
    /// Our AE title: the calling AE title of C-STOREs, and whose destination this is.
    pub calling: String,
    pub target: Target,
}

/// Where and how a destination is sent to.
pub enum Target {
    Dicom {
        destination: Box<ExportDestination>,
        /// DICOM TLS to the destination (`destination.tls`, its files read at start).
        tls: Option<ClientTls>,
    },
    Stow(stow::Client),
}

impl Exporter {
    fn name(&self) -> &str {
        match &self.target {
            Target::Dicom { destination, .. } => &destination.peer.name,
            Target::Stow(client) => &client.name,
        }
    }

    /// Where it is, as logs show it (no credentials).
    fn label(&self) -> String {
        match &self.target {
            Target::Dicom { destination, .. } => destination.peer.label(),
            Target::Stow(client) => client.label.clone(),
        }
    }

    /// How many instances one round claims: a batch for every lane.
    fn round_size(&self) -> usize {
        match &self.target {
            Target::Dicom { destination, .. } => PER_ASSOCIATION * destination.associations,
            Target::Stow(client) => client.batch * client.requests,
        }
    }

    /// Run until `stop`; then finish the associations in flight and leave the rest queued.
    pub async fn run(self, stop: CancellationToken) {
        let name = self.name().to_string();
        let peer = self.label();
        self.requeue_sending("interrupted by the last stop").await;
        info!(destination = %name, %peer, "exporter started");
        // Association failures in a row: the destination's own backoff.
        let mut down = 0u32;
        let (mut sent, mut failed) = (0u64, 0u64);
        while !stop.is_cancelled() {
            if let Err(e) = self.blocking(|i, d| i.enqueue_deliveries(&d)).await {
                warn!(destination = %name, error = %e, "cannot queue new instances");
            }
            let limit = self.round_size();
            let claimed = match self.blocking(move |i, d| i.claim_deliveries(&d, limit)).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(destination = %name, error = %e, "cannot read the export queue");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => continue,
                }
            }
            let outcome = self.send(claimed).await;
            sent += outcome.sent;
            failed += outcome.failed;
            match outcome.association_error {
                Some(e) => {
                    let wait = backoff(down).max(Duration::from_millis(500));
                    down = down.saturating_add(1);
                    warn!(destination = %name, %peer, error = %e, attempt = down, retry_in_s = format_args!("{:.1}", wait.as_secs_f32()), "destination unreachable; sends paused");
                    status::set_unreachable(&self.calling, &name, Some(e.as_str()));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => {
                    if down > 0 {
                        info!(destination = %name, "destination reachable again; sends resume");
                        status::set_unreachable(&self.calling, &name, None);
                    }
                    down = 0;
                }
            }
        }
        info!(destination = %name, sent, failed, "exporter stopped");
    }

    /// Send a claim over its lanes at once (associations, or STOW-RS requests of a batch each)
    /// and record every outcome.
    async fn send(&self, claimed: Vec<Delivery>) -> Round {
        let mut set = JoinSet::new();
        match &self.target {
            Target::Dicom { destination, tls } => {
                let lanes = destination.associations.min(claimed.len()).max(1);
                let mut chunks: Vec<Vec<Delivery>> = (0..lanes).map(|_| Vec::new()).collect();
                for (i, item) in claimed.into_iter().enumerate() {
                    chunks[i % lanes].push(item);
                }
                for chunk in chunks {
                    let peer = destination.peer.clone();
                    let (calling, public) = (self.calling.clone(), self.public.clone());
                    let timeout = Duration::from_secs(destination.timeout_s);
                    let check = destination.check_existing;
                    let tls = tls.clone();
                    set.spawn(async move {
                        let (outcomes, error) =
                            store::send_batch(&peer, tls.as_ref(), &calling, &public, timeout, check, chunk)
                                .await;
                        (outcomes, error.map(|e| crate::observe::error_chain(&e)))
                    });
                }
            }
            Target::Stow(client) => {
                let mut claimed = claimed.into_iter().peekable();
                while claimed.peek().is_some() {
                    let batch: Vec<Delivery> = claimed.by_ref().take(client.batch).collect();
                    let (client, public) = (client.clone(), self.public.clone());
                    set.spawn(async move { client.send_batch(&public, batch).await });
                }
            }
        }
        let mut round = Round::default();
        // Sends whose outcome the index did not take: left `sending`, queued again below.
        let mut unrecorded = false;
        while let Some(joined) = set.join_next().await {
            let Ok((outcomes, error)) = joined else {
                unrecorded = true;
                continue;
            };
            if let Some(e) = error {
                round.association_error = Some(e);
            }
            let records: Vec<DeliveryRecord> =
                outcomes.into_iter().map(|(item, sent)| self.settle(item, sent, &mut round)).collect();
            let n = records.len();
            // One transaction per association's worth of outcomes.
            if let Err(e) = self.blocking(move |i, d| i.record_deliveries(&d, records)).await {
                warn!(destination = %self.name(), instances = n, error = %e, "cannot record sends; they will be sent again");
                unrecorded = true;
            }
        }
        // Every lane is done: nothing of this destination is being sent now, so what is still
        // `sending` is an outcome lost, queued again (a failure here leaves it to the next start).
        if unrecorded {
            self.requeue_sending("their outcome could not be recorded").await;
        }
        round
    }

    /// Queue again every send of this destination still `sending`. Only while none is under way:
    /// at start (the last stop interrupted them), and after a round whose outcomes the index could
    /// not take (`why` says which); a failure here leaves them to the next start.
    async fn requeue_sending(&self, why: &'static str) {
        let name = self.name();
        match self.blocking(|i, d| i.requeue_sending(&d)).await {
            Ok(0) => {}
            Ok(n) => info!(destination = %name, instances = n, why, "sends queued again"),
            Err(e) => warn!(destination = %name, error = %e, why, "cannot queue sends again"),
        }
    }

    /// Count, log and turn an outcome into what the index records.
    fn settle(&self, item: Delivery, sent: Sent, round: &mut Round) -> DeliveryRecord {
        let (uid, generation) = (item.anon_sop_uid, item.generation);
        let name = self.name();
        match sent {
            Sent::Stored { warning } => {
                round.sent += 1;
                METRICS.exports.with_label_values(&[name, "sent"]).inc();
                if let Some(status) = warning {
                    info!(destination = %name, sop = %uid, status = format!("0x{status:04X}"), "stored with a warning");
                }
                debug!(destination = %name, sop = %uid, "sent");
                DeliveryRecord::Sent { uid, generation }
            }
            Sent::AlreadyHeld => {
                round.sent += 1;
                METRICS.exports.with_label_values(&[name, "already_held"]).inc();
                debug!(destination = %name, sop = %uid, "already at the destination; not sent");
                DeliveryRecord::Sent { uid, generation }
            }
            Sent::Failed(error) => {
                round.failed += 1;
                METRICS.exports.with_label_values(&[name, "failed"]).inc();
                let wait = backoff(item.attempts).max(Duration::from_millis(200));
                warn!(destination = %name, sop = %uid, attempt = item.attempts + 1, retry_in_s = format_args!("{:.1}", wait.as_secs_f32()), error = %error, "send failed; will retry");
                let next_try = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                DeliveryRecord::Failed { uid, generation, error, next_try }
            }
            Sent::NotTried => DeliveryRecord::NotTried(uid),
        }
    }

    /// Index calls block on the writer thread: run them off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index, String) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (index, name) = (self.index.clone(), self.name().to_string());
        tokio::task::spawn_blocking(move || f(&index, name)).await.unwrap_or(Err(IndexError::Closed))
    }
}

/// What one round of sends did.
#[derive(Default)]
struct Round {
    sent: u64,
    failed: u64,
    association_error: Option<String>,
}
