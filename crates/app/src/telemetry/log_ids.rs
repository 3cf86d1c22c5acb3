//! Puts the current span's `trace_id` and `span_id` at the top level of every JSON log line, so
//! a log search by trace id finds the lines of every replica that worked on the trace.

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event formatter and adds the OpenTelemetry ids of the event's span.
#[derive(Debug)]
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| span.extensions().get::<OtelData>().and_then(ids_of));
        let Some((trace_id, span_id)) = ids else { return self.0.format_event(ctx, writer, event) };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter writes one object and a newline: the ids go in before its last brace.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(writer, "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"),
            None => writer.write_str(&line),
        }
    }
}

/// The trace and span id a span will be exported with: its parent's trace (a continued remote
/// trace included) or, for a root, the id it was given at creation.
fn ids_of(data: &OtelData) -> Option<(TraceId, SpanId)> {
    let span_id = data.builder.span_id?;
    let parent = data.parent_cx.span();
    let parent = parent.span_context();
    let trace_id = if parent.is_valid() { parent.trace_id() } else { data.builder.trace_id? };
    Some((trace_id, span_id))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_id_of_their_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let out = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(WithTraceIds(tracing_subscriber::fmt::format().json().flatten_event(true)))
                    .with_writer(out.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let expected = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            let cx = span.context();
            let ids = cx.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON object")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "no span, no ids: {}", lines[0]);
        assert_eq!(lines[1]["trace_id"], expected.0.as_str());
        assert_eq!(lines[1]["span_id"], expected.1.as_str());
        assert_eq!(lines[1]["answer"], 42, "the event's own fields stay");
    }
}
