//! The listener: HTTP/1.1 connections with upgrades, and the gate every request passes first
//! (control endpoint bypass, injected faults, bearer token).

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, Request};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use crate::api;
use crate::state::Sim;
use crate::status::ApiError;

/// Returned by the gate to make hyper close the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
struct Dropped;

/// The accept loop of a running simulator.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Waits until the listener is closed and every connection is gone (the shutdown token
    /// must be cancelled first).
    pub(crate) async fn stop(&mut self) {
        if let Err(e) = (&mut self.task).await {
            tracing::warn!(error = %e, "kube-sim accept loop ended abnormally");
        }
    }
}

/// Serves `listener` until `sim.shutdown` is cancelled.
pub(crate) fn serve(listener: TcpListener, sim: Arc<Sim>) -> ServerHandle {
    let router = api::router(Arc::clone(&sim));
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = sim.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // As Go's net package (and so the real apiserver) does: exec frames are
                        // small writes that must not wait for a delayed ACK.
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "could not set TCP_NODELAY");
                        }
                        connections.spawn(connection(stream, Arc::clone(&sim), router.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    });
    ServerHandle { task }
}

async fn connection(stream: tokio::net::TcpStream, sim: Arc<Sim>, router: Router) {
    let shutdown = sim.shutdown.clone();
    let service = service_fn(move |request: Request<Incoming>| gate(Arc::clone(&sim), router.clone(), request));
    let served = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {}
    }
}

fn is_control(path: &str) -> bool {
    path == "/_sim" || path.starts_with("/_sim/")
}

fn authorized(sim: &Sim, request: &Request<Body>) -> bool {
    let Some(token) = sim.config.token.as_deref() else {
        return true;
    };
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    presented.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|t| t.trim() == token)
}

async fn gate(sim: Arc<Sim>, router: Router, request: Request<Incoming>) -> Result<Response, Dropped> {
    let request = request.map(Body::new);
    if is_control(request.uri().path()) {
        return Ok(route(router, request).await);
    }
    sim.count_request();
    let faults = sim.faults.get();
    if faults.refuse_connections == Some(true) {
        return Err(Dropped);
    }
    if let Some(delay) = faults.latency() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = sim.shutdown.cancelled() => return Err(Dropped),
        }
    }
    if !authorized(&sim, &request) {
        return Ok(ApiError::unauthorized().into_response());
    }
    if let Some(code) = faults.error_status {
        if faults.roll() {
            return Ok(ApiError::injected(code).into_response());
        }
    }
    if faults.drop_connections == Some(true) && faults.roll() {
        return Err(Dropped);
    }
    Ok(route(router, request).await)
}

async fn route(router: Router, request: Request<Body>) -> Response {
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
