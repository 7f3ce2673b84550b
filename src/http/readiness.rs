//! `/readyz`: whether the node can take instances now. Its checks block (a write through the index
//! writer, `statvfs`, creating a file), so they run on the blocking pool, never on the runtime's
//! workers; and one probe runs at a time: a probe that arrives while another runs waits for it and
//! answers with its result, so a burst of probes costs one set of checks.
//!
//! A check that does not finish in time is left running, not started again: the next probe waits
//! on that same job. However long the index or the disk is stuck, each check holds at most one
//! blocking thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::task::JoinHandle;

use super::{Ops, ProjectOps};
use crate::observe::METRICS;

/// How long a probe waits for the index writer before calling it stuck.
const INDEX_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a probe waits for the storage disk (free space, creating a file).
const DISK_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The status code and body of one probe, shared by every request that waited for it.
pub type Answer = (StatusCode, serde_json::Value);

/// The one probe in flight, the last answer, and checks still running from earlier probes.
#[derive(Default)]
pub struct Readiness {
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last answer and when it was complete.
    last: Option<(Instant, Arc<Answer>)>,
    /// Each project's checks, in the order of [`Ops::projects`].
    projects: Vec<ProjectChecks>,
}

#[derive(Default)]
struct ProjectChecks {
    index: Check<Result<(), String>>,
    disk: Check<Disk>,
}

/// Free space and whether a file can be created in `public/`.
struct Disk {
    free: Result<u64, String>,
    spool: Result<(), String>,
}

