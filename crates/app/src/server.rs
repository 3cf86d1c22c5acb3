//! The actix-web server: middleware, extractor settings, routes, fallbacks.

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::http::{self, middleware::observe};
use crate::routes::debug::{self, DebugListener};
use crate::state::AppState;

/// Builds the HTTP server on an already bound listener (tests bind port 0).
pub fn server(
    state: AppState,
    listener: std::net::TcpListener,
    shutdown_timeout_secs: u64,
) -> std::io::Result<actix_web::dev::Server> {
    let debug_here = !state.http.debug_on_own_listener;
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
            .configure(|cfg| {
                if debug_here {
                    debug::configure(cfg);
                }
            })
            .default_service(web::to(http::route_not_found))
    })
    // Event streams cut connections whose clients stopped reading.
    .on_connect(http::connection::record_socket)
    .shutdown_timeout(shutdown_timeout_secs)
    // `serve` handles SIGTERM itself: the drain comes before the HTTP server stops.
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// The `DEBUG_LISTEN_ADDR` server: `/debug/pprof/profile` alone, observed like the main port.
pub fn debug_server(
    state: AppState,
    listener: std::net::TcpListener,
    marker: DebugListener,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(marker)
            .app_data(http::query_config())
            .wrap(from_fn(observe))
            .configure(debug::configure)
            .default_service(web::to(http::route_not_found))
    })
    // One profile at a time: a second worker would only answer 409s.
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
