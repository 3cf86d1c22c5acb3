//! `GET /debug/pprof/profile`: a CPU profile of this replica.

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use domain::api_key::Scope;
use serde::Deserialize;

use crate::http::problem::{ApiError, Problem};
use crate::http::{ApiResult, Caller};
use crate::profiling::{self, ProfileError};

/// Marks the app served on `DEBUG_LISTEN_ADDR`, where a loopback peer (`kubectl port-forward`,
/// a shell in the pod) may profile without a key, but only where no command shares the server's
/// loopback: a command of any project could otherwise profile the server, keyless.
#[derive(Debug, Clone, Copy)]
pub struct DebugListener {
    /// Loopback peers are operators: commands run in pods, or in an empty network namespace.
    pub trust_loopback: bool,
}

impl DebugListener {
    /// Trusts loopback only when commands cannot reach it.
    pub fn new(cfg: &crate::config::ServeConfig) -> Self {
        use crate::config::{ExecutorKind, ProcessNetwork, SandboxSwitch};
        let isolated_network = cfg.process_sandbox == SandboxSwitch::On && cfg.process_network == ProcessNetwork::None;
        Self { trust_loopback: cfg.executor == ExecutorKind::Kube || isolated_network }
    }
}

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
    let loopback_on_debug_port = req.app_data::<DebugListener>().is_some_and(|l| l.trust_loopback)
        && req.peer_addr().is_some_and(|a| a.ip().is_loopback());
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::DebugListener;
    use crate::config::{Cli, Command};

    fn trusted(flags: &[&str]) -> bool {
        let args = ["rdev-api", "serve"].iter().chain(flags).copied();
        let cli = Cli::try_parse_from(args).expect("parse");
        let Some(Command::Serve(cfg)) = cli.command else { panic!("serve expected") };
        DebugListener::new(&cfg).trust_loopback
    }

    #[test]
    fn loopback_is_trusted_only_where_no_command_shares_it() {
        assert!(!trusted(&[]), "sandboxed commands on the host network reach the server's loopback");
        assert!(!trusted(&["--process-sandbox", "off", "--process-network", "none"]), "unsandboxed: no namespace");
        assert!(trusted(&["--process-network", "none"]));
        assert!(trusted(&["--executor", "kube"]));
    }
}
