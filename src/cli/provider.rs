//! `mailgate verify` and `mailgate password`: the provider commands. Both work without a
//! running daemon: `verify` signs in to the upstream itself, `password` writes the
//! encrypted secrets file beside the store (the daemon reads it at every connection).

use clap::{Args, Subcommand};

use super::exit;
use crate::config::Config;
use crate::provider::Provider;
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
        /// Store the private key of the provider's tls_client_cert (PEM on stdin) instead.
        #[arg(long)]
        tls_client_key: bool,
    },
    /// Drop a provider's stored password.
    Clear {
        /// The provider.
        #[arg(long)]
        provider: String,
        /// Drop the stored TLS client key instead.
        #[arg(long)]
        tls_client_key: bool,
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
        let ctx = crate::provider::ProviderContext {
            hostname: config.smtp.hostname.clone(),
            secrets: secrets.clone(),
            reuse_connections: false,
        };
        let result = Provider::from_config(p, &ctx).verify().await;
        match result {
            Ok(text) => {
                println!("{name}: ok: {text}");
                close_circuit(config, name).await;
            }
            Err((code, reply)) => {
                ok = false;
                let (why, fix) = code.texts();
                println!("{name}: FAILED: {reply}");
                println!("  diagnosis: {}", code.as_str());
                println!("  why:       {}", crate::text::plain(why));
                println!("  fix:       {}", crate::text::plain(fix));
            }
        }
    }
    if ok { exit::OK } else { exit::FAILED }
}

/// Tells a running daemon that `name` proved healthy, so its circuit closes; says so
/// when it was open. Nothing to say when no daemon runs.
async fn close_circuit(config: &Config, name: &str) {
    let Ok(client) = super::client::AdminClient::new(config) else {
        return;
    };
    let path = format!(
        "/api/providers/{}/circuit/close",
        crate::status::percent_encode(name)
    );
    match client
        .post_json::<serde_json::Value>(&path, &serde_json::json!({}))
        .await
    {
        Ok(v) if v["was_open"] == true => {
            println!("{name}: its circuit was open; closed: the daemon sends to it again");
        }
        Ok(_) | Err(super::client::ClientError::NotRunning(_)) => {}
        Err(e) => eprintln!("{name}: could not tell the daemon to close its circuit: {e}"),
    }
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
    let (name, key) = match cmd {
        PasswordCommand::Set {
            provider,
            tls_client_key,
        }
        | PasswordCommand::Clear {
            provider,
            tls_client_key,
        } => (provider, *tls_client_key),
    };
    let Some(p) = config.provider(name) else {
        eprintln!("{}", config.no_such_provider(name));
        return exit::USAGE;
    };
    let store = SecretStore::beside(&config.store.path);
    // The secrets file's entry, and what it is in words.
    let (entry, what) = if key {
        (crate::secrets::tls_key_entry(name), "TLS client key")
    } else {
        (name.clone(), "password")
    };
    match cmd {
        PasswordCommand::Set { .. } => {
            let secret = match super::read_secret_stdin() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}: nothing stored");
                    return exit::FAILED;
                }
            };
            if key
                && let Err(e) = crate::provider::smtp::tls::private_key(secret.expose().as_bytes())
            {
                eprintln!("{e}: nothing stored");
                return exit::FAILED;
            }
            match store.set(&entry, &secret) {
                Ok(()) => {
                    println!(
                        "stored the {what} of provider {name:?} (encrypted with this installation's key)"
                    );
                    let elsewhere = p.smtp().is_some_and(|s| {
                        if key {
                            s.client_key_source().given() > 0
                        } else {
                            s.password_source().given() > 0
                        }
                    });
                    if elsewhere {
                        eprintln!(
                            "note: provider {name:?} also sets its {what} in the configuration, which takes precedence"
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
        PasswordCommand::Clear { .. } => match store.clear(&entry) {
            Ok(true) => {
                println!("removed the stored {what} of provider {name:?}");
                exit::OK
            }
            Ok(false) => {
                println!("provider {name:?} had no stored {what}");
                exit::OK
            }
            Err(e) => {
                eprintln!("{e}");
                exit::FAILED
            }
        },
    }
}
