//! The subcommands: serve, migrate, keys, audit, health.

use std::net::TcpListener;
use std::sync::Arc;

use domain::api_key::{ProjectAccess, Scope, ScopeSet};
use domain::ids::ApiKeyId;
use domain::network::CidrList;
use domain::project::ProjectName;
use services::api_keys::NewKey;
use services::audit::AuditService;
use services::clock::SystemClock;
use services::Principal;
use tokio_util::sync::CancellationToken;

use crate::config::{AuditCommand, Database, HealthArgs, KeysCommand, ServeConfig};
use crate::stores::{self, OpenOptions};
use crate::wiring::{self, StartupError};

/// What a CLI run ends with: the process exit code.
pub type ExitCode = i32;

/// `rdev-api serve`: the HTTP API and the queue worker until SIGTERM/SIGINT, then the drain:
/// `/readyz` fails and event streams end at once, nothing more is claimed, running commands get
/// `SHUTDOWN_GRACE_SECONDS` to finish (the rest are killed and end `lost`), then the HTTP
/// server stops.
pub async fn serve(db: &Database, cfg: &ServeConfig) -> Result<ExitCode, StartupError> {
    cfg.lease_timing().map_err(StartupError::Config)?;
    let mut cfg = cfg.clone();
    cfg.sandbox_hidden_paths = server_files(db, &cfg);
    let cfg = &cfg;
    // Taken over from the default before anything runs, so an early SIGTERM drains too.
    let signals =
        TerminationSignals::install().map_err(|source| StartupError::Io { path: "signals".into(), source })?;
    let stores = stores::open(&db.url, OpenOptions { migrate: cfg.migrate_on_start, pool_size: db.pool_size }).await?;
    let service = wiring::build(stores, cfg, crate::telemetry::metrics_handle()).await?;
    if let Some(path) = &cfg.bootstrap_admin_key_file {
        if wiring::bootstrap_admin_key(&service.state.keys, path).await? {
            eprintln!("rdev-api: admin API key written to {} (mode 0600)", path.display());
        }
    }
    let listener = TcpListener::bind(cfg.listen_addr)
        .map_err(|source| StartupError::Io { path: cfg.listen_addr.to_string(), source })?;
    // `drain` stops claims, deliveries and retention; `stop` what must last until the end.
    let (drain, stop) = (CancellationToken::new(), CancellationToken::new());
    let worker = tokio::spawn(Arc::clone(&service.worker).run(drain.clone()));
    if let Some(pump) = service.pump {
        // Cancel requests from other replicas still reach the commands finishing in the grace.
        tokio::spawn(pump.run(stop.clone()));
    }
    let dispatcher = tokio::spawn(service.dispatcher.run(drain.clone()));
    tokio::spawn(service.retention.run(drain.clone()));
    let pod_watch = service.pod_watch.map(|watch| tokio::spawn(watch.run(drain.clone())));
    // The bound address, so that `LISTEN_ADDR=…:0` tells where it actually listens.
    let bound = listener.local_addr().map_or_else(|_| cfg.listen_addr.to_string(), |a| a.to_string());
    tracing::info!(listen_addr = %bound, executor = ?cfg.executor, "rdev-api serving");
    eprintln!("rdev-api: listening on http://{bound}");
    let auth_failures = Arc::clone(&service.state.auth_failures);
    let draining = service.state.draining.clone();
    let debug = match cfg.debug_listen_addr {
        Some(addr) => Some(debug_server(&service.state, addr, crate::routes::debug::DebugListener::new(cfg))?),
        None => None,
    };
    let server = crate::server::server(service.state, listener, HTTP_STOP_SECONDS)
        .map_err(|source| StartupError::Io { path: cfg.listen_addr.to_string(), source })?;
    let http = server.handle();
    let mut served = tokio::spawn(server);
    let early_end = tokio::select! {
        signal = signals.next() => {
            tracing::info!(signal, grace_seconds = cfg.shutdown_grace_seconds, "draining: no new claims, running commands get the grace");
            None
        }
        ended = &mut served => Some(ended),
    };
    draining.cancel();
    drain.cancel();
    if let Err(e) = worker.await {
        tracing::error!(error = %e, "queue worker panicked");
    }
    if let Err(e) = dispatcher.await {
        tracing::error!(error = %e, "webhook dispatcher panicked");
    }
    // The pod watch gives its lease up on the way out, so another replica leads at once.
    if let Some(task) = pod_watch {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "pod watch panicked");
        }
    }
    if let Some(debug) = debug {
        // A profile in progress is not worth delaying shutdown for.
        debug.stop(false).await;
    }
    http.stop(true).await;
    let served = match early_end {
        Some(ended) => ended,
        None => served.await,
    };
    // No request is left to fail: the counts of still-open windows are written now, not lost.
    auth_failures.flush_all().await;
    stop.cancel();
    let served = served.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r);
    served.map_err(|source| StartupError::Io { path: cfg.listen_addr.to_string(), source })?;
    tracing::info!("rdev-api stopped");
    Ok(0)
}

