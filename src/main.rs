//! The mailgate binary: parse flags, set up logging, hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;
use mailgate::cli::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into files and pipes, never with NO_COLOR.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() {
    // A panic is a bug: one line that says so, never a backtrace where a person reads.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, location = %at, "internal error (a bug in mailgate); it was contained");
        if !tracing::dispatcher::has_been_set() {
            eprintln!("mailgate: internal error{at}: {what}");
        }
    }));
    // Run as `sendmail` or `mailq` (a link to the binary): sendmail's flags, not ours.
    let args: Vec<String> = std::env::args().collect();
    let prog = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if prog == "sendmail" || prog == "mailq" {
        std::process::exit(mailgate::cli::sendmail::run(&args[1..], prog == "mailq").await);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve) {
        init_logging(cli.log_format);
    }
    std::process::exit(mailgate::cli::run(cli).await);
}
