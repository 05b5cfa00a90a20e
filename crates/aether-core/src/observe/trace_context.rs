//! W3C trace context in a perform's headers, through the OpenTelemetry propagator and a
//! tracing-opentelemetry layer (the `otel` feature).

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Headers<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct ReadHeaders<'a>(&'a BTreeMap<String, String>);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`), replacing the caller's;
/// leaves the headers alone where the span has no valid context (no layer installed).
pub(super) fn inject(span: &Span, headers: &mut Option<BTreeMap<String, String>>) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let map = headers.get_or_insert_with(BTreeMap::new);
    TraceContextPropagator::new().inject_context(&cx, &mut Headers(map));
}

/// Makes the context in `headers`, if valid, `span`'s parent and link.
pub(super) fn extract(span: &Span, headers: &BTreeMap<String, String>) {
    let cx = TraceContextPropagator::new().extract(&ReadHeaders(headers));
    let producer = cx.span().span_context().clone();
    if !producer.is_valid() {
        return;
    }
    // Refused where no tracing-opentelemetry layer is installed: nothing to continue.
    if span.set_parent(cx).is_err() {
        return;
    }
    span.add_link(producer);
}

pub(super) fn event(span: &Span, name: &'static str, key: &'static str, value: Value) {
    span.add_event(name, vec![KeyValue::new(key, value)]);
}
