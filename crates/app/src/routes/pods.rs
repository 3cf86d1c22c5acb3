//! `/v1/projects/{name}/pod`: the project's development pod.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use domain::pod::PodStatus;
use domain::DomainError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::projects::project_in_path;
use crate::http::context::AuditProject;
use crate::http::problem::Problem;
use crate::http::{resource, ApiResult, Caller};
use crate::openapi::schemas;
use crate::state::AppState;

/// Default `?tail=`.
const DEFAULT_TAIL: u64 = 100;
/// Most lines `?tail=` may ask for.
pub const MAX_TAIL: u64 = 10_000;

/// A pod on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct PodView {
    /// Where the pod is in its life.
    #[schema(value_type = schemas::PodPhase)]
    pub phase: String,
    /// Commands can run now.
    pub ready: bool,
    /// The pod's name (`local-<project>` with `EXECUTOR=process`).
    pub pod_name: Option<String>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// Why it is not ready or failed.
    pub reason: Option<String>,
}

impl From<PodStatus> for PodView {
    fn from(s: PodStatus) -> Self {
        Self {
            phase: s.phase.as_str().to_owned(),
            ready: s.ready,
            pod_name: s.pod_name,
            started_at: s.started_at,
            reason: s.reason,
        }
    }
}

/// `GET …/pod/logs` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PodLogs {
    /// The last lines, oldest first.
    pub lines: Vec<String>,
}

/// `?tail=` of `GET …/pod/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Lines from the end (default 100).
    #[param(schema_with = schemas::tail_lines)]
    pub tail: Option<u64>,
}

impl LogsQuery {
    fn tail(&self) -> ApiResult<u32> {
        let tail = self.tail.unwrap_or(DEFAULT_TAIL);
        if !(1..=MAX_TAIL).contains(&tail) {
            return Err(DomainError::invalid("tail", "must be between 1 and 10000").into());
        }
        // In 1..=10000, so it fits.
        Ok(u32::try_from(tail).unwrap_or(u32::MAX))
    }
}

/// The project's pod (`projects:read`); always `200`, `phase: stopped` when there is none.
#[utoipa::path(get, path = "/v1/projects/{name}/pod", tag = "pods", operation_id = "get_pod", params(("name" = schemas::ProjectName, Path, description = "Project name")), responses(
    (status = 200, description = "The pod's state", body = PodView), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such project (or not visible)", body = Problem),
    (status = 429, description = "Rate limited", body = Problem), (status = 503, description = "Pod backend unavailable or its circuit breaker open (Retry-After)", body = Problem)))]
pub async fn status(state: web::Data<AppState>, caller: Caller, name: web::Path<String>) -> ApiResult<HttpResponse> {
    let status = state.pods.status(&caller.principal, &project_in_path(&name)?).await?;
    Ok(HttpResponse::Ok().json(PodView::from(status)))
}

/// Starts the pod (`projects:write`); idempotent, answers at once with the current state.
#[utoipa::path(post, path = "/v1/projects/{name}/pod/start", tag = "pods", operation_id = "start_pod", params(("name" = schemas::ProjectName, Path, description = "Project name")), responses(
    (status = 202, description = "Start requested; poll the pod until ready", body = PodView), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such project (or not visible)", body = Problem),
    (status = 429, description = "Rate limited", body = Problem), (status = 503, description = "Pod backend unavailable or its circuit breaker open (Retry-After)", body = Problem)))]
pub async fn start(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let project = project_in_path(&name)?;
    req.extensions_mut().insert(AuditProject(project.to_string()));
    let status = state.pods.start(&caller.principal, &project).await?;
    Ok(HttpResponse::Accepted().json(PodView::from(status)))
}

/// Stops the pod (`projects:write`); idempotent.
#[utoipa::path(post, path = "/v1/projects/{name}/pod/stop", tag = "pods", operation_id = "stop_pod", params(("name" = schemas::ProjectName, Path, description = "Project name")), responses(
    (status = 202, description = "Stop requested", body = PodView), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such project (or not visible)", body = Problem),
    (status = 429, description = "Rate limited", body = Problem), (status = 503, description = "Pod backend unavailable or its circuit breaker open (Retry-After)", body = Problem)))]
pub async fn stop(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let project = project_in_path(&name)?;
    req.extensions_mut().insert(AuditProject(project.to_string()));
    let status = state.pods.stop(&caller.principal, &project).await?;
    Ok(HttpResponse::Accepted().json(PodView::from(status)))
}

/// The pod's last log lines (`projects:read`).
#[utoipa::path(get, path = "/v1/projects/{name}/pod/logs", tag = "pods", operation_id = "get_pod_logs", params(("name" = schemas::ProjectName, Path, description = "Project name"), LogsQuery), responses(
    (status = 200, description = "Log lines, oldest first (empty without a pod)", body = PodLogs), (status = 400, description = "Bad tail", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such project (or not visible)", body = Problem), (status = 429, description = "Rate limited", body = Problem),
    (status = 503, description = "Pod backend unavailable or its circuit breaker open (Retry-After)", body = Problem)))]
pub async fn logs(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> ApiResult<HttpResponse> {
    let tail = query.tail()?;
    let lines = state.pods.logs(&caller.principal, &project_in_path(&name)?, tail).await?;
    Ok(HttpResponse::Ok().json(PodLogs { lines }))
}

/// Registers the pod routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/projects/{name}/pod", "GET").route(web::get().to(status)))
        .service(resource("/v1/projects/{name}/pod/start", "POST").route(web::post().to(start)))
        .service(resource("/v1/projects/{name}/pod/stop", "POST").route(web::post().to(stop)))
        .service(resource("/v1/projects/{name}/pod/logs", "GET").route(web::get().to(logs)));
}
