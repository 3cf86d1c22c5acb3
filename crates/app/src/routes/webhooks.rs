//! `/v1/webhooks` and `/v1/webhook-deliveries`: subscriptions and delivery tracking
//! (`webhooks:manage`). A subscription's secret is shown only by create and rotate-secret.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use domain::api_key::ProjectAccess;
use domain::project::ProjectName;
use domain::webhook::{
    Attempt, Delivery, DeliveryDetail, DeliveryId, DeliveryStatus, EventSet, EventType, Webhook, WebhookId,
    WebhookSecret, WebhookUrl,
};
use domain::DomainError;
use serde::{Deserialize, Serialize};
use services::webhooks::{NewWebhook, WebhookPatch};
use utoipa::ToSchema;
use validator::Validate;

use crate::http::problem::Problem;
use crate::http::{parse_id, resource, ApiResult, Caller, JsonBody, PageOf, PageQuery};
use crate::openapi::schemas;
use crate::state::AppState;

/// A subscription on the wire (never with its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// Id.
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    /// Target URL.
    pub url: String,
    /// Event types it receives.
    #[schema(value_type = Vec<schemas::EventType>)]
    pub events: Vec<String>,
    /// Projects whose events it receives; null means all.
    #[schema(schema_with = schemas::project_list)]
    pub projects: Option<Vec<String>>,
    /// Disabled subscriptions receive nothing.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id.to_string(),
            url: w.url.to_string(),
            events: w.events.iter().map(|e| e.as_str().to_owned()).collect(),
            projects: w.projects.as_list().map(|l| l.into_iter().map(String::from).collect()),
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A subscription with its secret (create and rotate-secret only).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    /// The subscription.
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify signatures with it; shown once.
    pub secret: String,
}

