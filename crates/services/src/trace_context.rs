//! Moving a trace across the queue: the context of the span that enqueues a command is stored
//! with it, and the replica that claims it continues that trace. Only the OpenTelemetry API is
//! used here; with no tracer provider installed every function is a cheap no-op.

use std::collections::HashMap;
use std::time::SystemTime;

use domain::command::Command;
use domain::ids::WorkerId;
use domain::trace::TraceContext;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The instrumentation scope of rdev-api's own spans.
pub const TRACER_NAME: &str = "rdev-api";

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// W3C headers as a propagator carrier.
#[derive(Default)]
struct Carrier(HashMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace context of `span`, as it would travel in a `traceparent` header; `None` when
/// tracing is off (no OpenTelemetry layer gives the span an id).
pub fn of_span(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    let parent = carrier.0.get(TRACEPARENT)?;
    TraceContext::parse(parent, carrier.0.get(TRACESTATE).map(String::as_str))
}

/// The OpenTelemetry context a stored trace context stands for.
fn context_of(trace: &TraceContext) -> Context {
    let mut carrier = Carrier::default();
    carrier.set(TRACEPARENT, trace.traceparent().to_owned());
    if let Some(state) = trace.tracestate() {
        carrier.set(TRACESTATE, state.to_owned());
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// Makes `span` a child of the stored context, so work done later, maybe on another replica,
/// lands in the trace of the request that asked for it. Nothing happens without a context.
pub fn continue_trace(span: &tracing::Span, trace: Option<&TraceContext>) {
    if let Some(trace) = trace {
        span.set_parent(context_of(trace));
    }
}

/// Records the claim of `command` by `worker` as a span from `started` (when the claim was
/// asked for) to now. Built after the fact because which trace it belongs to is only known once
/// the store has answered; a poll that claims nothing leaves no span at all.
pub fn record_claim(command: &Command, worker: &WorkerId, started: SystemTime) {
    let Some(trace) = &command.trace else { return };
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let attributes = vec![
        KeyValue::new("command.id", command.id.to_string()),
        KeyValue::new("project", command.project.to_string()),
        KeyValue::new("priority", command.priority.as_str()),
        KeyValue::new("replica", worker.to_string()),
    ];
    let mut span = tracer
        .span_builder("command.claim")
        .with_kind(SpanKind::Consumer)
        .with_start_time(started)
        .with_attributes(attributes)
        .start_with_context(&tracer, &context_of(trace));
    // Ends now: the claim is over once the store has answered.
    span.end();
}
