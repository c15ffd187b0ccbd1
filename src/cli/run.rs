//! The command dispatch: one function from parsed flags to an exit code, so the binary
//! only parses flags and sets up logging.

use super::{Cli, Command, admin, exit};
use crate::config::{Config, Source};

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
        Command::HashPassword => crate::cli::provider::hash_password(),
        Command::GenCert(args) => crate::cli::certs::gen_cert(args),
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
        Command::Sendmail { args } => {
            let mut all: Vec<String> = cli
                .config
                .iter()
                .flat_map(|c| ["--config".to_string(), c.display().to_string()])
                .collect();
            all.extend(args.iter().cloned());
            super::sendmail::run(&all, false).await
        }
        _ => match load(&cli) {
            Ok(c) => configured(&cli, c).await,
            Err(code) => code,
        },
    }
}

/// Runs a command that reads the configuration, once it has been read.
async fn configured(cli: &Cli, c: Config) -> i32 {
    match &cli.command {
        Command::CheckConfig => {
            let missing = crate::secrets::client_certs_without_key(&c);
            if !missing.is_empty() {
                for m in missing {
                    eprintln!("{}: {m}", source(cli));
                }
                return exit::USAGE;
            }
            let mut warnings = c.warnings();
            if let Some(p) = source(cli).path() {
                warnings.extend(c.file_warnings(p));
            }
            for w in warnings {
                println!("{}: warning: {w}", source(cli));
            }
            println!("{}: ok", source(cli));
            exit::OK
        }
        Command::Serve => match crate::serve(c, source(cli)).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!(error = %e, "mailgate cannot run");
                eprintln!("mailgate: {e}");
                exit::FAILED
            }
        },
        Command::History(args) => crate::cli::history::history(&c, args).await,
        Command::Show(args) => crate::cli::history::show(&c, args).await,
        Command::Verify(args) => crate::cli::provider::verify(&c, args).await,
        Command::Password { command } => crate::cli::provider::password(&c, command),
        Command::Send(args) => admin::send(&c, args).await,
        Command::TestEmail(args) => admin::test_email(&c, args).await,
        Command::Export { id } => admin::export(&c, id).await,
        Command::Retry(args) => admin::retry(&c, args).await,
        Command::Cancel { id } => admin::cancel(&c, id).await,
        Command::Health => match crate::cli::client::health(&c).await {
            Ok(()) => {
                println!("ok");
                exit::OK
            }
            Err(why) => {
                eprintln!("mailgate health: {why}");
                exit::FAILED
            }
        },
        Command::Queue => admin::queue(&c).await,
        Command::Pause => admin::pause_resume(&c, true).await,
        Command::Resume => admin::pause_resume(&c, false).await,
        Command::Fleet => admin::fleet(&c).await,
        Command::Alert {
            command: super::AlertCommand::Test { alert },
        } => admin::alert_test(&c, alert.as_deref()).await,
        Command::Store { command } => crate::cli::store::store(&c, command).await,
        Command::OAuth2 { command } => crate::cli::oauth2::oauth2(&c, command).await,
        Command::HashPassword
        | Command::GenCert(_)
        | Command::DefaultConfig
        | Command::Manpage { .. }
        | Command::Sendmail { .. } => unreachable!("run() answers these without a configuration"),
    }
}
