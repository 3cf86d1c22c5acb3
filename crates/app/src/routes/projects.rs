//! `/v1/projects`.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use domain::command::{EnvMap, TimeoutSeconds};
use domain::project::{Project, ProjectName, ProjectPatch, ProjectSettings, Resources};
use domain::DomainError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use crate::http::problem::Problem;
use crate::http::{resource, ApiResult, Caller, JsonBody, PageOf, PageQuery};
use crate::state::AppState;

/// Default per-project concurrency.
const DEFAULT_MAX_CONCURRENT: u32 = 2;
/// Default command timeout.
const DEFAULT_TIMEOUT_SECONDS: u32 = 600;

/// Pod resources on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    /// CPU quantity (`500m`, `2`).
    pub cpu: Option<String>,
    /// Memory quantity (`512Mi`).
    pub memory: Option<String>,
}

/// A project on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Pod image.
    pub image: String,
    /// Working directory.
    pub workdir: String,
    /// Project environment.
    pub env: BTreeMap<String, String>,
    /// Pod resources.
    pub resources: ResourcesBody,
    /// Concurrency cap.
    pub max_concurrent_commands: u32,
    /// Default timeout.
    pub default_timeout_seconds: u32,
    /// Cap on queued commands; `null`: the server's `MAX_QUEUED_COMMANDS`.
    pub max_queued_commands: Option<u32>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<Project> for ProjectView {
    fn from(p: Project) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name.into(),
            image: p.image,
            workdir: p.workdir,
            env: p.env.into(),
            resources: ResourcesBody { cpu: p.resources.cpu, memory: p.resources.memory },
            max_concurrent_commands: p.max_concurrent_commands,
            default_timeout_seconds: p.default_timeout_seconds.get(),
            max_queued_commands: p.max_queued_commands,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// `POST /v1/projects` body.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// `^[a-z][a-z0-9-]{0,61}[a-z0-9]$`.
    pub name: String,
    /// Pod image.
    #[validate(length(min = 1, max = 512, message = "must be 1 to 512 characters"))]
    pub image: String,
    /// Absolute working directory (default `/workspace`).
    pub workdir: Option<String>,
    /// Environment for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Pod resources.
    #[serde(default)]
    pub resources: ResourcesBody,
    /// Concurrency cap, 1..=1000 (default 2).
    #[validate(range(min = 1, max = 1000, message = "must be between 1 and 1000"))]
    pub max_concurrent_commands: Option<u32>,
    /// Default command timeout, 1..=86400 (default 600).
    #[validate(range(min = 1, max = 86400, message = "must be between 1 and 86400"))]
    pub default_timeout_seconds: Option<u32>,
    /// Cap on queued commands, 1..=100000 (default: the server's `MAX_QUEUED_COMMANDS`);
    /// beyond it a submit answers `429` `queue_full`.
    #[validate(range(min = 1, max = 100000, message = "must be between 1 and 100000"))]
    pub max_queued_commands: Option<u32>,
}

/// `PATCH /v1/projects/{name}` body: only the fields given change.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    /// Pod image.
    #[validate(length(min = 1, max = 512, message = "must be 1 to 512 characters"))]
    pub image: Option<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// Environment (replaces the old one).
    pub env: Option<BTreeMap<String, String>>,
    /// Resources (replace the old ones).
    pub resources: Option<ResourcesBody>,
    /// Concurrency cap.
    #[validate(range(min = 1, max = 1000, message = "must be between 1 and 1000"))]
    pub max_concurrent_commands: Option<u32>,
    /// Default timeout.
    #[validate(range(min = 1, max = 86400, message = "must be between 1 and 86400"))]
    pub default_timeout_seconds: Option<u32>,
    /// Cap on queued commands, 1..=100000.
    #[validate(range(min = 1, max = 100000, message = "must be between 1 and 100000"))]
    pub max_queued_commands: Option<u32>,
}

fn resources(r: ResourcesBody) -> Resources {
    Resources { cpu: r.cpu, memory: r.memory }
}

fn env(vars: BTreeMap<String, String>) -> Result<EnvMap, DomainError> {
    EnvMap::parse(vars)
}

