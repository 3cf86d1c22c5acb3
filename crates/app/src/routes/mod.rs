//! One module per resource, each with its handlers and wire types.

pub mod api_keys;
pub mod audit;
pub mod commands;
pub mod events;
pub mod health;
pub mod me;
pub mod pending;
pub mod pods;
pub mod projects;

use actix_web::web;

use crate::http::resource;

/// Registers every route of the service.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET").route(web::get().to(health::healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(health::readyz)))
        .service(resource("/metrics", "GET").route(web::get().to(health::metrics)))
        .service(resource("/openapi.json", "GET").route(web::get().to(crate::openapi::serve)))
        .configure(me::configure)
        .configure(api_keys::configure)
        .configure(projects::configure)
        .configure(pods::configure)
        .configure(commands::configure)
        .configure(audit::configure)
        .service(
            resource("/v1/webhooks", "GET, POST")
                .route(web::get().to(pending::webhooks))
                .route(web::post().to(pending::webhooks)),
        )
        .service(
            resource("/v1/webhooks/{tail:.*}", "GET, POST, PATCH, DELETE").route(web::route().to(pending::webhooks)),
        )
        .service(resource("/v1/webhook-deliveries/{tail:.*}", "GET, POST").route(web::route().to(pending::webhooks)));
}
