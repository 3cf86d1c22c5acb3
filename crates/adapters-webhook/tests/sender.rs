//! The HTTP sender against a real receiver on loopback: headers, signatures (checked by the
//! reference libraries of the spec), bounded reads, no redirects, timeouts, the SSRF guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use adapters_webhook::testing::{verify_with_python, PythonVerifier, Received, Receiver, Reply};
use adapters_webhook::{HttpWebhookSender, SenderConfig};
use domain::webhook::{SendErrorKind, WebhookRequest, WebhookSecret, WebhookSender, WebhookUrl};
use domain::DomainError;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn loopback_sender(timeout: Duration) -> HttpWebhookSender {
    let config = SenderConfig { timeout, allow_private_targets: true, ..SenderConfig::default() };
    HttpWebhookSender::new(config).expect("sender")
}

fn guarded_sender() -> HttpWebhookSender {
    HttpWebhookSender::new(SenderConfig::default()).expect("sender")
}

fn secret(byte: u8) -> WebhookSecret {
    WebhookSecret::from_key(&[byte; 32]).expect("key")
}

fn request(url: &str, secrets: Vec<WebhookSecret>) -> WebhookRequest {
    WebhookRequest {
        url: WebhookUrl::parse(url).expect("url"),
        message_id: uuid::Uuid::now_v7().to_string(),
        timestamp: chrono::Utc::now(),
        payload: r#"{"type":"ping","timestamp":"2026-01-01T00:00:00.000000Z","data":{"n":1}}"#.into(),
        secrets,
        traceparent: Some(TRACEPARENT.into()),
    }
}

fn header_map(received: &Received) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (k, v) in &received.headers {
        map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    map
}

#[tokio::test]
async fn a_delivery_carries_the_standard_webhooks_headers_and_verifies_with_both_secrets() {
    let receiver = Receiver::start().await.unwrap();
    let (new, old) = (secret(1), secret(2));
    let req = request(&receiver.url("/hook"), vec![new.clone(), old.clone()]);
    let outcome = loopback_sender(Duration::from_secs(5)).send(&req).await;
    assert_eq!(outcome.status, Some(204), "{outcome:?}");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.path, "/hook");
    assert_eq!(r.body, req.payload);
    assert_eq!(r.header("webhook-id"), Some(req.message_id.as_str()));
    assert_eq!(r.header("webhook-timestamp"), Some(req.timestamp.timestamp().to_string().as_str()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(r.header("webhook-signature").map(|s| s.split(' ').count()), Some(2), "both secrets sign");
    for s in [&new, &old] {
        standardwebhooks::Webhook::new(s.expose()).unwrap().verify(r.body.as_bytes(), &header_map(r)).unwrap();
    }
    let wrong = standardwebhooks::Webhook::new(secret(3).expose()).unwrap();
    assert!(wrong.verify(r.body.as_bytes(), &header_map(r)).is_err());
}

#[tokio::test]
async fn signatures_verify_with_the_python_reference_library() {
    let receiver = Receiver::start().await.unwrap();
    let (new, old) = (secret(4), secret(5));
    let outcome = loopback_sender(Duration::from_secs(5))
        .send(&request(&receiver.url("/"), vec![new.clone(), old.clone()]))
        .await;
    assert_eq!(outcome.status, Some(204));
    let received = receiver.received().remove(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    match verify_with_python(dir, &received, &[new.expose(), old.expose()], secret(6).expose()) {
        Ok(PythonVerifier::Verified(out)) => assert_eq!(out, "verified 2"),
        Ok(PythonVerifier::Skipped) => eprintln!("SKIPPED on request: the Python standardwebhooks verifier"),
        Err(why) => panic!("{why}"),
    }
}

#[tokio::test]
async fn only_the_head_of_an_answer_is_kept_with_status_and_retry_after() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script([Reply::status(503).with_header("retry-after", "7").with_body("x".repeat(100_000))]);
    let outcome = loopback_sender(Duration::from_secs(5)).send(&request(&receiver.url("/"), vec![secret(1)])).await;
    assert_eq!(outcome.status, Some(503));
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(outcome.snippet.map(|s| s.len()), Some(20 * 1024));
    assert!(outcome.error.is_none());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script([Reply::status(302).with_header("location", &receiver.url("/elsewhere"))]);
    let outcome = loopback_sender(Duration::from_secs(5)).send(&request(&receiver.url("/"), vec![secret(1)])).await;
    assert_eq!(outcome.status, Some(302));
    assert_eq!(receiver.wait_for(2, Duration::from_millis(200)).await.len(), 1, "the Location was not visited");
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_off_at_the_timeout() {
    let receiver = Receiver::start().await.unwrap();
    receiver.set_default(Reply::Hang);
    let outcome = loopback_sender(Duration::from_millis(300)).send(&request(&receiver.url("/"), vec![secret(1)])).await;
    assert_eq!(outcome.error.as_ref().map(|e| e.kind), Some(SendErrorKind::Timeout), "{outcome:?}");
    assert_eq!(outcome.status, None);
    assert!(outcome.latency >= Duration::from_millis(300) && outcome.latency < Duration::from_secs(3));
}

#[tokio::test]
async fn a_receiver_that_is_down_is_a_connect_error_until_it_comes_back() {
    let receiver = Receiver::start().await.unwrap();
    let sender = loopback_sender(Duration::from_secs(2));
    receiver.go_down();
    let outcome = sender.send(&request(&receiver.url("/"), vec![secret(1)])).await;
    assert_eq!(outcome.error.map(|e| e.kind), Some(SendErrorKind::Connect));
    receiver.come_back().unwrap();
    assert_eq!(sender.send(&request(&receiver.url("/"), vec![secret(1)])).await.status, Some(204));
}

#[tokio::test]
async fn private_targets_are_refused_at_creation() {
    let sender = guarded_sender();
    for bad in [
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://localhost:8080/",
    ] {
        let url = WebhookUrl::parse(bad).unwrap();
        assert!(matches!(sender.check_target(&url).await, Err(DomainError::Invalid(_))), "{bad}");
    }
    for scheme in ["ftp://example.com/", "file:///etc/passwd"] {
        assert!(matches!(WebhookUrl::parse(scheme), Err(DomainError::Invalid(_))), "{scheme}");
    }
    let allowed = loopback_sender(Duration::from_secs(1));
    assert_eq!(allowed.check_target(&WebhookUrl::parse("http://127.0.0.1/").unwrap()).await, Ok(()));
}

#[tokio::test]
async fn private_targets_are_refused_at_send_time_and_never_contacted() {
    let receiver = Receiver::start().await.unwrap();
    let sender = guarded_sender();
    let port = receiver.addr().port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let outcome = sender.send(&request(&url, vec![secret(1)])).await;
        let error = outcome.error.expect("refused");
        assert_eq!(error.kind, SendErrorKind::RefusedTarget, "{url}: {}", error.message);
    }
    assert!(receiver.wait_for(1, Duration::from_millis(100)).await.is_empty(), "nothing reached the receiver");
}
