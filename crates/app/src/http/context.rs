//! Per-request context: request id, trace id, client address; and the `Caller` extractor that
//! authenticates and rate-limits.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use domain::api_key::ApiKey;
use domain::rate_limit::RateDecision;
use domain::DomainError;
use services::api_keys::Denial;
use services::auth_failures::FailureReason;
use services::Principal;

use super::problem::ApiError;
use crate::state::AppState;

/// Ids and address of one request, set by the observing middleware.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// `X-Request-Id`, echoed or generated.
    pub request_id: String,
    /// W3C trace id from `traceparent`, when valid.
    pub trace_id: Option<String>,
    /// Client address after `TRUSTED_PROXIES`.
    pub client_ip: IpAddr,
}

impl RequestContext {
    /// The context of `req` (a default when the middleware did not run, as in unit tests).
    pub fn of(req: &HttpRequest) -> RequestContext {
        req.extensions().get::<RequestContext>().cloned().unwrap_or_else(|| RequestContext {
            request_id: String::new(),
            trace_id: None,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        })
    }
}

/// A client-sent request id is echoed only if it is short, printable ASCII.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let ok = parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    ok.then(|| parts[1].to_owned())
}

/// The authenticated key behind a request; extracting it authenticates and counts the request
/// against the key's rate limit.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key.
    pub key: ApiKey,
    /// Its rights.
    pub principal: Principal,
    /// Request ids and address.
    pub context: RequestContext,
}

/// The project a request concerns when the path does not name it (creation): for the audit.
#[derive(Debug, Clone)]
pub struct AuditProject(pub String);

/// Stored in request extensions so the middleware can audit and set headers.
#[derive(Debug, Clone, Copy)]
pub struct AuthenticatedKey(pub domain::ids::ApiKeyId);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(&req).await })
    }
}

async fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Domain(DomainError::Internal("application state missing".into())))?;
    let context = RequestContext::of(req);
    // The key is judged first and the address's failure budget only spent on a failure, so a
    // valid key is never refused because others flood from its address.
    let key = match bearer(req) {
        Err(missing) => return Err(failed(req, state, &context, FailureReason::MissingKey, None, missing).await),
        Ok(presented) => match state.keys.authenticate_traced(presented, context.client_ip).await {
            Ok(key) => key,
            Err(Denial { error, key }) => {
                let reason = match error {
                    DomainError::Forbidden(_) => FailureReason::IpNotAllowed,
                    DomainError::Unauthorized(_) => FailureReason::InvalidKey,
                    // A store outage is not the caller's failure; it shows as 503 and in store
                    // metrics, and spends no budget.
                    other => return Err(other.into()),
                };
                return Err(failed(req, state, &context, reason, key, error.into()).await);
            }
        },
    };
    req.extensions_mut().insert(AuthenticatedKey(key.id));
    if let Some(actor) = req.extensions().get::<super::middleware::AuditActor>() {
        actor.set(key.id);
    }
    let decision = state.limiter.check(&key).await?;
    req.extensions_mut().insert(decision);
    if !decision.allowed {
        return Err(ApiError::RateLimited { retry_after: decision.retry_after_seconds.unwrap_or(1) });
    }
    Ok(Caller { principal: Principal::of(&key), key, context })
}

/// A failed authentication, noted for the middleware, which audits it in aggregate instead of
/// one record per request.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    /// Why it failed (`rate_limited` once the address's budget is spent).
    pub reason: FailureReason,
    /// The key whose secret was presented, when known.
    pub actor: Option<domain::ids::ApiKeyId>,
}

/// Spends one of the address's failures and counts it: `error` while the budget lasts, `429`
/// once it is spent.
async fn failed(
    req: &HttpRequest,
    state: &AppState,
    context: &RequestContext,
    reason: FailureReason,
    actor: Option<domain::ids::ApiKeyId>,
    error: ApiError,
) -> ApiError {
    let (reason, error) = match state.auth_failures.admit(context.client_ip).await {
        Ok(()) => (reason, error),
        Err(retry_after) => (FailureReason::RateLimited, ApiError::RateLimited { retry_after }),
    };
    metrics::counter!(services::metrics::AUTH_FAILURES_TOTAL, "reason" => reason.as_str()).increment(1);
    req.extensions_mut().insert(AuthFailure { reason, actor });
    error
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let missing = || ApiError::Domain(DomainError::Unauthorized("send Authorization: Bearer <API key>".into()));
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(missing)?.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    Ok(token.trim())
}

/// The rate-limit decision of this request, if one was made.
pub fn rate_decision(req: &HttpRequest) -> Option<RateDecision> {
    req.extensions().get::<RateDecision>().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(good).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-0000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_ids_are_bounded_printable_ascii() {
        assert!(valid_request_id("abc-123"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"x".repeat(129)));
    }
}
