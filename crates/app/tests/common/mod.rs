//! `spawn_app()`: the real service on a random loopback port with a fresh SQLite file and
//! workspace directory, plus a client with helpers.

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(clippy::expect_used, reason = "test harness: a failed expectation is a failed test")]

pub mod otlp;
pub mod wait;

use std::time::Duration;

use app::config::{Cli, Command, ServeConfig};
use clap::Parser;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

/// A running service.
pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: app::service::RunningService,
    /// The Kubernetes simulator the service runs commands on, with `RDEV_TEST_EXECUTOR=kube`.
    pub sim: Option<kube_sim::KubeSim>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.running.abort();
    }
}

/// The service with test defaults (a generous rate limit).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The service with extra `serve` flags, e.g. `&["--rate-limit-rps", "1"]`. With
/// `RDEV_TEST_EXECUTOR=kube` (and no `--executor` flag) it runs commands in pods on a fresh
/// kube-sim, so the same HTTP suites cover both executors.
pub async fn spawn_app_with(flags: &[&str]) -> TestApp {
    spawn_app_with_options(flags, start_options()).await
}

/// The harness's start options: a short stop, production's timeouts otherwise.
pub fn start_options() -> app::service::StartOptions {
    app::service::StartOptions { http_stop: Duration::from_secs(1), ..app::service::StartOptions::default() }
}

/// As [`spawn_app_with`], with start options of the test's own (e.g. a short SSE send timeout).
pub async fn spawn_app_with_options(flags: &[&str], options: app::service::StartOptions) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}/rdev.db", dir.path().display());
    let on_kube = std::env::var("RDEV_TEST_EXECUTOR").is_ok_and(|e| e == "kube") && !flags.contains(&"--executor");
    if !on_kube {
        return spawn_replica_with_options(&db, None, flags, dir, options).await;
    }
    spawn_on_kube(&db, flags, dir, options).await
}

/// The service with `EXECUTOR=kube` on a fresh kube-sim, whatever `RDEV_TEST_EXECUTOR` says.
pub async fn spawn_app_on_kube(flags: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}/rdev.db", dir.path().display());
    spawn_on_kube(&db, flags, dir, start_options()).await
}

async fn spawn_on_kube(
    db: &str,
    flags: &[&str],
    dir: tempfile::TempDir,
    options: app::service::StartOptions,
) -> TestApp {
    let sim =
        kube_sim::KubeSim::start(kube_sim::SimConfig::for_tests(dir.path().join("pods"))).await.expect("kube-sim");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "rdev-projects").expect("kubeconfig");
    let kubeconfig = kubeconfig.display().to_string();
    let mut all = vec!["--executor", "kube", "--kubeconfig", &kubeconfig, "--kube-namespace", "rdev-projects"];
    all.extend_from_slice(flags);
    let mut app = spawn_replica_with_options(db, None, &all, dir, options).await;
    app.sim = Some(sim);
    app
}

/// A replica on the database `url`; `admin` is the admin key when another replica already
/// bootstrapped it (otherwise the store must be empty and one is created).
pub async fn spawn_replica(url: &str, admin: Option<&str>, flags: &[&str], dir: tempfile::TempDir) -> TestApp {
    spawn_replica_with_options(url, admin, flags, dir, start_options()).await
}

async fn spawn_replica_with_options(
    url: &str,
    admin: Option<&str>,
    flags: &[&str],
    dir: tempfile::TempDir,
    options: app::service::StartOptions,
) -> TestApp {
    let workspaces = dir.path().join("workspaces").display().to_string();
    let mut args = vec![
        "rdev-api",
        "--database-url",
        url,
        "--database-pool-size",
        "16",
        "serve",
        "--listen-addr",
        "127.0.0.1:0",
        "--rate-limit-rps",
        "1000",
        "--shutdown-grace-seconds",
        "1",
        // The service runs inside this test binary, so the sandbox helper is the built server.
        "--sandbox-helper",
        env!("CARGO_BIN_EXE_rdev-api"),
    ];
    if !flags.contains(&"--workspaces-dir") {
        args.extend(["--workspaces-dir", &workspaces]);
    }
    args.extend_from_slice(flags);
    let cli = Cli::try_parse_from(args).expect("flags");
    let db = cli.database();
    let Some(Command::Serve(cfg)) = cli.command else { panic!("serve") };
    start(&db, &cfg, dir, admin, options).await
}

