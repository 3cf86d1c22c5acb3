//! One module per resource, each with its handlers and wire types.

pub mod api_keys;
pub mod audit;
pub mod commands;
pub mod debug;
pub mod events;
pub mod health;
pub mod me;
pub mod pods;
pub mod projects;
pub mod webhooks;

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
        .configure(webhooks::configure);
}
