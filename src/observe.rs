//! Logging setup. Log lines name instances by anonymized UIDs and peers by AE title and address,
//! never by a patient value.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Install the global subscriber (stderr). `RUST_LOG`, when set, overrides the configured level.
/// A plain level applies to this program only; libraries log warnings and errors, since the AWS
/// SDK's debug output includes request signing details.
pub fn init(logging: &LoggingConfig) {
    let level = logging.level.as_str();
    let directives = if level.contains('=') {
        level.to_string()
    } else {
        format!("warn,{}={level}", env!("CARGO_CRATE_NAME"))
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directives))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and shippers get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests, repeated commands in one process) keeps the first subscriber.
    let _ = match logging.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
