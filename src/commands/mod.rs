//! The subcommands, one family per file, for the binary only: this is the edge, where errors
//! become `anyhow` and results become text. Each command takes its parsed arguments and returns
//! what the CLI prints when it is done ([`Said`]); `main.rs` only parses and dispatches.

pub mod aws;
pub mod node;
pub mod offline;
pub mod records;
pub mod retrieve;

use std::process::ExitCode;

/// What a command prints on stdout when it is done, and how the process exits.
pub struct Said {
    pub text: String,
    pub code: ExitCode,
}

impl Said {
    /// Success, saying `text`.
    pub fn ok(text: impl Into<String>) -> Said {
        Said { text: text.into(), code: ExitCode::SUCCESS }
    }

    /// `text`, exiting 1 unless `success`.
    pub fn ended(text: impl Into<String>, success: bool) -> Said {
        Said { text: text.into(), code: if success { ExitCode::SUCCESS } else { ExitCode::FAILURE } }
    }
}

/// Run `work` on a runtime of its own, for the commands that talk to the network. The runtime
/// is then let go without waiting for blocking jobs still running (a name lookup that never
/// answers, a stuck disk): what the command says comes at once, and the process exit ends them.
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let out = runtime.block_on(work);
    runtime.shutdown_background();
    out
}