impl WebhookWithSecret {
    fn new(webhook: Webhook, secret: &WebhookSecret) -> Self {
        Self { webhook: webhook.into(), secret: secret.expose().to_owned() }
    }
}

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `http` or `https` URL; private, loopback and link-local targets are refused unless
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS=true`.
    #[schema(schema_with = schemas::url_required)]
    pub url: String,
    /// Event types (default: all).
    #[schema(schema_with = schemas::event_list)]
    pub events: Option<Vec<String>>,
    /// Projects (default: all the key may see).
    #[validate(length(max = 1000, message = "at most 1000 projects"))]
    #[schema(schema_with = schemas::project_list_nonempty)]
    pub projects: Option<Vec<String>>,
}

/// `PATCH /v1/webhooks/{id}` body: only the fields given change.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    /// New target.
    #[schema(schema_with = schemas::url_optional)]
    pub url: Option<String>,
    /// New event types.
    #[schema(schema_with = schemas::event_list)]
    pub events: Option<Vec<String>>,
    /// New project list.
    #[validate(length(max = 1000, message = "at most 1000 projects"))]
    #[schema(schema_with = schemas::project_list_nonempty)]
    pub projects: Option<Vec<String>>,
    /// Re-enable (clears the reason) or disable.
    pub enabled: Option<bool>,
}

/// `POST /v1/webhooks/{id}/rotate-secret` body.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// How long the old secret still signs (both signatures are sent), in seconds (default 0).
    #[serde(default, deserialize_with = "crate::http::whole::required")]
    #[validate(range(max = 604800, message = "must be between 0 and 604800 (one week)"))]
    #[schema(schema_with = schemas::grace_seconds)]
    pub grace_seconds: u64,
}

/// One delivery attempt on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1, 2, …
    pub number: u32,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Time to the answer.
    pub latency_ms: u32,
    /// The first 20 KB of the answer.
    pub response_snippet: Option<String>,
    /// Why it failed without an answer (timeout, connect, refused target).
    pub error: Option<String>,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        Self {
            number: a.number,
            at: a.at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            response_snippet: a.response_snippet,
            error: a.error,
        }
    }
}

/// A delivery on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Id; also the `webhook-id` header of every attempt.
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    /// Subscription.
    #[schema(value_type = uuid::Uuid)]
    pub webhook_id: String,
    /// Event.
    #[schema(value_type = uuid::Uuid)]
    pub event_id: String,
    /// Event type.
    #[schema(value_type = schemas::EventType)]
    pub event_type: String,
    /// Where the delivery is.
    #[schema(value_type = schemas::DeliveryStatus)]
    pub status: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The delivery this one redelivers.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub redelivery_of: Option<String>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// The HTTP status of the last attempt's answer (`null` before any attempt or when none
    /// arrived).
    pub last_status_code: Option<u16>,
    /// How long the last attempt took, in milliseconds.
    pub last_latency_ms: Option<u32>,
    /// What went wrong in the last attempt when no answer arrived (timeout, refused, …).
    pub last_error: Option<String>,
}

impl DeliveryView {
    /// The listing view: the delivery with the outcome of its latest attempt.
    fn with_last_attempt(delivery: Delivery, last: Option<&Attempt>) -> Self {
        Self {
            last_status_code: last.and_then(|a| a.status_code),
            last_latency_ms: last.map(|a| a.latency_ms),
            last_error: last.and_then(|a| a.error.clone()),
            ..Self::from(delivery)
        }
    }
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            last_status_code: None,
            last_latency_ms: None,
            last_error: None,
            id: d.id.to_string(),
            webhook_id: d.webhook_id.to_string(),
            event_id: d.event_id.to_string(),
            event_type: d.event_type.as_str().to_owned(),
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            redelivery_of: d.redelivery_of.map(|id| id.to_string()),
            created_at: d.created_at,
        }
    }
}

/// A delivery with its attempts and the payload sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetailView {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: DeliveryView,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<AttemptView>,
    /// The JSON body sent (`{"type","timestamp","data"}`).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<DeliveryDetail> for DeliveryDetailView {
    fn from(d: DeliveryDetail) -> Self {
        Self {
            delivery: DeliveryView::with_last_attempt(d.delivery, d.attempts.last()),
            attempt_log: d.attempts.into_iter().map(AttemptView::from).collect(),
            payload: serde_json::from_str(d.event.payload.as_str()).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// `?status=` of the delivery list, plus paging.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only deliveries in this status.
    #[param(value_type = Option<schemas::DeliveryStatus>)]
    pub status: Option<String>,
    /// Page size (default 50).
    #[param(schema_with = schemas::page_limit)]
    pub limit: Option<i64>,
    /// Cursor from the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

fn url(raw: &str) -> Result<WebhookUrl, DomainError> {
    WebhookUrl::parse(raw).map_err(|e| e.in_field("url."))
}

fn events(raw: Option<Vec<String>>) -> Result<EventSet, DomainError> {
    let Some(names) = raw else { return Ok(EventSet::all()) };
    if names.len() > schemas::MAX_EVENT_ENTRIES {
        return Err(DomainError::invalid("events", format!("at most {} entries", schemas::MAX_EVENT_ENTRIES)));
    }
    let parsed = names.iter().map(|n| n.parse::<EventType>()).collect::<Result<Vec<_>, _>>();
    EventSet::new(parsed.map_err(|e| e.in_field("events."))?).map_err(|e| e.in_field("events."))
}

fn projects(raw: Option<Vec<String>>) -> Result<ProjectAccess, DomainError> {
    match raw {
        None => Ok(ProjectAccess::All),
        Some(names) => Ok(ProjectAccess::Only(
            names
                .iter()
                .map(|n| ProjectName::parse(n).map_err(|e| e.in_field("projects.")))
                .collect::<Result<_, _>>()?,
        )),
    }
}

/// Creates a subscription (`webhooks:manage`); the answer holds the secret, shown once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", operation_id = "create_webhook", request_body = CreateWebhookRequest, responses(
    (status = 201, description = "Created; `secret` is shown only now", body = WebhookWithSecret, headers(("Location" = String, description = "The subscription's URL"))),
    (status = 400, description = "Invalid input, or a refused target (SSRF guard)", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope or project", body = Problem),
    (status = 413, description = "Body too large", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateWebhookRequest>,
) -> ApiResult<HttpResponse> {
    let new = NewWebhook { url: url(&body.url)?, events: events(body.events)?, projects: projects(body.projects)? };
    let (webhook, secret) = state.webhooks.create(&caller.principal, new).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/webhooks/{}", webhook.id)))
        .json(WebhookWithSecret::new(webhook, &secret)))
}

/// Lists subscriptions (`webhooks:manage`).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", operation_id = "list_webhooks", params(PageQuery), responses(
    (status = 200, description = "A page of subscriptions", body = crate::http::WebhookPage), (status = 400, description = "Bad limit or cursor", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn list(state: web::Data<AppState>, caller: Caller, q: web::Query<PageQuery>) -> ApiResult<HttpResponse> {
    let page = state.webhooks.list(&caller.principal, q.page()?).await?;
    Ok(HttpResponse::Ok().json(PageOf::from_page(page, WebhookView::from)))
}

/// One subscription (`webhooks:manage`).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "get_webhook", params(("id" = uuid::Uuid, Path, description = "Webhook id")), responses(
    (status = 200, description = "The subscription", body = WebhookView), (status = 400, description = "Bad id", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such subscription", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn get(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let webhook = state.webhooks.get(&caller.principal, parse_id::<WebhookId>(&id)?).await?;
    Ok(HttpResponse::Ok().json(WebhookView::from(webhook)))
}

/// Changes a subscription (`webhooks:manage`); `{"enabled": true}` re-enables a disabled one.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "update_webhook", params(("id" = uuid::Uuid, Path, description = "Webhook id")), request_body(content = Option<UpdateWebhookRequest>, description = "Optional: an empty change leaves the subscription as it is"), responses(
    (status = 200, description = "Updated", body = WebhookView), (status = 400, description = "Invalid input or refused target", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope or project", body = Problem),
    (status = 404, description = "No such subscription", body = Problem), (status = 413, description = "Body too large", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn update(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    JsonBody(body): JsonBody<UpdateWebhookRequest>,
) -> ApiResult<HttpResponse> {
    let patch = WebhookPatch {
        url: body.url.as_deref().map(url).transpose()?,
        events: body.events.map(|e| events(Some(e))).transpose()?,
        projects: body.projects.map(|p| projects(Some(p))).transpose()?,
        enabled: body.enabled,
    };
    let webhook = state.webhooks.update(&caller.principal, parse_id::<WebhookId>(&id)?, patch).await?;
    Ok(HttpResponse::Ok().json(WebhookView::from(webhook)))
}

/// Deletes a subscription and its deliveries (`webhooks:manage`).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "delete_webhook", params(("id" = uuid::Uuid, Path, description = "Webhook id")), responses(
    (status = 204, description = "Deleted"), (status = 400, description = "Bad id", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such subscription", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn delete(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    state.webhooks.delete(&caller.principal, parse_id::<WebhookId>(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Sends a `ping` event to this subscription only (`webhooks:manage`).
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", operation_id = "test_webhook", params(("id" = uuid::Uuid, Path, description = "Webhook id")), responses(
    (status = 202, description = "Ping queued; see the subscription's deliveries"), (status = 400, description = "Bad id", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such subscription", body = Problem), (status = 409, description = "Subscription disabled", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn test(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let event = state.webhooks.test(&caller.principal, parse_id::<WebhookId>(&id)?).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({"event_id": event.id.to_string(), "type": "ping"})))
}

/// Replaces the signing secret (`webhooks:manage`); the old one keeps signing for `grace_seconds`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", operation_id = "rotate_webhook_secret", params(("id" = uuid::Uuid, Path, description = "Webhook id")), request_body(content = Option<RotateSecretRequest>, description = "Optional: without a body the old secret stops signing at once"), responses(
    (status = 200, description = "Rotated; the new `secret` is shown only now", body = WebhookWithSecret), (status = 400, description = "Invalid input", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such subscription", body = Problem), (status = 413, description = "Body too large", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn rotate_secret(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    JsonBody(body): JsonBody<RotateSecretRequest>,
) -> ApiResult<HttpResponse> {
    let grace = Duration::from_secs(body.grace_seconds);
    let (webhook, secret) = state.webhooks.rotate_secret(&caller.principal, parse_id::<WebhookId>(&id)?, grace).await?;
    Ok(HttpResponse::Ok().json(WebhookWithSecret::new(webhook, &secret)))
}

/// A subscription's deliveries, newest first (`webhooks:manage`).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "list_webhook_deliveries", params(("id" = uuid::Uuid, Path, description = "Webhook id"), DeliveryQuery), responses(
    (status = 200, description = "A page of deliveries", body = crate::http::DeliveryPage), (status = 400, description = "Bad id, status, limit or cursor", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such subscription", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    q: web::Query<DeliveryQuery>,
) -> ApiResult<HttpResponse> {
    let status =
        q.status.as_deref().map(str::parse::<DeliveryStatus>).transpose().map_err(|e| e.in_field("status."))?;
    let page = PageQuery { limit: q.limit, cursor: q.cursor.clone() }.page()?;
    let page = state.webhooks.list_deliveries(&caller.principal, parse_id::<WebhookId>(&id)?, status, page).await?;
    let last = state.webhooks.last_attempts(&page.items).await?;
    Ok(HttpResponse::Ok().json(PageOf::from_page(page, |d| {
        let attempt = last.get(&d.id);
        DeliveryView::with_last_attempt(d, attempt)
    })))
}

/// One delivery with every attempt (`webhooks:manage`).
#[utoipa::path(get, path = "/v1/webhook-deliveries/{id}", tag = "webhooks", operation_id = "get_webhook_delivery", params(("id" = uuid::Uuid, Path, description = "Delivery id")), responses(
    (status = 200, description = "The delivery and its attempts", body = DeliveryDetailView), (status = 400, description = "Bad id", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such delivery", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn delivery(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let detail = state.webhooks.get_delivery(&caller.principal, parse_id::<DeliveryId>(&id)?).await?;
    Ok(HttpResponse::Ok().json(DeliveryDetailView::from(detail)))
}

/// Sends the delivery's event again as a new delivery (`webhooks:manage`).
#[utoipa::path(post, path = "/v1/webhook-deliveries/{id}/redeliver", tag = "webhooks", operation_id = "redeliver_webhook_delivery", params(("id" = uuid::Uuid, Path, description = "Delivery id")), responses(
    (status = 202, description = "The new delivery", body = DeliveryView), (status = 400, description = "Bad id", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "No such delivery", body = Problem), (status = 409, description = "Subscription disabled", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn redeliver(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let delivery = state.webhooks.redeliver(&caller.principal, parse_id::<DeliveryId>(&id)?).await?;
    Ok(HttpResponse::Accepted().json(DeliveryView::from(delivery)))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/webhooks", "GET, POST").route(web::get().to(list)).route(web::post().to(create)))
        .service(
            resource("/v1/webhooks/{id}", "GET, PATCH, DELETE")
                .route(web::get().to(get))
                .route(web::patch().to(update))
                .route(web::delete().to(delete)),
        )
        .service(resource("/v1/webhooks/{id}/test", "POST").route(web::post().to(test)))
        .service(resource("/v1/webhooks/{id}/rotate-secret", "POST").route(web::post().to(rotate_secret)))
        .service(resource("/v1/webhooks/{id}/deliveries", "GET").route(web::get().to(deliveries)))
        .service(resource("/v1/webhook-deliveries/{id}", "GET").route(web::get().to(delivery)))
        .service(resource("/v1/webhook-deliveries/{id}/redeliver", "POST").route(web::post().to(redeliver)));
}
