//! Builds the running service from the configuration: store, executor, services, worker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use adapters_kube::{KubeBackend, KubeConfig, KubePodWatch, PodWatchConfig};
use adapters_process::{NetworkMode, ProcessConfig, ProcessExecutor, Sandbox, SandboxConfig};
use adapters_webhook::{HttpWebhookSender, SenderConfig};
use domain::audit::CheckpointKey;
use domain::ids::WorkerId;
use domain::ports::{ApiKeyRepository, Clock, Executor, PodManager, PodWatch};
use domain::rate_limit::RateLimitPolicy;
use domain::webhook::WebhookSender;
use domain::DomainError;
use services::api_keys::ApiKeyService;
use services::audit::{AuditService, CheckpointPolicy};
use services::auth_failures::{AuthFailurePolicy, AuthFailures};
use services::breaker::{BreakerConfig, BreakerExecutor, BreakerPods, CircuitBreaker};
use services::cache::{CacheConfig, CachedRepository};
use services::clock::SystemClock;
use services::commands::CommandService;
use services::open_requests::OpenRequests;
use services::pod_watch::PodWatchService;
use services::pods::{PodEvents, PodService};
use services::projects::ProjectService;
use services::rate_limit::RateLimiter;
use services::retention::{RetentionConfig, RetentionJob, RetentionPorts};
use services::signalling::{SignalPump, Signals};
use services::webhooks::{DispatcherConfig, DispatcherPorts, WebhookDispatcher, WebhookService};
use services::worker::{QueueWorker, WorkerConfig, WorkerPorts};
use tokio_util::sync::CancellationToken;

use crate::config::{AuditCheckpointArgs, ExecutorKind, ProcessNetwork, SandboxSwitch, ServeConfig};
use crate::state::{AppState, HttpSettings};
use crate::stores::Stores;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] DomainError),
    /// The configuration asks for something this build cannot do.
    #[error("configuration: {0}")]
    Config(String),
    /// The process executor's sandbox cannot run commands on this host.
    #[error(
        "the process executor's sandbox cannot run commands here: {0}. Allow unprivileged user \
         namespaces (or run where they are allowed), or set PROCESS_SANDBOX=off to run commands \
         unconfined as the server's own user (see docs/security.md)"
    )]
    Sandbox(String),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The pieces a running service is made of, before anything runs (`service::start` runs them).
#[expect(missing_debug_implementations, reason = "holds the app state, which has trait objects")]
pub struct Parts {
    /// Shared by handlers.
    pub state: AppState,
    /// The queue worker.
    pub worker: Arc<QueueWorker>,
    /// Signals from other replicas (Postgres only).
    pub pump: Option<SignalPump>,
    /// The webhook dispatcher.
    pub dispatcher: Arc<WebhookDispatcher>,
    /// Deletes old finished commands and webhook deliveries (one replica at a time).
    pub retention: RetentionJob,
    /// Follows every project pod cluster-wide while this replica leads (kube executor only).
    pub pod_watch: Option<PodWatchService>,
}

/// The webhook service and dispatcher over `stores`' webhook ports.
fn webhooks(
    stores: &Stores,
    cfg: &ServeConfig,
    audit: &AuditService,
    clock: &Arc<dyn Clock>,
    owner: &WorkerId,
    signals: &Arc<Signals>,
) -> Result<(Arc<WebhookService>, Arc<WebhookDispatcher>), StartupError> {
    let hooks = &stores.webhooks;
    let sender_config =
        SenderConfig { allow_private_targets: cfg.webhook_allow_private_targets, ..SenderConfig::default() };
    let sender: Arc<dyn WebhookSender> = Arc::new(
        HttpWebhookSender::new(sender_config).map_err(|e| StartupError::Config(format!("webhook sender: {e}")))?,
    );
    let service = WebhookService::new(
        hooks.subscriptions.clone(),
        hooks.deliveries.clone(),
        sender.clone(),
        clock.clone(),
        signals.clone(),
    );
    let ports = DispatcherPorts {
        webhooks: hooks.subscriptions.clone(),
        deliveries: hooks.deliveries.clone(),
        sender,
        audit: audit.clone(),
        clock: clock.clone(),
        signals: signals.clone(),
    };
    let dispatcher = WebhookDispatcher::new(ports, DispatcherConfig::new(owner.to_string()));
    Ok((Arc::new(service), dispatcher))
}

