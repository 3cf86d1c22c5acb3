//! Traces through real HTTP and a real OTLP receiver: a command queued on one replica and run
//! on another is one trace that continues the caller's; malformed trace headers start a new
//! trace without failing the request; failures are span errors; logs carry the ids.
//!
//! The tracer provider is global to the process, so this binary sets it up once, pointed at the
//! test receiver, and every test reads from that receiver.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::time::Duration;

use adapters_postgres::testing::TestDatabase;
use common::otlp::{self, ReceivedSpan};
use common::{spawn_app, spawn_replica, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The receiver every test of this binary exports to. It and the exporter run on a thread and
/// runtime of their own: set up on the first test's runtime, they would stop when that test ends
/// and every later test would wait for spans in vain.
async fn receiver() -> &'static otlp::Receiver {
    static RECEIVER: tokio::sync::OnceCell<otlp::Receiver> = tokio::sync::OnceCell::const_new();
    RECEIVER.get_or_init(start_receiver_thread).await
}

async fn start_receiver_thread() -> otlp::Receiver {
    let (ready, started) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("receiver runtime");
        runtime.block_on(async {
            let receiver = otlp::start("127.0.0.1:0").await.expect("receiver");
            let mut config = app::telemetry::TracingConfig::http(&receiver.url);
            config.batch.schedule_delay = Duration::from_millis(100);
            let telemetry = app::telemetry::init_with(app::config::LogFormat::Json, "error", &config).expect("tracing");
            assert!(telemetry.exporting());
            // The provider lives as long as the process; the global keeps it.
            std::mem::forget(telemetry);
            let _ = ready.send(receiver);
            std::future::pending::<()>().await;
        });
    });
    started.await.expect("the receiver thread started")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("dir")
}

fn one<'a>(spans: &'a [ReceivedSpan], what: &str, pick: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what} span in {spans:#?}");
    found[0]
}

