//! `GET /debug/pprof/profile`: a CPU profile of this replica.

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use domain::api_key::Scope;
use serde::Deserialize;

use crate::http::problem::{ApiError, Problem};
use crate::http::{ApiResult, Caller};
use crate::profiling::{self, ProfileError};

/// Marks the app served on `DEBUG_LISTEN_ADDR`, where a loopback peer (`kubectl port-forward`,
/// a shell in the pod) may profile without a key.
#[derive(Debug, Clone, Copy)]
pub struct DebugListener;

/// `?seconds=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    /// Length of the profile in whole seconds, 1..=60 (default 30). Read as text so that a bad
    /// value gets this field's own validation message.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 60, default = 30)]
    pub seconds: Option<String>,
}

/// A CPU profile: gzip-less pprof protobuf (`perftools.profiles.Profile`).
#[derive(Debug, utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct PprofProfile(pub Vec<u8>);

/// Samples this replica's CPU for `seconds` and answers the profile in pprof's protobuf format
/// (`go tool pprof`). `admin` only (or a loopback peer on `DEBUG_LISTEN_ADDR`); one at a time.
#[utoipa::path(get, path = "/debug/pprof/profile", tag = "debug", operation_id = "cpu_profile", params(ProfileQuery), responses(
    (status = 200, description = "The CPU profile (pprof protobuf)", content_type = "application/octet-stream", body = PprofProfile),
    (status = 400, description = "`seconds` is not a whole number from 1 to 60", body = Problem),
    (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Not an admin key", body = Problem),
    (status = 409, description = "Another profile is being taken on this replica", body = Problem),
    (status = 429, description = "Rate limited", body = Problem),
    (status = 500, description = "The profiler failed", body = Problem)))]
pub async fn profile(req: HttpRequest, q: web::Query<ProfileQuery>) -> ApiResult<HttpResponse> {
    let loopback_on_debug_port =
        req.app_data::<DebugListener>().is_some() && req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    if !loopback_on_debug_port {
        let caller = Caller::extract(&req).await?;
        caller.principal.require(Scope::Admin)?;
    }
    let duration = profiling::parse_seconds(q.seconds.as_deref())
        .ok_or_else(|| ApiError::invalid("seconds", "must be a whole number of seconds from 1 to 60"))?;
    let profile = profiling::cpu_profile(duration).await.map_err(|e| match e {
        ProfileError::Busy => ApiError::Domain(domain::DomainError::Conflict(e.to_string())),
        ProfileError::Failed(why) => ApiError::Domain(domain::DomainError::Internal(why)),
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("Content-Disposition", "attachment; filename=\"profile.pb\""))
        .body(profile))
}

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::http::resource("/debug/pprof/profile", "GET").route(web::get().to(profile)));
}