impl Readiness {
    /// The answer of a probe that completed after this call began: a new one, or the one that
    /// was running when it was asked.
    pub async fn answer(&self, ops: &Arc<Ops>) -> Arc<Answer> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some((done, answer)) = &state.last {
            if *done >= asked {
                return answer.clone();
            }
        }
        let answer = Arc::new(probe(ops, &mut state).await);
        state.last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// One project's answer: its index writer, its storage disk, its `public/`.
struct ProjectAnswer {
    index: Result<(), String>,
    spool: Result<(), String>,
    free: Result<u64, String>,
    disk_ok: bool,
}

/// One project's checks, its index and its disk at once: a stuck one costs its own timeout only.
async fn probe_project(p: &ProjectOps, checks: &mut ProjectChecks) -> ProjectAnswer {
    let ProjectChecks { index: index_check, disk: disk_check } = checks;
    let index = async {
        let index = p.index.clone();
        // A write through the index writer, rolled into its next batch: proves the writer runs and
        // the database accepts writes.
        let write = move || {
            index
                .call(|c| {
                    c.execute(
                        "UPDATE meta SET value = value WHERE key = 'site_id'",
                        crate::index::db::args![],
                    )?;
                    Ok(())
                })
                .map_err(|e| e.to_string())
        };
        index_check.run(write, INDEX_PROBE_TIMEOUT, "the index writer").await.and_then(|r| r)
    };
    let disk = async {
        let (storage, public) = (p.storage_dir.clone(), p.public_dir.clone());
        let look = move || Disk {
            free: fs4::available_space(&storage)
                .map_err(|e| format!("cannot read the free space of {}: {e}", storage.display())),
            spool: spool_writable(&public),
        };
        disk_check.run(look, DISK_PROBE_TIMEOUT, "the storage disk").await
    };
    let (index, disk) = tokio::join!(index, disk);
    let (free, spool) = match disk {
        Ok(Disk { free, spool }) => (free, spool),
        Err(stuck) => (Err(stuck.clone()), Err(stuck)),
    };
    let disk_ok = matches!(free, Ok(f) if f >= p.min_free_bytes);
    ProjectAnswer { index, spool, free, disk_ok }
}

async fn probe(ops: &Arc<Ops>, state: &mut State) -> Answer {
    let listener = METRICS.listener_up.get() == 1;
    state.projects.resize_with(ops.projects.len(), ProjectChecks::default);
    // Every project at once: a stuck disk costs its timeout once, not once per project.
    let answers = futures_util::future::join_all(
        ops.projects.iter().zip(&mut state.projects).map(|(p, checks)| probe_project(p, checks)),
    )
    .await;
    // A failed flush is final: the node acknowledges nothing until it is restarted.
    let flushed = crate::durability::failure().map(ToString::to_string);
    let all = |ok: fn(&ProjectAnswer) -> bool| answers.iter().all(ok);
    let (index_ok, spool_ok, disk_ok) =
        (all(|a| a.index.is_ok()), all(|a| a.spool.is_ok()), all(|a| a.disk_ok));
    let ready = listener && index_ok && spool_ok && disk_ok && flushed.is_none();
    // Errors name their project when there are several: each has its own index and disk.
    let errors = |pick: fn(&ProjectAnswer) -> Option<&String>| {
        let named = ops.projects.len() > 1;
        let list: Vec<String> = ops
            .projects
            .iter()
            .zip(&answers)
            .filter_map(|(p, a)| {
                pick(a).map(|e| if named { format!("project {}: {e}", p.name) } else { e.clone() })
            })
            .collect();
        (!list.is_empty()).then(|| list.join("; "))
    };
    // The disk with the least room over its minimum speaks for all.
    let (tightest, tight) = ops
        .projects
        .iter()
        .zip(&answers)
        .min_by_key(|(p, a)| {
            a.free.as_ref().map_or(i128::MIN, |f| i128::from(*f) - i128::from(p.min_free_bytes))
        })
        .expect("a node has at least one project");
    let projects: Vec<serde_json::Value> = ops
        .projects
        .iter()
        .zip(&answers)
        .map(|(p, a)| {
            serde_json::json!({
                "name": p.name,
                "index": { "ok": a.index.is_ok(), "error": a.index.as_ref().err() },
                "spool": { "ok": a.spool.is_ok(), "error": a.spool.as_ref().err() },
                "disk": {
                    "ok": a.disk_ok,
                    "free_bytes": a.free.as_ref().ok(),
                    "min_free_bytes": p.min_free_bytes,
                    "error": a.free.as_ref().err(),
                },
                "uploader": super::uploader_state(p),
            })
        })
        .collect();
    let body = serde_json::json!({
        "ready": ready,
        "checks": {
            "listener": { "ok": listener },
            "flush": { "ok": flushed.is_none(), "error": flushed },
            "index": { "ok": index_ok, "error": errors(|a| a.index.as_ref().err()) },
            "spool": { "ok": spool_ok, "error": errors(|a| a.spool.as_ref().err()) },
            "disk": {
                "ok": disk_ok,
                "free_bytes": tight.free.as_ref().ok(),
                "min_free_bytes": tightest.min_free_bytes,
                "error": errors(|a| a.free.as_ref().err()),
            },
        },
        "projects": projects,
        // Uploads do not decide readiness: intake goes on while they wait.
        "uploader": super::uploader_state(&ops.projects[0]),
        // Nor does OCR: images whose senders wait for their pixels to be read, for a probe to alert on.
        "pixel_reads_in_progress": METRICS.pixel_reads_in_progress.get(),
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// A blocking check, and the job of an earlier probe that has not finished yet.
struct Check<T> {
    running: Option<(Instant, JoinHandle<T>)>,
}

impl<T> Default for Check<T> {
    fn default() -> Self {
        Check { running: None }
    }
}

impl<T: Send + 'static> Check<T> {
    /// Wait up to `limit` for the job still running, or for `job` started now. A job that does not
    /// finish in time is kept for the next probe; `Err` names `what` and how long it has waited.
    async fn run(
        &mut self,
        job: impl FnOnce() -> T + Send + 'static,
        limit: Duration,
        what: &str,
    ) -> Result<T, String> {
        let (since, handle) =
            self.running.get_or_insert_with(|| (Instant::now(), tokio::task::spawn_blocking(job)));
        let since = *since;
        match tokio::time::timeout(limit, handle).await {
            Ok(done) => {
                self.running = None;
                done.map_err(|e| format!("the check of {what} did not run: {e}"))
            }
            Err(_) => Err(format!("no answer from {what} for {} s", since.elapsed().as_secs())),
        }
    }
}

/// Whether a file can be created in `public/` now: a read-only remount, wrong permissions or a
/// full inode table fail every C-STORE while free space looks fine. The probe is named like a
/// spool temp file, so one a crash leaves behind is swept at the next start; each probe has a name
/// of its own, so that two at once never remove each other's file.
fn spool_writable(dir: &Path) -> Result<(), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let probe = dir.join(format!(".readyz-{}-{n}.part", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    std::fs::remove_file(&probe).map_err(|e| format!("cannot remove the probe file {}: {e}", probe.display()))
}
