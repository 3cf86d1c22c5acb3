//! `/v1/projects/{name}/commands`, `/v1/commands/{id}`, output, cancel and `/v1/queue`.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use domain::command::{CommandSpec, CommandStatus, CommandStdin, EnvMap, Priority, TimeoutSeconds, WorkingDir};
use domain::ids::CommandId;
use domain::DomainError;
use serde::{Deserialize, Serialize};
use services::commands::{CommandView, Submission};
use services::open_requests::RequestKind;
use utoipa::ToSchema;
use validator::Validate;

use super::projects::project_in_path;
use crate::http::problem::Problem;
use crate::http::{parse_id, resource, ApiError, ApiResult, Caller, JsonBody, PageOf, PageQuery};
use crate::openapi::schemas;
use crate::state::AppState;

/// `POST /v1/projects/{name}/commands` body: exactly one of `command` (argv) or `script`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Program and arguments, run without a shell.
    #[schema(schema_with = schemas::argv)]
    pub command: Option<Vec<String>>,
    /// Shell text, run with `sh -c`.
    #[schema(schema_with = schemas::script)]
    pub script: Option<String>,
    /// Extra environment (over the project's).
    #[serde(default)]
    #[schema(schema_with = schemas::env)]
    pub env: BTreeMap<String, String>,
    /// Working directory: absolute, or relative to the project's workdir.
    #[schema(schema_with = schemas::cwd)]
    pub cwd: Option<String>,
    /// Text fed to stdin (at most 1 MiB).
    #[schema(schema_with = schemas::stdin)]
    pub stdin: Option<String>,
    /// Timeout (default: the project's).
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::timeout_seconds)]
    pub timeout_seconds: Option<u32>,
    /// Dequeue order (default `normal`).
    #[serde(default)]
    #[schema(value_type = schemas::Priority)]
    pub priority: Priority,
}

impl SubmitRequest {
    fn into_submission(self, idempotency_key: Option<String>) -> ApiResult<Submission> {
        Ok(Submission {
            spec: CommandSpec::parse(self.command, self.script)?,
            env: EnvMap::parse(self.env)?,
            cwd: self.cwd.map(WorkingDir::parse).transpose()?,
            stdin: self.stdin.map(CommandStdin::parse).transpose()?,
            timeout: self.timeout_seconds.map(TimeoutSeconds::new).transpose()?,
            priority: self.priority,
            idempotency_key,
        })
    }
}

/// A command on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandBody {
    /// Id.
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    /// Project name.
    #[schema(value_type = schemas::ProjectName)]
    pub project: String,
    /// Where it is in its life.
    #[schema(value_type = schemas::CommandStatus)]
    pub status: String,
    /// Argv, when given as one.
    pub command: Option<Vec<String>>,
    /// Script, when given as one.
    pub script: Option<String>,
    /// Command environment.
    #[schema(schema_with = schemas::env)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Timeout.
    #[schema(schema_with = schemas::timeout_seconds_required)]
    pub timeout_seconds: u32,
    /// Priority.
    #[schema(value_type = schemas::Priority)]
    pub priority: String,
    /// Exit code; null when none arrived.
    pub exit_code: Option<i32>,
    /// How it ended; null until it has.
    #[schema(value_type = Option<schemas::TerminationReason>)]
    pub termination_reason: Option<String>,
    /// Failure detail that is not an exit code.
    pub error: Option<String>,
    /// Whether a cancel was requested while it ran.
    pub cancel_requested: bool,
    /// 1-based place in the dequeue order while queued.
    pub queue_position: Option<u64>,
    /// Enqueue time.
    pub queued_at: DateTime<Utc>,
    /// Start time.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<CommandView> for CommandBody {
    fn from(v: CommandView) -> Self {
        let c = v.command;
        let (command, script) = match c.spec {
            CommandSpec::Argv(argv) => (Some(argv), None),
            CommandSpec::Script(s) => (None, Some(s)),
        };
        Self {
            id: c.id.to_string(),
            project: c.project.into(),
            status: c.status.as_str().into(),
            command,
            script,
            env: c.env.into(),
            cwd: c.cwd.map(String::from),
            timeout_seconds: c.timeout.get(),
            priority: c.priority.as_str().into(),
            exit_code: c.exit_code,
            termination_reason: c.termination_reason.map(|r| r.as_str().into()),
            error: c.error,
            cancel_requested: c.cancel_requested,
            queue_position: v.queue_position,
            queued_at: c.queued_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
        }
    }
}

