//! The command line: flags (clap) and the admin commands, which talk to the running
//! daemon's admin API (the daemon owns the store).

pub mod admin;
pub mod certs;
pub mod client;
pub mod history;
pub mod man;
pub mod oauth2;
pub mod provider;
mod run;
pub mod sendmail;
pub mod store;

pub use run::run;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(name = "mailgate", version, about = "Local SMTP submission proxy")]
pub struct Cli {
    /// Configuration file (default: the first of ./config/mailgate.toml and
    /// /etc/mailgate/mailgate.toml that exists, else the built-in default).
    #[arg(long, global = true, env = "MAILGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format for `serve`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (SIGTERM/SIGINT stop it gracefully).
    Serve,
    /// Validate the configuration; print `file:line:col: message` per problem.
    CheckConfig,
    /// List history records, newest first.
    History(history::HistoryArgs),
    /// Show one record with its attempts and diagnoses.
    Show(history::ShowArgs),
    /// Compose and submit a message (the "send email" dialog).
    Send(admin::SendArgs),
    /// Send a test message, wait for its outcome, print status and diagnosis.
    TestEmail(admin::TestEmailArgs),
    /// The message as relayed, to stdout.
    Export {
        /// Message id.
        id: String,
    },
    /// Queue a failed or deferred message (or every deferred one) again, now.
    Retry(admin::RetryArgs),
    /// Stop a queued or deferred message from being sent (status `cancelled`).
    Cancel {
        /// Message id.
        id: String,
    },
    /// Exit 0 when the daemon's /healthz says ok within 5 s, else 1 with the reason: the
    /// probe for containers (Docker HEALTHCHECK, Kubernetes exec probes).
    Health,
    /// Counts per status and the oldest waiting message.
    Queue,
    /// Stop the distributor (mail is still accepted and queued).
    Pause,
    /// Start the distributor again.
    Resume,
    /// Sign in to each (or one) upstream without sending; print the outcome and diagnosis.
    Verify(provider::VerifyArgs),
    /// Make a self-signed certificate and key for the listener's STARTTLS.
    GenCert(certs::GenCertArgs),
    /// Read a password from stdin, print the PHC string for `password_hash`.
    HashPassword,
    /// The sendmail door: read one message from stdin (`-t -i -f ADDR -F NAME -bp` and
    /// sendmail's other flags); also run as `sendmail` or `mailq` through a link.
    Sendmail {
        /// sendmail's flags and the recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The nodes sharing this node's fleet store and the fleet-wide use of each provider.
    Fleet,
    /// Print the shipped configuration, commented key by key (what runs when no file is
    /// found): `mailgate default-config > /etc/mailgate/mailgate.toml`.
    DefaultConfig,
    /// Print a manual page: mailgate(8), or mailgate.toml(5) with `5`.
    Manpage {
        /// The section: 8 (the command) or 5 (the configuration file).
        #[arg(default_value = "8", value_parser = ["8", "5"])]
        section: String,
    },
    /// Check or salvage the store of a stopped daemon.
    Store {
        /// check or salvage.
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// Sign a delegated OAuth2 provider in, show the sign-ins, or forget one.
    #[command(name = "oauth2")]
    OAuth2 {
        /// login, status or logout.
        #[command(subcommand)]
        command: oauth2::OAuth2Command,
    },
    /// Alerts: send a test alert through each (or one) `[[alert]]`.
    Alert {
        /// test.
        #[command(subcommand)]
        command: AlertCommand,
    },
    /// Store or drop a provider's encrypted password.
    Password {
        /// set or clear.
        #[command(subcommand)]
        command: provider::PasswordCommand,
    },
}

/// `alert` subcommands.
#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Send a test alert through each `[[alert]]` (or the one named) now; exit 0 only
    /// when every one was delivered.
    Test {
        /// Only this alert.
        #[arg(long)]
        alert: Option<String>,
    },
}

/// Reads a secret from stdin (one trailing newline stripped); refuses an empty one.
pub fn read_secret_stdin() -> Result<crate::secrets::Secret, String> {
    use std::io::Read;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let secret = crate::secrets::strip_one_newline(&input);
    if secret.is_empty() {
        return Err("empty password".into());
    }
    Ok(crate::secrets::Secret::new(secret))
}

/// Exit codes of the CLI.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The operation failed.
    pub const FAILED: i32 = 1;
    /// Usage or configuration error.
    pub const USAGE: i32 = 2;
}
