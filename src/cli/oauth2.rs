//! `mailgate oauth2 login|status|logout`: a delegated provider's sign-in. `login` runs
//! the provider's flow in the terminal (and the browser, for `authorization_code`), seals
//! the refresh token in the secrets file beside the store, and tells the running daemon,
//! which releases the provider's held mail. Works without a daemon too: the daemon reads
//! the sign-in when it next needs a token.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use super::client::{AdminClient, ClientError};
use super::exit;
use crate::config::{Config, OAuthFlow, ProviderConfig};
use crate::provider::oauth2::login::LoginError;
use crate::provider::oauth2::{TokenResponse, TokenSource};
use crate::secrets::SecretStore;
use crate::time::rfc3339;

/// How long a browser sign-in may take.
const BROWSER_WAIT: Duration = Duration::from_secs(600);

/// `oauth2` subcommands.
#[derive(Debug, Subcommand)]
pub enum OAuth2Command {
    /// Sign a delegated provider's mailbox in (flow device_code or authorization_code).
    Login {
        /// The provider.
        #[arg(long)]
        provider: String,
        /// authorization_code: print the URL only, do not start a browser.
        #[arg(long)]
        no_browser: bool,
        /// authorization_code: the loopback port the browser is sent back to (default:
        /// a free one); for `ssh -L PORT:127.0.0.1:PORT` from the machine with the browser.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Per OAuth2 provider: the flow, the sign-in, and the tokens' state.
    Status,
    /// Forget a provider's sign-in (its refresh token).
    Logout {
        /// The provider.
        #[arg(long)]
        provider: String,
    },
}

fn oauth_provider<'a>(config: &'a Config, name: &str) -> Result<&'a ProviderConfig, i32> {
    let Some(p) = config.provider(name) else {
        eprintln!("{}", config.no_such_provider(name));
        return Err(exit::USAGE);
    };
    let Some(o) = p.oauth2() else {
        eprintln!("provider {name:?} has no [provider.oauth2] table: nothing to sign in");
        return Err(exit::USAGE);
    };
    if !o.flow.is_delegated() {
        eprintln!(
            "provider {name:?} uses flow = \"{}\": it signs in with the app's own credentials, so there is nothing to sign in (mailgate verify --provider {name} tries them); oauth2 login is for flow = \"device_code\" and \"authorization_code\"",
            o.flow.as_str()
        );
        return Err(exit::USAGE);
    }
    Ok(p)
}

/// Tells the running daemon that a provider's sign-in changed; says what it did.
async fn tell_daemon(config: &Config, provider: &str) {
    let path = format!(
        "/api/oauth2/{}/reload",
        crate::status::percent_encode(provider)
    );
    let result = async {
        AdminClient::new(config)?
            .post_json::<serde_json::Value>(&path, &serde_json::json!({}))
            .await
    }
    .await;
    match result {
        Ok(v) => {
            let n = v["released"].as_u64().unwrap_or(0);
            if v["signed_in"].as_bool() == Some(true) {
                println!(
                    "the running daemon uses the new sign-in now; {} released",
                    crate::text::counted(n, "held message")
                );
            } else {
                println!("the running daemon forgot the sign-in");
            }
        }
        Err(ClientError::NotRunning(_)) => {
            println!(
                "mailgate is not running: it uses the sign-in when it starts (held mail goes then)"
            );
        }
        Err(e) => eprintln!(
            "could not tell the running daemon ({e}); it reads the sign-in at its next token renewal, and mailgate retry --all sends held mail now"
        ),
    }
}

/// Runs `oauth2 ...`; returns the exit code.
pub async fn oauth2(config: &Config, cmd: &OAuth2Command) -> i32 {
    let secrets = SecretStore::beside(&config.store.path);
    match cmd {
        OAuth2Command::Login {
            provider,
            no_browser,
            port,
        } => login(config, secrets, provider, *no_browser, *port).await,
        OAuth2Command::Logout { provider } => logout(config, secrets, provider).await,
        OAuth2Command::Status => status(config, &secrets).await,
    }
}

/// `oauth2 login`: the sign-in by the provider's flow, kept sealed, and the daemon told.
async fn login(
    config: &Config,
    secrets: SecretStore,
    provider: &str,
    no_browser: bool,
    port: Option<u16>,
) -> i32 {
    let p = match oauth_provider(config, provider) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let source = TokenSource::new(p, secrets);
    let tokens = match source.flow() {
        OAuthFlow::DeviceCode => device_code(&source).await,
        _ => authorization_code(&source, no_browser, port).await,
    };
    let tokens = match tokens {
        Ok(t) => t,
        Err(words) => {
            eprintln!("sign-in failed: {words}");
            return exit::FAILED;
        }
    };
    match source.keep_sign_in(&tokens) {
        Ok(sign_in) => {
            println!(
                "signed in to provider {provider:?} as {} (the refresh token is stored encrypted beside the store)",
                sign_in
                    .account
                    .as_deref()
                    .unwrap_or("(the platform did not say who)")
            );
            if let (Some(who), Some(user)) = (&sign_in.account, source.username())
                && !who.eq_ignore_ascii_case(user)
            {
                eprintln!(
                    "note: the provider's username is {user}, but {who} signed in; the upstream accepts the token only for the mailbox that signed in, so set username = \"{who}\" or sign in again as {user}"
                );
            }
            tell_daemon(config, provider).await;
            exit::OK
        }
        Err(e) => {
            eprintln!("signed in, but the sign-in could not be stored: {e}");
            exit::FAILED
        }
    }
}

