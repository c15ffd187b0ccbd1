//! mailgate: a local SMTP submission proxy.
//!
//! The journey of one message, module by module:
//!
//! ```text
//! client --SMTP--> smtp::listener (sockets) -> smtp::session (state machine, one file per verb)
//!    admin API, maildrop ------------------------.
//!               -> pipeline::Submission ----------'-> pipeline (the one door into the store)
//!               -> message::process (parse once: identify, rewrite From, fit, trace)
//!               -> store (redb; durable BEFORE the 250)
//!               -> distributor (due index, limits, retries) -> provider (eml | smtp | graph)
//!                  each attempt ends in a typed Outcome with a diagnosis Code
//!               -> history (status, attempts, diagnosis; store::retention prunes)
//! status (axum) and cli read and steer all of it; metrics, address, time and config are
//! leaves every stage may use.
//! ```
//!
//! [`Daemon::start`] binds the listeners and starts every task; [`serve`] runs it under
//! signals; `main.rs` only parses flags and sets up logging.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod address;
pub mod alerts;
pub mod aliases;
mod background;
pub mod cli;
pub mod config;
pub mod diagnosis;
pub mod distributor;
pub mod files;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod maildrop;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod pem;
pub mod pipeline;
pub mod provider;
pub mod reload;

pub use reload::{ReloadError, ReloadReport};
pub mod secrets;
pub mod smtp;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod text;
pub mod time;
pub mod unix;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use config::Config;
use distributor::Distributor;
pub use pipeline::{Pipeline, SubmitError};
use store::space::DiskSpace;
use store::{Store, StoreError};

/// Errors that stop the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is unusable at run time.
    #[error("configuration: {0}")]
    Config(String),
}

/// A running daemon: its bound addresses and the handles to stop it.
#[derive(Debug)]
pub struct Daemon {
    /// Bound SMTP listener addresses (port 0 resolved).
    pub smtp_addrs: Vec<SocketAddr>,
    /// Bound status listener address.
    pub status_addr: SocketAddr,
    /// The accepted-mail pipeline.
    pub pipeline: Arc<Pipeline>,
    /// The distributor.
    pub distributor: Arc<Distributor>,
    config_path: Arc<RwLock<Option<std::path::PathBuf>>>,
    listeners_up: Arc<std::sync::atomic::AtomicBool>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Opens the store, binds every listener and starts all tasks.
    pub async fn start(config: Config) -> Result<Daemon, Error> {
        raise_open_files(config.smtp.max_connections);
        // The store, the fleet client and what the last run left beside the store are
        // read off the async runtime (files, fsyncs).
        let opened = tokio::task::spawn_blocking(move || Opened::open(config))
            .await
            .map_err(|e| Error::Config(format!("opening the store: {e}")))??;
        let Opened {
            live,
            pipeline,
            distributor,
            alerts,
            fleet,
            metrics,
        } = opened;
        let config = live.get();
        let space: Arc<dyn store::space::SpaceCheck> =
            Arc::new(DiskSpace::new(config.store.path.clone(), live.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let (listeners, status_listener, status_addr) = bind(&config).await?;
        let ctx = smtp_context(&config, &pipeline, &live, &space, &metrics)?;
        let mut smtp_addrs = Vec::new();
        for l in listeners {
            let addr = l.local_addr().map_err(|source| Error::Bind {
                addr: config.smtp.listen_addrs()[0],
                source,
            })?;
            smtp_addrs.push(addr);
            tracing::info!(addr = %addr, "smtp listening");
            tasks.push(tokio::spawn(smtp::listener::serve(
                l,
                ctx.clone(),
                shutdown_rx.clone(),
                config.smtp.shutdown_timeout.0,
            )));
        }
        // The admin token exists before the status listener says it listens.
        let token =
            status::state::ensure_token(&config).map_err(|e| Error::Config(e.to_string()))?;
        tracing::info!(addr = %status_addr, tls = config.status.tls_cert.is_some(), "status listening");
        for w in config.warnings() {
            tracing::warn!(warning = %w, "configuration");
        }
        let config_path = Arc::new(RwLock::new(None));
        let listeners_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let status_state = status::state::AppState {
            pipeline: pipeline.clone(),
            distributor: distributor.clone(),
            started: Instant::now(),
            token,
            peer_http: status::fleet_view::peer_client(&config),
            config_path: config_path.clone(),
            listeners_up: listeners_up.clone(),
            space: space.clone(),
            shutdown: shutdown_rx.clone(),
            alerts: alerts.clone(),
        };
        tasks.push(tokio::spawn(
            alerts.clone().run(status_state.core(), shutdown_rx.clone()),
        ));
        tasks.push(status_task(
            &config,
            status_listener,
            status_state,
            &shutdown_rx,
        )?);
        tasks.extend(background_tasks(
            &config,
            &pipeline,
            &distributor,
            fleet,
            &alerts,
            &shutdown_rx,
        ));
        tasks.push(tokio::spawn(
            distributor
                .clone()
                .run(shutdown_rx, config.smtp.shutdown_timeout.0),
        ));
        Ok(Daemon {
            smtp_addrs,
            status_addr,
            pipeline,
            distributor,
            config_path,
            listeners_up,
            shutdown,
            tasks,
        })
    }

    /// Remembers the file the configuration came from, for reloads.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        if let Ok(mut g) = self.config_path.write() {
            *g = Some(path);
        }
    }

