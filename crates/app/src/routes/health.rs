//! Liveness, readiness, metrics.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::state::AppState;

/// `/readyz` body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether this replica can serve.
    pub ready: bool,
    /// `ok` or why the database is not ready.
    pub database: String,
    /// `ok` or why the executor is not ready.
    pub executor: String,
    /// How commands are confined: `sandbox` (process executor), `pod` (Kubernetes), or
    /// `off: …` when `PROCESS_SANDBOX=off` runs them unconfined.
    pub confinement: &'static str,
    /// True once the replica received SIGTERM: it claims nothing more, its event streams end,
    /// and its running commands get `SHUTDOWN_GRACE_SECONDS` to finish.
    pub draining: bool,
}

/// Liveness: answers without touching any dependency.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "get_liveness", security(()), responses((status = 200, description = "The process is alive", body = Object)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the database and the executor backend answer.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "get_readiness", security(()), responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "A dependency is not ready, or the replica is draining; the body says which", body = Readiness)))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let verdict = |r: domain::DomainResult<()>| r.map_or_else(|e| e.to_string(), |()| "ok".to_owned());
    let (db, exec) = tokio::join!(state.store_health.check(), state.executor.check());
    // Probes call this every few seconds, so the gauge doubles as the outage signal alerts use.
    for (dependency, result) in [("database", &db), ("executor", &exec)] {
        let up = if result.is_ok() { 1.0 } else { 0.0 };
        metrics::gauge!(services::metrics::DEPENDENCY_UP, "dependency" => dependency).set(up);
    }
    let draining = state.draining.is_cancelled();
    let body = Readiness {
        ready: db.is_ok() && exec.is_ok() && !draining,
        database: verdict(db),
        executor: verdict(exec),
        confinement: state.confinement,
        draining,
    };
    if body.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().insert_header(("Retry-After", "5")).json(body)
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "get_metrics", security(()), responses((status = 200, description = "Prometheus exposition format", content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Err(e) = state.commands.record_queue_gauges().await {
        // The scrape still answers: process metrics matter most when the store is down.
        tracing::warn!(error = %e, "could not read queue depth for /metrics");
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}
