//! What aether tells an observer: a span per perform and per processing, on the
//! OpenTelemetry messaging conventions, trace context carried in the envelope, and metrics.
//!
//! # Spans
//!
//! Spans are `tracing` spans at `INFO`, whose fields are the conventions' attributes (a
//! [tracing-opentelemetry] layer maps `otel.name`, `otel.kind` and `otel.status_code` to
//! the span's name, kind and status, and the other fields to attributes):
//!
//! | span | kind | when |
//! |------|------|------|
//! | `perform {destination}` | producer | a client's [`perform`](crate::TaskBuilder::perform): encoding and sending the perform |
//! | `process {destination}` | consumer | a worker's handling of one delivery: admission, the handler's runs (its own spans and events nest here), the completion |
//!
//! Attributes: `messaging.system` (the transport's [name](crate::Transport::name)),
//! `messaging.operation.name` (`perform`, `process`), `messaging.operation.type` (`send`,
//! `process`), `messaging.destination.name` (the topic template, with `{tid}` in place of
//! the task id, e.g. `shop/orders/price/x/{tid}/perform`, so it stays low in
//! cardinality), `messaging.message.id` (the tid), on the process span
//! `messaging.consumer.group.name` (the workgroup) and `messaging.aether.attempt`, and
//! `error.type` with `otel.status_code = "error"` when the send or the task failed. With
//! the `otel` feature the process span also carries the status reports (`status`, with
//! `messaging.aether.progress`) and the completion (`complete`, with
//! `messaging.aether.status`) as span events.
//!
//! # Metrics
//!
//! Counters, a histogram and a gauge through the `metrics` facade: [`metrics`] lists
//! them. With the `prometheus` feature, `prometheus::install` sets up the one
//! Prometheus recorder of the process that aether's `/metrics` endpoints render.
//!
//! # Trace context
//!
//! With the `otel` feature, a perform's headers get the perform span's W3C trace context
//! (`traceparent`, `tracestate`), on every transport, whatever the global propagator; the
//! worker's process span takes it as its parent and as a link, so the client's perform and
//! the worker's processing are one trace. A redispatch carries the same context. Without
//! the feature, a `traceparent` the caller set ([`TaskBuilder::header`](crate::TaskBuilder::header))
//! still travels, and the process span records it in its `traceparent` field. Python
//! services ignore the `headers` key.
//!
//! [tracing-opentelemetry]: https://docs.rs/tracing-opentelemetry

use std::collections::BTreeMap;
use std::fmt;

use tracing::Span;

use crate::envelope::Header;
use crate::topic::Topic;

pub mod metrics;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "otel")]
mod trace_context;

/// The topic template of a task's messages: the topic with `{tid}` for the task id.
struct Template<'a>(&'a Topic);

impl fmt::Display for Template<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{{tid}}/{}", self.0.queue_prefix(), self.0.action())
    }
}

/// A span name on the conventions: `{operation} {destination template}`.
struct SpanName<'a>(&'static str, &'a Topic);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, Template(self.1))
    }
}

/// The producer span of a perform of `topic` on the transport named `system`. A disabled
/// span (no subscriber interested) costs a check of the callsite.
pub(crate) fn perform_span(system: &'static str, topic: &Topic) -> Span {
    tracing::info_span!(
        "perform",
        otel.name = %SpanName("perform", topic),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.name = "perform",
        "messaging.operation.type" = "send",
        messaging.destination.name = %Template(topic),
        messaging.message.id = topic.tid(),
        "error.type" = tracing::field::Empty,
    )
}

/// The consumer span of a worker processing the perform on `topic` for `workgroup`.
pub(crate) fn process_span(system: &'static str, topic: &Topic, workgroup: &str) -> Span {
    tracing::info_span!(
        "process",
        otel.name = %SpanName("process", topic),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.name = "process",
        "messaging.operation.type" = "process",
        messaging.destination.name = %Template(topic),
        messaging.consumer.group.name = workgroup,
        messaging.message.id = topic.tid(),
        messaging.aether.attempt = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        traceparent = tracing::field::Empty,
    )
}

/// Writes the trace context of `span` into a perform's headers (with the `otel` feature
/// and a tracing-opentelemetry layer; otherwise leaves them as the caller set them).
pub(crate) fn inject(span: &Span, headers: &mut Option<BTreeMap<String, String>>) {
    #[cfg(feature = "otel")]
    if !span.is_disabled() {
        trace_context::inject(span, headers);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, headers);
}

/// Continues the trace a perform's header carries in the worker's `span`: its parent and
/// a link (with the `otel` feature), or its `traceparent` field. Call it before the span
/// is first entered.
pub(crate) fn continue_trace(span: &Span, header: &Header) {
    if span.is_disabled() {
        return;
    }
    if let Some(attempt) = header.attempt {
        span.record("messaging.aether.attempt", attempt);
    }
    let Some(headers) = &header.headers else {
        return;
    };
    #[cfg(feature = "otel")]
    trace_context::extract(span, headers);
    #[cfg(not(feature = "otel"))]
    if let Some(parent) = headers.get("traceparent") {
        span.record("traceparent", parent.as_str());
    }
}

/// Marks `span` failed with `error_type`, a low-cardinality reason.
pub(crate) fn failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}

/// A status report the worker sent: a span event with the otel feature.
pub(crate) fn status_event(span: &Span, progress: u8) {
    #[cfg(feature = "otel")]
    if !span.is_disabled() {
        trace_context::event(
            span,
            "status",
            "messaging.aether.progress",
            i64::from(progress).into(),
        );
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, progress);
}

/// The completion the worker sent (`succeed` or `failed`): a span event with the otel
/// feature.
pub(crate) fn complete_event(span: &Span, status: &'static str) {
    #[cfg(feature = "otel")]
    if !span.is_disabled() {
        trace_context::event(span, "complete", "messaging.aether.status", status.into());
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, status);
}

/// A low-cardinality name of an error, for `error.type`.
pub(crate) fn error_type(e: &crate::Error) -> &'static str {
    use crate::Error;
    match e {
        Error::Timeout(_) => "timeout",
        Error::Transport { .. } => "transport",
        Error::QueueFull { .. } => "queue_full",
        Error::PayloadTooLarge { .. } => "payload_too_large",
        Error::Closed => "closed",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_topic_template_not_the_tid() {
        let topic: Topic = "shop/orders/price/x/abc123/perform".parse().unwrap();
        assert_eq!(
            Template(&topic).to_string(),
            "shop/orders/price/x/{tid}/perform"
        );
        assert_eq!(
            SpanName("process", &topic).to_string(),
            "process shop/orders/price/x/{tid}/perform"
        );
    }
}
