//! OpenTelemetry traces over OTLP, configured only by the standard `OTEL_*` variables.
//!
//! Without an endpoint nothing is installed: no exporter, no span ids, no cost. With one, spans
//! go through a bounded batch queue on the SDK's own thread, so a slow or dead collector never
//! blocks a request: when the queue is full, spans are dropped and counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use services::metrics::{OTEL_SPANS_DROPPED_TOTAL, OTEL_SPANS_EXPORTED_TOTAL};

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "rdev-api";

/// Why tracing could not be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// A variable holds a value the SDK does not accept.
    #[error("{name}={value}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
    /// The exporter could not be built (an endpoint that is not a URI, for instance).
    #[error("OTLP trace exporter: {0}")]
    Exporter(String),
}

/// OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`, the default.
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

/// The `OTEL_BSP_*` batch settings (SDK defaults when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting for export; beyond it new spans are dropped.
    pub max_queue_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms): pause between exports.
    pub schedule_delay: Duration,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export request.
    pub max_export_batch_size: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self { max_queue_size: 2048, schedule_delay: Duration::from_millis(5000), max_export_batch_size: 512 }
    }
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// `OTEL_SDK_DISABLED=true` turns tracing off whatever else is set.
    pub sdk_disabled: bool,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: base URL (`/v1/traces` is appended for HTTP).
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full traces URL, used as given.
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Protocol,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// Whether `OTEL_RESOURCE_ATTRIBUTES` names `service.name` (then it is not overridden).
    pub resource_names_service: bool,
    /// `OTEL_BSP_*`.
    pub batch: BatchSettings,
}

impl TracingConfig {
    /// Tracing off: what an environment without `OTEL_*` variables gives.
    pub fn off() -> Self {
        Self {
            sdk_disabled: false,
            endpoint: None,
            traces_endpoint: None,
            protocol: Protocol::HttpProtobuf,
            service_name: None,
            resource_names_service: false,
            batch: BatchSettings::default(),
        }
    }

    /// Exports over HTTP/protobuf to the full traces URL `url` (tests, benchmarks).
    pub fn http(url: &str) -> Self {
        Self { traces_endpoint: Some(url.to_owned()), ..Self::off() }
    }

    /// The configuration of the process environment.
    pub fn from_env() -> Result<Self, TracingError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The configuration the variables `var` gives (empty values count as unset, as the spec says).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, TracingError> {
        let get = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let protocol = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            None => Protocol::HttpProtobuf,
            Some(p) if p == "http/protobuf" => Protocol::HttpProtobuf,
            Some(p) if p == "grpc" => Protocol::Grpc,
            Some(value) => {
                return Err(TracingError::Invalid {
                    name: "OTEL_EXPORTER_OTLP_PROTOCOL",
                    value,
                    reason: "use http/protobuf or grpc",
                })
            }
        };
        let defaults = BatchSettings::default();
        let number = |name: &'static str, default: usize| -> Result<usize, TracingError> {
            get(name).map_or(Ok(default), |value| {
                value.parse::<usize>().ok().filter(|n| *n > 0).ok_or(TracingError::Invalid {
                    name,
                    value,
                    reason: "a positive whole number",
                })
            })
        };
        let max_queue_size = number("OTEL_BSP_MAX_QUEUE_SIZE", defaults.max_queue_size)?;
        let batch = BatchSettings {
            max_queue_size,
            schedule_delay: Duration::from_millis(number(
                "OTEL_BSP_SCHEDULE_DELAY",
                defaults.schedule_delay.as_millis() as usize,
            )? as u64),
            // The spec: a batch larger than the queue is cut to the queue.
            max_export_batch_size: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaults.max_export_batch_size)?
                .min(max_queue_size),
        };
        Ok(Self {
            sdk_disabled: get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            traces_endpoint: get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            protocol,
            service_name: get("OTEL_SERVICE_NAME"),
            resource_names_service: get("OTEL_RESOURCE_ATTRIBUTES")
                .is_some_and(|attrs| attrs.split(',').any(|kv| kv.trim_start().starts_with("service.name="))),
            batch,
        })
    }

    /// Where spans go, or `None` when tracing is off (no endpoint, or `OTEL_SDK_DISABLED`).
    pub fn export_url(&self) -> Option<String> {
        if self.sdk_disabled {
            return None;
        }
        if let Some(url) = &self.traces_endpoint {
            return Some(url.clone());
        }
        let base = self.endpoint.as_deref()?;
        Some(match self.protocol {
            // gRPC has no path: the service name routes the call.
            Protocol::Grpc => base.to_owned(),
            Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        })
    }
}

