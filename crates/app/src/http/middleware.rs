//! One observing middleware: request id and trace id, client address, metrics, RateLimit
//! headers, and the audit record of every mutating or refused request.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use domain::audit::{AuditEntry, AuditOutcome};
use domain::ids::ApiKeyId;
use domain::network::client_ip;
use domain::rate_limit::RateDecision;
use services::audit::AuditService;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use futures::future::OptionFuture;
use services::auth_failures::FailedAuth;

use super::context::{
    rate_decision, trace_id_of, valid_request_id, AuditProject, AuthFailure, AuthenticatedKey, RequestContext,
};
use crate::state::AppState;

const REQUEST_ID: &str = "x-request-id";

/// Wraps every request.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let context = context_of(&req, state.as_ref().map(|s| s.get_ref()));
    req.extensions_mut().insert(context.clone());
    let method = req.method().clone();
    let span = server_span(&req, &context);
    let actor = AuditActor::default();
    req.extensions_mut().insert(actor.clone());
    // Dropped with this future when the client hangs up before the answer: it then writes the
    // `client_closed` record from a task of its own. Disarmed below once an answer exists.
    let mut hang_up = HangUpGuard::arm(&req, state.as_ref(), &context, &method, actor);
    let res = next.call(req).instrument(span.clone()).await;
    hang_up.disarm();
    let mut res = match res {
        Ok(res) => res,
        Err(e) => {
            // An error the inner service did not turn into a response still gets its one record.
            let status = e.as_response_error().status_code();
            record_status(&span, status);
            record_metrics(&method, "unmatched", status, started);
            return Err(e);
        }
    };

    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
    let status = res.status();
    record_status(&span, status);
    record_metrics(&method, &route, status, started);
    set_header(&mut res, REQUEST_ID, &context.request_id);
    if let Some(decision) = rate_decision(res.request()) {
        set_rate_headers(&mut res, decision);
    }
    if let Some(state) = state {
        let failure = res.request().extensions().get::<AuthFailure>().cloned();
        // Written by its own task: should the client hang up now, dropping this future, the
        // record is still finished (awaited here so it is readable once the answer is).
        let written = if let Some(AuthFailure { reason, actor }) = failure {
            // Aggregated per address, reason, key and window, so a flood cannot flood the log.
            let failed = FailedAuth {
                client_ip: context.client_ip,
                reason,
                actor,
                resource: res.request().path().to_owned(),
                request_id: Some(context.request_id.clone()),
                trace_id: context.trace_id.clone(),
            };
            let failures = state.auth_failures.clone();
            Some(tokio::spawn(async move { failures.record(failed).await }))
        } else if must_audit(&method, status) {
            let entry = audit_entry(&res, &context, &method, &route, status);
            let audit = state.audit.clone();
            Some(tokio::spawn(async move { audit.record(entry).await }))
        } else {
            None
        };
        if let Some(Err(e)) = OptionFuture::from(written).await {
            tracing::error!(error = %e, "audit task failed");
        }
    }
    Ok(res)
}

/// The key that authenticated this request, shared with the hang-up guard, which cannot read
/// the request's extensions once the request has moved on into the handler.
#[derive(Debug, Clone, Default)]
pub struct AuditActor(Rc<Cell<Option<ApiKeyId>>>);

impl AuditActor {
    /// Notes the authenticated key.
    pub fn set(&self, id: ApiKeyId) {
        self.0.set(Some(id));
    }
}

/// Writes the `client_closed` record of a request whose future is dropped before it answered.
struct HangUpGuard {
    armed: Option<(AuditService, AuditEntry, AuditActor)>,
}

impl HangUpGuard {
    fn arm(
        req: &ServiceRequest,
        state: Option<&web::Data<AppState>>,
        ctx: &RequestContext,
        method: &Method,
        actor: AuditActor,
    ) -> Self {
        let status = StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST);
        let armed = state.filter(|_| must_audit(method, status)).map(|state| {
            // Routing has not run yet, but the resource map already knows the pattern.
            let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
            let entry = AuditEntry {
                at: domain::to_micros_precision(chrono::Utc::now()),
                actor: None,
                client_ip: Some(ctx.client_ip.to_string()),
                action: format!("{method} {route}"),
                resource: req.path().to_owned(),
                project: path_param(&route, req.path(), "{name}"),
                outcome: AuditOutcome::ClientClosed,
                detail: Some(CLIENT_CLOSED.to_string()),
                request_id: Some(ctx.request_id.clone()),
                trace_id: ctx.trace_id.clone(),
                count: 1,
            };
            (state.audit.clone(), entry, actor)
        });
        Self { armed }
    }

    fn disarm(&mut self) {
        self.armed = None;
    }
}