/// Logs go to the test's captured output, filtered by `RUST_LOG` (default: errors only).
fn init_test_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Starts the replica through `Service::start`, the path `rdev-api serve` takes.
async fn start(
    db: &app::config::Database,
    cfg: &ServeConfig,
    dir: tempfile::TempDir,
    admin: Option<&str>,
    options: app::service::StartOptions,
) -> TestApp {
    init_test_logs();
    let running = app::service::Service::start(db, cfg, options).await.expect("start");
    let admin = match admin {
        Some(key) => key.to_owned(),
        None => {
            let (_, admin) = running.state.keys.bootstrap_admin().await.expect("bootstrap").expect("empty store");
            admin.expose().to_owned()
        }
    };
    TestApp {
        base: format!("http://{}", running.addr),
        admin,
        client: reqwest::Client::builder().timeout(Duration::from_secs(90)).build().expect("client"),
        dir,
        running,
        sim: None,
    }
}

impl TestApp {
    /// Sends a request with `key`.
    pub async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request")
    }

    /// GET with the admin key.
    pub async fn get(&self, path: &str) -> Response {
        self.call(Method::GET, path, &self.admin, None).await
    }

    /// POST JSON with the admin key.
    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.call(Method::POST, path, &self.admin, Some(body)).await
    }

    /// Creates a key and returns (id, secret).
    pub async fn key(&self, body: Value) -> (String, String) {
        let res = self.post("/v1/api-keys", body).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let v: Value = res.json().await.expect("json");
        (v["id"].as_str().expect("id").to_owned(), v["key"].as_str().expect("key").to_owned())
    }

    /// A key with `scopes` (and optionally limited to `projects`).
    pub async fn key_with(&self, scopes: &[&str], projects: Option<&[&str]>) -> String {
        self.key(json!({"name": "test", "scopes": scopes, "projects": projects})).await.1
    }

    /// Creates a project with a cap.
    pub async fn project(&self, name: &str, cap: u32) {
        let res = self
            .post("/v1/projects", json!({"name": name, "image": "alpine:3.20", "max_concurrent_commands": cap}))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
    }

    /// Submits a command body, returns the response JSON (asserting 2xx).
    pub async fn submit(&self, project: &str, body: Value) -> Value {
        let res = self.post(&format!("/v1/projects/{project}/commands"), body).await;
        assert!(res.status().is_success(), "submit: {} {:?}", res.status(), res.text().await);
        res.json().await.expect("json")
    }

    /// Waits until the command ends (or panics after `secs`).
    pub async fn finished(&self, id: &str, secs: u64) -> Value {
        wait::wait_for(&format!("command {id} ended"), Duration::from_secs(secs), || async {
            let v: Value = self.get(&format!("/v1/commands/{id}")).await.json().await.expect("json");
            (!matches!(v["status"].as_str().unwrap_or_default(), "queued" | "running")).then_some(v)
        })
        .await
    }

    /// Runs a command to its end and returns (command, output).
    pub async fn run(&self, project: &str, body: Value) -> (Value, Value) {
        let v = self.submit(project, body).await;
        let id = v["id"].as_str().expect("id").to_owned();
        let done = self.finished(&id, 30).await;
        let out: Value = self.get(&format!("/v1/commands/{id}/output")).await.json().await.expect("json");
        (done, out)
    }
}

/// Asserts a problem document with `status` and `code`, returns it.
pub async fn problem(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status of {}", res.url());
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(ct.starts_with("application/problem+json"), "content-type {ct}");
    let v: Value = res.json().await.expect("problem json");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status);
    assert!(v["type"].is_string() && v["title"].is_string(), "{v}");
    v
}

/// The events of a Server-Sent Events body: (id, event name, data as JSON).
pub fn parse_sse(text: &str) -> Vec<(i64, String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
            Some((
                field("id:")?.parse().ok()?,
                field("event:")?.to_owned(),
                serde_json::from_str(field("data:")?).ok()?,
            ))
        })
        .collect()
}
