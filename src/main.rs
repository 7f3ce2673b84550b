//! Entry point: parse the command line, load the configuration, run one subcommand, and turn its
//! outcome into a message and an exit code.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use dicom_anon_gateway::cli::{
    AuditCommand, Cli, Command, IndexCommand, QuarantineCommand, QueueCommand, RetrieveSelection,
};
use dicom_anon_gateway::config::Config;
use dicom_anon_gateway::durability::Durability;
use dicom_anon_gateway::index::{Index, Owner};
use dicom_anon_gateway::pipeline::Pipeline;
use dicom_anon_gateway::queue::Quarantine;
use dicom_anon_gateway::storage_lock::StorageLock;
use dicom_anon_gateway::upload::{Credentials, SignUp};
use dicom_anon_gateway::{index, node, observe, offline, retrieve};

/// mimalloc instead of glibc's malloc, for the transparent huge pages it asks for. A received
/// instance passes through buffers of 64 KiB to 2 MiB (PDU values, the data set, the file being
/// written), copied whole at each step; over huge pages those copies miss the TLB far less, the
/// more so in a virtual machine. Where the kernel offers huge pages on request (`madvise`, a
/// common default), a 0.5 MB instance's buffers sit on them (`AnonHugePages` in
/// `/proc/PID/smaps_rollup`: 34 MB during one association). Measured with
/// `scripts/bench-ingest.sh` (1,000 x 0.5 MB CT), alternating with glibc in one session: one
/// association 708-782 instances/s against 592-686 in six of six pairs (mean 739 against 664 over
/// all runs, +11 %), eight associations better in five of six pairs (mean 1,143 against 1,021).
/// Built without huge pages, mimalloc was no faster than glibc.
///
/// The price is memory, as each 2 MiB touched counts whole: peak RSS 50 MB instead of 20 on one
/// association, about 100 instead of 32 on eight, 116-130 instead of 86 for 16 x 512 MB instances, and
/// 140-160 MB flat instead of 32-38 over 50,000 instances. `MIMALLOC_ARENA_EAGER_COMMIT=0` in the
/// environment gives that memory back (RSS 25 and 40 MB), and the huge pages with it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before anything is created: the index, quarantine, spills and exports hold PHI.
    dicom_anon_gateway::file_modes::restrict_umask();
    raise_open_files_limit();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: most of our errors already end with their cause's
