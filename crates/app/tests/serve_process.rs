//! The real `rdev-api` binary: `DEBUG_LISTEN_ADDR` takes profiling off the main port (loopback
//! peers need no key there), and spans still queued at SIGTERM are flushed before exit.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::otlp;
use common::wait::eventually;
use reqwest::StatusCode;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Server {
    child: Child,
    base: String,
    debug: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(traces_url: &str) -> Server {
    let dir = tempfile::tempdir().expect("dir");
    let (main, debug) = (free_port(), free_port());
    let key_file = dir.path().join("admin.key");
    let child = Command::new(env!("CARGO_BIN_EXE_rdev-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", format!("sqlite://{}/rdev.db", dir.path().display()))
        .env("LISTEN_ADDR", format!("127.0.0.1:{main}"))
        .env("DEBUG_LISTEN_ADDR", format!("127.0.0.1:{debug}"))
        .env("BOOTSTRAP_ADMIN_KEY_FILE", &key_file)
        .env("WORKSPACES_DIR", dir.path().join("workspaces"))
        // Commands get no network of their own, so a loopback peer of the debug port is an
        // operator, not a command.
        .env("PROCESS_NETWORK", "none")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "error")
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url)
        // Far longer than the test: only the shutdown flush can deliver the spans.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rdev-api");
    let base = format!("http://127.0.0.1:{main}");
    let client = reqwest::Client::new();
    eventually("rdev-api comes up", Duration::from_secs(30), || async {
        client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let admin = std::fs::read_to_string(&key_file).expect("admin key").trim().to_owned();
    Server { child, base, debug: format!("http://127.0.0.1:{debug}"), admin, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_listener_serves_profiles_and_spans_are_flushed_at_shutdown() {
    let receiver = otlp::start("127.0.0.1:0").await.expect("receiver");
    let mut server = serve(&receiver.url).await;
    let client = reqwest::Client::new();

    let main = client.get(format!("{}/debug/pprof/profile?seconds=1", server.base)).bearer_auth(&server.admin);
    assert_eq!(main.send().await.expect("request").status(), StatusCode::NOT_FOUND, "off the main port");
    let local = client.get(format!("{}/debug/pprof/profile?seconds=1", server.debug)).send().await.expect("profile");
    assert_eq!(local.status(), StatusCode::OK, "a loopback peer on the debug port needs no key");
    assert!(!local.bytes().await.expect("body").is_empty());
    let bad = client.get(format!("{}/debug/pprof/profile?seconds=0", server.debug)).send().await.expect("request");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let trace_id = "2af7651916cd43dd8448eb211c80319c";
    let me = client
        .get(format!("{}/v1/me", server.base))
        .bearer_auth(&server.admin)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);
    // Fixed sleep: proves that nothing is sent; there is no event to wait for when nothing is.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.requests(), 0, "nothing sent before the batch delay or shutdown");

    let term = Command::new("kill").arg("-TERM").arg(server.child.id().to_string()).status().expect("kill");
    assert!(term.success());
    eventually("rdev-api stops on SIGTERM", Duration::from_secs(30), || {
        let stopped = server.child.try_wait().expect("wait").is_some();
        async move { stopped }
    })
    .await;
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.trace_id == trace_id && s.name == "GET /v1/me"),
        "the request's span was flushed at shutdown: {spans:#?}"
    );
}

/// A listener that cannot be bound (the main port or the debug port) ends `serve` at once with
/// the address in its error, before anything runs.
#[tokio::test]
async fn a_port_in_use_ends_serve_at_once_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let free = format!("127.0.0.1:{}", free_port());
    for (listen, debug) in [(taken_addr.as_str(), None), (free.as_str(), Some(taken_addr.as_str()))] {
        let dir = tempfile::tempdir().expect("dir");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rdev-api"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", format!("sqlite://{}/rdev.db", dir.path().display()))
            .env("LISTEN_ADDR", listen)
            .env("WORKSPACES_DIR", dir.path().join("workspaces"))
            .env("RUST_LOG", "off")
            .arg("serve");
        if let Some(debug) = debug {
            cmd.env("DEBUG_LISTEN_ADDR", debug);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("serve ends by itself")
            .expect("run rdev-api serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve with {taken_addr} taken succeeded: {err}");
        assert!(err.contains(&taken_addr), "the error names {taken_addr}: {err}");
    }
    drop(taken);
}