/// Builds the tracer provider for `config`, or `None` when tracing is off. Needs a Tokio
/// runtime for gRPC (the channel's connection task lives there).
pub fn provider(config: &TracingConfig) -> Result<Option<SdkTracerProvider>, TracingError> {
    let Some(url) = config.export_url() else { return Ok(None) };
    let exporter = match config.protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(url).build(),
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(url).build(),
    }
    .map_err(|e| TracingError::Exporter(e.to_string()))?;
    for reason in ["queue_full", "export_failed"] {
        metrics::counter!(OTEL_SPANS_DROPPED_TOTAL, "reason" => reason).increment(0);
    }
    metrics::counter!(OTEL_SPANS_EXPORTED_TOTAL).increment(0);
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.batch.max_queue_size)
        .with_scheduled_delay(config.batch.schedule_delay)
        .with_max_export_batch_size(config.batch.max_export_batch_size)
        .build();
    let processor = BatchSpanProcessor::new(Counted { inner: exporter, queued: Arc::clone(&queued) }, batch);
    let bounded = Bounded { inner: processor, queued, capacity: config.batch.max_queue_size };
    let mut resource = Resource::builder();
    if let Some(name) = &config.service_name {
        resource = resource.with_service_name(name.clone());
    } else if !config.resource_names_service {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let resource = resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (read by the SDK).
    Ok(Some(SdkTracerProvider::builder().with_span_processor(bounded).with_resource(resource.build()).build()))
}

/// Admission in front of the batch processor: at most `capacity` spans are queued or being
/// exported; beyond that a span is dropped here, at once, and counted. The batch processor's
/// own queue has the same size, so it never has to drop one silently.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(OTEL_SPANS_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the exporter delivered and what it lost, and frees the batch's room in the queue.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => metrics::counter!(OTEL_SPANS_EXPORTED_TOTAL).increment(n as u64),
            Err(_) => metrics::counter!(OTEL_SPANS_DROPPED_TOTAL, "reason" => "export_failed").increment(n as u64),
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<TracingConfig, TracingError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        TracingConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        let off = config(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect("valid");
        assert_eq!(off.export_url(), None);
        assert_eq!(config(&[]).expect("valid"), TracingConfig::off());
        assert!(provider(&off).expect("no error").is_none());
    }

    #[test]
    fn sdk_disabled_wins_over_an_endpoint() {
        let c = config(&[("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert_eq!(c.expect("valid").export_url(), None);
    }

    #[test]
    fn endpoints_resolve_as_the_spec_says() {
        let http = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).expect("valid");
        assert_eq!(http.export_url().as_deref(), Some("http://c:4318/v1/traces"));
        let grpc = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(grpc.expect("valid").export_url().as_deref(), Some("http://c:4317"));
        let signal = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
        ]);
        assert_eq!(signal.expect("valid").export_url().as_deref(), Some("http://t:9999/custom"));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let e = config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).expect_err("unsupported");
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let e = config(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).expect_err("zero");
        assert!(e.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{e}");
    }

    #[test]
    fn batch_settings_are_read_and_the_batch_fits_the_queue() {
        let c = config(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100"), ("OTEL_BSP_SCHEDULE_DELAY", "50")]).expect("valid");
        assert_eq!(
            c.batch,
            BatchSettings {
                max_queue_size: 100,
                schedule_delay: Duration::from_millis(50),
                max_export_batch_size: 100
            }
        );
    }
}
