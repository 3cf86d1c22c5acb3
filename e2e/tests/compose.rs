//! `e2e/docker-compose.yml` works: every service built from our image is started as the real
//! binary with exactly that service's environment (the Dockerfile's `ENV` under the service's
//! `environment`, anchors and `<<` merges applied), the database host swapped for a throwaway
//! PostgreSQL and absolute paths for temp dirs. `migrate` must exit 0; every `serve` service
//! must pass its own health check command. Where a `docker` binary exists, `docker compose
//! config` must accept the file too.
#![allow(clippy::expect_used, reason = "test: a failed expectation is a failed test")]
#![allow(clippy::print_stderr, reason = "the test says what it skipped")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestCluster;
use e2e::process::Proc;
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The compose file as JSON, with anchors resolved and `<<` merge keys applied.
fn compose() -> Value {
    let text = std::fs::read_to_string(manifest_dir().join("docker-compose.yml")).expect("read docker-compose.yml");
    let mut yaml: serde_norway::Value = serde_norway::from_str(&text).expect("docker-compose.yml is YAML");
    yaml.apply_merge().expect("merge keys apply");
    serde_json::to_value(&yaml).expect("compose as JSON")
}

/// The image's `ENV` settings from the Dockerfile (one `ENV K=V K=V` line per instruction).
fn image_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(manifest_dir().join("../Dockerfile")).expect("read Dockerfile");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    let as_text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    v.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), as_text(v))).collect()).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// One of our services made runnable here.
struct Service {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    health: Vec<String>,
}

/// The service's environment with the container's world swapped for this machine's.
fn localize(name: &str, svc: &Value, services: &Value, database_url: &str, scratch: &Path) -> Service {
    let mut env = image_env();
    env.extend(string_map(&svc["environment"]));
    for (key, value) in &mut env {
        if key == "DATABASE_URL" {
            let host = value.split('@').nth(1).and_then(|h| h.split([':', '/']).next()).unwrap_or_default();
            assert!(services.get(host).is_some(), "{name}: DATABASE_URL names host {host:?}, which is no service");
            *value = database_url.to_owned();
        } else if key == "LISTEN_ADDR" {
            let port = value.rsplit(':').next().unwrap_or_default().to_owned();
            let published = strings(&svc["ports"]);
            if !published.is_empty() {
                assert!(
                    published.iter().all(|p| p.ends_with(&format!(":{port}"))),
                    "{name}: ports {published:?} must reach LISTEN_ADDR {value}"
                );
            }
            *value = format!("127.0.0.1:{}", e2e::free_port());
        } else if value.starts_with('/') {
            let local = scratch.join(name).join(value.trim_start_matches('/'));
            std::fs::create_dir_all(local.parent().expect("parent")).expect("scratch dir");
            *value = local.display().to_string();
        }
    }
    env.insert("RUST_LOG".into(), "warn".into());
    Service {
        name: name.to_owned(),
        command: strings(&svc["command"]),
        env: env.into_iter().collect(),
        health: strings(&svc["healthcheck"]["test"]),
    }
}

impl Service {
    fn get(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Runs the service's health check command once, as Docker would inside its container
    /// (where LISTEN_ADDR is the unspecified 0.0.0.0 of the image).
    async fn health_check(&self, bin: &Path) -> std::process::Output {
        assert_eq!(self.health.first().map(String::as_str), Some("CMD"), "{}: exec-form health check", self.name);
        assert_eq!(
            self.health.get(1).map(String::as_str),
            Some("rdev-api"),
            "{}: the check runs the image's binary",
            self.name
        );
        let port = self.get("LISTEN_ADDR").and_then(|a| a.rsplit(':').next()).expect("LISTEN_ADDR port");
        tokio::process::Command::new(bin)
            .args(&self.health[2..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LISTEN_ADDR", format!("0.0.0.0:{port}"))
            .output()
            .await
            .expect("run the health check")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compose_service_starts_with_its_environment_and_passes_its_health_check() {
    let file = compose();
    let services = &file["services"];
    let bin = e2e::bins::binary("rdev-api");
    let cluster = tokio::task::spawn_blocking(TestCluster::start_dedicated).await.expect("PostgreSQL");
    // The cluster's own empty database: `migrate` must be what creates the schema.
    let database_url = cluster.url_for("postgres");
    let scratch = tempfile::tempdir().expect("scratch");
    let ours: Vec<Service> = services
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, svc)| svc.get("build").is_some())
        .map(|(name, svc)| localize(name, svc, services, &database_url, scratch.path()))
        .collect();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api-1", "api-2", "migrate"], "the services built from our image");

    for svc in ours.iter().filter(|s| s.command == ["migrate"]) {
        let log = scratch.path().join(format!("{}.log", svc.name));
        let mut proc = Proc::spawn(&svc.name, &bin, &["migrate"], &svc.env, &log);
        let status = proc.wait_exit(Duration::from_secs(60)).await.expect("migrate ends");
        assert!(status.success(), "{} exited {status}:\n{}", svc.name, proc.log_tail(20));
    }
    let mut running = Vec::new();
    for svc in ours.iter().filter(|s| s.command == ["serve"]) {
        let before = svc.health_check(&bin).await;
        assert_eq!(before.status.code(), Some(1), "{}: the check fails while nothing listens", svc.name);
        let log = scratch.path().join(format!("{}.log", svc.name));
        let mut proc = Proc::spawn(&svc.name, &bin, &["serve"], &svc.env, &log);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = proc.try_exit() {
                panic!("{} exited ({status}) with the compose environment:\n{}", svc.name, proc.log_tail(20));
            }
            let check = svc.health_check(&bin).await;
            if check.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became healthy: {}\n{}",
                svc.name,
                String::from_utf8_lossy(&check.stderr),
                proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        running.push(proc);
    }
    // Replica 1 bootstrapped the admin key on the empty database; it works on both replicas.
    let key_file = ours.iter().find_map(|s| s.get("BOOTSTRAP_ADMIN_KEY_FILE")).expect("one replica bootstraps the key");
    let key = std::fs::read_to_string(key_file).expect("admin key written");
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    for svc in ours.iter().filter(|s| s.command == ["serve"]) {
        let addr = svc.get("LISTEN_ADDR").expect("addr");
        let me = client.get(format!("http://{addr}/v1/me")).bearer_auth(key.trim()).send().await.expect("GET /v1/me");
        assert_eq!(me.status(), reqwest::StatusCode::OK, "{}: the bootstrapped key works", svc.name);
    }
    drop(running);
    docker_compose_config();
}

/// `docker compose config` where Docker with its compose plugin exists; said to be skipped
/// where it does not (a docker binary without the plugin is not a failure of the file).
fn docker_compose_config() {
    let plugin = std::process::Command::new("docker").args(["compose", "version"]).output();
    match plugin {
        Err(_) => {
            eprintln!("e2e compose: SKIPPED `docker compose config`: no docker binary on this machine");
            return;
        }
        Ok(out) if !out.status.success() => {
            eprintln!("e2e compose: SKIPPED `docker compose config`: docker has no compose plugin here");
            return;
        }
        Ok(_) => {}
    }
    let out = std::process::Command::new("docker")
        .args(["compose", "-f"])
        .arg(manifest_dir().join("docker-compose.yml"))
        .args(["config", "--quiet"])
        .output()
        .expect("run docker compose config");
    assert!(out.status.success(), "docker compose config: {}", String::from_utf8_lossy(&out.stderr));
}
