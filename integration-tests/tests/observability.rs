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

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().expect("a number"))
}

/// A worker and a client over Redis under a Prometheus recorder: the scraped text shows
/// the counters moving, the handler histogram with aether's buckets and the online gauge,
/// and `stats()` agrees with them.
#[tokio::test]
async fn prometheus_scrape_shows_the_counters_moving() {
    use aether::observe::metrics as m;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(m::WORKER_HANDLER_DURATION.into()),
            m::DURATION_BUCKETS,
        )
        .expect("buckets")
        .build_recorder();
    let scrape = recorder.handle();
    // This runtime's one thread records into it: the test binary's other tests do not.
    let _scope = metrics::set_default_local_recorder(&recorder);
    m::describe();

    let h = RedisHarness::from_env("streams");
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
            |_ctx: TaskContext, v: u32| async move {
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
    let before = scrape.render();
    for v in [1u32, 2, 3, 0] {
        let task = client.perform("orders", "price", "x", &v).await.unwrap();
        assert_eq!(task.result::<u32>().await.is_ok(), v != 0);
    }
    let during = scrape.render();
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(wnode);
    let after = scrape.render();

    let client_labels = [
        ("job", "orders"),
        ("task", "price"),
        ("transport", "redis-streams"),
    ];
    let worker_labels = [
        ("job", "orders"),
        ("task", "price"),
        ("workgroup", "billing"),
        ("transport", "redis-streams"),
    ];
    let at = |text: &str, name: &str, labels: &[(&str, &str)]| {
        sample(text, name, labels).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(sample(&before, m::CLIENT_PERFORMED, &client_labels), None);
    assert_eq!(at(&during, m::CLIENT_PERFORMED, &client_labels), 4.0);
    assert_eq!(at(&during, m::CLIENT_SUCCEEDED, &client_labels), 3.0);
    assert_eq!(at(&during, m::CLIENT_FAILED, &client_labels), 1.0);
    assert_eq!(at(&during, m::CLIENT_REDISPATCHED, &client_labels), 0.0);
    assert_eq!(at(&after, m::WORKER_ACCEPTED, &worker_labels), 4.0);
    assert_eq!(at(&after, m::WORKER_SUCCEEDED, &worker_labels), 3.0);
    assert_eq!(at(&after, m::WORKER_FAILED, &worker_labels), 1.0);
    let count = format!("{}_count", m::WORKER_HANDLER_DURATION);
    assert_eq!(at(&after, &count, &worker_labels), 4.0);
    let bucket = format!("{}_bucket", m::WORKER_HANDLER_DURATION);
    assert_eq!(at(&after, &bucket, &[("le", "300")]), 4.0, "{after}");
    let waits = format!("{}_count", m::WORKER_QUEUE_WAIT);
    assert_eq!(at(&after, &waits, &worker_labels), 4.0);
    let online = [("workgroup", "billing"), ("transport", "redis-streams")];
    assert_eq!(at(&during, m::WORKERS_ONLINE, &online), 1.0);
    assert_eq!(at(&after, m::WORKERS_ONLINE, &online), 0.0);
    assert!(after.contains(&format!("# HELP {} ", m::CLIENT_PERFORMED)));

    // stats() is fed by the same events.
    let stats = cnode.stats();
    assert_eq!((stats.performed, stats.succeeded, stats.failed), (4, 3, 1));
}
