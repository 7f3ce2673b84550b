//! Entry point: parse the command line, load the configuration, run one subcommand, and turn its
//! outcome into a message and an exit code.

mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use commands::{aws, node, offline, records, retrieve, Said};
use dicom_anon_gateway::cli::{AuditCommand, Cli, Command, QuarantineCommand};

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
    let cli = Cli::parse();
    // Its standard output is a protocol: nothing else may be printed on it.
    if let Command::OcrWorker { timeout_s } = cli.command {
        let code = dicom_anon_gateway::anonymize::pixels::ocr_worker::serve(timeout_s);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    match run(cli) {
        Ok(Said { text, code }) => {
            print!("{text}");
            let _ = std::io::stdout().flush();
            code
        }
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Said> {
    match cli.command {
        // Served by main before anything else.
        Command::OcrWorker { .. } => unreachable!("the OCR worker is served by main"),
        Command::Serve { config } => node::serve(&config),
        Command::CheckConfig { config } => node::check_config(&config),
        Command::Anonymize { target, out, inputs } => offline::anonymize(&target, &out, &inputs),
        Command::Quarantine { command: QuarantineCommand::List { target, reason } } => {
            offline::quarantine_list(&target, reason.as_deref())
        }
        Command::Quarantine { command: QuarantineCommand::Retry { target, reason } } => {
            offline::quarantine_retry(&target, reason.as_deref())
        }
        Command::Index { command } => records::index(command),
        Command::Audit { command: AuditCommand::Export { target, out, since } } => {
            records::audit_export(&target, &out, since.as_deref())
        }
        Command::Queue { command } => records::queue(command),
        Command::Retrieve { args } => retrieve::run(args),
        Command::AwsSignup { target, email } => aws::signup(&target, &email),
        Command::AwsConfirm { target, code, resend } => aws::confirm(&target, code, resend),
        Command::AwsLogin { target } => aws::login(&target),
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
