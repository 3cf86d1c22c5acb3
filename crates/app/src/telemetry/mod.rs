//! Logs, traces and metrics: one subscriber, one tracer provider and one recorder, set up once
//! in `main` (tests set them up once per test binary).

pub mod log_ids;
pub mod traces;

use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use services::metrics::WEBHOOK_DELIVERY_DURATION_SECONDS;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;
pub use traces::{TracingConfig, TracingError};

/// Environment variables read outside the `clap` configuration: by the log filter and by the
/// OpenTelemetry SDK and exporter (the standard names; docs/configuration.md#tracing).
pub const ENVIRONMENT: &[&str] = &[
    "RUST_LOG",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
];

/// Set once spans are exported, so hot paths skip work only an exported span needs.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What `init` set up; `shutdown` flushes the spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter. Waits on a blocking thread: the
    /// SDK's shutdown blocks until its export thread is done (at most the export timeout).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans at shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "the span flush task failed"),
        }
    }
}

/// Installs the subscriber: logs filtered by `RUST_LOG` (default `info`), JSON lines carrying
/// `trace_id` and `span_id`, and, when `tracing` names an endpoint, spans of level `info` and
/// above exported over OTLP whatever `RUST_LOG` says (log verbosity and tracing are separate
/// knobs). Needs a Tokio runtime when the protocol is gRPC.
pub fn init(format: LogFormat, tracing: &TracingConfig) -> Result<Telemetry, TracingError> {
    init_with(format, "info", tracing)
}

/// `init` with another log filter for when `RUST_LOG` is unset (tests keep their output quiet).
pub fn init_with(format: LogFormat, default_filter: &str, tracing: &TracingConfig) -> Result<Telemetry, TracingError> {
    // The recorder first: the exporter's counters are registered as it is built.
    metrics_handle();
    // The W3C propagator is set even with tracing off: it costs nothing until a span has an id.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = traces::provider(tracing)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(log_ids::WithTraceIds(
                tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(true),
            ))
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).compact().with_filter(filter).boxed()
        }
    };
    let spans = provider.as_ref().map(|provider| {
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(services::trace_context::TRACER_NAME))
            // Fewer attributes per span: the span names say where, and export costs per byte.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(LevelFilter::INFO)
    });
    match tracing_subscriber::registry().with(logs).with(spans).try_init() {
        Ok(()) => EXPORTING.store(provider.is_some(), Ordering::Relaxed),
        Err(e) => eprintln!("logging was already set up: {e}"),
    }
    Ok(Telemetry { provider })
}

const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
const COMMAND_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0];
/// Up to the sender's 15 s total timeout.
const WEBHOOK_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0];

/// A Prometheus recorder; installed globally the first time (tests build several apps).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("request_duration_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Prefix("command_".into()), &COMMAND_BUCKETS))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(WEBHOOK_DELIVERY_DURATION_SECONDS.into()), &WEBHOOK_BUCKETS)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            services::metrics::register_series();
            handle
        })
        .clone()
}