async fn submit_traced(app: &TestApp, project: &str, body: Value, traceparent: &str) -> String {
    let res = app
        .client
        .post(format!("{}/v1/projects/{project}/commands", app.base))
        .bearer_auth(&app.admin)
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=opaque")
        .json(&body)
        .send()
        .await
        .expect("submit");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let v: Value = res.json().await.expect("json");
    v["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_queued_on_one_replica_and_run_on_another_is_one_trace() {
    let receiver = receiver().await;
    let db = TestDatabase::create().await;
    // Replica A runs nothing, so whatever runs the command is replica B.
    let a = spawn_replica(db.url(), None, &["--concurrent-commands", "0"], tempdir()).await;
    let b = spawn_replica(db.url(), Some(&a.admin), &["--concurrent-commands", "2"], tempdir()).await;
    a.project("traced", 2).await;

    let (trace_id, caller_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let id = submit_traced(&a, "traced", json!({"command": ["sh", "-c", "echo hi"], "priority": "high"}), &traceparent)
        .await;
    let done = b.finished(&id, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            let names: Vec<&str> = spans.iter().filter(|s| s.trace_id == trace_id).map(|s| s.name.as_str()).collect();
            ["command.claim", "command.run", "command.exec"].iter().all(|n| names.contains(n))
        })
        .await;
    let trace: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.trace_id == trace_id).collect();

    let http = one(&trace, "HTTP server", |s| s.name == "POST /v1/projects/{name}/commands");
    assert_eq!(http.parent_span_id, caller_span, "the server span continues the caller's span");
    assert_eq!(http.attr("http.request.method"), Some("POST"));
    assert_eq!(http.attr("http.route"), Some("/v1/projects/{name}/commands"));
    assert_eq!(http.attr("url.path"), Some("/v1/projects/traced/commands"));
    assert_eq!(http.attr("http.response.status_code"), Some("202"));
    assert_eq!(http.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(http.service, "rdev-api");

    let enqueue = one(&trace, "enqueue", |s| s.name == "command.enqueue");
    assert_eq!(enqueue.parent_span_id, http.span_id, "enqueue runs inside the request");
    assert_eq!(enqueue.attr("command_id"), Some(id.as_str()));
    assert_eq!(enqueue.attr("priority"), Some("high"));

    let claim = one(&trace, "claim", |s| s.name == "command.claim");
    let run = one(&trace, "run", |s| s.name == "command.run");
    for worker_span in [claim, run] {
        assert_eq!(worker_span.parent_span_id, enqueue.span_id, "{} joins the enqueue", worker_span.name);
        assert_eq!(worker_span.attr("project"), Some("traced"));
        assert_eq!(worker_span.attr("priority"), Some("high"));
    }
    assert_eq!(claim.attr("command.id"), Some(id.as_str()));
    assert_eq!(run.attr("command_id"), Some(id.as_str()));
    assert_eq!(claim.attr("replica"), run.attr("replica"), "claimed and run by the same replica");
    assert_eq!(run.attr("command.status"), Some("succeeded"));
    assert_eq!(run.attr("command.exit_code"), Some("0"));
    assert_ne!(run.status, 2, "a success is no error");
    let pod = one(&trace, "pod ensure", |s| s.name == "pod.ensure");
    let exec = one(&trace, "exec", |s| s.name == "command.exec");
    assert_eq!(
        (pod.parent_span_id.as_str(), exec.parent_span_id.as_str()),
        (run.span_id.as_str(), run.span_id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_command_marks_its_spans_as_errors() {
    let receiver = receiver().await;
    let app = spawn_app().await;
    app.project("failing", 1).await;
    let trace_id = "1af7651916cd43dd8448eb211c80319c";
    let id = submit_traced(
        &app,
        "failing",
        json!({"command": ["sh", "-c", "exit 3"]}),
        &format!("00-{trace_id}-b7ad6b7169203331-01"),
    )
    .await;
    assert_eq!(app.finished(&id, 30).await["exit_code"], 3);
    let spans = receiver
        .wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.trace_id == trace_id && s.name == "command.run"))
        .await;
    let run = one(&spans, "run", |s| s.trace_id == trace_id && s.name == "command.run");
    assert_eq!(run.status, 2, "a failed command is a span error: {run:?}");
    assert_eq!(run.attr("command.status"), Some("failed"));
    assert_eq!(run.attr("command.exit_code"), Some("3"));
    let exec = one(&spans, "exec", |s| s.trace_id == trace_id && s.name == "command.exec");
    assert_eq!(exec.status, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_traceparent_starts_a_new_trace_and_the_request_succeeds() {
    let receiver = receiver().await;
    let app = spawn_app().await;
    for (n, bad) in [
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-zz-01",
    ]
    .into_iter()
    .enumerate()
    {
        let request_id = format!("malformed-traceparent-{n}");
        let res = app
            .client
            .get(format!("{}/v1/me", app.base))
            .bearer_auth(&app.admin)
            .header("traceparent", bad)
            .header("x-request-id", &request_id)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), StatusCode::OK, "{bad}");
        let spans = receiver
            .wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.attr("request_id") == Some(request_id.as_str())))
            .await;
        let server = one(&spans, "server", |s| s.attr("request_id") == Some(request_id.as_str()));
        assert_eq!(server.parent_span_id, "", "{bad}: a new root");
        assert_eq!(server.name, "GET /v1/me");
        assert!(!bad.contains(&server.trace_id), "{bad}: a fresh trace id");
        assert_eq!(server.trace_id.len(), 32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_errors_are_span_errors_and_client_errors_are_not() {
    let receiver = receiver().await;
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/v1/commands/not-a-uuid", app.base))
        .bearer_auth(&app.admin)
        .header("x-request-id", "client-error-span")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let spans = receiver
        .wait_for(Duration::from_secs(10), |s| s.iter().any(|s| s.attr("request_id") == Some("client-error-span")))
        .await;
    let server = one(&spans, "server", |s| s.attr("request_id") == Some("client-error-span"));
    assert_eq!(server.attr("http.response.status_code"), Some("400"));
    assert_ne!(server.status, 2, "a 4xx is the client's error, not the server span's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_delivery_is_a_client_span_whose_traceparent_reaches_the_receiver() {
    use adapters_webhook::testing::{Receiver, Reply};
    let collector = receiver().await;
    let app = common::spawn_app_with(&["--webhook-allow-private-targets"]).await;
    let hooks = Receiver::start().await.expect("webhook receiver");
    hooks.script([Reply::status(500)]);
    let res = app.post("/v1/webhooks", json!({"url": hooks.url("/traced"), "events": ["command.succeeded"]})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    app.project("hooked", 1).await;
    app.run("hooked", json!({"command": ["true"]})).await;
    // The first attempt fails (500) and is retried at once; both carry their own span's id.
    let got = hooks.wait_for(2, Duration::from_secs(20)).await;
    assert!(got.len() >= 2, "{got:?}");
    for delivery in &got[..2] {
        let traceparent = delivery.header("traceparent").expect("a traceparent header");
        let sent = domain::trace::TraceContext::parse(traceparent, None).expect("well-formed");
        let span_id = &traceparent[36..52];
        let spans = collector
            .wait_for(Duration::from_secs(10), |s| {
                s.iter().any(|s| s.span_id == span_id && s.name == "webhook.deliver")
            })
            .await;
        let span = one(&spans, "delivery", |s| s.span_id == span_id && s.name == "webhook.deliver");
        assert_eq!(span.trace_id, sent.trace_id());
        assert_eq!(span.attr("server.address"), Some("127.0.0.1"));
    }
    let statuses: Vec<i32> = collector
        .spans()
        .iter()
        .filter(|s| {
            s.name == "webhook.deliver"
                && got[..2].iter().any(|d| d.header("traceparent").is_some_and(|t| t.contains(&s.span_id)))
        })
        .map(|s| s.status)
        .collect();
    assert!(statuses.contains(&2), "the 500 answer is a span error: {statuses:?}");
}
