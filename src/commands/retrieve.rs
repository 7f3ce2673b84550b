//! `retrieve`: studies pulled from a PACS by C-FIND and C-MOVE into this node, a report per study.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use dicom_anon_gateway::cli::{RetrieveArgs, RetrieveSelection};
use dicom_anon_gateway::config::Config;
use dicom_anon_gateway::{observe, retrieve};

use super::{block_on, Said};

pub fn run(args: RetrieveArgs) -> anyhow::Result<Said> {
    let config = args.target.load()?;
    observe::init(&config.logging);
    let from = &args.from;
    let Some(pacs) = config.pacs.iter().find(|p| &p.name == from).cloned() else {
        let known: Vec<&str> = config.pacs.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!("--from {from:?}: no PACS of that name under pacs: (configured: {known:?})");
    };
    let request = retrieve::Request {
        pacs,
        ae_title: config.scp.ae_title.clone(),
        selection: selection(args.select)?,
        modality: args.modality,
        again: args.again,
        dry_run: args.dry_run,
        moves: usize::from(args.moves),
        timeout: std::time::Duration::from_secs(args.timeout_s),
    };
    block_on(move_and_report(config, request, args.csv))
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

/// Move (or, dry, list) the studies; the table and the summary are what it says, the CSV report
/// is written beside; exits 1 when any study failed.
async fn move_and_report(
    config: Config,
    request: retrieve::Request,
    csv: Option<PathBuf>,
) -> anyhow::Result<Said> {
    let dry_run = request.dry_run;
    let receiver = if dry_run { None } else { Some(retrieve::receiver(&config).await?) };
    if let Some(r) = &receiver {
        eprintln!("{}", r.describe());
    }
    let result = retrieve::run(request, &config.index_location()?).await;
    if let Some(r) = receiver {
        r.finish().await?;
    }
    let rows = result?;
    let mut text = retrieve::table(&rows);
    let success = !rows.iter().any(|r| r.outcome.is_failure());
    if dry_run {
        let _ = writeln!(
            text,
            "dry run: {} studies would be moved, {} not found; nothing was moved",
            rows.iter().filter(|r| r.study.is_some()).count(),
            rows.iter().filter(|r| r.outcome == retrieve::Outcome::NotFound).count()
        );
        return Ok(Said::ended(text, success));
    }
    let path = csv.unwrap_or_else(|| {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        config.private_dir().join("retrieve").join(format!("{stamp}.csv"))
    });
    if let Err(e) = retrieve::write_csv(&rows, &path) {
        // The table is the only report left: say it before the error.
        print!("{text}");
        return Err(e).with_context(|| format!("writing the report {}", path.display()));
    }
    let count = |f: &dyn Fn(&retrieve::Outcome) -> bool| rows.iter().filter(|r| f(&r.outcome)).count();
    let _ = writeln!(
        text,
        "{} studies: {} moved, {} already present, {} not found, {} failed; report (PHI) in {}",
        rows.len(),
        count(&|o| *o == retrieve::Outcome::Moved),
        count(&|o| *o == retrieve::Outcome::Skipped),
        count(&|o| *o == retrieve::Outcome::NotFound),
        count(&|o| matches!(o, retrieve::Outcome::Failed(_))),
        path.display()
    );
    Ok(Said::ended(text, success))
}
