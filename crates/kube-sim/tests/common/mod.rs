//! Shared test helpers: a started simulator, raw HTTP and WebSocket clients, fixture comparison.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kube_sim::{KubeSim, SimConfig};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Values that differ per object or per run; fixtures are compared on type only there.
pub const VOLATILE: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "startTime",
    "lastTransitionTime",
    "startedAt",
    "finishedAt",
    "containerID",
    "imageID",
    "podIP",
    "ip",
    "deletionTimestamp",
];

/// A simulator on a free port with its own pods directory.
pub struct TestSim {
    pub sim: KubeSim,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub base: String,
}

pub async fn start() -> TestSim {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut SimConfig)) -> TestSim {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SimConfig::for_tests(dir.path().join("pods"));
    config.ready_delay = Duration::from_millis(50);
    adjust(&mut config);
    let sim = KubeSim::start(config).await.unwrap();
    let base = sim.base_url();
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    TestSim { sim, dir, http, base }
}

pub fn pod_body(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}})
}

impl TestSim {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pod_dir(&self, name: &str) -> PathBuf {
        self.sim.pod_dir("default", name)
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.http.post(self.url(path)).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn create(&self, body: &Value) -> Value {
        let (status, pod) = self.post_json("/api/v1/namespaces/default/pods", body).await;
        assert_eq!(status, 201, "{pod}");
        pod
    }

    pub async fn pod(&self, name: &str) -> Option<Value> {
        let (status, pod) = self.get_json(&format!("/api/v1/namespaces/default/pods/{name}")).await;
        (status == 200).then_some(pod)
    }

    /// Polls the pod until `done` holds (at most 5 s).
    pub async fn wait_pod(&self, name: &str, done: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
        for _ in 0..250 {
            let pod = self.pod(name).await;
            if done(pod.as_ref()) {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("pod {name} never reached the expected state");
    }

    pub async fn running(&self, name: &str) -> Value {
        self.create(&pod_body(name, json!({"app": "rdev"}))).await;
        self.wait_pod(name, |p| p.is_some_and(|p| p["status"]["phase"] == "Running")).await.unwrap()
    }

    pub async fn delete(&self, name: &str, grace: Option<i64>) -> (u16, Value) {
        let mut request = self.http.delete(self.url(&format!("/api/v1/namespaces/default/pods/{name}")));
        if let Some(grace) = grace {
            request = request.json(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace}));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn set_faults(&self, faults: Value) -> u16 {
        self.http.post(self.url("/_sim/faults")).json(&faults).send().await.unwrap().status().as_u16()
    }

    pub async fn exec_pids(&self, name: &str) -> Vec<i64> {
        let (_, body) = self.get_json(&format!("/_sim/pods/default/{name}/processes")).await;
        body["pids"].as_array().unwrap().iter().map(|p| p.as_i64().unwrap()).collect()
    }
}

/// Reads watch lines until `count` events arrived (at most 5 s).
pub async fn read_events(response: reqwest::Response, count: usize) -> Vec<Value> {
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    let read = async {
        while events.len() < count {
            let Some(chunk) = stream.next().await else { break };
            buffer.extend_from_slice(&chunk.unwrap());
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                events.push(serde_json::from_slice::<Value>(&line).unwrap());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("watch events did not arrive");
    events
}

pub fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of `expected` is in `actual` with the same JSON type; values are equal too,
/// except under the keys in `volatile`. Arrays are compared element by element (`actual` may be
/// longer); `actual` may carry fields the fixture does not.
pub fn assert_matches_fixture(expected: &Value, actual: &Value, volatile: &[&str]) {
    compare(expected, actual, volatile, "$", false);
}

fn compare(expected: &Value, actual: &Value, volatile: &[&str], path: &str, types_only: bool) {
    assert_eq!(kind(expected), kind(actual), "type differs at {path}: expected {expected}, got {actual}");
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                let Some(other) = a.get(key) else {
                    panic!("missing field {path}.{key} (expected {value}) in {actual}");
                };
                compare(
                    value,
                    other,
                    volatile,
                    &format!("{path}.{key}"),
                    types_only || volatile.contains(&key.as_str()),
                );
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert!(a.len() >= e.len(), "array {path} has {} items, expected at least {}", a.len(), e.len());
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(ev, av, volatile, &format!("{path}[{i}]"), types_only);
            }
        }
        _ if !types_only => assert_eq!(expected, actual, "value differs at {path}"),
        _ => {}
    }
}

/// Opens an exec WebSocket offering `protocols` (one header, comma-separated, as kube-rs does).
pub async fn exec_ws(
    base: &str,
    pod: &str,
    query: &str,
    protocols: &str,
) -> Result<(WebSocketStream<TcpStream>, String), tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}/api/v1/namespaces/default/pods/{pod}/exec?{query}", base.replacen("http://", "ws://", 1));
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols).unwrap());
    let address = base.trim_start_matches("http://");
    let stream = TcpStream::connect(address).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let protocol =
        response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    Ok((ws, protocol))
}

/// Everything the server sent on one exec stream.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub frames: Vec<(u8, Vec<u8>)>,
    pub stdout: String,
    pub stderr: String,
    pub status: Option<Value>,
    pub status_frames: usize,
    pub frames_after_status: usize,
    pub close_code: Option<u16>,
}

/// Reads until the server closes (at most 10 s), answering its Close.
pub async fn collect(ws: &mut WebSocketStream<TcpStream>) -> ExecOutput {
    let mut out = ExecOutput::default();
    let read = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Binary(data)) => {
                    let (channel, payload) = data.split_first().unwrap();
                    if out.status.is_some() {
                        out.frames_after_status += 1;
                    }
                    match channel {
                        1 => out.stdout.push_str(&String::from_utf8_lossy(payload)),
                        2 => out.stderr.push_str(&String::from_utf8_lossy(payload)),
                        3 => {
                            out.status_frames += 1;
                            out.status = Some(serde_json::from_slice(payload).unwrap());
                        }
                        _ => {}
                    }
                    out.frames.push((*channel, payload.to_vec()));
                }
                Ok(Message::Close(frame)) => {
                    out.close_code = frame.map(|f| u16::from(f.code));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("exec stream did not end");
    out
}

/// Sends one channel frame.
pub async fn send(ws: &mut WebSocketStream<TcpStream>, channel: u8, payload: &[u8]) {
    let mut data = vec![channel];
    data.extend_from_slice(payload);
    ws.send(Message::Binary(data.into())).await.unwrap();
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}
