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
use crate::openapi::schemas;
use crate::state::AppState;

/// Default per-project concurrency.
const DEFAULT_MAX_CONCURRENT: u32 = 2;
/// Default command timeout.
const DEFAULT_TIMEOUT_SECONDS: u32 = 600;

/// Pod resources on the wire. Read from a JSON object only: a derived struct would also take an
/// array (`[cpu, memory]`), which the document does not allow.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, try_from = "ResourcesObject")]
pub struct ResourcesBody {
    /// CPU quantity (`500m`, `2`).
    #[schema(schema_with = schemas::quantity)]
    pub cpu: Option<String>,
    /// Memory quantity (`512Mi`).
    #[schema(schema_with = schemas::quantity)]
    pub memory: Option<String>,
}

/// The object form of [`ResourcesBody`].
type ResourcesObject = BTreeMap<String, Option<String>>;

impl TryFrom<ResourcesObject> for ResourcesBody {
    type Error = String;

    fn try_from(mut fields: ResourcesObject) -> Result<Self, String> {
        let body = Self { cpu: fields.remove("cpu").flatten(), memory: fields.remove("memory").flatten() };
        match fields.keys().next() {
            Some(unknown) => Err(format!("unknown field `{unknown}`, expected `cpu` or `memory`")),
            None => Ok(body),
        }
    }
}

/// A project on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    /// Id.
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    /// Name.
    #[schema(value_type = schemas::ProjectName)]
    pub name: String,
    /// Pod image.
    pub image: String,
    /// Working directory.
    pub workdir: String,
    /// Project environment.
    #[schema(schema_with = schemas::env)]
    pub env: BTreeMap<String, String>,
    /// Pod resources.
    pub resources: ResourcesBody,
    /// Concurrency cap.
    #[schema(minimum = 1)]
    pub max_concurrent_commands: u32,
    /// Default timeout.
    #[schema(schema_with = schemas::timeout_seconds_required)]
    pub default_timeout_seconds: u32,
    /// Cap on queued commands; `null`: the server's `MAX_QUEUED_COMMANDS`.
    #[schema(schema_with = schemas::max_queued_commands)]
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
    /// The project's name.
    #[schema(value_type = schemas::ProjectName)]
    pub name: String,
    /// Pod image.
    #[schema(schema_with = schemas::image_required)]
    pub image: String,
    /// Absolute working directory (default `/workspace`).
    #[schema(schema_with = schemas::workdir)]
    pub workdir: Option<String>,
    /// Environment for every command.
    #[serde(default)]
    #[schema(schema_with = schemas::env)]
    pub env: BTreeMap<String, String>,
    /// Pod resources.
    #[serde(default)]
    pub resources: ResourcesBody,
    /// Concurrency cap (default 2).
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::max_concurrent_commands)]
    pub max_concurrent_commands: Option<u32>,
    /// Default command timeout (default 600).
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::timeout_seconds)]
    pub default_timeout_seconds: Option<u32>,
    /// Cap on queued commands (default: the server's `MAX_QUEUED_COMMANDS`); beyond it a
    /// submit answers `429` `queue_full`.
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::max_queued_commands)]
    pub max_queued_commands: Option<u32>,
}

/// `PATCH /v1/projects/{name}` body: only the fields given change.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    /// Pod image.
    #[schema(schema_with = schemas::image_optional)]
    pub image: Option<String>,
    /// Working directory.
    #[schema(schema_with = schemas::workdir)]
    pub workdir: Option<String>,
    /// Environment (replaces the old one).
    #[schema(schema_with = schemas::optional_env)]
    pub env: Option<BTreeMap<String, String>>,
    /// Resources (replace the old ones).
    pub resources: Option<ResourcesBody>,
    /// Concurrency cap.
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::max_concurrent_commands)]
    pub max_concurrent_commands: Option<u32>,
    /// Default timeout.
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::timeout_seconds)]
    pub default_timeout_seconds: Option<u32>,
    /// Cap on queued commands; `null` leaves it as it is.
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::max_queued_commands)]
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

/// Parses the `{name}` path segment: a malformed name is a `400`, as the document's pattern
/// says (it tells nothing about which projects exist).
pub fn project_in_path(raw: &str) -> ApiResult<ProjectName> {
    ProjectName::parse(raw).map_err(|e| e.in_field("path.").into())
}

/// Creates a project (`projects:write`).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", operation_id = "create_project", request_body = CreateProjectRequest, responses(
    (status = 201, description = "Created", body = ProjectView, headers(("Location" = String, description = "The project's URL"))), (status = 400, description = "Invalid input", body = Problem),
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
#[utoipa::path(get, path = "/v1/projects", tag = "projects", operation_id = "list_projects", params(PageQuery), responses(
    (status = 200, description = "A page of projects", body = crate::http::ProjectPage), (status = 400, description = "Bad limit or cursor", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn list(state: web::Data<AppState>, caller: Caller, q: web::Query<PageQuery>) -> ApiResult<HttpResponse> {
    let page = state.projects.list(&caller.principal, q.page()?).await?;
    Ok(HttpResponse::Ok().json(PageOf::from_page(page, ProjectView::from)))
}

/// One project (`projects:read`).
#[utoipa::path(get, path = "/v1/projects/{name}", tag = "projects", operation_id = "get_project", params(("name" = schemas::ProjectName, Path, description = "Project name")), responses(
    (status = 200, description = "The project", body = ProjectView), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such project (or not visible)", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn get(state: web::Data<AppState>, caller: Caller, name: web::Path<String>) -> ApiResult<HttpResponse> {
    let project = state.projects.get(&caller.principal, &project_in_path(&name)?).await?;
    Ok(HttpResponse::Ok().json(ProjectView::from(project)))
}

/// Changes a project (`projects:write`).
#[utoipa::path(patch, path = "/v1/projects/{name}", tag = "projects", operation_id = "update_project", params(("name" = schemas::ProjectName, Path, description = "Project name")), request_body(content = Option<UpdateProjectRequest>, description = "Optional: an empty change leaves the project as it is"), responses(
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
#[utoipa::path(delete, path = "/v1/projects/{name}", tag = "projects", operation_id = "delete_project", params(("name" = schemas::ProjectName, Path, description = "Project name")), responses(
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
