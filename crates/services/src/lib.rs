//! rdev-api's use cases over the domain ports: keys, projects, commands, the queue worker and
//! the audit log, plus the decorators that sit in front of ports (key cache).

pub mod access;
pub mod api_keys;
pub mod audit;
pub mod auth_failures;
pub mod breaker;
pub mod cache;
pub mod clock;
pub mod commands;
pub mod liveness;
pub mod metrics;
pub mod open_requests;
pub mod pod_watch;
pub mod pods;
pub mod projects;
pub mod rate_limit;
pub mod retention;
pub mod signalling;
pub mod trace_context;
pub mod webhooks;
pub mod worker;
mod worker_sink;

pub use access::Principal;