/// Longest `?wait=` of a submit, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// `?wait=S` of a submit.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait for the command to end (0: don't wait).
    #[param(schema_with = schemas::wait_seconds)]
    pub wait: Option<u64>,
}

fn parse_wait(wait: Option<u64>) -> ApiResult<Duration> {
    match wait {
        None => Ok(Duration::ZERO),
        Some(n) if n <= MAX_WAIT_SECONDS => Ok(Duration::from_secs(n)),
        Some(_) => Err(ApiError::invalid("wait", "must be an integer between 0 and 60")),
    }
}

fn idempotency_key(req: &HttpRequest) -> ApiResult<Option<String>> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII")),
    }
}

/// Queues a command (`commands:write`).
#[utoipa::path(post, path = "/v1/projects/{name}/commands", tag = "commands", operation_id = "submit_command", params(("name" = schemas::ProjectName, Path, description = "Project name"), WaitQuery, ("Idempotency-Key" = Option<String>, Header, description = "Replays the first result for 24 h")), request_body = SubmitRequest, responses(
    (status = 200, description = "Finished within `wait`", body = CommandBody, headers(("Location" = String, description = "The command's URL"), ("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same `Idempotency-Key`"))),
    (status = 202, description = "Queued; `Location` names it", body = CommandBody, headers(("Location" = String, description = "The command's URL"), ("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same `Idempotency-Key`"))),
    (status = 400, description = "Invalid input", body = Problem), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such project", body = Problem),
    (status = 409, description = "Idempotency-Key reused with another request", body = Problem), (status = 413, description = "Body too large", body = Problem),
    (status = 429, description = "Rate limited (`rate_limited`), or the project's queue is full (`queue_full`): nothing was queued", body = Problem)))]
pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    q: web::Query<WaitQuery>,
    JsonBody(body): JsonBody<SubmitRequest>,
) -> ApiResult<HttpResponse> {
    let wait = parse_wait(q.wait)?;
    let project = project_in_path(&name)?;
    let submission = body.into_submission(idempotency_key(&req)?)?;
    let enqueued = state.commands.submit(&caller.principal, &project, submission).await?;
    let id = enqueued.command.id;
    let view = if wait.is_zero() {
        state.commands.wait(&caller.principal, id, wait).await?
    } else {
        // A wait ends early when the key is revoked or expires: its holder learns nothing more.
        let open =
            state.open_requests.open(&caller.key, RequestKind::Wait).map_err(|e| ApiError::TooManyStreams(e.limit))?;
        tokio::select! {
            view = state.commands.wait(&caller.principal, id, wait) => view?,
            () = open.ended() => {
                return Err(DomainError::Unauthorized("API key revoked or expired while waiting".into()).into());
            }
        }
    };
    let mut response = if view.command.status.is_terminal() && !wait.is_zero() {
        HttpResponse::Ok()
    } else {
        HttpResponse::Accepted()
    };
    response.insert_header(("Location", format!("/v1/commands/{id}")));
    if enqueued.replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.json(CommandBody::from(view)))
}

/// `?status=` of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Only commands in this status.
    #[param(value_type = Option<schemas::CommandStatus>)]
    pub status: Option<String>,
}

/// A project's commands (`commands:read`).
#[utoipa::path(get, path = "/v1/projects/{name}/commands", tag = "commands", operation_id = "list_commands", params(("name" = schemas::ProjectName, Path, description = "Project name"), StatusQuery, PageQuery), responses(
    (status = 200, description = "A page of commands", body = crate::http::CommandPage), (status = 400, description = "Bad status, limit or cursor", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such project", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    status: web::Query<StatusQuery>,
    q: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let status = status.status.as_deref().map(str::parse::<CommandStatus>).transpose()?;
    let page = state.commands.list(&caller.principal, &project_in_path(&name)?, status, q.page()?).await?;
    Ok(HttpResponse::Ok()
        .json(PageOf::from_page(page, |c| CommandBody::from(CommandView { command: c, queue_position: None }))))
}

