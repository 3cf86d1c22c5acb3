//! The subcommands: serve, migrate, keys, audit, health.

use std::sync::Arc;

use domain::api_key::{ProjectAccess, Scope, ScopeSet};
use domain::ids::ApiKeyId;
use domain::network::CidrList;
use domain::project::ProjectName;
use services::api_keys::NewKey;
use services::audit::{AuditService, CliAction};
use services::clock::SystemClock;
use services::signalling::Signals;
use services::Principal;

use crate::config::{AuditCommand, Database, HealthArgs, KeysCommand, ServeConfig};
use crate::service::{Service, StartOptions};
use crate::stores::{self, OpenOptions};
use crate::wiring::{self, StartupError};

/// What a CLI run ends with: the process exit code.
pub type ExitCode = i32;

/// `rdev-api serve`: the HTTP API and the queue worker until SIGTERM/SIGINT, then the drain
/// (`RunningService::shutdown`).
pub async fn serve(db: &Database, cfg: &ServeConfig) -> Result<ExitCode, StartupError> {
    // Taken over from the default before anything runs, so an early SIGTERM drains too.
    let signals =
        TerminationSignals::install().map_err(|source| StartupError::Io { path: "signals".into(), source })?;
    let mut running = Service::start(db, cfg, StartOptions::default()).await?;
    eprintln!("rdev-api: listening on http://{}", running.addr);
    tokio::select! {
        signal = signals.next() => {
            tracing::info!(signal, grace_seconds = cfg.shutdown_grace_seconds, "draining: no new claims, running commands get the grace");
        }
        () = running.server_ended() => {}
    }
    running.shutdown().await.map_err(|source| StartupError::Io { path: cfg.listen_addr.to_string(), source })?;
    tracing::info!("rdev-api stopped");
    Ok(0)
}

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
    let audit = AuditService::new(Arc::clone(&stores.audit));
    // Revocations are announced to the running replicas, as when made through the API.
    let signals = stores.signals.clone().map(|remote| Arc::new(Signals::with_remote(remote)));
    let (keys, _) =
        wiring::key_service(&stores, std::time::Duration::from_millis(1), Arc::new(SystemClock), None, signals);
    match cmd {
        KeysCommand::Create { name, scopes, projects, json } => {
            let what = format!("name={name:?} scopes={scopes:?} projects={projects:?}");
            let created = match new_key(name, &scopes, &projects) {
                Ok(new) => keys.create(&Principal::system(), new).await.map_err(StartupError::from),
                Err(e) => Err(e),
            };
            let resource =
                created.as_ref().map_or_else(|_| "api_key".to_owned(), |(key, _)| format!("api_key/{}", key.id));
            cli_audit(&audit, "cli keys create", resource, &created, what).await?;
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
            cli_audit(&audit, "cli keys revoke", format!("api_key/{id}"), &revoked, String::new()).await?;
            eprintln!("rdev-api: revoked key {}", revoked?);
        }
    }
    Ok(0)
}

/// Appends the audit record of a CLI action through the audit service; a record that cannot be
/// written fails the run (after the action, which the error message says), since an unaudited
/// change is the one thing the log exists to prevent going unnoticed.
async fn cli_audit<T>(
    audit: &AuditService,
    action: &str,
    resource: String,
    result: &Result<T, StartupError>,
    request: String,
) -> Result<(), StartupError> {
    let os_user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let error = result.as_ref().err().map(ToString::to_string);
    let cli = CliAction { action: action.to_owned(), resource, os_user, request, error };
    audit
        .record_cli(cli)
        .await
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
