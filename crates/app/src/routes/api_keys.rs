//! `/v1/api-keys`: admin-only key management.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use domain::api_key::{ApiKey, ApiKeySecret, ProjectAccess, Scope, ScopeSet};
use domain::ids::ApiKeyId;
use domain::network::CidrList;
use domain::project::ProjectName;
use domain::DomainError;
use serde::{Deserialize, Serialize};
use services::api_keys::NewKey;
use utoipa::ToSchema;
use validator::Validate;

use crate::http::problem::Problem;
use crate::http::{parse_id, resource, ApiResult, Caller, JsonBody, PageOf, PageQuery};
use crate::openapi::schemas;
use crate::state::AppState;

/// A key as listed (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// Id.
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    /// Name.
    pub name: String,
    /// First characters of the secret, to recognise it.
    pub prefix: String,
    /// Scopes.
    #[schema(value_type = Vec<schemas::ApiScope>)]
    pub scopes: Vec<String>,
    /// Visible projects; null means all.
    #[schema(schema_with = schemas::project_list)]
    pub projects: Option<Vec<String>>,
    /// Allowed client networks; empty means any.
    pub allowed_ips: Vec<String>,
    /// Per-key rate limit.
    pub rate_limit_rps: Option<u32>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Revocation.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last use (at most a minute stale).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            projects: k.projects.as_list().map(|l| l.into_iter().map(String::from).collect()),
            allowed_ips: k.allowed_ips.to_strings(),
            rate_limit_rps: k.rate_limit_rps,
            expires_at: k.expires_at,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A key with its secret: answered once, at creation or rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The full secret; store it now, it is never shown again.
    #[serde(rename = "key")]
    pub secret: String,
}

impl CreatedKey {
    fn new(key: ApiKey, secret: &ApiKeySecret) -> Self {
        Self { key: key.into(), secret: secret.expose().to_owned() }
    }
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Name.
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// At least one scope.
    #[validate(length(min = 1, message = "at least one scope is required"))]
    #[schema(value_type = Vec<schemas::ApiScope>, min_items = 1)]
    pub scopes: Vec<String>,
    /// Projects the key may see; omit or null for all.
    #[validate(length(max = 1000, message = "at most 1000 projects"))]
    #[schema(schema_with = schemas::project_list)]
    pub projects: Option<Vec<String>>,
    /// Client networks (CIDRs, or bare addresses) the key may be used from; empty: any.
    #[serde(default)]
    #[schema(schema_with = schemas::cidr_list)]
    pub allowed_ips: Vec<String>,
    /// Per-key requests per second.
    #[validate(range(min = 1, max = 100000, message = "must be between 1 and 100000"))]
    #[serde(default, deserialize_with = "crate::http::whole::option")]
    #[schema(schema_with = schemas::rate_limit_rps)]
    pub rate_limit_rps: Option<u32>,
    /// Expiry (RFC 3339).
    pub expires_at: Option<DateTime<Utc>>,
}

impl CreateKeyRequest {
    fn into_new_key(self) -> Result<NewKey, DomainError> {
        let scopes = self.scopes.iter().map(|s| s.parse::<Scope>()).collect::<Result<Vec<_>, _>>()?;
        let projects = match self.projects {
            None => ProjectAccess::All,
            Some(names) => ProjectAccess::Only(
                names
                    .iter()
                    .map(|n| ProjectName::parse(n).map_err(|e| e.in_field("projects.")))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(NewKey {
            name: self.name,
            scopes: ScopeSet::new(scopes)?,
            projects,
            allowed_ips: CidrList::parse(&self.allowed_ips)?,
            rate_limit_rps: self.rate_limit_rps,
            expires_at: self.expires_at.map(domain::to_micros_precision),
        })
    }
}

/// `POST /v1/api-keys/{id}/rotate` body.
#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old secret keeps working, in seconds (default 0).
    #[validate(range(max = 604800, message = "must be between 0 and 604800"))]
    #[serde(default, deserialize_with = "crate::http::whole::required")]
    #[schema(schema_with = schemas::grace_seconds)]
    pub grace_seconds: u64,
}

/// Creates a key (admin).
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", operation_id = "create_api_key", request_body = CreateKeyRequest, responses(
    (status = 201, description = "Created; the secret is in `key`", body = CreatedKey, headers(("Location" = String, description = "The key's URL"))),
    (status = 400, description = "Invalid input", body = Problem), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Not admin", body = Problem), (status = 413, description = "Body too large", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> ApiResult<HttpResponse> {
    let new = body.into_new_key()?;
    let (key, secret) = state.keys.create(&caller.principal, new).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/api-keys/{}", key.id)))
        .json(CreatedKey::new(key, &secret)))
}

/// Lists keys (admin).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", operation_id = "list_api_keys", params(PageQuery), responses(
    (status = 200, description = "A page of keys", body = crate::http::ApiKeyPage),
    (status = 400, description = "Bad limit or cursor", body = Problem), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Not admin", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn list(state: web::Data<AppState>, caller: Caller, q: web::Query<PageQuery>) -> ApiResult<HttpResponse> {
    let page = state.keys.list(&caller.principal, q.page()?).await?;
    Ok(HttpResponse::Ok().json(PageOf::from_page(page, ApiKeyView::from)))
}

/// One key (admin).
#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "api-keys", operation_id = "get_api_key", params(("id" = uuid::Uuid, Path, description = "Key id")), responses(
    (status = 200, description = "The key", body = ApiKeyView), (status = 400, description = "Not a UUID", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Not admin", body = Problem),
    (status = 404, description = "No such key", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn get(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let key = state.keys.get(&caller.principal, parse_id::<ApiKeyId>(&id)?).await?;
    Ok(HttpResponse::Ok().json(ApiKeyView::from(key)))
}

/// Revokes a key (admin); effective on every replica within a second.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", operation_id = "revoke_api_key", params(("id" = uuid::Uuid, Path, description = "Key id")), responses(
    (status = 200, description = "Revoked", body = ApiKeyView), (status = 400, description = "Not a UUID", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Not admin", body = Problem),
    (status = 404, description = "No such key", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn revoke(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let key = state.keys.revoke(&caller.principal, parse_id::<ApiKeyId>(&id)?).await?;
    Ok(HttpResponse::Ok().json(ApiKeyView::from(key)))
}

/// Rotates a key's secret (admin); the old one works for `grace_seconds`.
#[utoipa::path(post, path = "/v1/api-keys/{id}/rotate", tag = "api-keys", operation_id = "rotate_api_key", params(("id" = uuid::Uuid, Path, description = "Key id")), request_body(content = Option<RotateRequest>, description = "Optional: without a body the old secret stops working at once"), responses(
    (status = 200, description = "Rotated; the new secret is in `key`", body = CreatedKey), (status = 400, description = "Invalid input", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Not admin", body = Problem),
    (status = 404, description = "No such key", body = Problem), (status = 409, description = "Key revoked", body = Problem),
    (status = 413, description = "Body too large", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn rotate(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    JsonBody(body): JsonBody<RotateRequest>,
) -> ApiResult<HttpResponse> {
    let (key, secret) = state.keys.rotate(&caller.principal, parse_id::<ApiKeyId>(&id)?, body.grace_seconds).await?;
    Ok(HttpResponse::Ok().json(CreatedKey::new(key, &secret)))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/api-keys", "GET, POST").route(web::get().to(list)).route(web::post().to(create)))
        .service(resource("/v1/api-keys/{id}", "GET, DELETE").route(web::get().to(get)).route(web::delete().to(revoke)))
        .service(resource("/v1/api-keys/{id}/rotate", "POST").route(web::post().to(rotate)));
}
