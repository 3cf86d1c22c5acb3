//! Isolation through real HTTP on the embedded default (process executor): a key limited to one
//! project cannot, through its own commands, read the server's secrets, reach another project,
//! signal the server, or leave processes behind — not even when the server is killed. And the
//! server refuses to start where the sandbox cannot run, unless told `PROCESS_SANDBOX=off`.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::wait::eventually;
use common::{spawn_app, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// Runs `body` in `project` with `key`, waiting for the end; returns (command, output).
async fn run_as(app: &TestApp, key: &str, project: &str, body: Value) -> (Value, Value) {
    let path = format!("/v1/projects/{project}/commands?wait=30");
    let res = app.call(Method::POST, &path, key, Some(body)).await;
    assert_eq!(res.status().as_u16(), 200, "{:?}", res.text().await);
    let done: Value = res.json().await.expect("json");
    let id = done["id"].as_str().expect("id");
    let out: Value =
        app.call(Method::GET, &format!("/v1/commands/{id}/output"), key, None).await.json().await.expect("json");
    (done, out)
}

async fn script_as(app: &TestApp, key: &str, project: &str, script: &str) -> (Value, Value) {
    run_as(app, key, project, json!({ "script": script })).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_limited_key_cannot_reach_the_server_or_other_projects() {
    let app = spawn_app().await;
    app.project("alpha", 2).await;
    app.project("beta", 2).await;
    let (done, _) = app.run("beta", json!({"script": "echo beta-private > notes"})).await;
    assert_eq!(done["status"], "succeeded");
    let data = app.dir.path();
    let key_file = data.join("admin.key");
    std::fs::write(&key_file, &app.admin).expect("key file");
    let key = app.key_with(&["commands:write", "commands:read"], Some(&["alpha"])).await;
    let beta = data.join("workspaces").join("beta");
    let server = std::process::id();

    let attempts = [
        format!("cat /proc/{server}/environ"),
        format!("cat '{}'", data.join("rdev.db").display()),
        format!("cat '{}'", key_file.display()),
        format!("ls '{}'", data.display()),
        format!("cat '{}/notes'", beta.display()),
        "cat ../beta/notes".to_owned(),
        format!("echo pwned > '{}/notes'", beta.display()),
        "echo pwned > ../beta/notes".to_owned(),
        format!("kill -9 {server}"),
    ];
    for attempt in &attempts {
        let (done, out) = script_as(&app, &key, "alpha", attempt).await;
        assert_eq!(done["status"], "failed", "{attempt} worked: {out}");
        let stdout = out["stdout"].as_str().unwrap_or_default();
        assert!(!stdout.contains("rdev_") && !stdout.contains("beta-private"), "{attempt} leaked {stdout:?}");
    }
    for cwd in ["../beta", "/workspace/../beta"] {
        let (done, _) = run_as(&app, &key, "alpha", json!({"command": ["cat", "notes"], "cwd": cwd})).await;
        assert_eq!(done["termination_reason"], "start_failed", "cwd {cwd}: {done}");
    }
    // The command's parent is the sandbox's init, which the kernel shields from signals sent
    // inside its namespace: `kill` "succeeds" and nothing happens.
    let (done, _) = script_as(&app, &key, "alpha", "kill -9 $PPID; kill -9 1; echo alive").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(std::fs::read_to_string(beta.join("notes")).expect("beta's file"), "beta-private\n");
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200, "the server survived");
}

#[tokio::test]
async fn a_file_written_by_a_command_is_in_its_projects_workspace_directory() {
    let app = spawn_app().await;
    app.project("alpha", 2).await;
    let (done, out) = app.run("alpha", json!({"script": "echo hello > made-here; pwd; id -u"})).await;
    assert_eq!(done["status"], "succeeded", "{out}");
    assert_eq!(out["stdout"], "/workspace\n65532\n");
    let host = app.dir.path().join("workspaces").join("alpha").join("made-here");
    assert_eq!(std::fs::read_to_string(host).expect("file on the host"), "hello\n");
    let ready: Value = app.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["confinement"], "sandbox");
}

