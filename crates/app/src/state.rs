//! What handlers share: the services and a few HTTP settings.

use std::sync::Arc;

use domain::network::CidrList;
use domain::ports::{Executor, HealthCheck};
use metrics_exporter_prometheus::PrometheusHandle;
use services::api_keys::ApiKeyService;
use services::audit::AuditService;
use services::auth_failures::AuthFailures;
use services::commands::CommandService;
use services::open_requests::OpenRequests;
use services::pods::PodService;
use services::projects::ProjectService;
use services::rate_limit::RateLimiter;
use services::webhooks::WebhookService;

/// HTTP-level settings from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: CidrList,
    /// `MAX_REQUEST_BYTES`.
    pub max_request_bytes: usize,
    /// `BODY_READ_TIMEOUT_SECONDS`: longest a request body may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// A worker counts as live for `/v1/queue` if seen this recently.
    pub live_worker_window: chrono::TimeDelta,
    /// How long an event stream waits for a client that stopped reading before it cuts the
    /// connection (`StartOptions::sse_send_timeout`).
    pub sse_send_timeout: std::time::Duration,
    /// `DEBUG_LISTEN_ADDR` is set: `/debug/pprof/*` is served there, not on the main port.
    pub debug_on_own_listener: bool,
}

/// Shared by every handler (cheap to clone).
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds trait objects and services without Debug")]
pub struct AppState {
    /// API keys.
    pub keys: Arc<ApiKeyService>,
    /// Open event streams and waits per key: capped, and ended when the key is revoked.
    pub open_requests: Arc<OpenRequests>,
    /// Projects.
    pub projects: Arc<ProjectService>,
    /// Commands.
    pub commands: Arc<CommandService>,
    /// Projects' pods.
    pub pods: PodService,
    /// Webhook subscriptions and deliveries.
    pub webhooks: Arc<WebhookService>,
    /// Audit log.
    pub audit: AuditService,
    /// Rate limiter.
    pub limiter: Arc<RateLimiter>,
    /// Failed authentications: limited per client address, audited in aggregate.
    pub auth_failures: Arc<AuthFailures>,
    /// Store readiness.
    pub store_health: Arc<dyn HealthCheck>,
    /// Executor readiness.
    pub executor: Arc<dyn Executor>,
    /// How commands are confined (`sandbox`, `pod`, or `off: …`), shown by `/readyz`.
    pub confinement: &'static str,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// HTTP settings.
    pub http: HttpSettings,
    /// Fires when the replica starts draining (SIGTERM): `/readyz` fails and event streams end.
    pub draining: tokio_util::sync::CancellationToken,
}
