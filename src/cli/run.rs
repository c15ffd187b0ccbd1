//! The command dispatch: one function from parsed flags to an exit code, so the binary
//! only parses flags and sets up logging.

use super::{Cli, Command, admin, exit};
use crate::config::{Config, Source};

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

fn source(cli: &Cli) -> Source {
    Source::locate(cli.config.as_deref())
}

fn load(cli: &Cli) -> Result<Config, i32> {
    Config::load_from(&source(cli)).map_err(|e| {
        eprintln!("{e}");
        exit::USAGE
    })
}

/// Runs the command of `cli`; returns the process's exit code.
pub async fn run(cli: Cli) -> i32 {
    match &cli.command {
        Command::CheckConfig => match load(&cli) {
            Ok(c) => {
                let mut warnings = c.warnings();
                if let Some(p) = source(&cli).path() {
                    warnings.extend(c.file_warnings(p));
                }
                for w in warnings {
                    println!("{}: warning: {w}", source(&cli));
                }
                println!("{}: ok", source(&cli));
                exit::OK
            }
            Err(code) => code,
        },
        Command::Serve => match load(&cli) {
            Ok(config) => match crate::serve(config, source(&cli)).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    tracing::error!(error = %e, "mailgate cannot run");
                    eprintln!("mailgate: {e}");
                    exit::FAILED
                }
            },
            Err(code) => code,
        },
        Command::History(args) => match load(&cli) {
            Ok(c) => crate::cli::history::history(&c, args).await,
            Err(code) => code,
        },
        Command::Show(args) => match load(&cli) {
            Ok(c) => crate::cli::history::show(&c, args).await,
            Err(code) => code,
        },
        Command::Verify(args) => match load(&cli) {
            Ok(c) => crate::cli::provider::verify(&c, args).await,
            Err(code) => code,
        },
        Command::HashPassword => crate::cli::provider::hash_password(),
        Command::GenCert(args) => crate::cli::certs::gen_cert(args),
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
        Command::Cancel { id } => {
            with_config(&cli, |c| async move { admin::cancel(&c, id).await }).await
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
        Command::DefaultConfig => {
            print!("{}", crate::config::BUILT_IN);
            exit::OK
        }
        Command::Manpage { section } => {
            if section == "5" {
                print!("{}", super::man::MAILGATE_TOML_5);
            } else {
                print!("{}", super::man::mailgate_8());
            }
            exit::OK
        }
        Command::Fleet => with_config(&cli, |c| async move { admin::fleet(&c).await }).await,
        Command::Alert {
            command: super::AlertCommand::Test { alert },
        } => {
            let alert = alert.clone();
            with_config(&cli, |c| async move {
                admin::alert_test(&c, alert.as_deref()).await
            })
            .await
        }
        Command::Sendmail { args } => {
            let mut all: Vec<String> = cli
                .config
                .iter()
                .flat_map(|c| ["--config".to_string(), c.display().to_string()])
                .collect();
            all.extend(args.iter().cloned());
            super::sendmail::run(&all, false).await
        }
        Command::Store { command } => {
            with_config(&cli, |c| async move {
                crate::cli::store::store(&c, command).await
            })
            .await
        }
        Command::OAuth2 { command } => {
            with_config(&cli, |c| async move {
                crate::cli::oauth2::oauth2(&c, command).await
            })
            .await
        }
        Command::Password { command } => match load(&cli) {
            Ok(c) => crate::cli::provider::password(&c, command),
            Err(code) => code,
        },
    }
}
