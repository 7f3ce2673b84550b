//! What the node says about itself: logging, metrics and the recent activity the status page shows.
//! They sit below everything that counts (the barrier, the pipeline, the SCP), which the web layer
//! only renders.
//!
//! Log lines name instances by anonymized UIDs and peers by AE title and address, never by a
//! patient value.
//!
//! Peers choose some of the strings we log (AE titles, UIDs, the text of their errors). In the text
//! format a newline or an escape sequence in one of them would forge a log line or rewrite the
//! terminal, so every record is escaped on its way out: each control character but the record's
//! final newline becomes `\n`, `\r`, `\t` or `\xNN`. JSON escapes its strings itself.

pub mod activity;
pub mod metrics;

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

pub use activity::ACTIVITY;
pub use metrics::METRICS;

use crate::config::{LogFormat, LoggingConfig};

/// An error and its causes in words, each said once: `a: b: c`. Library errors (the AWS SDK's,
/// rustls') are chains whose `Debug` form is a dump of nested structs, unreadable in a log line;
/// and many of them repeat their cause's text, so a cause the text already ends with is skipped.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

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
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests, repeated commands in one process) keeps the first subscriber.
    let _ = match logging.format {
        LogFormat::Text => builder.with_ansi(ansi).with_writer(Escaped { ansi }).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).with_writer(io::stderr).try_init(),
    };
}

/// Stderr, with every text record escaped (see the module docs).
#[derive(Clone, Copy)]
struct Escaped {
    /// Colour codes are ours when on: ESC passes, every other control character is escaped.
    ansi: bool,
}

impl<'a> MakeWriter<'a> for Escaped {
    type Writer = EscapedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EscapedWriter { ansi: self.ansi }
    }
}

struct EscapedWriter {
    ansi: bool,
}

impl Write for EscapedWriter {
    /// The formatter hands over one whole record per call.
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write_all(&escape_record(record, self.ansi))?;
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Escape the control characters of one record, keeping its final newline.
fn escape_record(record: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match record.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (record, &b""[..]),
    };
    let mut out = Vec::with_capacity(record.len() + 8);
    let mut bytes = body.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x1B if ansi => out.push(b),
            0..=0x1F | 0x7F => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            // U+0080..U+009F (UTF-8 C2 80..C2 9F): C1 controls, CSI among them, which some
            // terminals obey like ESC [.
            0xC2 if bytes.peek().is_some_and(|c| (0x80..=0x9F).contains(c)) => {
                let c = bytes.next().unwrap_or_default();
                out.extend_from_slice(format!("\\u{{{c:04x}}}").as_bytes());
            }
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_peer_string_cannot_forge_a_line_or_drive_the_terminal() {
        let record = b"WARN association not established calling_ae=EVIL\nINFO forged line \x1b[2J\n";
        let out = super::escape_record(record, false);
        assert_eq!(out, b"WARN association not established calling_ae=EVIL\\nINFO forged line \\x1b[2J\n");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let csi = "AE=EVIL\u{9b}2J café\n".as_bytes();
        assert_eq!(super::escape_record(csi, true), "AE=EVIL\\u{009b}2J café\n".as_bytes());
    }
}