/// `oauth2 logout`: the refresh token revoked where the platform allows it, and forgotten.
async fn logout(config: &Config, secrets: SecretStore, provider: &str) -> i32 {
    let p = match oauth_provider(config, provider) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let source = TokenSource::new(p, secrets);
    match source.revoke_sign_in().await {
        Ok(true) => println!("revoked the refresh token at the platform"),
        Ok(false) => {}
        Err(e) => eprintln!(
            "could not revoke the refresh token at the platform ({e}); it is forgotten here anyway"
        ),
    }
    match source.forget_sign_in() {
        Ok(true) => {
            println!(
                "forgot the sign-in of provider {provider:?}; its mail waits (oauth-not-signed-in) until the next mailgate oauth2 login --provider {provider}"
            );
            tell_daemon(config, provider).await;
            exit::OK
        }
        Ok(false) => {
            println!("provider {provider:?} had no sign-in");
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::FAILED
        }
    }
}

async fn device_code(source: &TokenSource) -> Result<TokenResponse, LoginError> {
    let auth = source.device_authorization().await?;
    println!("To sign in, open this address in a browser and enter the code.");
    println!("verification URL: {}", auth.verification_uri);
    println!("user code:        {}", auth.user_code);
    if let Some(m) = &auth.message {
        println!("{m}");
    }
    println!(
        "waiting for the sign-in (the code is valid {} minutes)...",
        auth.expires_in.div_ceil(60)
    );
    let _ = std::io::stdout().flush();
    source
        .poll_device(&auth, |interval| {
            println!(
                "the platform asked to poll more slowly: every {} seconds now",
                interval.as_secs()
            );
        })
        .await
}

async fn authorization_code(
    source: &TokenSource,
    no_browser: bool,
    port: Option<u16>,
) -> Result<TokenResponse, LoginError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
        .await
        .map_err(|e| {
            LoginError(format!(
                "cannot listen on 127.0.0.1 for the browser's redirect: {e}"
            ))
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| LoginError(e.to_string()))?
        .port();
    let req = source.authorization_request(&format!("http://127.0.0.1:{port}/"))?;
    println!("To sign in, open this address in a browser:");
    println!("{}", req.url);
    println!(
        "The browser is sent back to {} when you have signed in. On another machine, either forward the port (ssh -L {port}:127.0.0.1:{port} this-host) or paste the address the browser ends up on here.",
        req.redirect_uri
    );
    let _ = std::io::stdout().flush();
    if !no_browser
        && (std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some())
    {
        let _ = std::process::Command::new("xdg-open")
            .arg(&req.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    // An address pasted into the terminal is the redirect too.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    source
        .complete_authorization(&req, listener, rx, BROWSER_WAIT)
        .await
}

async fn status(config: &Config, secrets: &SecretStore) -> i32 {
    let daemon = match AdminClient::new(config) {
        Ok(c) => c.get_json::<serde_json::Value>("/status", &[]).await.ok(),
        Err(_) => None,
    };
    let mut any = false;
    for p in config.provider.iter().filter(|p| p.oauth2().is_some()) {
        any = true;
        let name = p.name.get_ref();
        let source = TokenSource::new(p, secrets.clone());
        let t = source.status();
        println!("{name}: flow {}", t.flow);
        match (t.signed_in, &t.sign_in) {
            (None, _) => println!("  credentials:   the app's own (nothing to sign in)"),
            (Some(_), Some(g)) => {
                println!(
                    "  signed in:     yes, as {} since {}",
                    g.account.as_deref().unwrap_or("(unknown)"),
                    rfc3339(g.signed_in_ms)
                );
                println!(
                    "  refresh token: held; last used {}, renewed {}; ages out {} if unused",
                    rfc3339(g.last_used_ms),
                    rfc3339(g.renewed_ms),
                    rfc3339(g.ages_out_ms)
                );
                if let Some(r) = &g.refused {
                    println!("  REFUSED:       {r}");
                    println!("  fix:           mailgate oauth2 login --provider {name}");
                }
            }
            (Some(_), None) => {
                println!("  signed in:     no (mail waits with oauth-not-signed-in)");
                println!("  fix:           mailgate oauth2 login --provider {name}");
            }
        }
        let running = daemon.as_ref().and_then(|d| {
            d["providers"]
                .as_array()?
                .iter()
                .find(|x| x["name"] == name.as_str())
                .map(|x| x["oauth2"].clone())
        });
        match running {
            Some(o) if o["token_valid"] == true => println!(
                "  access token:  valid until {}",
                o["token_expires_at"].as_str().unwrap_or("?")
            ),
            Some(o) => {
                println!("  access token:  none held by the daemon now");
                if let Some(e) = o["last_token_error"].as_str() {
                    println!("  last error:    {e}");
                }
            }
            None if daemon.is_some() => {
                println!("  access token:  (the running daemon has no such provider: reload it)")
            }
            None => println!("  access token:  (mailgate is not running)"),
        }
    }
    if !any {
        println!("no provider has a [provider.oauth2] table");
    }
    exit::OK
}
