//! The node's Prometheus metrics, in one registry of our own.
//!
//! One node runs per process, and the counting points sit deep in the SCP, the durability barrier
//! and the uploader; a process-wide registry lets each of them count with one line instead of a
//! handle threaded through every constructor. Labels come from closed sets of our own words
//! (outcomes, quarantine reasons, DIMSE statuses, queue states): never a UID, an AE title or any
//! other value a peer chose, so cardinality stays bounded and no PHI can reach a scrape.

use std::sync::{LazyLock, Mutex};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::queue::Reason;

/// Every metric name starts with this.
const NS: &str = "dicom_anon";

/// Latency buckets from a millisecond to ten seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Why an association request was turned down (label `reason`).
pub const REJECT_REASONS: &[&str] = &[
    "called_ae",
    "calling_ae",
    "no_context",
    "busy",
    "max_pdu",
    "protocol",
    "timeout",
    "tls_subject",
    "tls_only",
    "other",
];
/// How an established association ended (label `end`).
pub const ENDS: &[&str] = &["released", "aborted_by_peer", "closed", "aborted"];
/// Why a connection closed before it asked for an association (label `reason`).
pub const DROPS: &[&str] = &["no_request", "not_a_request", "evicted"];
/// Statuses of instances refused without quarantine (label `status`).
pub const REFUSALS: &[&str] = &["0x0110", "0x0122", "0x0124", "0xA700", "0xC000"];
/// How instances arrive (label `transport`).
pub const TRANSPORTS: &[&str] = &["dimse", "stow-rs"];
/// Upload outcomes (label `outcome`): `skipped` was already in the bucket.
pub const UPLOAD_OUTCOMES: &[&str] = &["uploaded", "skipped", "failed"];
/// Upload queue states (label `state`), as the index names them.
pub const QUEUE_STATES: &[&str] = &["queued", "uploading", "uploaded", "failed"];
/// Every quarantine reason, so each has a series from the start.
const REASONS: &[Reason] = &[
    Reason::NotDicom,
    Reason::Unreadable,
    Reason::MissingAttributes,
    Reason::InvalidText,
    Reason::IntegrityConflict,
    Reason::CannotEncode,
    Reason::ProcessingError,
    Reason::Unverifiable,
    Reason::LookupMiss,
];

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
    pub associations_active: IntGauge,
    pub associations_accepted: IntCounter,
    pub associations_rejected: IntCounterVec,
    pub associations_ended: IntCounterVec,
    pub connections_dropped: IntCounterVec,
    /// By transport: `dimse` or `stow-rs`.
    pub instances_received: IntCounterVec,
    pub instances_stored: IntCounterVec,
    pub instances_quarantined: IntCounterVec,
    pub instances_refused: IntCounterVec,
    pub received_bytes: IntCounter,
    pub stored_bytes: IntCounter,
    pub ack_latency: Histogram,
    pub flushes: IntCounter,
    pub flush_failures: IntCounter,
    pub flush_latency: Histogram,
    /// From an instance's arrival at the barrier to its flush's end: a flush's own duration, plus
    /// the wait for the one running (it may have started before the instance's writes).
    pub flush_wait: Histogram,
    /// Audit rows that could not be written (a full disk, a failing index): the trail has a gap.
    pub audit_rows_dropped: IntCounter,
    /// Images whose pixels were read for burned-in text, by outcome.
    pub pixel_reads: IntCounterVec,
    pub pixel_reads_in_progress: IntGauge,
    /// STOW-RS requests being served now (at most `dicomweb`'s share of the HTTP connections).
    pub stow_requests_in_progress: IntGauge,
    pub pixel_read_seconds: Histogram,
    pub uploads: IntCounterVec,
    pub upload_bytes: IntCounter,
    /// DICOM destinations (`export.dicom[].name`, no PHI): sent, already held, failed.
    pub exports: IntCounterVec,
    /// Read at scrape time, per project: each destination's queue by state, and its oldest
    /// waiting instance.
    pub export_queue: IntGaugeVec,
    pub export_oldest_queued_age: GaugeVec,
    pub export_unreachable: IntGaugeVec,
    /// 1 when `upload.enabled`: without it the upload queue's gauges wait for no one.
    pub upload_enabled: IntGaugeVec,
    pub credential_failures: IntCounter,
    pub sign_ins: IntCounter,
    pub credential_refreshes: IntCounter,
    /// The credentials' own totals when last seen, to count by difference.
    credentials_seen: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    pub upload_paused: IntGaugeVec,
    pub listener_up: IntGauge,
    // Read at scrape time from each project's index and disk, labelled `project`.
    pub upload_queue: IntGaugeVec,
    pub upload_oldest_queued_age: GaugeVec,
    pub storage_free_bytes: IntGaugeVec,
    pub storage_min_free_bytes: IntGaugeVec,
    pub index_size_bytes: IntGaugeVec,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NS);
        // Registration fails only on a duplicate or malformed name: the names below are fixed.
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("a valid metric definition");
                registry.register(Box::new(m.clone())).expect("a metric name registered once");
                m
            }};
        }
        let counter = |name: &str, help: &str| IntCounter::with_opts(opts(name, help));
        let gauge = |name: &str, help: &str| IntGauge::with_opts(opts(name, help));
        let per_project = |name: &str, help: &str| IntGaugeVec::new(opts(name, help), &["project"]);
        let counter_vec =
            |name: &str, help: &str, label: &str| IntCounterVec::new(opts(name, help), &[label]);
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help).namespace(NS).buckets(LATENCY_BUCKETS.to_vec()),
            )
        };
        let m = Metrics {
            associations_active: reg!(gauge(
                "associations_active",
                "Associations established and not yet ended."
            )),
            associations_accepted: reg!(counter("associations_accepted_total", "Associations established.")),
            associations_rejected: reg!(counter_vec(
                "associations_rejected_total",
                "Association requests turned down, by reason.",
                "reason"
            )),
            associations_ended: reg!(counter_vec(
                "associations_ended_total",
                "Established associations that ended, by how.",
                "end"
            )),
            connections_dropped: reg!(counter_vec(
                "connections_dropped_total",
                "Connections closed before an association request, by reason.",
                "reason"
            )),
            instances_received: reg!(counter_vec(
                "instances_received_total",
                "Instances whose data set arrived (a C-STORE's, a STOW-RS part), by transport.",
                "transport"
            )),
            instances_stored: reg!(counter_vec(
                "instances_stored_total",
                "Instances anonymized, durable and acknowledged (0x0000, or listed stored in a STOW-RS response), by transport.",
                "transport"
            )),
            instances_quarantined: reg!(IntCounterVec::new(
                opts("instances_quarantined_total", "Instances quarantined, by reason and transport."),
                &["reason", "transport"]
            )),
            instances_refused: reg!(IntCounterVec::new(
                opts(
                    "instances_refused_total",
                    "Instances refused without being kept, by response status (the C-STORE status, or a STOW-RS part's failure reason) and transport."
                ),
                &["status", "transport"]
            )),
            received_bytes: reg!(counter(
                "received_bytes_total",
                "Data set bytes received in C-STORE requests."
            )),
            stored_bytes: reg!(counter("stored_bytes_total", "Bytes of anonymized instances stored.")),
            ack_latency: reg!(histogram(
                "ack_latency_seconds",
                "From a C-STORE data set complete to its response sent."
            )),
            flushes: reg!(counter(
                "durability_flushes_total",
                "Group-commit flushes (syncfs) that succeeded."
            )),
            flush_failures: reg!(counter(
                "durability_flush_failures_total",
                "Group-commit flushes that failed."
            )),
            flush_latency: reg!(histogram("durability_flush_seconds", "Duration of one group-commit flush.")),
            flush_wait: reg!(histogram(
                "durability_wait_seconds",
                "Time an instance waits at the group-commit barrier until a flush that covers it has ended."
            )),
            audit_rows_dropped: reg!(counter(
                "audit_rows_dropped_total",
                "C-STORE outcomes whose audit row could not be written (the audit trail has a gap)."
            )),
            pixel_reads: reg!(counter_vec(
                "pixel_reads_total",
                "Images read for burned-in text, by outcome: clean, masked, held, kept_unread.",
                "outcome"
            )),
            stow_requests_in_progress: reg!(gauge(
                "stow_requests_in_progress",
                "STOW-RS requests being served now; past the share of the HTTP listener, a request gets 503."
            )),
            pixel_reads_in_progress: reg!(gauge(
                "pixel_reads_in_progress",
                "Images being read for burned-in text now (each holds its sender's acknowledgement)."
            )),
            pixel_read_seconds: reg!(histogram(
                "pixel_read_seconds",
                "Time to read (and mask) one image's pixels, OCR included."
            )),
            uploads: reg!(counter_vec("uploads_total", "Upload attempts, by outcome.", "outcome")),
            upload_bytes: reg!(counter("upload_bytes_total", "Bytes uploaded.")),
            exports: reg!(IntCounterVec::new(
                opts("exports_total", "Instances sent to export destinations (C-STORE, STOW-RS), by destination and outcome."),
                &["destination", "outcome"]
            )),
            export_queue: reg!(IntGaugeVec::new(
                opts("export_queue_instances", "Instances in each export destination's queue, by state."),
                &["project", "destination", "state"]
            )),
            export_oldest_queued_age: reg!(GaugeVec::new(
                opts(
                    "export_oldest_queued_age_seconds",
                    "Age of the oldest instance a DICOM destination has not yet received; 0 when none waits."
                ),
                &["project", "destination"]
            )),
            export_unreachable: reg!(IntGaugeVec::new(
                opts(
                    "export_unreachable",
                    "1 while a DICOM destination does not associate and its sends are paused."
                ),
                &["project", "destination"]
            )),
            upload_enabled: reg!(per_project(
                "upload_enabled",
                "1 when upload.enabled is true; with 0 the upload queue gauges wait for no uploader."
            )),
            credential_failures: reg!(counter(
                "upload_credential_failures_total",
                "Failures to sign in or to get AWS credentials."
            )),
            sign_ins: reg!(counter("upload_sign_ins_total", "Cognito sign-ins.")),
            credential_refreshes: reg!(counter(
                "upload_credential_refreshes_total",
                "Cognito token and AWS credential refreshes."
            )),
            credentials_seen: Mutex::default(),
            upload_paused: reg!(per_project(
                "upload_paused",
                "1 while a project's uploads wait for credentials."
            )),
            listener_up: reg!(gauge("listener_up", "1 while the DICOM listener accepts associations.")),
            upload_queue: reg!(IntGaugeVec::new(
                opts("upload_queue_instances", "Instances in the upload queue, by state."),
                &["project", "state"]
            )),
            upload_oldest_queued_age: reg!(GaugeVec::new(
                opts(
                    "upload_oldest_queued_age_seconds",
                    "Age of the oldest instance not yet uploaded; 0 when none waits."
                ),
                &["project"]
            )),
            storage_free_bytes: reg!(per_project("storage_free_bytes", "Free bytes on the storage disk.")),
            storage_min_free_bytes: reg!(per_project(
                "storage_min_free_bytes",
                "storage.min_free_bytes: below it instances are refused and the node is not ready."
            )),
            index_size_bytes: reg!(per_project(
                "index_size_bytes",
                "Size of the PHI index files (database and WAL)."
            )),
            registry,
        };
        // Known label values start at zero, so a rate() sees the first increment.
        for r in REJECT_REASONS {
            m.associations_rejected.with_label_values(&[r]);
        }
        for e in ENDS {
            m.associations_ended.with_label_values(&[e]);
        }
        for d in DROPS {
            m.connections_dropped.with_label_values(&[d]);
        }
        for t in TRANSPORTS {
            for r in REASONS {
                m.instances_quarantined.with_label_values(&[r.dir_name(), t]);
            }
            for s in REFUSALS {
                m.instances_refused.with_label_values(&[s, t]);
            }
        }
        for t in TRANSPORTS {
            m.instances_received.with_label_values(&[t]);
            m.instances_stored.with_label_values(&[t]);
        }
        for o in UPLOAD_OUTCOMES {
            m.uploads.with_label_values(&[o]);
        }
        m
    }

    /// Everything in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a metric family without metrics, which we never build.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn quarantined(&self, reason: Reason, transport: &str) {
        self.instances_quarantined.with_label_values(&[reason.dir_name(), transport]).inc();
    }

    /// One group-commit flush, and whether it succeeded.
    pub fn flushed(&self, took: std::time::Duration, ok: bool) {
        self.flush_latency.observe(took.as_secs_f64());
        if ok {
            self.flushes.inc();
        } else {
            self.flush_failures.inc();
        }
    }

    /// `project`'s credentials' totals of sign-ins and refreshes (they count; we mirror, summed
    /// over the projects).
    pub fn credentials(&self, project: &str, (sign_ins, refreshes): (u64, u64)) {
        let mut all = self.credentials_seen.lock().unwrap_or_else(|p| p.into_inner());
        let seen = all.entry(project.to_string()).or_default();
        self.sign_ins.inc_by(sign_ins.saturating_sub(seen.0));
        self.credential_refreshes.inc_by(refreshes.saturating_sub(seen.1));
        *seen = (sign_ins.max(seen.0), refreshes.max(seen.1));
    }

    /// `status` is one of [`REFUSALS`] or another DIMSE status, formatted `0xNNNN`.
    pub fn refused(&self, status: &str, transport: &str) {
        self.instances_refused.with_label_values(&[status, transport]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_totals_are_counted_by_difference() {
        let m = Metrics::new();
        m.credentials("A", (1, 0));
        m.credentials("A", (1, 3));
        m.credentials("A", (2, 3));
        assert_eq!((m.sign_ins.get(), m.credential_refreshes.get()), (2, 3));
        // Another project's totals add to them, not compete with them.
        m.credentials("B", (1, 1));
        assert_eq!((m.sign_ins.get(), m.credential_refreshes.get()), (3, 4));
    }

    #[test]
    fn the_exposition_names_every_family_and_its_known_labels_at_zero() {
        let text = METRICS.encode();
        for line in [
            "# TYPE dicom_anon_instances_stored_total counter",
            "# TYPE dicom_anon_ack_latency_seconds histogram",
            "dicom_anon_instances_quarantined_total{reason=\"DICOM_Read_Error\",transport=\"dimse\"}",
            "dicom_anon_instances_quarantined_total{reason=\"DICOM_Read_Error\",transport=\"stow-rs\"}",
            "dicom_anon_associations_rejected_total{reason=\"busy\"}",
            "dicom_anon_uploads_total{outcome=\"uploaded\"}",
            "dicom_anon_instances_refused_total{status=\"0xA700\",transport=\"dimse\"}",
            "dicom_anon_instances_refused_total{status=\"0x0110\",transport=\"stow-rs\"}",
            "dicom_anon_instances_stored_total{transport=\"stow-rs\"} 0",
            "dicom_anon_audit_rows_dropped_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
