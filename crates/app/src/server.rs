//! The actix-web server: middleware, extractor settings, routes, fallbacks.

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::http::{self, middleware::observe};
use crate::state::AppState;

/// Builds the HTTP server on an already bound listener (tests bind port 0).
pub fn server(
    state: AppState,
    listener: std::net::TcpListener,
    shutdown_timeout_secs: u64,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(http::query_config())
            .app_data(http::path_config())
            // The last `wrap` runs first: `observe` (request id, metrics, audit) sees every
            // request, the header limit's refusals included.
            .wrap(from_fn(http::limits::header_limit))
            .wrap(from_fn(observe))
            .configure(crate::routes::configure)
            .default_service(web::to(http::route_not_found))
    })
    .shutdown_timeout(shutdown_timeout_secs)
    .listen(listener)?
    .run();
    Ok(server)
}