    /// Reloads the configuration file (SIGHUP).
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.config_path.read().ok().and_then(|g| g.clone());
        reload::reload(&self.pipeline, &self.distributor, path.as_deref()).await
    }

    /// Graceful stop: stop accepting, let sessions and deliveries finish (bounded by
    /// `smtp.shutdown_timeout`), leave the rest queued, close the store.
    pub async fn shutdown(self) {
        self.listeners_up
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        // One deadline for everything: listeners and sessions, deliveries, long polls and
        // the status server (each stops by itself within it; what is left is aborted).
        let grace = self.pipeline.config().smtp.shutdown_timeout.0 + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + grace;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!("a task was still running at the shutdown deadline; stopped");
                t.abort();
            }
        }
        self.pipeline.store().close().await;
        tracing::info!("stopped");
    }
}

/// Raises the soft open-file limit to the hard one (each SMTP session holds a socket)
/// and warns when `smtp.max_connections` cannot fit in it.
fn raise_open_files(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // The store, the status listener, upstream connections and a margin.
            let needed = max_connections as u64 + 128;
            if limit < needed {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the open-file limit is too small for smtp.max_connections; raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
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

/// Tells systemd (when `NOTIFY_SOCKET` is set; a no-op otherwise).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// What the daemon opens before it listens: the store and the parts over it.
struct Opened {
    live: Arc<config::Live>,
    pipeline: Arc<Pipeline>,
    distributor: Arc<Distributor>,
    alerts: Arc<alerts::Alerts>,
    fleet: Option<Arc<fleet::Fleet>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Opened {
    /// Opens the store and reads what the last run left beside it; blocking.
    fn open(config: Config) -> Result<Opened, Error> {
        let store = Store::open(&config.store.path)?;
        let wake = Arc::new(Notify::new());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let commit_hist = metrics.commit_duration.clone();
        store.on_commit(Box::new(move |d| commit_hist.observe(d.as_secs_f64())));
        let fleet = match &config.fleet {
            Some(f) => Some(Arc::new(
                fleet::Fleet::new(f)
                    .map_err(|e| Error::Config(e.to_string()))?
                    .timing_calls_in(metrics.fleet_call_duration.clone())
                    .counting_rejections_in(metrics.fleet_rejected.clone()),
            )),
            None => None,
        };
        let distributor = Arc::new(
            Distributor::new(store.clone(), wake.clone(), &config, metrics.clone())
                .with_fleet(fleet.clone()),
        );
        let alerts = Arc::new(alerts::Alerts::new(&config));
        let live = Arc::new(config::Live::new(config));
        let pipeline = Arc::new(Pipeline::new(store, wake, live.clone(), metrics.clone()));
        Ok(Opened {
            live,
            pipeline,
            distributor,
            alerts,
            fleet,
            metrics,
        })
    }
}

/// The status listener's task: over its own TLS when it has a certificate. The pages'
/// cookie is Secure exactly when the browser reaches them over TLS: the listener's own,
/// or a TLS proxy's in front of it.
fn status_task(
    config: &Config,
    listener: TcpListener,
    state: status::state::AppState,
    shutdown: &watch::Receiver<bool>,
) -> Result<JoinHandle<()>, Error> {
    let bound = match (&config.status.tls_cert, &config.status.tls_key) {
        (Some(c), Some(k)) => status::tls::Bound::Tls(
            status::tls::TlsListener::new(listener, c.clone(), k.clone()).map_err(Error::Config)?,
        ),
        _ => status::tls::Bound::Plain(listener),
    };
    let pages = Arc::new(status::pages::PageState::new(
        state.token.clone(),
        matches!(bound, status::tls::Bound::Tls(_)) || config.status.behind_proxy,
        config.status.session_ttl.0,
    ));
    Ok(tokio::spawn(status::http::serve(
        bound,
        state,
        pages,
        shutdown.clone(),
    )))
}

/// The tasks that run beside the listeners and the distributor: the fleet heartbeat,
/// the OAuth2 keep-alive, the maildrop's intake and the history's retention.
fn background_tasks(
    config: &Config,
    pipeline: &Arc<Pipeline>,
    distributor: &Arc<Distributor>,
    fleet: Option<Arc<fleet::Fleet>>,
    alerts: &Arc<alerts::Alerts>,
    shutdown_rx: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(f) = fleet {
        tasks.push(tokio::spawn(background::fleet_heartbeat(
            f,
            pipeline.store().clone(),
            distributor.clone(),
            alerts.clone(),
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(background::oauth2_keep_alive(
        distributor.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(maildrop::intake(
        pipeline.clone(),
        maildrop::dir_for(&config.store.path),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(store::retention_task(
        pipeline.store().clone(),
        config.history.retention(),
        shutdown_rx.clone(),
    )));
    tasks
}

/// Binds the SMTP listeners and the status listener (before anything says it listens).
async fn bind(config: &Config) -> Result<(Vec<TcpListener>, TcpListener, SocketAddr), Error> {
    let mut listeners = Vec::new();
    for addr in config.smtp.listen_addrs() {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        listeners.push(l);
    }
    let status_addr = config
        .status
        .listen_addr()
        .ok_or_else(|| Error::Config("invalid status.listen".into()))?;
    let status_listener = TcpListener::bind(status_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: status_addr,
            source,
        })?;
    let status_addr = status_listener.local_addr().map_err(|source| Error::Bind {
        addr: status_addr,
        source,
    })?;
    Ok((listeners, status_listener, status_addr))
}

/// What every SMTP session shares: the pipeline, the policy in force, the limits and
/// the TLS acceptor.
fn smtp_context(
    config: &Config,
    pipeline: &Arc<Pipeline>,
    live: &Arc<config::Live>,
    space: &Arc<dyn store::space::SpaceCheck>,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Arc<smtp::listener::ListenerContext>, Error> {
    let tls = match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(c), Some(k)) => {
            Some(smtp::tls::acceptor(c.get_ref(), k.get_ref()).map_err(Error::Config)?)
        }
        _ => None,
    };
    let ctx = Arc::new(smtp::listener::ListenerContext {
        submit: pipeline.clone(),
        live: live.clone(),
        space: space.clone(),
        metrics: metrics.clone(),
        policy: std::sync::Mutex::new(None),
        permits: Arc::new(Semaphore::new(config.smtp.max_connections)),
        idle_timeout: config.smtp.idle_timeout.0,
        tls,
        auth_failures: smtp::auth::FailureLimiter::new(config.smtp.auth_concurrency),
        connection_rate: smtp::listener::connection_limiter(config.smtp.connection_rate_limit),
        per_address: config.smtp.max_connections_per_address,
        open_per_address: Arc::default(),
        min_data_rate: config.smtp.min_data_rate.0,
    });
    Ok(ctx)
}

/// `mailgate serve`: runs the daemon on `config` (read from `path`) until SIGTERM or
/// SIGINT, reloading on SIGHUP, then shuts down gracefully.
pub async fn serve(config: Config, source: config::Source) -> Result<(), Error> {
    // Every file the daemon makes is at most 0640 (directories 0750) whatever umask it
    // was started with: the store, the outbox, alerts.json, the token (SPEC "Files").
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o027));
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(old.as_raw_mode() | 0o027));
    let io = |e: std::io::Error| Error::Config(format!("cannot install signal handlers: {e}"));
    let stop = shutdown_signal().map_err(io)?;
    let mut hup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(io)?;
    match &source {
        config::Source::File(p) => tracing::info!(file = %p.display(), "configuration"),
        config::Source::BuiltIn => tracing::info!(
            "configuration: running on the built-in default (no --config, MAILGATE_CONFIG, ./config/mailgate.toml or /etc/mailgate/mailgate.toml)"
        ),
    }
    if let Some(p) = source.path() {
        for w in config.file_warnings(p) {
            tracing::warn!(warning = %w, "configuration");
        }
    }
    let daemon = Daemon::start(config).await?;
    if let Some(p) = source.path() {
        daemon.set_config_path(p.to_path_buf());
    }
    // systemd (Type=notify): ready once the listeners are bound and the store is open.
    let addrs: Vec<String> = daemon.smtp_addrs.iter().map(|a| a.to_string()).collect();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("accepting mail on {}", addrs.join(", "))),
    ]);
    let watchdog = sd_notify::watchdog_enabled().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                match daemon.reload().await {
                    Ok(r) if r.needs_restart.is_empty() => {}
                    Ok(r) => tracing::warn!(settings = ?r.needs_restart, "reloaded; these settings take effect after a restart"),
                    Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays"),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    tracing::info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(w) = watchdog {
        w.abort();
    }
    daemon.shutdown().await;
    Ok(())
}

/// Runs the daemon until `stop` resolves, then shuts down gracefully (embedding, tests).
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let daemon = Daemon::start(config).await?;
    stop.await;
    tracing::info!("shutting down");
    daemon.shutdown().await;
    Ok(())
}

/// How long the CLI waits for the daemon's admin API.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
