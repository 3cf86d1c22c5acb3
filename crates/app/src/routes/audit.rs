//! `/v1/audit-log`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use domain::audit::{AuditRecord, Completeness};
use domain::ids::ApiKeyId;
use domain::ports::AuditFilter;
use domain::project::ProjectName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::problem::Problem;
use crate::http::{parse_id, resource, ApiResult, Caller, PageOf, PageQuery};
use crate::openapi::schemas;
use crate::state::AppState;

/// An audit record on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecordBody {
    /// Id.
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    /// Position in the chain.
    pub seq: i64,
    /// Time.
    pub at: DateTime<Utc>,
    /// Acting key.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub actor: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Action.
    pub action: String,
    /// Resource.
    pub resource: String,
    /// Project.
    pub project: Option<String>,
    /// How it ended; `client_closed`: the client hung up before an answer (`detail` is `499`).
    #[schema(value_type = schemas::AuditOutcomeName)]
    pub outcome: String,
    /// Detail (HTTP status, exit status).
    pub detail: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// How many occurrences the record stands for: 1, except for aggregated failed
    /// authentications (one record per address, reason and window).
    pub count: u32,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

impl From<AuditRecord> for AuditRecordBody {
    fn from(r: AuditRecord) -> Self {
        let e = r.entry;
        Self {
            id: r.id.to_string(),
            seq: r.seq,
            at: e.at,
            actor: e.actor.map(|a| a.to_string()),
            client_ip: e.client_ip,
            action: e.action,
            resource: e.resource,
            project: e.project,
            outcome: e.outcome.as_str().into(),
            detail: e.detail,
            request_id: e.request_id,
            trace_id: e.trace_id,
            count: e.count,
            prev_hash: hex_of(&r.prev_hash),
            hash: hex_of(&r.hash),
        }
    }
}

fn hex_of(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Filters of the audit list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Acting key id.
    #[param(value_type = Option<uuid::Uuid>)]
    pub actor: Option<String>,
    /// Action, e.g. `POST /v1/projects` or `command.start`.
    pub action: Option<String>,
    /// Project name.
    #[param(value_type = Option<schemas::ProjectName>)]
    pub project: Option<String>,
    /// At or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// A `?project=` filter names a project: anything else is a 400, as the document says.
fn project_filter(raw: &str) -> ApiResult<String> {
    Ok(ProjectName::parse(raw).map_err(|e| e.in_field("project."))?.into())
}

/// Audit records (`audit:read`).
#[utoipa::path(get, path = "/v1/audit-log", tag = "audit", operation_id = "list_audit_log", params(AuditQuery, PageQuery), responses(
    (status = 200, description = "A page of records, oldest first", body = crate::http::AuditRecordPage), (status = 400, description = "Bad filter, limit or cursor", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem), (status = 403, description = "Missing scope", body = Problem),
    (status = 404, description = "`project` names a project this key cannot see", body = Problem),
    (status = 429, description = "Rate limited", body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    f: web::Query<AuditQuery>,
    q: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let filter = AuditFilter {
        actor: f.actor.as_deref().map(parse_id::<ApiKeyId>).transpose()?,
        action: f.action.clone(),
        project: f.project.as_deref().map(project_filter).transpose()?,
        since: f.since,
        until: f.until,
        outcome: None,
        visible_projects: None,
    };
    let page = state.audit.list(&caller.principal, &filter, q.page()?).await?;
    Ok(HttpResponse::Ok().json(PageOf::from_page(page, AuditRecordBody::from)))
}

/// `/v1/audit-log/verify` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyBody {
    /// Whether the chain is intact.
    pub ok: bool,
    /// Records checked.
    pub checked: u64,
    /// First record that does not match.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub first_bad_id: Option<String>,
    /// `proven` when the server holds the checkpoint key and every signed checkpoint matched;
    /// `unproven` without a key (a deleted tail or a recomputed chain would not show).
    #[schema(value_type = schemas::Completeness)]
    pub completeness: String,
    /// Signed checkpoints checked.
    pub checkpoints_checked: u64,
    /// Records up to this sequence number are covered by a valid checkpoint.
    pub proven_through_seq: Option<i64>,
    /// Why a checkpoint did not match, when one did not.
    pub checkpoint_error: Option<String>,
}

/// Verifies the hash chain (`audit:read`).
#[utoipa::path(get, path = "/v1/audit-log/verify", tag = "audit", operation_id = "verify_audit_log", responses(
    (status = 200, description = "Verdict", body = VerifyBody), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 429, description = "Rate limited", body = Problem)))]
pub async fn verify(state: web::Data<AppState>, caller: Caller) -> ApiResult<HttpResponse> {
    let r = state.audit.verify(&caller.principal).await?;
    Ok(HttpResponse::Ok().json(VerifyBody {
        ok: r.ok,
        checked: r.checked,
        first_bad_id: r.first_bad_id.map(|i| i.to_string()),
        completeness: match r.completeness {
            Completeness::Proven => "proven",
            Completeness::Unproven => "unproven",
        }
        .to_owned(),
        checkpoints_checked: r.checkpoints_checked,
        proven_through_seq: r.proven_through_seq,
        checkpoint_error: r.checkpoint_error,
    }))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/audit-log", "GET").route(web::get().to(list)))
        .service(resource("/v1/audit-log/verify", "GET").route(web::get().to(verify)));
}
