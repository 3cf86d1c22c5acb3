//! `pods/exec` over a raw WebSocket client: framing, status channel, process lifetime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{alive, collect, exec_ws, fixture, send, start, start_with, TestSim};
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const BOTH: &str = "v5.channel.k8s.io, v4.channel.k8s.io";

fn command_query(argv: &[&str], flags: &str) -> String {
    let command: Vec<String> = argv.iter().map(|a| format!("command={}", urlencode(a))).collect();
    format!("&{flags}&container=main&{}", command.join("&"))
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn running(name: &str) -> TestSim {
    let t = start().await;
    t.running(name).await;
    t
}

#[tokio::test]
async fn v5_separates_stdout_and_stderr_and_ends_with_one_success_status() {
    let t = running("w1").await;
    let query = command_query(&["sh", "-c", "echo out; echo err >&2; echo more"], "stdout=true&stderr=true");
    let (mut ws, protocol) = exec_ws(&t.base, "w1", &query, BOTH).await.unwrap();
    assert_eq!(protocol, "v5.channel.k8s.io", "v5 is preferred when offered");
    let out = collect(&mut ws).await;
    assert_eq!(out.frames[0], (1, vec![]), "the first message is an empty stdout frame");
    assert_eq!(out.stdout, "out\nmore\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.status, Some(fixture("exec_status_success.json")));
    assert_eq!((out.status_frames, out.frames_after_status), (1, 0), "exactly one status, and it is last");
    assert_eq!(out.close_code, Some(1000));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn v5_stdin_is_delivered_until_the_close_signal() {
    let t = running("w1").await;
    let query = command_query(&["sh", "-c", "cat; echo eof"], "stdin=true&stdout=true&stderr=true");
    let (mut ws, _) = exec_ws(&t.base, "w1", &query, BOTH).await.unwrap();
    send(&mut ws, 0, b"hello ").await;
    send(&mut ws, 0, b"world\n").await;
    send(&mut ws, 4, br#"{"Width":80,"Height":24}"#).await;
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!(out.stdout, "hello world\neof\n");
    assert_eq!(out.status, Some(fixture("exec_status_success.json")));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn close_signal_without_stdin_is_ignored() {
    let t = running("w1").await;
    let (mut ws, _) = exec_ws(&t.base, "w1", &command_query(&["echo", "hi"], "stdout=true"), BOTH).await.unwrap();
    // kube-rs sends this whenever its stdin writer is dropped, even without stdin.
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!((out.stdout.as_str(), out.close_code), ("hi\n", Some(1000)));
    assert_eq!(out.status, Some(fixture("exec_status_success.json")));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn non_zero_exit_codes_are_reported_as_the_apiserver_does() {
    let t = running("w1").await;
    let (mut ws, _) =
        exec_ws(&t.base, "w1", &command_query(&["sh", "-c", "exit 3"], "stdout=true&stderr=true"), BOTH).await.unwrap();
    assert_eq!(collect(&mut ws).await.status, Some(fixture("exec_status_exit3_v5.json")));

    let (mut ws, protocol) =
        exec_ws(&t.base, "w1", &command_query(&["sh", "-c", "exit 3"], "stdout=true&stderr=true"), "v4.channel.k8s.io")
            .await
            .unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    assert_eq!(collect(&mut ws).await.status, Some(fixture("exec_status_exit3_v4.json")));

    let (mut ws, _) =
        exec_ws(&t.base, "w1", &command_query(&["sh", "-c", "kill -9 $$"], "stdout=true"), BOTH).await.unwrap();
    let status = collect(&mut ws).await.status.unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0], json!({"reason": "ExitCode", "message": "137"}));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn v4_streams_output_and_status() {
    let t = running("w1").await;
    let query = command_query(&["sh", "-c", "echo four; echo e >&2"], "stdout=true&stderr=true");
    let (mut ws, protocol) = exec_ws(&t.base, "w1", &query, "v4.channel.k8s.io").await.unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let out = collect(&mut ws).await;
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("four\n", "e\n"));
    assert_eq!(out.status, Some(fixture("exec_status_success.json")));
    assert_eq!(out.close_code, Some(1000));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn exec_runs_in_the_pod_directory_with_the_container_env() {
    let t = start().await;
    let mut body = common::pod_body("w1", json!({}));
    body["spec"]["containers"][0]["env"] = json!([{"name": "GREETING", "value": "hello"}]);
    t.create(&body).await;
    t.wait_pod("w1", |p| p.is_some_and(|p| p["status"]["phase"] == "Running")).await;
    let query = command_query(&["sh", "-c", "pwd; echo $HOME; echo $GREETING; touch made-here"], "stdout=true");
    let (mut ws, _) = exec_ws(&t.base, "w1", &query, BOTH).await.unwrap();
    let out = collect(&mut ws).await;
    let dir = t.pod_dir("w1").canonicalize().unwrap();
    let dir = dir.to_string_lossy();
    assert_eq!(out.stdout, format!("{dir}\n{dir}\nhello\n"));
    assert!(t.pod_dir("w1").join("made-here").exists());
    t.sim.shutdown().await;
}

#[tokio::test]
async fn a_command_that_cannot_start_is_an_internal_error() {
    let t = running("w1").await;
    let (mut ws, _) = exec_ws(&t.base, "w1", &command_query(&["no-such-binary"], "stdout=true"), BOTH).await.unwrap();
    let status = collect(&mut ws).await.status.unwrap();
    assert_eq!((status["reason"].as_str(), status["code"].as_u64()), (Some("InternalError"), Some(500)));
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("exec: \"no-such-binary\": executable file not found in $PATH"));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn a_container_that_is_not_running_fails_after_the_upgrade() {
    let t = start_with(|c| c.ready_delay = Duration::from_secs(30)).await;
    t.create(&common::pod_body("w1", json!({}))).await;
    t.wait_pod("w1", |p| p.is_some_and(|p| p["spec"]["nodeName"].is_string())).await;
    let (mut ws, _) = exec_ws(&t.base, "w1", &command_query(&["true"], "stdout=true"), BOTH).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!(out.status, Some(fixture("exec_status_internal_error.json")));
    assert_eq!(out.close_code, Some(1000));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn errors_before_the_upgrade_are_plain_http_statuses() {
    let t = running("w1").await;
    let error = exec_ws(&t.base, "missing", &command_query(&["true"], "stdout=true"), BOTH).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else { panic!("expected an HTTP answer") };
    assert_eq!(response.status().as_u16(), 404);
    let upgrade = t
        .http
        .get(t.url("/api/v1/namespaces/default/pods/x/exec?command=true&stdout=true"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Protocol", BOTH)
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status().as_u16(), 404);
    assert_eq!(upgrade.json::<serde_json::Value>().await.unwrap(), fixture("status_not_found.json"));

    let plain =
        t.http.get(t.url("/api/v1/namespaces/default/pods/w1/exec?command=true&stdout=true")).send().await.unwrap();
    assert_eq!(plain.status().as_u16(), 400);
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(
        (body["message"].as_str(), body["reason"].as_str()),
        (Some("Upgrade request required"), Some("BadRequest"))
    );

    // kubectl's SPDY retry gets a Status too, never a route miss.
    let spdy = t
        .http
        .post(t.url("/api/v1/namespaces/default/pods/w1/exec?command=true&stdout=true"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .send()
        .await
        .unwrap();
    assert_eq!(spdy.status().as_u16(), 400);
    assert_eq!(spdy.json::<serde_json::Value>().await.unwrap()["kind"], "Status");

    let error = exec_ws(&t.base, "w1", &command_query(&["true"], "stdout=true"), "channel.k8s.io").await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else { panic!("expected an HTTP answer") };
    assert_eq!(response.status().as_u16(), 400, "unsupported subprotocols are refused");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn a_disconnected_client_does_not_kill_the_process() {
    let t = running("w1").await;
    let marker = t.pod_dir("w1").join("marker");
    let query = command_query(&["sh", "-c", "sleep 0.4; touch marker"], "stdout=true&stderr=true");
    let (mut ws, _) = exec_ws(&t.base, "w1", &query, BOTH).await.unwrap();
    let pids = t.exec_pids("w1").await;
    assert_eq!(pids.len(), 1, "the exec is listed while it runs");
    ws.close(None).await.unwrap();
    drop(ws);
    for _ in 0..100 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(marker.exists(), "the process ran to its end after the client left");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn deleting_the_pod_kills_its_execs() {
    let t = running("w1").await;
    let query = command_query(&["sh", "-c", "sleep 30 & sleep 30"], "stdout=true&stderr=true");
    let (mut ws, _) = exec_ws(&t.base, "w1", &query, BOTH).await.unwrap();
    let pids = t.exec_pids("w1").await;
    assert_eq!(pids.len(), 1);
    let (status, _) = t.delete("w1", None).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let out = collect(&mut ws).await;
    assert!(started.elapsed() < Duration::from_secs(3), "killed at the end of the (capped) grace period");
    let status = out.status.unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "137");
    assert!(t.pod("w1").await.is_none(), "the pod is gone when the client learns of the kill");
    assert!(!alive(pids[0]), "the exec's process is dead");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn an_oom_kill_ends_execs_with_137() {
    let t = running("w1").await;
    let (mut ws, _) = exec_ws(&t.base, "w1", &command_query(&["sleep", "30"], "stdout=true"), BOTH).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (code, _) = t.post_json("/_sim/pods/default/w1/oom", &json!({})).await;
    assert_eq!(code, 200);
    let status = collect(&mut ws).await.status.unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "137");
    let pod = t.pod("w1").await.unwrap();
    assert_eq!(pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"], "OOMKilled");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn omit_exec_status_fault_closes_without_a_status() {
    let t = running("w1").await;
    assert_eq!(t.set_faults(json!({"omit_exec_status": true})).await, 200);
    let (mut ws, _) = exec_ws(&t.base, "w1", &command_query(&["echo", "hi"], "stdout=true"), BOTH).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!((out.stdout.as_str(), out.status_frames, out.close_code), ("hi\n", 0, Some(1000)));
    t.sim.shutdown().await;
}
