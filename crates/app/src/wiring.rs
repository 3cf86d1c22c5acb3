//! Builds the running service from the configuration: store, executor, services, worker.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use adapters_process::{LocalPods, ProcessConfig, ProcessExecutor};
use adapters_sqlite::SqliteStore;
use domain::ids::WorkerId;
use domain::ports::{ApiKeyRepository, Clock, Executor, PodManager};
use domain::rate_limit::RateLimitPolicy;
use domain::DomainError;
use services::api_keys::ApiKeyService;
use services::audit::AuditService;
use services::cache::{CacheConfig, CachedRepository};
use services::clock::SystemClock;
use services::commands::CommandService;
use services::pods::PodService;
use services::projects::ProjectService;
use services::queue_bus::QueueBus;
use services::rate_limit::RateLimiter;
use services::worker::{QueueWorker, WorkerConfig, WorkerPorts};

use crate::config::{DatabaseUrl, ExecutorKind, ServeConfig};
use crate::state::{AppState, HttpSettings};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] DomainError),
    /// The configuration asks for something this build cannot do.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens (and migrates) the store selected by `DATABASE_URL`.
pub fn open_store(url: &DatabaseUrl) -> Result<Arc<SqliteStore>, StartupError> {
    if !url.is_sqlite() {
        return Err(StartupError::Config(format!(
            "DATABASE_URL {url:?} selects a store this build does not have yet; use sqlite://PATH"
        )));
    }
    let store = SqliteStore::open(url.expose())?;
    store.migrate()?;
    Ok(Arc::new(store))
}

/// The pieces `serve` runs.
#[expect(missing_debug_implementations, reason = "holds the app state, which has trait objects")]
pub struct Service {
    /// Shared by handlers.
    pub state: AppState,
    /// The queue worker.
    pub worker: Arc<QueueWorker>,
}

/// Where commands run and the pods they run in.
struct Backend {
    executor: Arc<dyn Executor>,
    pods: Arc<dyn PodManager>,
    breaker: Option<Arc<services::breaker::CircuitBreaker>>,
}

fn backend(cfg: &ServeConfig) -> Result<Backend, StartupError> {
    match cfg.executor {
        ExecutorKind::Process => Ok(Backend {
            executor: Arc::new(ProcessExecutor::new(ProcessConfig {
                workspaces_root: cfg.workspaces_dir.clone(),
                kill_grace: Duration::from_secs(2),
            })),
            pods: Arc::new(LocalPods::new(cfg.workspaces_dir.clone())),
            breaker: None,
        }),
        ExecutorKind::Kube => {
            Err(StartupError::Config("EXECUTOR=kube is not available in this build yet; use EXECUTOR=process".into()))
        }
    }
}

/// The key service over a cached view of the store's keys.
pub fn key_service(store: &Arc<SqliteStore>, ttl: Duration, clock: Arc<dyn Clock>) -> Arc<ApiKeyService> {
    let inner: Arc<dyn ApiKeyRepository> = store.clone();
    let cached = CachedRepository::new(inner, CacheConfig { ttl, ..CacheConfig::default() });
    Arc::new(ApiKeyService::new(Arc::new(cached), clock))
}

/// Wires every service for `serve`.
pub fn build(
    store: Arc<SqliteStore>,
    cfg: &ServeConfig,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<Service, StartupError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let Backend { executor, pods, breaker } = backend(cfg)?;
    let bus = Arc::new(QueueBus::default());
    let audit = AuditService::new(store.clone());
    let projects = Arc::new(ProjectService::new(store.clone(), clock.clone()));
    let commands =
        Arc::new(CommandService::new(projects.clone(), store.clone(), store.clone(), bus.clone(), clock.clone()));
    let policy = RateLimitPolicy { rps: cfg.rate_limit_rps, window_seconds: cfg.rate_limit_window_seconds };
    let mut worker_config = WorkerConfig::new(worker_id(), cfg.concurrent_commands as usize);
    worker_config.max_output_bytes = cfg.max_output_bytes;
    worker_config.shutdown_grace = Duration::from_secs(cfg.shutdown_grace_seconds);
    let live_worker_window =
        chrono::TimeDelta::from_std(worker_config.poll_every * 10).unwrap_or(chrono::TimeDelta::seconds(10));
    let ports = WorkerPorts {
        queue: store.clone(),
        projects: store.clone(),
        executor: executor.clone(),
        pods: pods.clone(),
        breaker,
        audit: audit.clone(),
        bus,
        clock: clock.clone(),
    };
    let state = AppState {
        keys: key_service(&store, Duration::from_millis(cfg.key_cache_ttl_ms), clock.clone()),
        pods: PodService::new(projects.clone(), pods),
        projects,
        commands,
        audit,
        limiter: Arc::new(RateLimiter::new(store.clone(), clock, policy)),
        store_health: store,
        executor,
        metrics,
        http: HttpSettings {
            trusted_proxies: cfg.trusted_proxies.clone(),
            max_request_bytes: cfg.max_request_bytes,
            live_worker_window,
        },
    };
    Ok(Service { state, worker: QueueWorker::new(ports, worker_config) })
}

fn worker_id() -> WorkerId {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "rdev".into());
    WorkerId::new(format!("{host}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]))
}

/// On an empty store, creates an admin key and writes it to `path` with mode 0600.
pub async fn bootstrap_admin_key(keys: &ApiKeyService, path: &Path) -> Result<bool, StartupError> {
    let Some((key, secret)) = keys.bootstrap_admin().await? else { return Ok(false) };
    let io = |source| StartupError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    writeln!(file, "{}", secret.expose()).map_err(io)?;
    tracing::info!(api_key_id = %key.id, path = %path.display(), "bootstrap admin key written");
    Ok(true)
}
