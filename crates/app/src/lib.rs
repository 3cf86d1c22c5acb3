//! The rdev-api service: configuration, wiring, and the actix-web HTTP API.

pub mod cli;
pub mod config;
pub mod http;
pub mod openapi;
pub mod profiling;
pub mod routes;
pub mod server;
pub mod service;
pub mod state;
pub mod stores;
pub mod telemetry;
pub mod wiring;
