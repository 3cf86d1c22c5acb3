//! `Service::start`: the one start-up path. `rdev-api serve` and the test harness both call it,
//! so tests run what production runs; `RunningService::shutdown` is the drain.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Database, ServeConfig};
use crate::state::AppState;
use crate::stores::{self, OpenOptions};
use crate::wiring::{self, StartupError};

/// How often open requests' keys are re-read as a backstop to signals: one store read per key
/// with open requests (not per request) each second.
const KEY_BACKSTOP_EVERY: Duration = Duration::from_secs(1);

/// What differs between a production start and a test's.
#[derive(Debug, Clone, Copy)]
pub struct StartOptions {
    /// How long requests still in flight get once the drain is over, before the HTTP server stops.
    pub http_stop: Duration,
    /// How long an event stream waits for a client that stopped reading before it cuts the
    /// connection; tests shorten it to see a slow reader cut.
    pub sse_send_timeout: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self { http_stop: Duration::from_secs(5), sse_send_timeout: crate::routes::events::DEFAULT_SEND_TIMEOUT }
    }
}

/// Starts replicas.
#[derive(Debug, Clone, Copy)]
pub struct Service;

impl Service {
    /// Opens (and migrates) the store, wires every service, writes the bootstrap admin key when
    /// configured, binds the listeners and starts the HTTP server, the queue worker, the signal
    /// pump, the webhook dispatcher, retention, the pod watch and the background timers.
    pub async fn start(
        db: &Database,
        cfg: &ServeConfig,
        options: StartOptions,
    ) -> Result<RunningService, StartupError> {
        let cfg = &configured(db, cfg)?;
        let stores =
            stores::open(&db.url, OpenOptions { migrate: cfg.migrate_on_start, pool_size: db.pool_size }).await?;
        let mut parts = wiring::build(stores, cfg, crate::telemetry::metrics_handle()).await?;
        parts.state.http.sse_send_timeout = options.sse_send_timeout;
        if let Some(path) = &cfg.bootstrap_admin_key_file {
            if wiring::bootstrap_admin_key(&parts.state.keys, path).await? {
                eprintln!("rdev-api: admin API key written to {} (mode 0600)", path.display());
            }
        }
        let io = |source| StartupError::Io { path: cfg.listen_addr.to_string(), source };
        let listener = TcpListener::bind(cfg.listen_addr).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let state = parts.state.clone();
        // Both listeners are bound before anything runs, so a port in use fails the start cleanly.
        let debug = match cfg.debug_listen_addr {
            Some(addr) => Some(debug_server(&state, addr, crate::routes::debug::DebugListener::new(cfg))?),
            None => None,
        };
        // `drain` stops claims, deliveries and retention; `stop` what must last until the end.
        let (drain, stop) = (CancellationToken::new(), CancellationToken::new());
        let worker = tokio::spawn(Arc::clone(&parts.worker).run(drain.clone()));
        if let Some(pump) = parts.pump {
            // Cancel requests from other replicas still reach the commands finishing in the grace.
            tokio::spawn(pump.run(stop.clone()));
        }
        let dispatcher = tokio::spawn(parts.dispatcher.run(drain.clone()));
        tokio::spawn(parts.retention.run(drain.clone()));
        let pod_watch = parts.pod_watch.map(|watch| tokio::spawn(watch.run(drain.clone())));
        spawn_timers(&state, &stop);
        let server = crate::server::server(parts.state, listener, options.http_stop.as_secs()).map_err(io)?;
        let http = server.handle();
        tracing::info!(listen_addr = %addr, executor = ?cfg.executor, "rdev-api serving");
        Ok(RunningService {
            state,
            addr,
            drain,
            stop,
            worker,
            dispatcher,
            pod_watch,
            debug,
            http,
            served: Some(tokio::spawn(server)),
            ended: None,
        })
    }
}

/// The configuration as the service runs it: the sandbox also hides the server's own files.
fn configured(db: &Database, cfg: &ServeConfig) -> Result<ServeConfig, StartupError> {
    cfg.lease_timing().map_err(StartupError::Config)?;
    let mut cfg = cfg.clone();
    cfg.sandbox_hidden_paths.extend(server_files(db, &cfg));
    Ok(cfg)
}

