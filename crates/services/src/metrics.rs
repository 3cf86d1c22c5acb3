//! Every metric name rdev-api exports, with units in the name. Runbooks and alerts use these.

/// Counter: HTTP requests by `method`, `route`, `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram: HTTP request latency by `method`, `route`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Gauge: commands running on this replica.
pub const COMMANDS_ACTIVE: &str = "commands_active";
/// Gauge: commands waiting in the queue over all replicas, by `priority` (set at each scrape).
pub const COMMANDS_QUEUED: &str = "commands_queued";
/// Gauge: commands running over all replicas (set at each scrape).
pub const COMMANDS_RUNNING: &str = "commands_running";
/// Counter: finished commands by terminal `status`.
pub const COMMANDS_TOTAL: &str = "commands_total";
/// Histogram: time from enqueue to start.
pub const COMMAND_QUEUE_WAIT_SECONDS: &str = "command_queue_wait_seconds";
/// Histogram: time from start to end.
pub const COMMAND_DURATION_SECONDS: &str = "command_duration_seconds";
/// Counter: event streams cut because their client stopped reading for the send timeout.
pub const SSE_SLOW_CONSUMERS_TOTAL: &str = "sse_slow_consumers_total";
/// Counter: requests refused by the rate limiter.
pub const RATE_LIMITED_TOTAL: &str = "rate_limited_total";
/// Counter: authentication failures by `reason`.
pub const AUTH_FAILURES_TOTAL: &str = "auth_failures_total";
/// Counter: audit records that could not be written.
pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "audit_write_failures_total";
/// Counter: commands that ended `lost`, by `cause`: `session` (their replica went away),
/// `lease` (their lease ran out), `shutdown` (killed when a replica's shutdown grace ran out).
pub const COMMANDS_LOST_TOTAL: &str = "commands_lost_total";
/// Counter: claimed commands handed back to the queue unstarted because their backend was unreachable.
pub const COMMANDS_HANDED_BACK_TOTAL: &str = "commands_handed_back_total";
/// Counter: errors talking to the store, by `operation`.
pub const STORE_ERRORS_TOTAL: &str = "store_errors_total";
/// Gauge: circuit breaker state by `breaker` (0 closed, 1 half-open, 2 open).
pub const CIRCUIT_BREAKER_STATE: &str = "circuit_breaker_state";
/// Counter: circuit breaker transitions by `breaker` and `to` state.
pub const CIRCUIT_BREAKER_TRANSITIONS_TOTAL: &str = "circuit_breaker_transitions_total";
/// Gauge: 1 when a dependency (`database`, `executor`) answered the last readiness check, else 0.
pub const DEPENDENCY_UP: &str = "dependency_up";
/// Counter: rows the retention job deleted, by `kind` (`commands`, `webhook_deliveries`).
pub const RETENTION_DELETED_TOTAL: &str = "retention_deleted_total";
/// Counter: delivery attempts by `outcome` (`succeeded`, `retrying`, `failed`, `dead`), plus
/// `deferred` for deliveries an open breaker held back and `stale` for attempts whose lease was
/// lost before they could be recorded.
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "webhook_deliveries_total";
/// Histogram: time from sending a webhook to its answer (or failure).
pub const WEBHOOK_DELIVERY_DURATION_SECONDS: &str = "webhook_delivery_duration_seconds";
/// Counter: endpoints disabled by the dispatcher, by `reason` (`gone`, `failing`).
pub const WEBHOOK_ENDPOINTS_DISABLED_TOTAL: &str = "webhook_endpoints_disabled_total";

/// Counter: spans the OpenTelemetry exporter delivered to the collector.
pub const OTEL_SPANS_EXPORTED_TOTAL: &str = "otel_spans_exported_total";
/// Counter: spans dropped instead of exported, by `reason` (`queue_full`: the bounded export
/// queue was full; `export_failed`: the collector refused or could not be reached).
pub const OTEL_SPANS_DROPPED_TOTAL: &str = "otel_spans_dropped_total";
/// Counter: CPU profiles taken through `/debug/pprof/profile`.
pub const CPU_PROFILES_TOTAL: &str = "cpu_profiles_total";

/// Creates every series whose labels are known in advance, at zero, so that `/metrics` lists
/// them from the start: `increase()` and `rate()` in alerts only see an increment that follows
/// a sample, and runbooks can point at series that have not moved yet. Adds nothing to a series
/// that exists already (tests build several services in one process).
pub fn register_series() {
    for status in ["succeeded", "failed", "timed_out", "cancelled", "lost"] {
        metrics::counter!(COMMANDS_TOTAL, "status" => status).increment(0);
    }
    for reason in ["missing_key", "invalid_key", "ip_not_allowed", "rate_limited"] {
        metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => reason).increment(0);
    }
    for kind in ["commands", "webhook_deliveries"] {
        metrics::counter!(RETENTION_DELETED_TOTAL, "kind" => kind).increment(0);
    }
    for outcome in ["succeeded", "retrying", "failed", "dead", "deferred", "stale"] {
        metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => outcome).increment(0);
    }
    for reason in ["gone", "failing"] {
        metrics::counter!(WEBHOOK_ENDPOINTS_DISABLED_TOTAL, "reason" => reason).increment(0);
    }
    metrics::counter!(STORE_ERRORS_TOTAL, "operation" => "claim").increment(0);
    for cause in ["session", "lease", "shutdown"] {
        metrics::counter!(COMMANDS_LOST_TOTAL, "cause" => cause).increment(0);
    }
    for counter in [
        COMMANDS_HANDED_BACK_TOTAL,
        RATE_LIMITED_TOTAL,
        AUDIT_WRITE_FAILURES_TOTAL,
        CPU_PROFILES_TOTAL,
        SSE_SLOW_CONSUMERS_TOTAL,
    ] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!(COMMANDS_ACTIVE).increment(0.0);
    // Histograms have no neutral sample; registering them makes their (empty) series visible.
    for histogram in [COMMAND_QUEUE_WAIT_SECONDS, COMMAND_DURATION_SECONDS, WEBHOOK_DELIVERY_DURATION_SECONDS] {
        drop(metrics::histogram!(histogram));
    }
}
