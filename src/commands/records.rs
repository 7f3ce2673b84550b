//! `index`, `audit` and `queue`: what the index holds, read beside a running node (the reads say
//! so) or, for the writes, only with the storage directory's lock.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use dicom_anon_gateway::cli::{IndexCommand, MigrateTo, ProjectArgs, QueueCommand};
use dicom_anon_gateway::config::Config;
use dicom_anon_gateway::file_modes;
use dicom_anon_gateway::index::{self, Index};
use dicom_anon_gateway::storage_lock::StorageLock;

use super::Said;

pub fn index(command: IndexCommand) -> anyhow::Result<Said> {
    match command {
        IndexCommand::Export { target, out, mapping: true } => export_mapping(&target, &out),
        IndexCommand::Export { target, out, mapping: false } => export_studies(&target, &out),
        IndexCommand::Backup { target, out } => backup(&target, &out),
        IndexCommand::Migrate { target, to: MigrateTo::Postgres } => migrate(&target),
    }
}

/// The project's SQLite index copied into its (empty) PostgreSQL schema.
fn migrate(target: &ProjectArgs) -> anyhow::Result<Said> {
    let config = target.load()?;
    // The node must be stopped: it writes the SQLite index.
    let _lock = StorageLock::acquire(&config.storage.dir)?;
    let owner = config.project.index_owner()?;
    let sqlite = config.index_path();
    let location = config.index_location()?;
    // Checked before anything is opened: a SQLite target would be made in the storage directory.
    if !matches!(location, index::Location::Postgres { .. }) {
        return Err(index::MigrateError::NotPostgres.into());
    }
    if sqlite.exists() {
        // Brings an older file to the current columns, and checks it is this project's.
        Index::open(&sqlite, &owner).with_context(|| format!("opening {}", sqlite.display()))?.close();
    }
    let index = Index::open_at(&location, &owner).with_context(|| format!("opening {location}"))?;
    let bar = indicatif::ProgressBar::new_spinner().with_message("copying the index");
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let said = bar.clone();
    let copied = index.import_sqlite(&sqlite, move |table, _| {
        said.set_message(format!("copying the index: {table} done"));
    });
    bar.finish_and_clear();
    let copied = copied.with_context(|| format!("copying {} into {location}", sqlite.display()))?;
    index.close();
    let mut text = String::new();
    for (table, n) in &copied {
        let _ = writeln!(text, "{table}: {n} rows");
    }
    let _ = writeln!(
        text,
        "copied {} into {location}; the node now runs on it (index.backend: postgres), and the file can be kept as a backup",
        sqlite.display()
    );
    Ok(Said::ok(text))
}

/// `uid_mapping.csv` and `patient_id_mapping.csv` into the directory `out`.
fn export_mapping(target: &ProjectArgs, out: &Path) -> anyhow::Result<Said> {
    let config = target.load()?;
    let location = config.index_location()?;
    file_modes::missing_dirs(out).with_context(|| format!("creating {}", out.display()))?;
    say_if_live(&config);
    let (uids, patients) =
        index::export_mapping(&location, out).with_context(|| format!("exporting {location}"))?;
    Ok(Said::ok(format!(
        "wrote {uids} UIDs to {} and {patients} PatientIDs to {} (PHI: keep them where the index is kept)\n",
        out.join(index::UID_MAPPING).display(),
        out.join(index::PATIENT_ID_MAPPING).display()
    )))
}

/// RSNA's twelve columns, one row per study.
fn export_studies(target: &ProjectArgs, out: &Path) -> anyhow::Result<Said> {
    let config = target.load()?;
    let location = config.index_location()?;
    say_if_live(&config);
    let rows = index::export_csv(&location, out).with_context(|| format!("exporting {location}"))?;
    Ok(Said::ok(format!("wrote {rows} studies to {}\n", out.display())))
}

fn backup(target: &ProjectArgs, out: &Path) -> anyhow::Result<Said> {
    let config = target.load()?;
    let location = config.index_location()?;
    say_if_live(&config);
    let size = index::backup(&location, out).with_context(|| format!("backing up {location}"))?;
    Ok(Said::ok(format!(
        "wrote a copy of {location} to {} ({size} bytes; PHI: keep it where the index is kept)\n",
        out.display()
    )))
}

pub fn audit_export(target: &ProjectArgs, out: &Path, since: Option<&str>) -> anyhow::Result<Said> {
    let config = target.load()?;
    let since = since.map(audit_since).transpose()?;
    let location = config.index_location()?;
    say_if_live(&config);
    let rows = index::export_audit(&location, out, since.as_deref())
        .with_context(|| format!("exporting the audit trail of {location}"))?;
    Ok(Said::ok(format!("wrote {rows} audit rows to {}\n", out.display())))
}

pub fn queue(command: QueueCommand) -> anyhow::Result<Said> {
    match command {
        QueueCommand::Status { target } => queue_status(&target.load()?),
        QueueCommand::Retry { target } => queue_retry(&target.load()?),
        QueueCommand::Adopt { target, node } => queue_adopt(&target.load()?, &node),
    }
}

