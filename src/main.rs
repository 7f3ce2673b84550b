//! Entry point: parse the command line, load the configuration, run one subcommand, and turn its
//! outcome into a message and an exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use dicom_anon_gateway::cli::{Cli, Command, IndexCommand};
use dicom_anon_gateway::config::Config;
use dicom_anon_gateway::durability::Durability;
use dicom_anon_gateway::pipeline::Pipeline;
use dicom_anon_gateway::{index, observe, offline};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Anonymize { config, out, inputs } => {
            let config = Config::load(&config)?;
            observe::init(&config.logging);
            let pipeline = Pipeline::open(&config, &out, Durability::AtEnd)?;
            let started = std::time::Instant::now();
            let summary = offline::run(&pipeline, &inputs);
            pipeline.close()?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "anonymized {} files ({:.1} MB) in {secs:.2} s ({:.0} files/s); quarantined {}; skipped {} non-DICOM",
                summary.anonymized,
                summary.bytes as f64 / 1e6,
                summary.anonymized as f64 / secs.max(1e-9),
                summary.failures(),
                summary.skipped_non_dicom
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
        Command::Index { command: IndexCommand::Export { config, out } } => {
            let config = Config::load(&config)?;
            let path = config.index_path();
            let rows =
                index::export_csv(&path, &out).with_context(|| format!("exporting {}", path.display()))?;
            println!("wrote {rows} studies to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            print!("{}", config.to_yaml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
