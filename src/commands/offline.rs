//! `anonymize` and `quarantine list|retry`: files through the same pipeline as the node, offline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use dicom_anon_gateway::cli::ProjectArgs;
use dicom_anon_gateway::durability::Durability;
use dicom_anon_gateway::pipeline::Pipeline;
use dicom_anon_gateway::queue::Quarantine;
use dicom_anon_gateway::{observe, offline};

use super::Said;

/// Anonymize files and folders into `out`; exits 1 when any was quarantined.
pub fn anonymize(target: &ProjectArgs, out: &Path, inputs: &[PathBuf]) -> anyhow::Result<Said> {
    // A mistyped path is the user's error, not an instance to quarantine.
    for input in inputs {
        std::fs::metadata(input).with_context(|| format!("{}", input.display()))?;
    }
    let config = target.load()?;
    observe::init(&config.logging);
    let pipeline = Pipeline::open(&config, out, Durability::AtEnd)?;
    let started = std::time::Instant::now();
    let summary = offline::run(&pipeline, inputs);
    pipeline.close()?;
    let secs = started.elapsed().as_secs_f64();
    let mut text = format!(
        "anonymized {} files ({:.1} MB) in {secs:.2} s ({:.0} files/s); quarantined {}; skipped {} non-DICOM, {} DICOMDIR\n",
        summary.anonymized,
        summary.bytes as f64 / 1e6,
        summary.anonymized as f64 / secs.max(1e-9),
        summary.failures(),
        summary.skipped_non_dicom,
        summary.skipped_dicomdir
    );
    for (reason, failures) in &summary.failed {
        let _ = writeln!(text, "  {reason}: {}", failures.len());
        for f in failures {
            let kept = f.quarantined.as_ref().map(|q| format!(" -> {}", q.display())).unwrap_or_default();
            let _ = writeln!(text, "    {}: {}{kept}", f.input.display(), f.detail);
        }
    }
    Ok(Said::ended(text, summary.failures() == 0))
}

/// One line per held instance, oldest first.
pub fn quarantine_list(target: &ProjectArgs, reason: Option<&str>) -> anyhow::Result<Said> {
    let config = target.load()?;
    let held = Quarantine::new(&config.quarantine_dir()).list(reason)?;
    let mut text = String::new();
    for h in &held {
        let _ =
            writeln!(text, "{}  {}  {}  {}\n    {}", h.time, h.reason, h.source, h.detail, h.file.display());
    }
    let _ = writeln!(text, "{} held", held.len());
    Ok(Said::ok(text))
}

/// Run held instances through the pipeline again; exits 1 when this machine failed any.
pub fn quarantine_retry(target: &ProjectArgs, reason: Option<&str>) -> anyhow::Result<Said> {
    let config = target.load()?;
    observe::init(&config.logging);
    let pipeline = Pipeline::open(&config, &config.public_dir(), Durability::AtEnd)?;
    let quarantine = Quarantine::new(&config.quarantine_dir());
    let done = offline::retry(&pipeline, &quarantine, reason)?;
    pipeline.close()?;
    let mut text = format!(
        "stored {}; held again {}; not tried (this machine failed) {}\n",
        done.stored,
        done.held.len(),
        done.failed.len()
    );
    for (reason, detail) in &done.held {
        let _ = writeln!(text, "  {reason}: {detail}");
    }
    for detail in &done.failed {
        let _ = writeln!(text, "  not stored: {detail}");
    }
    if done.orphans > 0 {
        let _ = writeln!(
            text,
            "not retried: {} Orphan_After_Crash (anonymized already; have the sender send them again)",
            done.orphans
        );
    }
    Ok(Said::ended(text, done.failed.is_empty()))
}
