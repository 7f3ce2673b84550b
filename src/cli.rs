//! Command-line definitions. Each subcommand hands its typed arguments to the module that owns the
//! work; the doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dicom-anon-gateway",
    version,
    about = "De-identifying DICOM node: receive, anonymize, queue, upload"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node's resident OCR process (started by the node itself, speaking on its standard
    /// input and output; see src/anonymize/pixels/ocr_worker.rs).
    #[command(hide = true)]
    OcrWorker {
        /// Each image's reading is killed after this long, even if the node is gone.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Run the DICOM node: receive, anonymize, queue.
    Serve {
        #[arg(long, default_value = "config/default.yaml")]
        config: PathBuf,
    },
    /// Anonymize DICOM files and folders (recursively) into <out>/<patient>/<study>/<series>/<sop>.dcm,
    /// using the node's script, pseudonyms and PHI index.
    Anonymize {
        #[command(flatten)]
        target: ProjectArgs,
        /// Output directory (the node's public layout).
        #[arg(long)]
        out: PathBuf,
        /// Files or folders to anonymize.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// The PHI index (original values and their pseudonyms).
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Sign in to AWS as the uploader would and print the Cognito sub, identity id and expiry.
    AwsLogin {
        #[command(flatten)]
        target: ProjectArgs,
    },
    /// Create the uploader's Cognito user (upload.username, with the password from
    /// upload.password_env or upload.password_file) and have Cognito send it a confirmation code.
    AwsSignup {
        #[command(flatten)]
        target: ProjectArgs,
        /// The user's e-mail address: Cognito sends the confirmation code there.
        #[arg(long)]
        email: String,
    },
    /// Confirm the user created by aws-signup with the code Cognito sent, or have it sent again.
    AwsConfirm {
        #[command(flatten)]
        target: ProjectArgs,
        /// The confirmation code from Cognito's message.
        #[arg(long, required_unless_present = "resend", conflicts_with = "resend")]
        code: Option<String>,
        /// Send a new confirmation code instead.
        #[arg(long)]
        resend: bool,
    },
    /// The audit trail: one row per instance outcome at the SCP (no PHI).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The S3 upload queue and the DICOM destinations' queues.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Instances held in quarantine (private: they are as they came, PHI and all).
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Pull studies from a PACS (`pacs:` in the config): C-FIND lists them, then each is moved
    /// with C-MOVE to this node's AE title and anonymized on arrival. Uses the node running on the
    /// config's port, or receives itself for the duration. Prints a report per study (PHI) on
    /// stdout and writes it as CSV. With several projects, they go to `--project`'s AE title.
    Retrieve {
        #[command(flatten)]
        args: RetrieveArgs,
    },
    /// Validate the configuration and print each project as it takes effect (secrets are never printed).
    CheckConfig {
        #[arg(long, default_value = "config/default.yaml")]
        config: PathBuf,
    },
}

/// What `retrieve` takes: the project, the PACS, which studies, and how.
#[derive(Debug, Args)]
pub struct RetrieveArgs {
    #[command(flatten)]
    pub target: ProjectArgs,
    /// The PACS, by its name under `pacs:`.
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub select: RetrieveSelection,
    /// Only studies with this modality (ModalitiesInStudy).
    #[arg(long)]
    pub modality: Option<String>,
    /// Move studies whose instances are all in the index already.
    #[arg(long)]
    pub again: bool,
    /// List the studies that would be moved (PHI, on stdout only); move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Studies moved at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub moves: u16,
    /// Where to write the CSV report (PHI); default: <storage.dir>/private/retrieve/<time>.csv.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Seconds to wait for the PACS to associate and for each of its responses.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
}

/// The configuration file and, when it lists several projects, the one a command acts on.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[arg(long, default_value = "config/default.yaml")]
    pub config: PathBuf,
    /// The project (its `name`) when the config lists several.
    #[arg(long)]
    pub project: Option<String>,
}

impl ProjectArgs {
    /// The chosen project's configuration.
    pub fn load(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::load_project(&self.config, self.project.as_deref())
    }
}

/// Which studies `retrieve` pulls: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RetrieveSelection {
    /// A file of accession numbers, one per line (or the first column of a CSV).
    #[arg(long)]
    pub accessions: Option<PathBuf>,
    /// A PatientID. It shows in the process list and the shell history (PHI): prefer
    /// --patient-id-file.
    #[arg(long)]
    pub patient_id: Option<String>,
    /// A file holding one PatientID (surrounding whitespace trimmed), kept off the command line.
    #[arg(long)]
    pub patient_id_file: Option<PathBuf>,
    #[arg(long)]
    pub study_uid: Option<String>,
    /// A study date or range: 20240101-20240131, 20240101-, -20240131 or 20240115.
    #[arg(long)]
    pub study_date: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// One line per held instance, oldest first: reason, when, from where, what went wrong.
    List {
        #[command(flatten)]
        target: ProjectArgs,
        /// Only this reason (its directory name, e.g. Pixel_Unverified).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run held instances through the pipeline again, after a rule, a policy or the node itself
    /// changed (an OCR engine installed, a lookup table completed). Each one stored leaves the
    /// quarantine; each one held again stays, under its new reason. Stop the node first: this
    /// writes its index.
    Retry {
        #[command(flatten)]
        target: ProjectArgs,
        /// Only this reason (its directory name, e.g. Pixel_Unverified).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts per state, the oldest waiting instance, and failed items with their last error.
    Status {
        #[command(flatten)]
        target: ProjectArgs,
    },
    /// Put failed items back in the queue for an immediate try.
    Retry {
        #[command(flatten)]
        target: ProjectArgs,
    },
    /// Take over the queues of node ID (on a shared PostgreSQL index): after its storage
    /// directory's public/ files were moved into this node's, its instances become this node's,
    /// to upload and export from here.
    Adopt {
        #[command(flatten)]
        target: ProjectArgs,
        /// The node.id of the node whose storage was moved here.
        #[arg(long = "node")]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Write the PHI lookup table as CSV (RSNA's 12 columns, one row per study); with --mapping,
    /// write uid_mapping.csv and patient_id_mapping.csv (id_old,id_new) into the directory --out.
    Export {
        #[command(flatten)]
        target: ProjectArgs,
        #[arg(long)]
        out: PathBuf,
        /// The id_old,id_new mappings of every UID and PatientID (PHI) instead of the lookup table.
        #[arg(long)]
        mapping: bool,
    },
    /// Copy this project's SQLite index (storage.dir/private/index.db) into the PostgreSQL
    /// database the configuration names (index.backend: postgres), which must be empty: mappings,
    /// patient numbering, audit and queue states. Run with the node stopped.
    Migrate {
        #[command(flatten)]
        target: ProjectArgs,
        /// The database to copy into.
        #[arg(long, value_enum)]
        to: MigrateTo,
    },
    /// Copy the whole index into one file, consistent and complete without a -wal file, while
    /// the node runs. Restore by putting it in place of index.db (with no -wal or -shm beside it).
    Backup {
        #[command(flatten)]
        target: ProjectArgs,
        /// The copy to write; must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MigrateTo {
    Postgres,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the audit trail as CSV, oldest first.
    Export {
        #[command(flatten)]
        target: ProjectArgs,
        #[arg(long)]
        out: PathBuf,
        /// Only rows from this time on: 2026-01-31, or 2026-01-31T08:00:00Z (UTC).
        #[arg(long)]
        since: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
