//! Observability: a task's spans through a tracing-opentelemetry layer, and its metrics
//! scraped as Prometheus text.
//!
//! ```text
//! cargo run -p aether-examples --example observability --features observability
//! ```
//!
//! The spans go to OpenTelemetry's in-memory exporter and are printed at the end; a real
//! service would build its `SdkTracerProvider` with an OTLP exporter (opentelemetry-otlp)
//! instead, and serve `handle.render()` on `GET /metrics`.

use std::time::Duration;

use aether::observe::metrics as aether_metrics;
use aether::{Aether, TaskContext};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Metrics: install the recorder before building the node (handles are registered
    // once per route and per handler), with aether's buckets for its histogram.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Prefix("aether_".into()),
            aether_metrics::DURATION_BUCKETS,
        )?
        .install_recorder()?;
    aether_metrics::describe();

    // Spans: a tracing-opentelemetry layer over an OpenTelemetry tracer provider.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("example"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))?;

    let aether = Aether::builder()
        .union("shop")
        .transport(aether::connect("memory://observability").await?)
        .build()?;
    let worker = aether
        .worker()
        .handle(
            "orders",
            "price",
            "x",
            |ctx: TaskContext, items: Vec<u32>| async move {
                ctx.progress(50).await?;
                Ok::<_, aether::Error>(items.iter().sum::<u32>())
            },
        )
        .start()
        .await?;
    let sum: u32 = aether
        .client()
        .perform("orders", "price", "x", &vec![3, 4])
        .await?
        .result()
        .await?;
    println!("sum: {sum}");
    worker.shutdown(Duration::from_secs(5)).await?;

    let _ = provider.force_flush();
    for span in exporter.get_finished_spans()? {
        println!(
            "span {:?} {} trace {} parent {}",
            span.span_kind,
            span.name,
            span.span_context.trace_id(),
            span.parent_span_id
        );
    }
    println!("\n{}", prometheus.render());
    Ok(())
}
