//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{api_keys, audit, commands, debug, events, health, me, pods, projects, webhooks};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Public endpoints carry `security: []` (no authentication), overriding the global bearer.
struct PublicEndpoints;

impl Modify for PublicEndpoints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            if let Some(item) = openapi.paths.paths.get_mut(path) {
                if let Some(op) = item.get.as_mut() {
                    op.security = Some(Vec::new());
                }
            }
        }
    }
}

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "rdev-api", description = "Run shell commands for automation in per-project development pods."),
    modifiers(&BearerAuth, &PublicEndpoints),
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
    components(schemas(crate::http::problem::Problem))
)]
pub struct ApiDoc;

/// Serves the document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", security(()), responses((status = 200, description = "This document", body = Object)))]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