/// text, which `{:#}` would repeat.
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1).map(ToString::to_string) {
        if !text.ends_with(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load_all(&config)?;
            observe::init(&config[0].logging);
            runtime()?.block_on(serve(config))
        }
        Command::Anonymize { target, out, inputs } => {
            // A mistyped path is the user's error, not an instance to quarantine.
            for input in &inputs {
                std::fs::metadata(input).with_context(|| format!("{}", input.display()))?;
            }
            let config = target.load()?;
            observe::init(&config.logging);
            let pipeline = Pipeline::open(&config, &out, Durability::AtEnd)?;
            let started = std::time::Instant::now();
            let summary = offline::run(&pipeline, &inputs);
            pipeline.close()?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "anonymized {} files ({:.1} MB) in {secs:.2} s ({:.0} files/s); quarantined {}; skipped {} non-DICOM, {} DICOMDIR",
                summary.anonymized,
                summary.bytes as f64 / 1e6,
                summary.anonymized as f64 / secs.max(1e-9),
                summary.failures(),
                summary.skipped_non_dicom,
                summary.skipped_dicomdir
            );
            for (reason, failures) in &summary.failed {
                println!("  {reason}: {}", failures.len());
                for f in failures {
                    let kept =
                        f.quarantined.as_ref().map(|q| format!(" -> {}", q.display())).unwrap_or_default();
                    println!("    {}: {}{kept}", f.input.display(), f.detail);
                }
            }
            Ok(if summary.failures() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Index { command: IndexCommand::Export { target, out, mapping: true } } => {
            let config = target.load()?;
            let path = config.index_path();
            dicom_anon_gateway::file_modes::missing_dirs(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            say_if_live(&config);
            let (uids, patients) = index::export_mapping(&path, &out)
                .with_context(|| format!("exporting {}", path.display()))?;
            println!(
                "wrote {uids} UIDs to {} and {patients} PatientIDs to {} (PHI: keep them where the index is kept)",
                out.join(index::UID_MAPPING).display(),
                out.join(index::PATIENT_ID_MAPPING).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Index { command: IndexCommand::Backup { target, out } } => {
            let config = target.load()?;
            let path = config.index_path();
            say_if_live(&config);
            let size =
                index::backup(&path, &out).with_context(|| format!("backing up {}", path.display()))?;
            println!(
                "wrote a copy of {} to {} ({size} bytes; PHI: keep it where the index is kept)",
                path.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::Export { target, out, since } } => {
            let config = target.load()?;
            let since = since.as_deref().map(audit_since).transpose()?;
            let path = config.index_path();
            say_if_live(&config);
            let rows = index::export_audit(&path, &out, since.as_deref())
                .with_context(|| format!("exporting the audit trail of {}", path.display()))?;
            println!("wrote {rows} audit rows to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Index { command: IndexCommand::Export { target, out, mapping: false } } => {
            let config = target.load()?;
            let path = config.index_path();
            say_if_live(&config);
            let rows =
                index::export_csv(&path, &out).with_context(|| format!("exporting {}", path.display()))?;
            println!("wrote {rows} studies to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::AwsSignup { target, email } => {
            let config = target.load()?;
            observe::init(&config.logging);
            runtime()?.block_on(async {
                let signup = SignUp::new(&config.upload, &target.config).await?;
                println!("{}", signup.sign_up(&email).await?);
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::AwsConfirm { target, code, resend } => {
            let config = target.load()?;
            observe::init(&config.logging);
            runtime()?.block_on(async {
                let signup = SignUp::new(&config.upload, &target.config).await?;
                let said = match (resend, code) {
                    (true, _) => signup.resend().await?,
                    (false, Some(code)) => signup.confirm(&code).await?,
                    (false, None) => anyhow::bail!("give --code CODE or --resend"),
                };
                println!("{said}");
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::AwsLogin { target } => {
            let config = target.load()?;
            observe::init(&config.logging);
            runtime()?.block_on(async {
                let credentials = Credentials::new(&config.upload).await?;
                match credentials.session().await? {
                    Some(s) => {
                        let expires = chrono::DateTime::<chrono::Utc>::from(s.expires);
                        println!(
                            "sub: {}\nidentity id: {}\ncredentials expire: {}",
                            s.sub,
                            s.identity_id,
                            expires.to_rfc3339()
                        );
                    }
                    None => {
                        println!("using the AWS SDK's default credential chain (upload.auth: default-chain)")
                    }
                }
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Quarantine { command: QuarantineCommand::List { target, reason } } => {
            let config = target.load()?;
            let quarantine = Quarantine::new(&config.quarantine_dir());
            let held = quarantine.list(reason.as_deref())?;
            for h in &held {
                println!("{}  {}  {}  {}\n    {}", h.time, h.reason, h.source, h.detail, h.file.display());
            }
            println!("{} held", held.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Quarantine { command: QuarantineCommand::Retry { target, reason } } => {
            let config = target.load()?;
            observe::init(&config.logging);
            let pipeline = Pipeline::open(&config, &config.public_dir(), Durability::AtEnd)?;
            let quarantine = Quarantine::new(&config.quarantine_dir());
            let done = offline::retry(&pipeline, &quarantine, reason.as_deref())?;
            pipeline.close()?;
            println!(
                "stored {}; held again {}; not tried (this machine failed) {}",
                done.stored,
                done.held.len(),
                done.failed.len()
            );
            for (reason, detail) in &done.held {
                println!("  {reason}: {detail}");
            }
            for detail in &done.failed {
                println!("  not stored: {detail}");
            }
            if done.orphans > 0 {
                println!(
                    "not retried: {} Orphan_After_Crash (anonymized already; have the sender send them again)",
                    done.orphans
                );
            }
            Ok(if done.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Queue { command } => {
            let (target, retry) = match command {
                QueueCommand::Status { target } => (target, false),
                QueueCommand::Retry { target } => (target, true),
            };
            let config = target.load()?;
            if retry {
                // The node's uploader and exporters claim from these rows: one writer at a time.
                let _lock = StorageLock::acquire(&config.storage.dir)?;
                let index = Index::open(&config.index_path(), &Owner::for_site(&config.project.site_id))?;
                println!("{} failed instances queued again", index.retry_failed()?);
                println!("{} failed DICOM sends queued again", index.retry_failed_deliveries()?);
                index.close();
                return Ok(ExitCode::SUCCESS);
            }
            let path = config.index_path();
            if !path.exists() {
                println!("nothing received yet (no index at {})", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            // Read-only, beside a running node: a writer here would race the node's commits.
            say_if_live(&config);
            let reader = index::Reader::open(&path)?;
            let status = reader.queue_status()?;
            let destinations = reader.destination_status()?;
            if !config.upload.enabled {
                println!("S3 upload: disabled (upload.enabled is false); the states below are its queue");
            }
            for (state, n) in &status.counts {
                println!("{state:>10}: {n}");
            }
            if let Some(oldest) = &status.oldest_queued {
                println!("oldest waiting since {oldest}");
            }
            for f in &status.failed {
                let next = f.next_try.as_deref().unwrap_or("now");
                println!(
                    "failed {} (attempts {}, next try {next}): {}",
                    f.anon_sop_uid, f.attempts, f.last_error
                );
            }
            print_destinations(&config, &destinations);
            Ok(ExitCode::SUCCESS)
        }
        Command::Retrieve { target, from, select, modality, again, dry_run, moves, csv, timeout_s } => {
            let config = target.load()?;
            observe::init(&config.logging);
            let Some(pacs) = config.pacs.iter().find(|p| p.name == from).cloned() else {
                let known: Vec<&str> = config.pacs.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!("--from {from:?}: no PACS of that name under pacs: (configured: {known:?})");
            };
            let request = retrieve::Request {
                pacs,
                ae_title: config.scp.ae_title.clone(),
                selection: selection(select)?,
                modality,
                again,
                dry_run,
                moves: usize::from(moves),
                timeout: std::time::Duration::from_secs(timeout_s),
            };
            runtime()?.block_on(run_retrieve(config, request, csv))
        }
        Command::CheckConfig { config } => {
            let projects = Config::load_all(&config)?;
            // The certificate files too, as a start would read them.
            if let Some(tls) = &projects[0].scp.tls {
                dicom_anon_gateway::scp::check_tls(tls)?;
            }
            for config in &projects {
                // Script, lookup table, pseudonyms and their secret, as a start would build them.
                dicom_anon_gateway::pipeline::Pipeline::engine(config)
                    .with_context(|| format!("project {}", config.project.name))?;
                node::export_tls(config)?;
            }
            // A YAML comment, so the output stays a config file.
            let (worst, unbounded) = projects[0].scp.worst_case_in_memory();
            println!(
                "# worst case of data sets in memory, node-wide: {worst} bytes (scp.max_in_memory_total_bytes; \
                 without it, scp.max_associations x 1.5 x scp.max_in_memory_bytes would be {unbounded})"
            );
            let many = projects.len() > 1;
            for config in &projects {
                if many {
                    println!("--- # project {} (AE title {})", config.project.name, config.scp.ae_title);
                }
                print!("{}", config.to_yaml());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(projects: Vec<Config>) -> anyhow::Result<ExitCode> {
    let ae_titles: Vec<String> = projects.iter().map(|c| c.scp.ae_title.clone()).collect();
    let node = node::start_projects(projects, shutdown_signal()).await?;
    // Scripts and tests wait for these lines to know the ports.
    println!("listening on {} as {}", node.scp_addr, ae_titles.join(","));
    match node.http_addr {
        Some(addr) => println!("http on {addr}"),
        None => println!("http disabled"),
    }
    match node.tls_addr {
        Some(addr) => println!("tls on {addr}"),
        None => println!("tls disabled"),
    }
    std::io::stdout().flush()?;
    node.stopped().await?;
    Ok(ExitCode::SUCCESS)
}

fn selection(select: RetrieveSelection) -> anyhow::Result<retrieve::Selection> {
    Ok(match select {
        RetrieveSelection { accessions: Some(file), .. } => retrieve::Selection::accessions_from(&file)?,
        RetrieveSelection { patient_id: Some(id), .. } => {
            // Said on every run: the ID is already in `ps` and the history by the time we start.
            eprintln!(
                "warning: --patient-id shows a patient identifier (PHI) in the process list and the \
                 shell history; use --patient-id-file FILE"
            );
            retrieve::Selection::PatientId(id)
        }
        RetrieveSelection { patient_id_file: Some(file), .. } => retrieve::Selection::patient_id_from(&file)?,
        RetrieveSelection { study_uid: Some(uid), .. } => retrieve::Selection::StudyUid(uid),
        RetrieveSelection { study_date: Some(range), .. } => retrieve::Selection::study_date(&range)?,
        _ => anyhow::bail!(
            "give one of --accessions, --patient-id, --patient-id-file, --study-uid, --study-date"
        ),
    })
}

async fn run_retrieve(
    config: Config,
    request: retrieve::Request,
    csv: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    let dry_run = request.dry_run;
    let receiver = if dry_run { None } else { Some(retrieve::receiver(&config).await?) };
    if let Some(r) = &receiver {
        eprintln!("{}", r.describe());
    }
    let result = retrieve::run(request, &config.index_path()).await;
    if let Some(r) = receiver {
        r.finish().await?;
    }
    let rows = result?;
    print!("{}", retrieve::table(&rows));
    let failed =
        if rows.iter().any(|r| r.outcome.is_failure()) { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    if dry_run {
        println!(
            "dry run: {} studies would be moved, {} not found; nothing was moved",
            rows.iter().filter(|r| r.study.is_some()).count(),
            rows.iter().filter(|r| r.outcome == retrieve::Outcome::NotFound).count()
        );
        return Ok(failed);
    }
    let path = csv.unwrap_or_else(|| {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        config.private_dir().join("retrieve").join(format!("{stamp}.csv"))
    });
    retrieve::write_csv(&rows, &path).with_context(|| format!("writing the report {}", path.display()))?;
    let count = |f: &dyn Fn(&retrieve::Outcome) -> bool| rows.iter().filter(|r| f(&r.outcome)).count();
    println!(
        "{} studies: {} moved, {} already present, {} not found, {} failed; report (PHI) in {}",
        rows.len(),
        count(&|o| *o == retrieve::Outcome::Moved),
        count(&|o| *o == retrieve::Outcome::Skipped),
        count(&|o| *o == retrieve::Outcome::NotFound),
        count(&|o| matches!(o, retrieve::Outcome::Failed(_))),
        path.display()
    );
    Ok(failed)
}

/// Each configured DICOM destination's queue, and any the index knows that the config no longer lists.
fn print_destinations(config: &Config, status: &[index::DestinationStatus]) {
    for d in dicom_anon_gateway::export::status::destinations(&config.export.dicom, status) {
        let counts: Vec<String> =
            d.counts.iter().filter(|(_, n)| *n > 0).map(|(state, n)| format!("{state} {n}")).collect();
        let counts = if counts.is_empty() { "nothing queued yet".into() } else { counts.join(", ") };
        let peer = d.peer.as_deref().unwrap_or("no longer in the config");
        println!("destination {} ({peer}): {counts}", d.name);
        if let Some(oldest) = &d.oldest_waiting {
            println!("  oldest waiting since {oldest}");
        }
        let row = status.iter().find(|s| s.destination == d.name);
        for (uid, attempts, error, next) in row.map(|r| r.failed.as_slice()).unwrap_or_default() {
            let next = next.as_deref().unwrap_or("now");
            println!("  failed {uid} (attempts {attempts}, next try {next}): {error}");
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

/// The soft limit on open files up to the hard one: the usual soft 1,024 is a few hundred
/// associations, spills and index files, and the HTTP port's connections come on top. Failing to
/// raise it is not fatal: the node runs within the limit it has.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A runtime for the commands that talk to AWS.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