/// Where commands run and the pods they run in.
struct Backend {
    executor: Arc<dyn Executor>,
    pods: Arc<dyn PodManager>,
    breaker: Option<Arc<CircuitBreaker>>,
}

/// The process executor's sandbox as configured, and the helper to fall back to should the
/// chosen one fail the start-up probe. The helper is `SANDBOX_HELPER` when set; otherwise the
/// small `rdev-sandbox` next to this binary when it is there (it starts each command about a
/// millisecond sooner), with this binary's own `__sandbox` mode as the fallback; otherwise this
/// binary.
fn sandbox(cfg: &ServeConfig) -> Result<(Sandbox, Option<PathBuf>), StartupError> {
    if cfg.process_sandbox == SandboxSwitch::Off {
        return Ok((Sandbox::Off, None));
    }
    let (helper, fallback) = match &cfg.sandbox_helper {
        Some(helper) => (helper.clone(), None),
        None => {
            let me =
                std::env::current_exe().map_err(|e| StartupError::Sandbox(format!("cannot find this binary: {e}")))?;
            match adapters_process::sandbox::sibling_helper(&me) {
                Some(sibling) => (sibling, Some(me)),
                None => (me, None),
            }
        }
    };
    let mut hidden = cfg.sandbox_hidden_paths.clone();
    hidden.push(std::path::absolute(&cfg.workspaces_dir).unwrap_or_else(|_| cfg.workspaces_dir.clone()));
    let sandbox = Sandbox::On(SandboxConfig {
        helper,
        uid: cfg.command_uid,
        gid: cfg.command_gid,
        network: match cfg.process_network {
            ProcessNetwork::Host => NetworkMode::Host,
            ProcessNetwork::None => NetworkMode::None,
        },
        hidden,
    });
    Ok((sandbox, fallback))
}

/// The process executor, once its sandbox has run `true`: a server that cannot confine
/// commands refuses to start. A sibling helper that fails the probe (left from another build,
/// not executable by this user) is replaced by this binary's own mode, which is probed in turn.
async fn process_executor(cfg: &ServeConfig) -> Result<ProcessExecutor, StartupError> {
    let (sandbox, fallback) = sandbox(cfg)?;
    let executor = |sandbox| {
        ProcessExecutor::new(ProcessConfig {
            workspaces_root: cfg.workspaces_dir.clone(),
            kill_grace: Duration::from_secs(2),
            sandbox,
        })
    };
    let first = executor(sandbox.clone());
    let failure = match first.probe_sandbox().await {
        Ok(()) => {
            log_helper(&sandbox);
            return Ok(first);
        }
        Err(failure) => failure,
    };
    let (Some(me), Sandbox::On(config)) = (fallback, sandbox) else { return Err(StartupError::Sandbox(failure)) };
    tracing::warn!(
        helper = %config.helper.display(),
        reason = %failure,
        fallback = %me.display(),
        "the sandbox helper next to this binary failed its probe; using this binary's own sandbox mode"
    );
    let sandbox = Sandbox::On(SandboxConfig { helper: me, ..config });
    let second = executor(sandbox.clone());
    second.probe_sandbox().await.map_err(StartupError::Sandbox)?;
    log_helper(&sandbox);
    Ok(second)
}

/// Says at start which binary sets up each command's sandbox.
fn log_helper(sandbox: &Sandbox) {
    if let Sandbox::On(config) = sandbox {
        tracing::info!(helper = %config.helper.display(), "sandbox helper probed: commands run sandboxed");
    }
}

/// What `/readyz` says about command confinement.
fn confinement(cfg: &ServeConfig) -> &'static str {
    match (cfg.executor, cfg.process_sandbox) {
        (ExecutorKind::Kube, _) => "pod",
        (ExecutorKind::Process, SandboxSwitch::On) => "sandbox",
        (ExecutorKind::Process, SandboxSwitch::Off) => {
            "off: PROCESS_SANDBOX=off, commands run unconfined as the server's user"
        }
    }
}

