//! `mailgate verify` and `mailgate password`: the provider commands. Both work without a
//! running daemon: `verify` signs in to the upstream itself, `password` writes the
//! encrypted secrets file beside the store (the daemon reads it at every connection).

use clap::{Args, Subcommand};

use super::exit;
use crate::config::{Config, ProviderKind};
use crate::provider::diagnosis::Code;
use crate::provider::smtp::SmtpProvider;
use crate::secrets::SecretStore;

/// Flags of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this provider.
    #[arg(long)]
    pub provider: Option<String>,
}

/// `password` subcommands.
#[derive(Debug, Subcommand)]
pub enum PasswordCommand {
    /// Store a provider's password, encrypted (the secret is read from stdin).
    Set {
        /// The provider.
        #[arg(long)]
        provider: String,
    },
    /// Drop a provider's stored password.
    Clear {
        /// The provider.
        #[arg(long)]
        provider: String,
    },
}

/// Runs `verify`; returns the exit code.
pub async fn verify(config: &Config, args: &VerifyArgs) -> i32 {
    let providers: Vec<_> = config
        .provider
        .iter()
        .filter(|p| args.provider.as_ref().is_none_or(|n| p.name.get_ref() == n))
        .collect();
    if providers.is_empty() {
        eprintln!(
            "{}",
            config.no_such_provider(args.provider.as_deref().unwrap_or(""))
        );
        return exit::USAGE;
    }
    let secrets = SecretStore::beside(&config.store.path);
    let mut ok = true;
    for p in providers {
        let name = p.name.get_ref();
        let result = match p.kind {
            ProviderKind::Smtp => SmtpProvider::new(p, &config.smtp.hostname, secrets.clone())
                .verify()
                .await
                .map_err(|f| (f.code, f.reply)),
            ProviderKind::Eml => {
                let dir = p.directory.clone().unwrap_or_else(|| "outbox".into());
                check_dir(&dir)
                    .map(|()| format!("{} is writable", dir.display()))
                    .map_err(|e| {
                        (
                            Code::ProviderConfig,
                            format!("{} is not writable: {e}", dir.display()),
                        )
                    })
            }
            ProviderKind::Graph => {
                // Graph has no sign-in without sending: prove the app registration by
                // getting a token (`test-email` proves the mailbox).
                let source = crate::provider::oauth2::TokenSource::new(p, secrets.clone());
                source
                    .token()
                    .await
                    .map(|_| "OAuth2 token acquired for Microsoft Graph (use test-email to prove the mailbox)".to_string())
                    .map_err(|e| (e.code, e.reply))
            }
        };
        match result {
            Ok(text) => println!("{name}: ok: {text}"),
            Err((code, reply)) => {
                ok = false;
                let (why, fix) = code.texts();
                println!("{name}: FAILED: {reply}");
                println!("  diagnosis: {}", code.as_str());
                println!("  why:       {why}");
                println!("  fix:       {fix}");
            }
        }
    }
    if ok { exit::OK } else { exit::FAILED }
}

fn check_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".mailgate-verify");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(probe)
}

/// Runs `hash-password`: the argon2id PHC string of the password on stdin.
pub fn hash_password() -> i32 {
    let password = match super::read_secret_stdin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return exit::FAILED;
        }
    };
    match crate::smtp::auth::hash_password(password.expose()) {
        Ok(phc) => {
            println!("{phc}");
            exit::OK
        }
        Err(e) => {
            eprintln!("cannot hash: {e}");
            exit::FAILED
        }
    }
}

/// Runs `password set|clear`; returns the exit code.
pub fn password(config: &Config, cmd: &PasswordCommand) -> i32 {
    let name = match cmd {
        PasswordCommand::Set { provider } | PasswordCommand::Clear { provider } => provider,
    };
    let Some(p) = config.provider(name) else {
        eprintln!("{}", config.no_such_provider(name));
        return exit::USAGE;
    };
    let store = SecretStore::beside(&config.store.path);
    match cmd {
        PasswordCommand::Set { .. } => {
            let secret = match super::read_secret_stdin() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}: nothing stored");
                    return exit::FAILED;
                }
            };
            match store.set(name, &secret) {
                Ok(()) => {
                    println!(
                        "stored the password of provider {name:?} (encrypted with this installation's key)"
                    );
                    if p.password.is_some() || p.password_file.is_some() || p.password_env.is_some()
                    {
                        eprintln!(
                            "note: provider {name:?} also sets password, password_file or password_env, which take precedence"
                        );
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("{e}");
                    exit::FAILED
                }
            }
        }
        PasswordCommand::Clear { .. } => match store.clear(name) {
            Ok(true) => {
                println!("removed the stored password of provider {name:?}");
                exit::OK
            }
            Ok(false) => {
                println!("provider {name:?} had no stored password");
                exit::OK
            }
            Err(e) => {
                eprintln!("{e}");
                exit::FAILED
            }
        },
    }
}
