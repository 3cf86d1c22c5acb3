//! OTLP over gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`): spans reach a gRPC collector. The
//! exporter's batch thread is not a Tokio thread, so this is the path that proves the gRPC
//! channel works from it.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::spawn_app;
use common::wait::eventually;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use reqwest::StatusCode;

/// Keeps (trace id, span name) of every span exported to it.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().expect("lock").extend(spans.map(|s| (hex::encode(s.trace_id), s.name)));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_reach_a_grpc_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(incoming),
    );
    let config = app::telemetry::TracingConfig::from_lookup(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(format!("http://{addr}")),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".into()),
        "OTEL_BSP_SCHEDULE_DELAY" => Some("100".into()),
        _ => None,
    })
    .expect("config");
    let telemetry = app::telemetry::init_with(app::config::LogFormat::Json, "error", &config).expect("init");
    let app = spawn_app().await;
    let trace_id = "3af7651916cd43dd8448eb211c80319c";
    let res = app
        .client
        .get(format!("{}/v1/me", app.base))
        .bearer_auth(&app.admin)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    eventually("a span over gRPC", Duration::from_secs(15), || {
        let seen = collector.0.lock().expect("lock").iter().any(|(t, n)| t == trace_id && n == "GET /v1/me");
        async move { seen }
    })
    .await;
    telemetry.shutdown().await;
}
