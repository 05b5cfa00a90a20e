//! Observability over real brokers: one trace from the client's perform span into the
//! worker's process span (Redis streams at `AETHER_TEST_REDIS_URL`, MQTT at
//! `AETHER_TEST_MQTT_URL`), collected in process by OpenTelemetry's in-memory exporter.
//!
//! Each test runs on a current-thread runtime under its own scoped subscriber, so the tests
//! of this binary do not see each other's spans.

use std::time::Duration;

use aether::{Aether, Error, TaskContext};
use integration_tests::brokers::redis::RedisHarness;
use integration_tests::harness::{Harness, UrlHarness, union};
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// A subscriber whose spans go to `exporter` through a tracing-opentelemetry layer.
fn collector(exporter: &InMemorySpanExporter) -> (impl tracing::Subscriber, SdkTracerProvider) {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("aether-test"));
    (tracing_subscriber::registry().with(layer), provider)
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn str_attr<'a>(span: &'a SpanData, key: &str) -> &'a str {
    match attr(span, key) {
        Some(Value::String(s)) => s.as_str(),
        other => panic!("span {:?}: attribute {key} is {other:?}", span.name),
    }
}

fn event_attr<'a>(span: &'a SpanData, name: &str) -> Vec<&'a [KeyValue]> {
    span.events
        .events
        .iter()
        .filter(|e| e.name == name)
        .map(|e| e.attributes.as_slice())
        .collect()
}

/// A worker and a client on separate connections of `h`: one task that reports progress
/// and succeeds, one that fails. The client's perform span and the worker's process span
/// of each are one trace, with the conventions' names and attributes.
async fn one_trace_from_perform_into_process(h: &dyn Harness, system: &str) {
    let exporter = InMemorySpanExporter::default();
    let (subscriber, provider) = collector(&exporter);
    let _scope = tracing::subscriber::set_default(subscriber);

    let union = union();
    let wnode = Aether::builder()
        .union(&union)
        .transport(h.connect().await)
        .build()
        .expect("worker node");
    let worker = wnode
        .worker()
        .workgroup("billing")
        .announce(false)
        .handle(
            "orders",
            "price",
            "x",
            |ctx: TaskContext, v: u32| async move {
                ctx.progress(50).await?;
                if v == 0 {
                    return Err(Error::Config("zero".into()));
                }
                Ok(v + 1)
            },
        )
        .start()
        .await
        .expect("worker");
    let cnode = Aether::builder()
        .union(&union)
        .transport(h.connect().await)
        .build()
        .expect("client node");
    let client = cnode.client();
    let ok = client.perform("orders", "price", "x", &1u32).await.unwrap();
    let ok_tid = ok.tid().to_owned();
    assert_eq!(ok.result::<u32>().await.unwrap(), 2);
    let bad = client.perform("orders", "price", "x", &0u32).await.unwrap();
    let bad_tid = bad.tid().to_owned();
    assert!(bad.result::<u32>().await.is_err());
    // Every processing has ended (and its span closed) once the worker has stopped.
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().expect("spans");
    let template = format!("{union}/orders/price/x/{{tid}}/perform");
    for (tid, failed) in [(&ok_tid, false), (&bad_tid, true)] {
        let of = |kind: SpanKind| {
            let found: Vec<&SpanData> = spans
                .iter()
                .filter(|s| {
                    s.span_kind == kind
                        && matches!(attr(s, "messaging.message.id"), Some(Value::String(t)) if t.as_str() == tid.as_str())
                })
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{system}: one {kind:?} span of {tid}: {spans:#?}"
            );
            found[0]
        };
        let perform = of(SpanKind::Producer);
        let process = of(SpanKind::Consumer);

        // One trace: the process span's parent is the perform span, and it links to it.
        assert_eq!(
            process.span_context.trace_id(),
            perform.span_context.trace_id(),
            "{system}: one trace"
        );
        assert_eq!(process.parent_span_id, perform.span_context.span_id());
        assert!(process.parent_span_is_remote);
        assert!(
            process.links.links.iter().any(|l| l.span_context.span_id()
                == perform.span_context.span_id()
                && l.span_context.trace_id() == perform.span_context.trace_id()),
            "{system}: the process span links to the perform span"
        );

        // Names and attributes on the messaging conventions.
        assert_eq!(perform.name, format!("perform {template}"));
        assert_eq!(process.name, format!("process {template}"));
        for (span, op, op_type) in [
            (perform, "perform", "send"),
            (process, "process", "process"),
        ] {
            assert_eq!(str_attr(span, "messaging.system"), system);
            assert_eq!(str_attr(span, "messaging.operation.name"), op);
            assert_eq!(str_attr(span, "messaging.operation.type"), op_type);
            assert_eq!(str_attr(span, "messaging.destination.name"), template);
        }
        assert_eq!(
            str_attr(process, "messaging.consumer.group.name"),
            "billing"
        );
        assert!(attr(perform, "error.type").is_none());

        // Status reports and the completion are events of the process span.
        let statuses = event_attr(process, "status");
        assert!(
            statuses
                .iter()
                .any(|a| a.contains(&KeyValue::new("messaging.aether.progress", 50i64))),
            "{system}: progress 50 as a span event: {:?}",
            process.events
        );
        let completes = event_attr(process, "complete");
        let status = if failed { "failed" } else { "succeed" };
        assert_eq!(
            completes,
            vec![&[KeyValue::new("messaging.aether.status", status)][..]],
            "{system}"
        );
        if failed {
            assert_eq!(str_attr(process, "error.type"), "task_failed");
            assert!(matches!(process.status, Status::Error { .. }));
        } else {
            assert!(attr(process, "error.type").is_none());
            assert!(!matches!(process.status, Status::Error { .. }));
        }
    }
}

#[tokio::test]
async fn one_trace_from_perform_into_process_over_redis() {
    one_trace_from_perform_into_process(&RedisHarness::from_env("streams"), "redis-streams").await;
}

#[tokio::test]
async fn one_trace_from_perform_into_process_over_mqtt() {
    let h = UrlHarness::from_env("mqtt", "AETHER_TEST_MQTT_URL", "mqtt://127.0.0.1:1883");
    one_trace_from_perform_into_process(&h, "mqtt").await;
}
