//! The end-to-end harness: the real `rdev-api` and `kube-sim` binaries as child processes on a
//! throwaway PostgreSQL cluster, a loopback webhook receiver, and an HTTP client that drives
//! them like a user. Every child is killed when its handle drops (a panicking test included),
//! and, where `setpriv` exists, when the test process itself dies. Only 127.0.0.1 is used.
//!
//! The harness panics with the reason when something it needs is missing (a binary, the
//! PostgreSQL server programs): an end-to-end run that cannot start must fail, never skip.
#![allow(clippy::expect_used, reason = "test harness: a failed expectation is a failed test")]
#![allow(clippy::print_stderr, reason = "the suite reports its figures and progress on stderr")]

pub mod api;
pub mod bins;
pub mod chaos;
pub mod hooks;
pub mod ledger;
pub mod process;
pub mod replica;
pub mod sim;
pub mod stack;
pub mod verdict;
pub mod workload;

/// Reads a number from the environment (`E2E_*` knobs), or `default`.
///
/// # Panics
/// When the variable is set but is not a number: a typo must not silently run another size.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

/// A free TCP port on 127.0.0.1 right now (replicas restart on the same one).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}