/// A real `rdev-api serve` process on a fresh data directory.
struct Server {
    child: Child,
    base: String,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args…` (ending in `rdev-api serve`) with the data directory `dir`; `Err`
/// holds its stderr when it exits instead of serving.
fn start_server(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
    let key_file = dir.join("admin.key");
    let mut child = Command::new(program)
        .args(args)
        .env("DATABASE_URL", format!("sqlite://{}/rdev.db", dir.display()))
        .env("WORKSPACES_DIR", dir.join("workspaces"))
        .env("BOOTSTRAP_ADMIN_KEY_FILE", &key_file)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rdev-api");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("rdev-api: listening on ") {
                    let admin = std::fs::read_to_string(&key_file).expect("admin key").trim().to_owned();
                    return Ok(Server { child, base: addr.to_owned(), admin });
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    Err(format!("{status}: {seen}"))
}

/// The listen address is only known from the log line: bind to port 0 and read it back.
fn serve(dir: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
    start_server(dir, env!("CARGO_BIN_EXE_rdev-api"), &["serve"], env)
}

async fn call(server: &Server, method: Method, path: &str, body: Option<Value>) -> Value {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{}{path}", server.base)).bearer_auth(&server.admin);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request").json().await.expect("json")
}

/// Host processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[tokio::test]
async fn killing_the_server_kills_every_process_of_its_commands() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = serve(dir.path(), &[]).expect("serve");
    call(&server, Method::POST, "/v1/projects", Some(json!({"name": "alpha", "image": "alpine:3.20"}))).await;
    let tag = format!("{}", 37_000 + std::process::id() % 1000);
    let script = format!(
        "setsid sleep 3701.{tag} >/dev/null 2>&1 & nohup sleep 3702.{tag} >/dev/null 2>&1 & \
         (sleep 3703.{tag} >/dev/null 2>&1 &); echo started > started; sleep 3700.{tag}"
    );
    let cmd = call(&server, Method::POST, "/v1/projects/alpha/commands", Some(json!({"script": script}))).await;
    assert!(cmd["id"].is_string(), "{cmd}");
    let started = dir.path().join("workspaces/alpha/started");
    eventually("the command starts its four processes", Duration::from_secs(20), || {
        let up = started.exists() && processes_with(&format!(".{tag}")).len() >= 4;
        async move { up }
    })
    .await;
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().expect("reap");
    let gone = common::wait::poll(Duration::from_secs(1), || {
        let left = processes_with(&format!(".{tag}"));
        async move { left.is_empty().then_some(()) }
    })
    .await;
    let left = processes_with(&format!(".{tag}"));
    assert!(gone.is_some(), "outlived the server by a second: {left:?}");
}

#[tokio::test]
async fn serve_refuses_to_start_without_namespaces_unless_the_sandbox_is_off() {
    let dir = tempfile::tempdir().expect("dir");
    // In a user namespace where the server's uid is not mapped, the kernel refuses to create
    // nested user namespaces (EPERM), as a seccomp profile or AppArmor rule would.
    let args = ["--user", env!("CARGO_BIN_EXE_rdev-api"), "serve"];
    let refused = start_server(dir.path(), "unshare", &args, &[]).err().expect("must refuse to start");
    assert!(refused.contains("cannot create user, PID and mount namespaces"), "{refused}");
    assert!(refused.contains("PROCESS_SANDBOX=off"), "names the opt-out: {refused}");

    let server = start_server(dir.path(), "unshare", &args, &[("PROCESS_SANDBOX", "off")]).expect("starts when off");
    let ready = call(&server, Method::GET, "/readyz", None).await;
    let confinement = ready["confinement"].as_str().unwrap_or_default();
    assert!(confinement.starts_with("off"), "{ready}");
}