/// A dead node's instances become this node's (its files were moved here).
fn queue_adopt(config: &Config, from: &str) -> anyhow::Result<Said> {
    let location = config.index_location()?;
    let index::Location::Postgres { node, .. } = &location else {
        anyhow::bail!(
            "queue adopt is for nodes sharing a PostgreSQL index; this project's index is {location}"
        );
    };
    anyhow::ensure!(node != from, "--node {from} is this node's own id");
    let index = Index::open_at(&location, &config.project.index_owner()?)?;
    let n = index.adopt(from)?;
    index.close();
    Ok(Said::ok(format!(
        "{n} instances of node {from} are now this node's ({node}): they upload and export from here once the node runs\n"
    )))
}

/// Failed uploads and DICOM sends queued again.
fn queue_retry(config: &Config) -> anyhow::Result<Said> {
    // The node's uploader and exporters claim from these rows: one writer at a time.
    let _lock = StorageLock::acquire(&config.storage.dir)?;
    let index = Index::open_at(&config.index_location()?, &config.project.index_owner()?)?;
    let uploads = format!("{} failed instances queued again\n", index.retry_failed()?);
    // That is done whatever happens next: said before the next step's error, if it fails.
    let sends = index.retry_failed_deliveries().inspect_err(|_| print!("{uploads}"))?;
    index.close();
    Ok(Said::ok(format!("{uploads}{sends} failed DICOM sends queued again\n")))
}

/// Counts per state, the oldest waiting, the failed with their errors; then each destination.
fn queue_status(config: &Config) -> anyhow::Result<Said> {
    let location = config.index_location()?;
    if let index::Location::Sqlite(path) = &location {
        if !path.exists() {
            return Ok(Said::ok(format!("nothing received yet (no index at {})\n", path.display())));
        }
    }
    // Read-only, beside a running node: a writer here would race the node's commits.
    say_if_live(config);
    let reader = index::Reader::open_at(&location)?;
    let status = reader.queue_status()?;
    let destinations = reader.destination_status()?;
    let mut text = String::new();
    if !config.upload.enabled {
        text.push_str("S3 upload: disabled (upload.enabled is false); the states below are its queue\n");
    }
    for (state, n) in &status.counts {
        let _ = writeln!(text, "{state:>10}: {n}");
    }
    if let Some(oldest) = &status.oldest_queued {
        let _ = writeln!(text, "oldest waiting since {oldest}");
    }
    for f in &status.failed {
        let next = f.next_try.as_deref().unwrap_or("now");
        let _ = writeln!(
            text,
            "failed {} (attempts {}, next try {next}): {}",
            f.anon_sop_uid, f.attempts, f.last_error
        );
    }
    destinations_text(&mut text, config, &destinations);
    Ok(Said::ok(text))
}

/// Each configured DICOM destination's queue, and any the index knows that the config no longer lists.
fn destinations_text(text: &mut String, config: &Config, status: &[index::DestinationStatus]) {
    for d in dicom_anon_gateway::export::status::destinations(
        &config.scp.ae_title,
        &config.export.destinations(),
        status,
    ) {
        let counts: Vec<String> =
            d.counts.iter().filter(|(_, n)| *n > 0).map(|(state, n)| format!("{state} {n}")).collect();
        let counts = if counts.is_empty() { "nothing queued yet".into() } else { counts.join(", ") };
        let peer = d.peer.as_deref().unwrap_or("no longer in the config");
        let _ = writeln!(text, "destination {} ({peer}): {counts}", d.name);
        if let Some(oldest) = &d.oldest_waiting {
            let _ = writeln!(text, "  oldest waiting since {oldest}");
        }
        let row = status.iter().find(|s| s.destination == d.name);
        for (uid, attempts, error, next) in row.map(|r| r.failed.as_slice()).unwrap_or_default() {
            let next = next.as_deref().unwrap_or("now");
            let _ = writeln!(text, "  failed {uid} (attempts {attempts}, next try {next}): {error}");
        }
    }
}

/// A read-only command beside a node that writes the same index reads it as it is now: say so
/// on stderr, so that a count that moves between two runs surprises no one.
fn say_if_live(config: &Config) {
    if let Some(pid) = StorageLock::holder(&config.storage.dir) {
        eprintln!(
            "note: reading the live index of {} (process {pid} writes it now)",
            config.storage.dir.display()
        );
    }
}

/// `--since` as the audit trail stores times (UTC, `YYYY-MM-DDTHH:MM:SS.mmmZ`), which compare as text.
fn audit_since(since: &str) -> anyhow::Result<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(since) {
        return Ok(t.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
    }
    match chrono::NaiveDate::parse_from_str(since, "%Y-%m-%d") {
        Ok(d) => Ok(format!("{}T00:00:00.000Z", d.format("%Y-%m-%d"))),
        Err(_) => anyhow::bail!(
            "--since {since:?}: expected a date (2026-01-31) or an RFC 3339 time (2026-01-31T08:00:00Z)"
        ),
    }
}