/// Seconds requests still in flight get once the drain is over, before the HTTP server stops.
const HTTP_STOP_SECONDS: u64 = 5;

/// SIGTERM and SIGINT, taken over from their default (which ends the process at once).
struct TerminationSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// The name of the next one that arrives.
    async fn next(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Binds `DEBUG_LISTEN_ADDR` and starts serving profiles there; the handle stops it.
fn debug_server(
    state: &crate::state::AppState,
    addr: std::net::SocketAddr,
    marker: crate::routes::debug::DebugListener,
) -> Result<actix_web::dev::ServerHandle, StartupError> {
    let io = |source| StartupError::Io { path: addr.to_string(), source };
    let listener = TcpListener::bind(addr).map_err(io)?;
    let bound = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
    let server = crate::server::debug_server(state.clone(), listener, marker).map_err(io)?;
    let handle = server.handle();
    tokio::spawn(server);
    tracing::info!(debug_listen_addr = %bound, trust_loopback = marker.trust_loopback, "serving /debug/pprof/profile on its own listener");
    Ok(handle)
}

/// The server's own files and its working directory: the sandbox hides each of them should a
/// system directory it mounts contain one (a database under /opt, a key under /etc).
fn server_files(db: &Database, cfg: &ServeConfig) -> Vec<std::path::PathBuf> {
    let mut files = if db.url.is_sqlite() { adapters_sqlite::database_files(db.url.expose()) } else { Vec::new() };
    files.extend(cfg.bootstrap_admin_key_file.iter().cloned());
    files.extend(std::env::current_dir().ok().filter(|dir| dir.parent().is_some()));
    files.into_iter().filter_map(|f| std::path::absolute(f).ok()).collect()
}

/// A store for one-shot commands, migrated (they may be the first thing run on a database).
async fn open_for_cli(db: &Database) -> Result<stores::Stores, StartupError> {
    stores::open(&db.url, OpenOptions { migrate: true, pool_size: db.pool_size.min(2) }).await
}

/// `rdev-api migrate`.
pub async fn migrate(db: &Database) -> Result<ExitCode, StartupError> {
    open_for_cli(db).await?;
    eprintln!("rdev-api: migrations applied");
    Ok(0)
}

/// `rdev-api keys create|revoke`. Each run is audited like an API request, with the CLI as
/// the actor (no key id, the operating-system user in the detail); the outcome is recorded
/// whether or not it succeeded.
#[expect(clippy::print_stdout, reason = "the key (or its JSON) is the command's output")]
pub async fn keys(db: &Database, cmd: KeysCommand) -> Result<ExitCode, StartupError> {
    let stores = open_for_cli(db).await?;
    let audit = Arc::clone(&stores.audit);
    let (keys, _) = wiring::key_service(&stores, std::time::Duration::from_millis(1), Arc::new(SystemClock), None);
    match cmd {
        KeysCommand::Create { name, scopes, projects, json } => {
            let what = format!("name={name:?} scopes={scopes:?} projects={projects:?}");
            let created = match new_key(name, &scopes, &projects) {
                Ok(new) => keys.create(&Principal::system(), new).await.map_err(StartupError::from),
                Err(e) => Err(e),
            };
            let resource =
                created.as_ref().map_or_else(|_| "api_key".to_owned(), |(key, _)| format!("api_key/{}", key.id));
            cli_audit(audit.as_ref(), "cli keys create", resource, &created, what).await?;
            let (key, secret) = created?;
            if json {
                println!("{}", serde_json::json!({"id": key.id.to_string(), "key": secret.expose()}));
            } else {
                println!("{}", secret.expose());
                eprintln!("rdev-api: created key {} ({}); the secret above is shown only once", key.id, key.name);
            }
        }
        KeysCommand::Revoke { id } => {
            let revoked = match id.parse::<ApiKeyId>() {
                Ok(id) => keys.revoke(&Principal::system(), id).await.map(|_| id).map_err(StartupError::from),
                Err(e) => Err(StartupError::from(e)),
            };
            cli_audit(audit.as_ref(), "cli keys revoke", format!("api_key/{id}"), &revoked, String::new()).await?;
            eprintln!("rdev-api: revoked key {}", revoked?);
        }
    }
    Ok(0)
}

/// Appends the audit record of a CLI action; a record that cannot be written fails the run
/// (after the action, which the error message says), since an unaudited change is the one
/// thing the log exists to prevent going unnoticed.
async fn cli_audit<T>(
    log: &dyn domain::ports::AuditLog,
    action: &str,
    resource: String,
    result: &Result<T, StartupError>,
    what: String,
) -> Result<(), StartupError> {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let (outcome, why) = match result {
        Ok(_) => (domain::audit::AuditOutcome::Success, String::new()),
        Err(e) => (domain::audit::AuditOutcome::Failure, format!(" error={e}")),
    };
    let entry = domain::audit::AuditEntry {
        at: domain::to_micros_precision(chrono::Utc::now()),
        actor: None,
        client_ip: None,
        action: action.to_owned(),
        resource,
        project: None,
        outcome,
        detail: Some(format!("actor=cli os_user={user} {what}{why}").trim_end().to_owned()),
        request_id: None,
        trace_id: None,
        count: 1,
    };
    log.append(entry)
        .await
        .map(|_| ())
        .map_err(|e| StartupError::Config(format!("{action} ran, but its audit record could not be written: {e}")))
}

fn new_key(name: String, scopes: &[String], projects: &[String]) -> Result<NewKey, StartupError> {
    let scopes = scopes.iter().map(|s| s.parse::<Scope>()).collect::<Result<Vec<_>, _>>()?;
    let projects = if projects.is_empty() {
        ProjectAccess::All
    } else {
        ProjectAccess::Only(projects.iter().map(|p| ProjectName::parse(p)).collect::<Result<_, _>>()?)
    };
    Ok(NewKey {
        name,
        scopes: ScopeSet::new(scopes)?,
        projects,
        allowed_ips: CidrList::default(),
        rate_limit_rps: None,
        expires_at: None,
    })
}

/// `rdev-api audit verify`: prints the verdict as JSON; exit code 1 when the chain is broken.
#[expect(clippy::print_stdout, reason = "the verdict is the command's output")]
pub async fn audit(db: &Database, cmd: AuditCommand) -> Result<ExitCode, StartupError> {
    let stores = open_for_cli(db).await?;
    match cmd {
        AuditCommand::Verify { checkpoints } => {
            let policy = wiring::checkpoint_policy(&checkpoints)?;
            let report = AuditService::new(stores.audit).with_checkpoints(policy).verify(&Principal::system()).await?;
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            Ok(if report.ok { 0 } else { 1 })
        }
    }
}

/// `rdev-api health`: GETs the replica's `/readyz`; 0 when it answers `200`, else 1 with the
/// reason on one line (stderr). Touches no database: it asks the replica.
pub async fn health(args: &HealthArgs) -> ExitCode {
    let target = args.target();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(args.timeout_seconds))
        // A probe must not be sent elsewhere, nor through a proxy of the environment.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build();
    let answer = match client {
        Ok(client) => client.get(&target).send().await,
        Err(e) => {
            eprintln!("rdev-api health: cannot build an HTTP client: {e}");
            return 1;
        }
    };
    match answer {
        Ok(res) if res.status() == reqwest::StatusCode::OK => 0,
        Ok(res) => {
            let status = res.status();
            // The body names the dependency that is not ready; keep it to one line.
            let body = res.text().await.unwrap_or_default();
            let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(300).collect();
            eprintln!("rdev-api health: {target} answered {status}: {body}");
            1
        }
        Err(e) => {
            let why = if e.is_timeout() { "timed out".to_owned() } else { error_chain(&e) };
            eprintln!("rdev-api health: {target}: {why}");
            1
        }
    }
}

/// An error and its causes on one line (reqwest's own message alone says only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