/// The timers that run until the very end: audit checkpoints (signed once more on the way
/// out), the closing of auth-failure aggregation windows, the key backstop of open requests
/// and the safety poll of event streams and waiters.
fn spawn_timers(state: &AppState, stop: &CancellationToken) {
    tokio::spawn(state.commands.safety_poll().run(services::signalling::SAFETY_POLL, stop.clone()));
    tokio::spawn(state.audit.clone().run_checkpoints(stop.clone()));
    tokio::spawn(Arc::clone(&state.auth_failures).run(stop.clone()));
    tokio::spawn(Arc::clone(&state.open_requests).run_backstop(KEY_BACKSTOP_EVERY, stop.clone()));
}

/// The server's own files and its working directory: the sandbox hides each of them should a
/// system directory it mounts contain one (a database under /opt, a key under /etc).
fn server_files(db: &Database, cfg: &ServeConfig) -> Vec<std::path::PathBuf> {
    let mut files = if db.url.is_sqlite() { adapters_sqlite::database_files(db.url.expose()) } else { Vec::new() };
    files.extend(cfg.bootstrap_admin_key_file.iter().cloned());
    files.extend(std::env::current_dir().ok().filter(|dir| dir.parent().is_some()));
    files.into_iter().filter_map(|f| std::path::absolute(f).ok()).collect()
}

/// Binds `DEBUG_LISTEN_ADDR` and starts serving profiles there; the handle stops it.
fn debug_server(
    state: &AppState,
    addr: SocketAddr,
    marker: crate::routes::debug::DebugListener,
) -> Result<ServerHandle, StartupError> {
    let io = |source| StartupError::Io { path: addr.to_string(), source };
    let listener = TcpListener::bind(addr).map_err(io)?;
    let bound = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
    let server = crate::server::debug_server(state.clone(), listener, marker).map_err(io)?;
    let handle = server.handle();
    tokio::spawn(server);
    tracing::info!(debug_listen_addr = %bound, trust_loopback = marker.trust_loopback, "serving /debug/pprof/profile on its own listener");
    Ok(handle)
}

/// A started replica.
#[expect(missing_debug_implementations, reason = "holds the app state, which has trait objects")]
pub struct RunningService {
    /// What the handlers share (the key service, for example).
    pub state: AppState,
    /// Where the HTTP API listens (the bound port when `LISTEN_ADDR` asked for port 0).
    pub addr: SocketAddr,
    drain: CancellationToken,
    stop: CancellationToken,
    worker: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    pod_watch: Option<JoinHandle<()>>,
    debug: Option<ServerHandle>,
    http: ServerHandle,
    served: Option<JoinHandle<std::io::Result<()>>>,
    /// How the HTTP server ended, once it did on its own.
    ended: Option<std::io::Result<()>>,
}

impl RunningService {
    /// Resolves when the HTTP server ends on its own (it failed); cancel-safe, for a `select!`
    /// against the termination signals.
    pub async fn server_ended(&mut self) {
        let Some(served) = self.served.as_mut() else { return std::future::pending().await };
        let ended = served.await.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r);
        self.served = None;
        self.ended = Some(ended);
    }

    /// The drain: `/readyz` fails and event streams end at once, nothing more is claimed or
    /// delivered, running commands get `SHUTDOWN_GRACE_SECONDS` to finish (the rest end
    /// `lost`), the pod watch gives up its lease, then the HTTP server stops after the
    /// requests in flight, and the timers write what they hold.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.state.draining.cancel();
        self.drain.cancel();
        if let Err(e) = self.worker.await {
            tracing::error!(error = %e, "queue worker panicked");
        }
        if let Err(e) = self.dispatcher.await {
            tracing::error!(error = %e, "webhook dispatcher panicked");
        }
        if let Some(task) = self.pod_watch.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "pod watch panicked");
            }
        }
        if let Some(debug) = self.debug.take() {
            // A profile in progress is not worth delaying shutdown for.
            debug.stop(false).await;
        }
        self.http.stop(true).await;
        let served = match (self.ended.take(), self.served.take()) {
            (Some(ended), _) => ended,
            (None, Some(served)) => served.await.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r),
            (None, None) => Ok(()),
        };
        // No request is left to fail: the counts of still-open windows are written now, not lost.
        self.state.auth_failures.flush_all().await;
        self.stop.cancel();
        served
    }

    /// Stops everything at once, without the drain (a test that is done with its replica).
    pub fn abort(&self) {
        self.state.draining.cancel();
        self.drain.cancel();
        self.stop.cancel();
        let http = self.http.clone();
        tokio::spawn(async move { http.stop(false).await });
        if let Some(debug) = self.debug.clone() {
            tokio::spawn(async move { debug.stop(false).await });
        }
    }
}