impl CreateProjectRequest {
    fn parse(self) -> Result<(ProjectName, ProjectSettings), DomainError> {
        let name = ProjectName::parse(&self.name)?;
        let settings = ProjectSettings {
            image: self.image,
            workdir: self.workdir.unwrap_or_else(|| "/workspace".into()),
            env: env(self.env)?,
            resources: resources(self.resources),
            max_concurrent_commands: self.max_concurrent_commands.unwrap_or(DEFAULT_MAX_CONCURRENT),
            default_timeout_seconds: TimeoutSeconds::new(
                self.default_timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
            )
            .map_err(|e| e.in_field("default_"))?,
            max_queued_commands: self.max_queued_commands,
        };
        Ok((name, settings))
    }
}

impl UpdateProjectRequest {
    fn parse(self) -> Result<ProjectPatch, DomainError> {
        Ok(ProjectPatch {
            image: self.image,
            workdir: self.workdir,
            env: self.env.map(env).transpose()?,
            resources: self.resources.map(resources),
            max_concurrent_commands: self.max_concurrent_commands,
            default_timeout_seconds: self
                .default_timeout_seconds
                .map(TimeoutSeconds::new)
                .transpose()
                .map_err(|e| e.in_field("default_"))?,
            max_queued_commands: self.max_queued_commands,
        })
    }
}

/// Parses the `{name}` path segment; an invalid name cannot exist, so it is a 404.
pub fn project_in_path(raw: &str) -> ApiResult<ProjectName> {
    ProjectName::parse(raw).map_err(|_| DomainError::NotFound("project".into()).into())
}

/// Creates a project (`projects:write`).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = CreateProjectRequest, responses(
    (status = 201, description = "Created", body = ProjectView), (status = 400, description = "Invalid input", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope or project not allowed", body = Problem),
    (status = 409, description = "Name taken", body = Problem), (status = 413, description = "Body too large", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn create(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateProjectRequest>,
) -> ApiResult<HttpResponse> {
    let (name, settings) = body.parse()?;
    actix_web::HttpMessage::extensions_mut(&req).insert(crate::http::context::AuditProject(name.to_string()));
    let project = state.projects.create(&caller.principal, name, settings).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/projects/{}", project.name)))
        .json(ProjectView::from(project)))
}

/// Lists the projects the key may see (`projects:read`).
#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(PageQuery), responses(
    (status = 200, description = "A page of projects", body = PageOf<ProjectView>), (status = 400, description = "Bad limit or cursor", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn list(state: web::Data<AppState>, caller: Caller, q: web::Query<PageQuery>) -> ApiResult<HttpResponse> {
    let page = state.projects.list(&caller.principal, q.page()?).await?;
    Ok(HttpResponse::Ok().json(PageOf::from_page(page, ProjectView::from)))
}

/// One project (`projects:read`).
#[utoipa::path(get, path = "/v1/projects/{name}", tag = "projects", params(("name" = String, Path, description = "Project name")), responses(
    (status = 200, description = "The project", body = ProjectView), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such project (or not visible)", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn get(state: web::Data<AppState>, caller: Caller, name: web::Path<String>) -> ApiResult<HttpResponse> {
    let project = state.projects.get(&caller.principal, &project_in_path(&name)?).await?;
    Ok(HttpResponse::Ok().json(ProjectView::from(project)))
}

/// Changes a project (`projects:write`).
#[utoipa::path(patch, path = "/v1/projects/{name}", tag = "projects", params(("name" = String, Path, description = "Project name")), request_body = UpdateProjectRequest, responses(
    (status = 200, description = "Updated", body = ProjectView), (status = 400, description = "Invalid input", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such project", body = Problem), (status = 413, description = "Body too large", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn update(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    JsonBody(body): JsonBody<UpdateProjectRequest>,
) -> ApiResult<HttpResponse> {
    let patch = body.parse()?;
    let project = state.projects.update(&caller.principal, &project_in_path(&name)?, patch).await?;
    Ok(HttpResponse::Ok().json(ProjectView::from(project)))
}

/// Deletes a project with no queued or running commands (`projects:write`).
#[utoipa::path(delete, path = "/v1/projects/{name}", tag = "projects", params(("name" = String, Path, description = "Project name")), responses(
    (status = 204, description = "Deleted"), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such project", body = Problem),
    (status = 409, description = "Commands still queued or running", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn delete(state: web::Data<AppState>, caller: Caller, name: web::Path<String>) -> ApiResult<HttpResponse> {
    state.projects.delete(&caller.principal, &project_in_path(&name)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/projects", "GET, POST").route(web::get().to(list)).route(web::post().to(create)))
        .service(
            resource("/v1/projects/{name}", "GET, PATCH, DELETE")
                .route(web::get().to(get))
                .route(web::patch().to(update))
                .route(web::delete().to(delete)),
        );
}