/// One command (`commands:read`).
#[utoipa::path(get, path = "/v1/commands/{id}", tag = "commands", operation_id = "get_command", params(("id" = uuid::Uuid, Path, description = "Command id")), responses(
    (status = 200, description = "The command", body = CommandBody), (status = 400, description = "Not a UUID", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such command (or not visible)", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn get(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let view = state.commands.get(&caller.principal, parse_id::<CommandId>(&id)?).await?;
    Ok(HttpResponse::Ok().json(CommandBody::from(view)))
}

/// Captured output on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputBody {
    /// Stdout (head and tail when truncated).
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
    /// Whether stdout lost its middle.
    pub stdout_truncated: bool,
    /// Whether stderr lost its middle.
    pub stderr_truncated: bool,
}

/// A command's output (`commands:read`).
#[utoipa::path(get, path = "/v1/commands/{id}/output", tag = "commands", operation_id = "get_command_output", params(("id" = uuid::Uuid, Path, description = "Command id")), responses(
    (status = 200, description = "Captured output (empty until the command ends)", body = OutputBody), (status = 400, description = "Not a UUID", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such command", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn output(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let o = state.commands.output(&caller.principal, parse_id::<CommandId>(&id)?).await?;
    Ok(HttpResponse::Ok().json(OutputBody {
        stdout: o.stdout,
        stderr: o.stderr,
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
    }))
}

/// Cancels a command (`commands:write`).
#[utoipa::path(post, path = "/v1/commands/{id}/cancel", tag = "commands", operation_id = "cancel_command", params(("id" = uuid::Uuid, Path, description = "Command id")), responses(
    (status = 200, description = "Cancelled (queued) or being killed (running)", body = CommandBody), (status = 400, description = "Not a UUID", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such command", body = Problem), (status = 409, description = "Already ended", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn cancel(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let command = state.commands.cancel(&caller.principal, parse_id::<CommandId>(&id)?).await?;
    // The path names only the command; its project makes the record findable with ?project=.
    actix_web::HttpMessage::extensions_mut(&req)
        .insert(crate::http::context::AuditProject(command.project.to_string()));
    Ok(HttpResponse::Ok().json(CommandBody::from(CommandView { command, queue_position: None })))
}

/// Queued commands by priority.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct QueueDepth {
    /// Queued `critical` commands.
    pub critical: u64,
    /// Queued `high` commands.
    pub high: u64,
    /// Queued `normal` commands.
    pub normal: u64,
    /// Queued `low` commands.
    pub low: u64,
}

impl QueueDepth {
    fn count(&mut self, priority: Priority, n: u64) {
        let slot = match priority {
            Priority::Critical => &mut self.critical,
            Priority::High => &mut self.high,
            Priority::Normal => &mut self.normal,
            Priority::Low => &mut self.low,
        };
        *slot += n;
    }
}

/// `/v1/queue` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueBody {
    /// Queued commands by priority.
    pub depth: QueueDepth,
    /// Running commands.
    pub running: u64,
    /// Sum of `CONCURRENT_COMMANDS` over live replicas.
    pub capacity: u32,
    /// Live replicas.
    pub replicas: u32,
}

/// Queue depth and capacity (`commands:read`).
#[utoipa::path(get, path = "/v1/queue", tag = "commands", operation_id = "get_queue", responses(
    (status = 200, description = "Queue state", body = QueueBody), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn queue(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    let view = state.commands.queue(&caller.principal, state.http.live_worker_window).await?;
    let mut depth = QueueDepth::default();
    for (priority, n) in &view.stats.depth {
        depth.count(*priority, *n);
    }
    Ok(HttpResponse::Ok().json(QueueBody {
        depth,
        running: view.stats.running,
        capacity: view.workers.capacity,
        replicas: view.workers.replicas,
    }))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/projects/{name}/commands", "GET, POST").route(web::get().to(list)).route(web::post().to(submit)),
    )
    .service(resource("/v1/commands/{id}", "GET").route(web::get().to(get)))
    .service(resource("/v1/commands/{id}/output", "GET").route(web::get().to(output)))
    .service(resource("/v1/commands/{id}/events", "GET").route(web::get().to(super::events::events)))
    .service(resource("/v1/commands/{id}/cancel", "POST").route(web::post().to(cancel)))
    .service(resource("/v1/queue", "GET").route(web::get().to(queue)));
}
