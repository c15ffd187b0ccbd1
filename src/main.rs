//! The mailgate binary: parse flags, set up logging, load the configuration and hand over
//! to the library.
#![forbid(unsafe_code)]

use clap::Parser;
use mailgate::cli::{Cli, Command, LogFormat, admin, exit};
use mailgate::config::Config;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Installs the SIGTERM/SIGINT handlers now (before the listeners are up, so a signal
/// that arrives during start-up is not lost) and returns the future that waits for one.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Loads the configuration and runs an admin command with it.
async fn with_config<F, Fut>(cli: &Cli, f: F) -> i32
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    match load(cli) {
        Ok(c) => f(c).await,
        Err(code) => code,
    }
}

fn load(cli: &Cli) -> Result<Config, i32> {
    Config::load(&cli.config).map_err(|e| {
        eprintln!("{e}");
        exit::USAGE
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::CheckConfig => match load(&cli) {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                exit::OK
            }
            Err(code) => code,
        },
        Command::Serve => {
            init_logging(cli.log_format);
            let stop = shutdown_signal()?;
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            match load(&cli) {
                Ok(config) => match mailgate::Daemon::start(config).await {
                    Ok(daemon) => {
                        daemon.set_config_path(cli.config.clone());
                        tokio::pin!(stop);
                        loop {
                            tokio::select! {
                                _ = &mut stop => break,
                                _ = hup.recv() => match daemon.reload().await {
                                    Ok(r) if r.needs_restart.is_empty() => {}
                                    Ok(r) => tracing::warn!(settings = ?r.needs_restart, "reloaded; these settings take effect after a restart"),
                                    Err(e) => tracing::error!(errors = %e, "reload refused; the running configuration stays"),
                                },
                            }
                        }
                        tracing::info!("shutting down");
                        daemon.shutdown().await;
                        exit::OK
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "mailgate cannot run");
                        eprintln!("mailgate: {e}");
                        exit::FAILED
                    }
                },
                Err(code) => code,
            }
        }
        Command::History(args) => match load(&cli) {
            Ok(c) => mailgate::cli::history::history(&c, args).await,
            Err(code) => code,
        },
        Command::Show(args) => match load(&cli) {
            Ok(c) => mailgate::cli::history::show(&c, args).await,
            Err(code) => code,
        },
        Command::Verify(args) => match load(&cli) {
            Ok(c) => mailgate::cli::provider::verify(&c, args).await,
            Err(code) => code,
        },
        Command::HashPassword => mailgate::cli::provider::hash_password(),
        Command::GenCert(args) => mailgate::cli::certs::gen_cert(args),
        Command::Send(args) => {
            with_config(&cli, |c| async move { admin::send(&c, args).await }).await
        }
        Command::TestEmail(args) => {
            with_config(&cli, |c| async move { admin::test_email(&c, args).await }).await
        }
        Command::Export { id } => {
            with_config(&cli, |c| async move { admin::export(&c, id).await }).await
        }
        Command::Retry(args) => {
            with_config(&cli, |c| async move { admin::retry(&c, args).await }).await
        }
        Command::Queue => with_config(&cli, |c| async move { admin::queue(&c).await }).await,
        Command::Pause => {
            with_config(&cli, |c| async move { admin::pause_resume(&c, true).await }).await
        }
        Command::Resume => {
            with_config(
                &cli,
                |c| async move { admin::pause_resume(&c, false).await },
            )
            .await
        }
        Command::Store { command } => {
            with_config(&cli, |c| async move {
                mailgate::cli::store::store(&c, command).await
            })
            .await
        }
        Command::Password { command } => match load(&cli) {
            Ok(c) => mailgate::cli::provider::password(&c, command),
            Err(code) => code,
        },
    };
    std::process::exit(code);
}
