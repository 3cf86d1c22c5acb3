//! The OpenAPI 3.1 document, generated from the handlers' annotations and completed by
//! [`document::CommonResponses`].

pub mod document;
pub mod schemas;

use std::sync::OnceLock;

use actix_web::{HttpResponse, ResponseError};
use domain::DomainError;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use self::document::{CommandOrScript, CommonResponses};
use crate::http::{ApiError, ApiKeyPage, AuditRecordPage, CommandPage, DeliveryPage, ProjectPage, WebhookPage};
use crate::routes::{api_keys, audit, commands, debug, events, health, me, pods, projects, webhooks};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "rdev-api", description = "Run shell commands for automation in per-project development pods."),
    modifiers(&BearerAuth, &CommonResponses, &CommandOrScript),
    security(("bearer" = [])),
    paths(
        health::healthz, health::readyz, health::metrics, serve, me::me,
        api_keys::create, api_keys::list, api_keys::get, api_keys::revoke, api_keys::rotate,
        projects::create, projects::list, projects::get, projects::update, projects::delete,
        pods::status, pods::start, pods::stop, pods::logs,
        commands::submit, commands::list, commands::get, commands::output, commands::cancel, commands::queue,
        events::events, audit::list, audit::verify,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete, webhooks::test,
        webhooks::rotate_secret, webhooks::deliveries, webhooks::delivery, webhooks::redeliver,
        debug::profile,
    ),
    components(schemas(
        crate::http::problem::Problem,
        ProjectPage, CommandPage, ApiKeyPage, AuditRecordPage, WebhookPage, DeliveryPage,
        schemas::CommandStatus, schemas::Priority, schemas::TerminationReason, schemas::ApiScope,
        schemas::AuditOutcomeName, schemas::PodPhase, schemas::EventType, schemas::DeliveryStatus,
        schemas::ProblemCode, schemas::Completeness, schemas::ProjectName,
    ))
)]
pub struct ApiDoc;

/// Serves the document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "get_openapi_document", security(()), responses((status = 200, description = "This document", body = Object)))]
pub async fn serve() -> HttpResponse {
    // Built once: the document is fixed at compile time, and generating it walks every schema.
    static DOCUMENT: OnceLock<Result<String, String>> = OnceLock::new();
    match DOCUMENT.get_or_init(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string())) {
        Ok(body) => HttpResponse::Ok().content_type("application/json").body(body.as_str()),
        Err(e) => ApiError::Domain(DomainError::Internal(format!("the OpenAPI document does not serialise: {e}")))
            .error_response(),
    }
}
