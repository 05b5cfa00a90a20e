//! Raw paho-mqtt baseline: the aether loop written directly on the client aether-mqtt uses.
//! A client publishes a perform (QoS 1, waiting for the PUBACK) on
//! `{union}/bench/echo/x/{tid}/perform`; a worker takes it through the shared subscription
//! `$share/{union}_bench_workgroup/...` and publishes the payload back (QoS 1) on
//! `.../{tid}/complete`; the client, subscribed to `.../+/complete`, matches it to the tid.
//! No envelope, no acceptance status, no leases: what the broker and paho cost alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::aether_mqtt::paho_mqtt as paho;
use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

use crate::runner::{Report, closed_loop};

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

async fn client(uri: &str, name: &str) -> anyhow::Result<paho::AsyncClient> {
    let c = paho::CreateOptionsBuilder::new()
        .server_uri(uri)
        .client_id(format!("{name}-{}", std::process::id()))
        .mqtt_version(paho::MQTT_VERSION_5)
        .max_buffered_messages(100_000)
        .finalize();
    let c = paho::AsyncClient::new(c)?;
    Ok(c)
}

async fn connect(c: &paho::AsyncClient) -> anyhow::Result<()> {
    let opts = paho::ConnectOptionsBuilder::new_v5()
        .clean_start(true)
        .keep_alive_interval(Duration::from_secs(30))
        .finalize();
    c.connect(opts).await.context("raw mqtt connect")?;
    Ok(())
}

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let config = aether::aether_mqtt::MqttConfig::from_url(url)?;
    anyhow::ensure!(!config.tls, "the raw mqtt baseline speaks plain TCP only");
    let uri = format!("tcp://{}:{}", config.host, config.port);
    let union = format!("raw{}x{inflight}", std::process::id());
    let prefix: Arc<str> = format!("{union}/bench/echo/x/").into();

    // The worker: shared subscription in, reply out.
    let worker = client(&uri, "raw-worker").await?;
    let (tx, mut rx) = mpsc::channel::<paho::Message>(inflight * 2 + 16);
    worker.set_message_callback(move |_, msg| {
        if let Some(msg) = msg {
            // The closed loop keeps at most `inflight` performs outstanding.
            let _ = tx.try_send(msg);
        }
    });
    connect(&worker).await?;
    worker
        .subscribe(
            format!("$share/{union}_bench_workgroup/{union}/bench/echo/x/+/perform"),
            1,
        )
        .await?;
    let replier = worker.clone();
    let serve = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let topic = msg.topic().replace("/perform", "/complete");
            let reply = paho::Message::new(topic, msg.payload(), 1);
            let tok = replier.publish(reply);
            // A lost reply shows as the client's timeout; the last PUBACKs may be cut
            // short by the disconnect at the end.
            tokio::spawn(async move { tok.await.ok() });
        }
    });

    // The client: completions matched to waiting tids.
    let cli = client(&uri, "raw-client").await?;
    let waiting: Waiting = Default::default();
    let w = waiting.clone();
    cli.set_message_callback(move |_, msg| {
        let Some(msg) = msg else { return };
        let tid = msg.topic().rsplit('/').nth(1).unwrap_or_default();
        if let Some(done) = w.lock().unwrap().remove(tid) {
            let _ = done.send(());
        }
    });
    connect(&cli).await?;
    cli.subscribe(format!("{union}/bench/echo/x/+/complete"), 1)
        .await?;

    let body = vec![b'x'; payload];
    let next = Arc::new(AtomicU64::new(0));
    let one = || {
        let (cli, waiting, next, body) = (cli.clone(), waiting.clone(), next.clone(), body.clone());
        let prefix = prefix.clone();
        async move {
            let tid = format!("{:016x}", next.fetch_add(1, Ordering::Relaxed));
            let (done, wait) = oneshot::channel();
            waiting.lock().unwrap().insert(tid.clone(), done);
            cli.publish(paho::Message::new(
                format!("{prefix}{tid}/perform"),
                body,
                1,
            ))
            .await?;
            tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .context("raw mqtt reply within 30 s")??;
            Ok(())
        }
    };
    closed_loop(1000.min(tasks), inflight, one).await?;
    let sample = closed_loop(tasks, inflight, one).await?;
    serve.abort();
    let _ = cli.disconnect(None).await;
    let _ = worker.disconnect(None).await;
    Ok(Report::new("raw paho-mqtt".into(), inflight, sample))
}