async fn backend(cfg: &ServeConfig) -> Result<Backend, StartupError> {
    match cfg.executor {
        ExecutorKind::Process => {
            let executor = process_executor(cfg).await?;
            if cfg.process_sandbox == SandboxSwitch::Off {
                tracing::warn!(
                    "PROCESS_SANDBOX=off: commands run unconfined as the server's own user and can read its \
                     database and key files, reach every project and signal the server"
                );
            }
            Ok(Backend { pods: Arc::new(executor.pods()), executor: Arc::new(executor), breaker: None })
        }
        ExecutorKind::Kube => {
            let kube_config = KubeConfig {
                command_uid: i64::from(cfg.command_uid),
                command_gid: i64::from(cfg.command_gid),
                ..KubeConfig::new(&cfg.kube_namespace)
            };
            let kube = KubeBackend::from_kubeconfig(cfg.kubeconfig.as_deref(), kube_config)
                .await
                .map_err(|e| StartupError::Config(format!("EXECUTOR=kube: {e}")))?;
            let open_for = Duration::from_secs(cfg.kube_breaker_open_seconds);
            let breaker = CircuitBreaker::new("kubernetes", BreakerConfig { open_for, ..BreakerConfig::default() });
            Ok(Backend {
                executor: Arc::new(BreakerExecutor::new(kube.clone(), breaker.clone())),
                pods: Arc::new(BreakerPods::new(kube, breaker.clone())),
                breaker: Some(breaker),
            })
        }
    }
}

/// The key service over a cached view of the store's keys, announcing revocations to other
/// replicas through `signals`; also returns the cache so signals from them can clear it.
pub fn key_service(
    stores: &Stores,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    open_requests: Option<Arc<OpenRequests>>,
    signals: Option<Arc<Signals>>,
) -> (Arc<ApiKeyService>, Arc<CachedRepository<Arc<dyn ApiKeyRepository>>>) {
    let mut cached = CachedRepository::new(stores.keys.clone(), CacheConfig { ttl, ..CacheConfig::default() });
    if let Some(open_requests) = open_requests {
        cached = cached.with_open_requests(open_requests);
    }
    let cached = Arc::new(cached);
    let mut service = ApiKeyService::new(cached.clone(), clock);
    if let Some(signals) = signals {
        service = service.with_signals(signals);
    }
    (Arc::new(service), cached)
}

/// The checkpoint policy of `args`: the key file read and checked, or `None` without one.
pub fn checkpoint_policy(args: &AuditCheckpointArgs) -> Result<Option<CheckpointPolicy>, StartupError> {
    let Some(path) = &args.audit_checkpoint_key_file else { return Ok(None) };
    let bytes = std::fs::read(path).map_err(|source| StartupError::Io { path: path.display().to_string(), source })?;
    let key = CheckpointKey::new(&bytes)
        .map_err(|e| StartupError::Config(format!("AUDIT_CHECKPOINT_KEY_FILE {}: {e}", path.display())))?;
    Ok(Some(CheckpointPolicy {
        key,
        every_records: args.audit_checkpoint_records,
        every: Duration::from_secs(args.audit_checkpoint_seconds),
    }))
}