impl Drop for HangUpGuard {
    fn drop(&mut self) {
        let Some((audit, mut entry, actor)) = self.armed.take() else { return };
        entry.actor = actor.0.get();
        entry.at = domain::to_micros_precision(chrono::Utc::now());
        metrics::counter!(services::metrics::HTTP_REQUESTS_TOTAL, "method" => entry.action.split(' ').next().unwrap_or("").to_owned(), "route" => "client_closed", "status" => CLIENT_CLOSED.to_string()).increment(1);
        // Dropped futures cannot await; outside a runtime (never in the server) nothing is lost
        // that was not lost before.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { audit.record(entry).await });
        }
    }
}

/// The server span of a request, named and attributed as the HTTP semantic conventions say. It
/// continues the caller's W3C `traceparent`/`tracestate`; a malformed one is ignored and the
/// request starts a new trace.
fn server_span(req: &ServiceRequest, ctx: &RequestContext) -> tracing::Span {
    // The resource map knows the route's pattern before routing has run.
    let route = req.match_pattern();
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "http.request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route.as_deref().unwrap_or_default(),
        url.path = %req.path(),
        server.address = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %ctx.request_id,
    );
    // What only an exported span needs is not computed when tracing is off.
    if crate::telemetry::exporting() {
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        };
        span.record("otel.name", name);
        let host = req.connection_info().host().to_owned();
        let port = host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()));
        span.record("server.address", port.map_or(host.as_str(), |(h, _)| h));
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderCarrier(req.headers())));
        span.set_parent(parent);
    }
    span
}

/// Request headers as a propagator carrier.
struct HeaderCarrier<'a>(&'a actix_web::http::header::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(actix_web::http::header::HeaderName::as_str).collect()
    }
}

/// The response status on the server span; a 5xx makes it an error (a 4xx is the client's).
fn record_status(span: &tracing::Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// nginx's status for "client closed the request".
const CLIENT_CLOSED: u16 = 499;

/// The path segment at the position of `param` in `pattern` (`/v1/projects/{name}/…`).
fn path_param(pattern: &str, path: &str, param: &str) -> Option<String> {
    pattern.split('/').zip(path.split('/')).find(|(p, _)| *p == param).map(|(_, v)| v.to_owned())
}

fn context_of(req: &ServiceRequest, state: Option<&AppState>) -> RequestContext {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let request_id = header(REQUEST_ID)
        .filter(|id| valid_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let trace_id = header("traceparent").and_then(trace_id_of);
    let peer = req.peer_addr().map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    let trusted = state.map(|s| &s.http.trusted_proxies);
    let forwarded = forwarded_for(req);
    let client_ip = trusted.map_or(peer, |t| client_ip(peer, forwarded.as_deref(), t));
    RequestContext { request_id, trace_id, client_ip }
}

/// Every `X-Forwarded-For` line joined in order (RFC 9110 §5.3: several lines of a list header
/// are one list). A proxy such as HAProxy appends its own line after the client's, so reading
/// only the first line would believe the client's forgery. A line that is not text becomes a
/// token that does not parse, which stops the right-to-left walk there.
fn forwarded_for(req: &ServiceRequest) -> Option<String> {
    let lines: Vec<&str> = req.headers().get_all("x-forwarded-for").map(|v| v.to_str().unwrap_or("invalid")).collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

fn record_metrics(method: &Method, route: &str, status: StatusCode, started: Instant) {
    let (method, route) = (method.as_str().to_owned(), route.to_owned());
    metrics::counter!(services::metrics::HTTP_REQUESTS_TOTAL, "method" => method.clone(), "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!(services::metrics::HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
}

fn set_header<B>(res: &mut ServiceResponse<B>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

fn set_rate_headers<B>(res: &mut ServiceResponse<B>, d: RateDecision) {
    set_header(res, "ratelimit-limit", &d.limit.to_string());
    set_header(res, "ratelimit-remaining", &d.remaining.to_string());
    set_header(res, "ratelimit-reset", &d.reset_seconds.to_string());
}

fn must_audit(method: &Method, status: StatusCode) -> bool {
    let mutating = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS);
    mutating || refused
}

fn audit_entry<B>(
    res: &ServiceResponse<B>,
    ctx: &RequestContext,
    method: &Method,
    route: &str,
    status: StatusCode,
) -> AuditEntry {
    let req = res.request();
    let outcome = match status.as_u16() {
        401 | 403 | 429 => AuditOutcome::Denied,
        s if s < 400 => AuditOutcome::Success,
        _ => AuditOutcome::Failure,
    };
    AuditEntry {
        at: domain::to_micros_precision(chrono::Utc::now()),
        actor: req.extensions().get::<AuthenticatedKey>().map(|k| k.0),
        client_ip: Some(ctx.client_ip.to_string()),
        action: format!("{method} {route}"),
        resource: req.path().to_owned(),
        project: req
            .match_info()
            .get("name")
            .map(str::to_owned)
            .or_else(|| req.extensions().get::<AuditProject>().map(|p| p.0.clone())),
        outcome,
        detail: Some(status.as_u16().to_string()),
        request_id: Some(ctx.request_id.clone()),
        trace_id: ctx.trace_id.clone(),
        count: 1,
    }
}
