//! A test OTLP/HTTP trace receiver on 127.0.0.1: decodes every `ExportTraceServiceRequest`
//! with opentelemetry-proto and keeps the spans for the test to look at.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One received span, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub attributes: HashMap<String, String>,
    /// The resource's `service.name`.
    pub service: String,
}

impl ReceivedSpan {
    /// The attribute `key` as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver.
pub struct Receiver {
    /// Its traces URL (`http://127.0.0.1:PORT/v1/traces`).
    pub url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Export requests received, decodable or not.
    requests: Arc<Mutex<usize>>,
    /// Spans decoded, kept or not.
    count: Arc<Mutex<usize>>,
    server: actix_web::dev::ServerHandle,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let server = self.server.clone();
        tokio::spawn(async move { server.stop(false).await });
    }
}

/// Starts a receiver on `addr` (`127.0.0.1:0` for any free port) that keeps every span.
pub async fn start(addr: &str) -> std::io::Result<Receiver> {
    start_with(addr, true).await
}

/// Starts a receiver that decodes and counts spans but keeps none: a collector whose own cost
/// stays small (benchmarks).
pub async fn start_counting(addr: &str) -> std::io::Result<Receiver> {
    start_with(addr, false).await
}

async fn start_with(addr: &str, keep: bool) -> std::io::Result<Receiver> {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0));
    let count = Arc::new(Mutex::new(0));
    let (s, r, c) = (Arc::clone(&spans), Arc::clone(&requests), Arc::clone(&count));
    let server = HttpServer::new(move || {
        let (spans, requests, count) = (Arc::clone(&s), Arc::clone(&r), Arc::clone(&c));
        App::new().route(
            "/v1/traces",
            web::post().to(move |body: web::Bytes| {
                let (spans, requests, count) = (Arc::clone(&spans), Arc::clone(&requests), Arc::clone(&count));
                async move {
                    *requests.lock().expect("lock") += 1;
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return HttpResponse::BadRequest().finish();
                    };
                    let n: usize =
                        request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                    *count.lock().expect("lock") += n;
                    if keep {
                        spans.lock().expect("lock").extend(flatten(request));
                    }
                    HttpResponse::Ok()
                        .content_type("application/x-protobuf")
                        .body(ExportTraceServiceResponse::default().encode_to_vec())
                }
            }),
        )
    })
    .workers(1)
    .bind(addr)?;
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(Receiver { url: format!("http://127.0.0.1:{port}/v1/traces"), spans, requests, count, server: handle })
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource: HashMap<String, String> =
            resource_spans.resource.map(|r| attributes(r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    status: span.status.map_or(0, |s| s.code),
                    attributes: attributes(span.attributes),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

fn attributes(kvs: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>) -> HashMap<String, String> {
    kvs.into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(Value::StringValue(s)) => s,
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key, value)
        })
        .collect()
}

impl Receiver {
    /// Everything received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }

    /// How many spans arrived.
    pub fn span_count(&self) -> usize {
        *self.count.lock().expect("lock")
    }

    /// How many export requests arrived.
    pub fn requests(&self) -> usize {
        *self.requests.lock().expect("lock")
    }

    /// Waits up to `within` until `done` holds for the spans received, then returns them.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let until = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > until {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