/// Builds every service of a replica; nothing runs yet.
pub async fn build(
    stores: Stores,
    cfg: &ServeConfig,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<Parts, StartupError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let Backend { executor, pods, breaker } = backend(cfg).await?;
    let signals = Arc::new(stores.signals.clone().map_or_else(Signals::default, Signals::with_remote));
    let audit = AuditService::new(stores.audit.clone()).with_checkpoints(checkpoint_policy(&cfg.audit_checkpoints)?);
    let auth_failures = Arc::new(AuthFailures::new(
        AuthFailurePolicy {
            rps: cfg.auth_failure_rps,
            burst: cfg.auth_failure_burst,
            audit_window: Duration::from_secs(cfg.auth_failure_audit_window_seconds),
        },
        audit.clone(),
    ));
    let projects = Arc::new(ProjectService::new(stores.projects.clone(), clock.clone()));
    let commands = Arc::new(
        CommandService::new(
            projects.clone(),
            stores.commands.clone(),
            stores.queue.clone(),
            signals.clone(),
            clock.clone(),
        )
        .with_max_queued(cfg.max_queued_commands),
    );
    let policy = RateLimitPolicy { rps: cfg.rate_limit_rps, window_seconds: cfg.rate_limit_window_seconds };
    // One identity per replica, for command leases and webhook delivery leases alike.
    let replica = worker_id();
    let mut worker_config = WorkerConfig::new(replica.clone(), cfg.concurrent_commands as usize);
    worker_config.max_output_bytes = cfg.max_output_bytes;
    worker_config.shutdown_grace = Duration::from_secs(cfg.shutdown_grace_seconds);
    let timing = cfg.lease_timing().map_err(StartupError::Config)?;
    worker_config.lease = timing.lease;
    // A dead replica is found through its presence within seconds; the lease, renewed this
    // often, settles one that is alive but silent.
    worker_config.renew_every = timing.renew_every;
    worker_config.reap_every = timing.renew_every;
    let live_worker_window =
        chrono::TimeDelta::from_std(worker_config.poll_every * 10).unwrap_or(chrono::TimeDelta::seconds(10));
    // Re-reads keys from the store itself: a signal means the cache may be stale.
    let open_requests = Arc::new(OpenRequests::new(stores.keys.clone(), clock.clone(), cfg.max_streams_per_key));
    let (keys, key_cache) = key_service(
        &stores,
        Duration::from_millis(cfg.key_cache_ttl_ms),
        clock.clone(),
        Some(open_requests.clone()),
        Some(signals.clone()),
    );
    let pump = stores
        .signals
        .as_ref()
        .map(|remote| SignalPump::new(remote.subscribe(), signals.clone(), key_cache, open_requests.clone()));
    let (webhook_service, dispatcher) = webhooks(&stores, cfg, &audit, &clock, &replica, &signals)?;
    let watch = pod_watch(cfg).await?;
    let pod_events = if watch.is_some() {
        PodEvents::cluster_watched(webhook_service.clone())
    } else {
        PodEvents::new(webhook_service.clone())
    };
    let pod_watch = watch.map(|w| PodWatchService::new(w, pod_events.clone(), replica.clone()));
    let retention = RetentionJob::new(
        RetentionPorts {
            commands: stores.commands.clone(),
            queue: stores.queue.clone(),
            deliveries: stores.webhooks.deliveries.clone(),
            clock: clock.clone(),
        },
        replica.clone(),
        RetentionConfig {
            commands: cfg.command_retention,
            webhooks: cfg.webhook_retention,
            every: cfg.retention_interval,
            ..RetentionConfig::default()
        },
    );
    let ports = WorkerPorts {
        queue: stores.queue.clone(),
        projects: stores.projects.clone(),
        executor: executor.clone(),
        pods: pods.clone(),
        pod_events: pod_events.clone(),
        breaker,
        audit: audit.clone(),
        signals,
        clock: clock.clone(),
    };
    let state = AppState {
        keys,
        open_requests,
        pods: PodService::new(projects.clone(), pods, pod_events, worker_config.pod_ready_timeout),
        webhooks: webhook_service,
        projects,
        commands,
        audit,
        limiter: Arc::new(RateLimiter::new(stores.rate_limits.clone(), clock, policy)),
        auth_failures,
        store_health: stores.health.clone(),
        executor,
        confinement: confinement(cfg),
        metrics,
        http: HttpSettings {
            trusted_proxies: cfg.trusted_proxies.clone(),
            max_request_bytes: cfg.max_request_bytes,
            body_read_timeout: Duration::from_secs(cfg.body_read_timeout_seconds),
            live_worker_window,
            sse_send_timeout: crate::routes::events::DEFAULT_SEND_TIMEOUT,
            debug_on_own_listener: cfg.debug_listen_addr.is_some(),
        },
        draining: CancellationToken::new(),
    };
    Ok(Parts { state, worker: QueueWorker::new(ports, worker_config), pump, dispatcher, retention, pod_watch })
}

/// The cluster-wide pod watch for `EXECUTOR=kube` (its own client, paced by its own backoff
/// rather than the circuit breaker); `None` for the process executor, whose pods are local.
async fn pod_watch(cfg: &ServeConfig) -> Result<Option<Arc<dyn PodWatch>>, StartupError> {
    if cfg.executor != ExecutorKind::Kube {
        return Ok(None);
    }
    // The name was checked where it was parsed (`config::parse_object_name`).
    let name = &cfg.pod_watch_lease_name;
    let kube_config = KubeConfig::new(&cfg.kube_namespace);
    let kube = KubeBackend::from_kubeconfig(cfg.kubeconfig.as_deref(), kube_config)
        .await
        .map_err(|e| StartupError::Config(format!("EXECUTOR=kube: {e}")))?;
    let config = PodWatchConfig {
        lease_name: name.clone(),
        ..PodWatchConfig::new(Duration::from_secs(cfg.pod_watch_lease_seconds))
    };
    Ok(Some(Arc::new(KubePodWatch::new(&kube, config))))
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
