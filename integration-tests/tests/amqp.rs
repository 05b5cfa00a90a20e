//! The conformance suite on RabbitMQ (`AETHER_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), with classic and with quorum queues, then the
//! cases only AMQP has: long tasks past the consumer timeout, TLS, recovery from deleted
//! queues and closed connections, dead letters, slow subscribers, the consumer contract.
//! The restart, long-task, TLS and recovery cases start private RabbitMQ nodes (see
//! `brokers::amqp`).

use integration_tests::brokers::amqp::AmqpHarness;

integration_tests::conformance! {
    harness: AmqpHarness::from_env();
}

/// The suite again on quorum queues (replicated, counting redeliveries), with a quorum
/// dead-letter queue of its own name: the classic suite's `aether.dead-letters` is classic.
mod quorum {
    use super::*;

    integration_tests::conformance! {
        harness: AmqpHarness::with_query(integration_tests::brokers::amqp_cluster::CLUSTER_QUERY);
    }
}

mod amqp_only {
    //! What only the AMQP adapter promises, against private nodes where the broker must be
    //! configured or disturbed.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use aether::{Aether, Error, TaskContext};
    use integration_tests::brokers::amqp::{NodeConfig, PrivateRabbit};
    use integration_tests::harness::union;

    const WAIT: Duration = Duration::from_secs(60);

    async fn node(rabbit: &PrivateRabbit, u: &str) -> Aether {
        Aether::builder()
            .union(u)
            .transport(rabbit.connect().await)
            .build()
            .unwrap()
    }

    /// A task running longer than the broker's consumer timeout completes, and runs once.
    ///
    /// The node's consumer timeout is 2 s, checked every 0.5 s. RabbitMQ 3.12+ applies the
    /// adapter's per-consumer `x-consumer-timeout` (24 h) instead; older brokers close the
    /// worker's channel after 2 s, the adapter consumes again, and the running task takes
    /// over its redelivery instead of being started again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn task_longer_than_the_consumer_timeout_completes_once() {
        let rabbit = PrivateRabbit::start(NodeConfig {
            conf: "consumer_timeout = 2000".into(),
            rabbit_env: vec!["{channel_tick_interval, 500}".into()],
        })
        .await;
        let u = union();
        let runs = Arc::new(AtomicUsize::new(0));
        let wn = node(&rabbit, &u).await;
        let r = runs.clone();
        let _w = wn
            .worker()
            .announce(false)
            .handle("long", "job", "x", move |_ctx: TaskContext, secs: u64| {
                r.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    Ok::<_, Error>(secs * 10)
                }
            })
            .start()
            .await
            .unwrap();
        let cn = node(&rabbit, &u).await;
        let task = cn
            .client()
            .perform("long", "job", "x", &6u64)
            .await
            .unwrap();
        let r: u64 = tokio::time::timeout(WAIT, task.result())
            .await
            .expect("the long task's result")
            .unwrap();
        assert_eq!(r, 60);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
        // Nothing is left for a second run: the queue is empty and nothing unacknowledged.
        let queues = rabbit
            .ctl(&["list_queues", "name", "messages", "messages_unacknowledged"])
            .await;
        let line = queues
            .lines()
            .find(|l| l.contains(".long.job.x.workgroup"))
            .expect("the work queue");
        assert!(line.ends_with("\t0\t0"), "{line}");
        // The path taken depends on the broker: check it was the one expected.
        let version = rabbit.version().await;
        let mut v = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let per_consumer = (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (3, 12);
        let timed_out = rabbit
            .log_text()
            .contains("timed out waiting for delivery acknowledgement");
        assert_eq!(
            timed_out, !per_consumer,
            "RabbitMQ {version}: the channel should time out only where x-consumer-timeout is ignored"
        );
    }

    /// A workgroup queue deleted under a running worker, then every connection closed by
    /// the broker: the worker declares and consumes again, the client reconnects, and tasks
    /// keep completing without user code. Rejected input lands in the dead-letter queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_queue_and_closed_connections_are_recovered() {
        let rabbit = PrivateRabbit::start(NodeConfig::default()).await;
        let u = union();
        let wn = node(&rabbit, &u).await;
        let _w = wn
            .worker()
            .announce(false)
            .handle("rc", "echo", "x", |_ctx: TaskContext, v: u32| async move {
                Ok::<_, Error>(v)
            })
            .start()
            .await
            .unwrap();
        let cn = node(&rabbit, &u).await;
        let client = cn.client();
        let echo = |v: u32| {
            let client = client.clone();
            async move {
                // A send may race a reconnection; retry like the suite's restart case.
                let start = tokio::time::Instant::now();
                let task = loop {
                    match client.perform("rc", "echo", "x", &v).await {
                        Ok(task) => break task,
                        Err(e) => {
                            assert!(start.elapsed() < WAIT, "never sent: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                };
                tokio::time::timeout(WAIT, task.result::<u32>())
                    .await
                    .expect("result in time")
                    .unwrap()
            }
        };
        assert_eq!(echo(1).await, 1);

        let queue = format!("aether.{u}.rc.echo.x.workgroup");
        rabbit.ctl(&["delete_queue", &queue]).await;
        assert_eq!(echo(2).await, 2, "after the work queue was deleted");

        // The subscriptions' queues too (the client's replies, one queue for statuses and
        // completions, and the worker's cancel): each subscribes again on a new queue.
        let queues = rabbit.ctl(&["list_queues", "name"]).await;
        let subs: Vec<&str> = queues
            .lines()
            .filter(|l| l.starts_with("amq.gen-"))
            .collect();
        assert!(subs.len() >= 2, "subscription queues: {queues}");
        let deleted: Vec<String> = subs.iter().map(|q| q.to_string()).collect();
        for q in &deleted {
            rabbit.ctl(&["delete_queue", q]).await;
        }
        // Broadcasts sent before a subscription is back are not kept (none are promised):
        // wait until the new queues have their consumers.
        let start = tokio::time::Instant::now();
        loop {
            let queues = rabbit.ctl(&["list_queues", "name", "consumers"]).await;
            let back = queues
                .lines()
                .filter(|l| l.starts_with("amq.gen-") && l.ends_with("\t1"))
                .filter(|l| !deleted.iter().any(|d| l.starts_with(d.as_str())))
                .count();
            if back >= deleted.len() {
                break;
            }
            assert!(start.elapsed() < WAIT, "subscriptions not back: {queues}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            echo(5).await,
            5,
            "after the subscription queues were deleted"
        );

        rabbit
            .ctl(&["close_all_connections", "closed by the aether test"])
            .await;
        assert_eq!(echo(3).await, 3, "after the broker closed every connection");

        // Garbage on the queue is rejected into the dead-letter queue.
        let raw = rabbit.connect().await;
        let topic: aether::Topic = format!("{u}/rc/echo/x/bad1/perform").parse().unwrap();
        raw.enqueue(&topic, aether::Bytes::from_static(b"\x00 not an envelope"))
            .await
            .unwrap();
        assert_eq!(echo(4).await, 4);
        let start = tokio::time::Instant::now();
        loop {
            let queues = rabbit.ctl(&["list_queues", "name", "messages"]).await;
            let dead = queues
                .lines()
                .find_map(|l| l.strip_prefix("aether.dead-letters\t"))
                .and_then(|n| n.trim().parse::<u32>().ok())
                .unwrap_or(0);
            if dead >= 1 {
                break;
            }
            assert!(start.elapsed() < WAIT, "no dead letter: {queues}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    /// `amqps://` with a private CA: a round trip over TLS, and a clear refusal of a broker
    /// whose certificate the client does not trust.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_round_trip_and_untrusted_certificate() {
        let dir = std::env::temp_dir().join(format!("aether-tls-{}", union()));
        std::fs::create_dir_all(&dir).unwrap();
        make_certificates(&dir);
        let tls_port = integration_tests::brokers::spare_port();
        let p = |f: &str| dir.join(f).display().to_string();
        let rabbit = PrivateRabbit::start(NodeConfig {
            conf: format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                p("ca.pem"),
                p("server.pem"),
                p("server.key")
            ),
            rabbit_env: Vec::new(),
        })
        .await;
        let url = format!(
            "amqps://guest:guest@localhost:{tls_port}/%2f?tls_ca={}",
            p("ca.pem")
        );
        let u = union();
        let transport = aether::connect(&url).await.expect("TLS connection");
        let wn = Aether::builder()
            .union(&u)
            .transport(transport)
            .build()
            .unwrap();
        let _w = wn
            .worker()
            .announce(false)
            .handle(
                "tls",
                "echo",
                "x",
                |_ctx: TaskContext, v: String| async move { Ok::<_, Error>(v) },
            )
            .start()
            .await
            .unwrap();
        let cn = Aether::builder()
            .union(&u)
            .transport(aether::connect(&url).await.unwrap())
            .build()
            .unwrap();
        let task = cn
            .client()
            .perform("tls", "echo", "x", "secret")
            .await
            .unwrap();
        let r: String = tokio::time::timeout(WAIT, task.result())
            .await
            .expect("result over TLS")
            .unwrap();
        assert_eq!(r, "secret");

        // Without the private CA the broker's certificate is refused.
        let untrusted = format!("amqps://guest:hunter2@localhost:{tls_port}/%2f");
        let err = aether::connect(&untrusted).await.unwrap_err().to_string();
        assert!(err.contains("cannot connect"), "{err}");
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
        drop(rabbit);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A CA and a `localhost` server certificate signed by it.
    fn make_certificates(dir: &std::path::Path) {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=aether test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
    }
}

/// A perform sent before any worker ran reaches a workgroup other than the default one
/// that starts later: the client never needs to know workgroup names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_task_reaches_a_custom_workgroup() {
    use aether::{Error, TaskContext};
    use integration_tests::harness::{Harness, node, union};
    let h = AmqpHarness::from_env();
    let u = union();
    let cn = node(&h, &u, |b| b).await;
    let task = cn
        .client()
        .perform("early", "job", "x", &5u32)
        .await
        .unwrap();
    let wn = node(&h, &u, |b| b).await;
    let _w = wn
        .worker()
        .announce(false)
        .workgroup("billing")
        .handle(
            "early",
            "job",
            "x",
            |_ctx: TaskContext, v: u32| async move { Ok::<_, Error>(v + 1) },
        )
        .start()
        .await
        .unwrap();
    let r: u32 = tokio::time::timeout(std::time::Duration::from_secs(30), task.result())
        .await
        .expect("the billing worker's result")
        .unwrap();
    assert_eq!(r, 6);
    let _ = h.name();
}

/// A subscriber slower than the publisher: with a buffer of 4 the consumer pauses and
/// resumes, and every message still arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_loses_nothing() {
    use aether::{Bytes, Topic, TopicFilter};
    use integration_tests::harness::{Harness, union};
    let h = AmqpHarness::from_env();
    let url = format!("{}&subscription_capacity=4", h.url().unwrap());
    let t = aether::connect(&url).await.unwrap();
    let u = union();
    let mut sub = t
        .subscribe(
            &format!("{u}/j/t/x/+/status")
                .parse::<TopicFilter>()
                .unwrap(),
        )
        .await
        .unwrap();
    const N: usize = 300;
    for i in 0..N {
        let topic: Topic = format!("{u}/j/t/x/{i}/status").parse().unwrap();
        t.publish(&topic, Bytes::from(i.to_string())).await.unwrap();
    }
    for i in 0..N {
        if i % 50 == 0 {
            // Let the broker push into a full buffer.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let m = tokio::time::timeout(std::time::Duration::from_secs(20), sub.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} never came"))
            .expect("subscription open")
            .expect("valid topic");
        assert_eq!(m.topic.tid(), i.to_string());
        assert_eq!(&m.payload[..], i.to_string().as_bytes());
    }
    t.close().await.unwrap();
}

/// A wrong password is a clear connection error that does not print the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_without_printing_it() {
    use integration_tests::harness::Harness;
    let url = AmqpHarness::from_env().url().unwrap();
    let u = aether::BrokerUrl::parse(&url).unwrap();
    let port = u.port.unwrap_or(5672);
    let bad = format!(
        "amqp://{}:wrong-hunter2@{}:{port}/{}",
        u.username.as_deref().unwrap_or("guest"),
        u.host,
        u.path.replace('/', "%2f")
    );
    let err = aether::connect(&bad).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("cannot connect"), "{text}");
    assert!(
        !text.contains("wrong-hunter2"),
        "the password leaked: {text}"
    );
}

/// A dead-letter queue that exists with another queue type (quorum asked, classic there)
/// is an error that names the queue and the URL key to change, not a bare
/// `PRECONDITION_FAILED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_queue_of_another_type_is_a_clear_error() {
    use aether::aether_amqp::amqprs::channel::{ExchangeDeleteArguments, QueueDeleteArguments};
    use integration_tests::harness::{Harness, union};
    let u = union();
    let dl = format!("aether.test-dl-{u}");
    let perform = |query: String| {
        let u = u.clone();
        async move {
            let h = AmqpHarness::with_query(&query);
            let node = aether::Aether::builder()
                .union(&u)
                .transport(h.connect().await)
                .build()
                .unwrap();
            let sent = node
                .client()
                .perform("dl", "echo", "x", &1u32)
                .await
                .map(drop);
            let _ = node.close().await;
            h.cleanup(&u).await;
            sent
        }
    };
    perform(format!("dead_letter={dl}"))
        .await
        .expect("a classic dead-letter queue is declared");
    let err = perform(format!("dead_letter={dl}&queue_type=quorum"))
        .await
        .expect_err("a quorum dead-letter queue cannot replace the classic one")
        .to_string();
    let (conn, channel) =
        integration_tests::brokers::amqp::raw_channel(&AmqpHarness::from_env().url().unwrap())
            .await
            .unwrap();
    channel
        .queue_delete(QueueDeleteArguments::new(&dl))
        .await
        .unwrap();
    channel
        .exchange_delete(ExchangeDeleteArguments::new(&dl))
        .await
        .unwrap();
    let _ = conn.close().await;
    for says in [dl.as_str(), "x-queue-type", "dead_letter="] {
        assert!(err.contains(says), "the error should say {says:?}: {err}");
    }
}

/// The consumer contract on RabbitMQ: dropping a consumer gives back what it had buffered,
/// a delivery already handed out can still be acknowledged afterwards (its channel stays
/// open), and a delivery dropped unacknowledged comes back, marked as a redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_consumer_and_delivery_give_work_back() {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use aether::{Action, Bytes, ConsumeOptions, WorkQueue};
    use integration_tests::harness::{Harness, union};
    let h = AmqpHarness::from_env();
    let t = h.connect().await;
    let u = union();
    let q = WorkQueue::new(&u, "j", "t", "x", "g").unwrap();
    let mut c1 = t
        .consume(&q, ConsumeOptions::new().prefetch(3))
        .await
        .unwrap();
    for i in 0..5 {
        let topic = q.topic(&format!("tid{i}"), Action::Perform).unwrap();
        t.enqueue(&topic, Bytes::from(format!("p{i}")))
            .await
            .unwrap();
    }
    let wait = Duration::from_secs(20);
    let held = tokio::time::timeout(wait, c1.next())
        .await
        .expect("a delivery")
        .unwrap()
        .unwrap();
    assert_eq!(held.redeliveries, 0);
    // Let the broker fill the prefetch, then stop consuming.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c1);

    let mut c2 = t
        .consume(&q, ConsumeOptions::new().prefetch(10))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 4 {
        let d = tokio::time::timeout(wait, c2.next())
            .await
            .expect("the other four tasks")
            .unwrap()
            .unwrap();
        assert_ne!(
            d.topic.tid(),
            held.topic.tid(),
            "the held delivery came back"
        );
        seen.insert(d.topic.tid().to_owned());
        if seen.len() == 4 {
            // Dropped unacknowledged: it must come back.
            let tid = d.topic.tid().to_owned();
            drop(d);
            let again = tokio::time::timeout(wait, c2.next())
                .await
                .expect("the dropped delivery again")
                .unwrap()
                .unwrap();
            assert_eq!(again.topic.tid(), tid);
            assert_eq!(again.redeliveries, 1);
            again.ack().await.unwrap();
        } else {
            d.ack().await.unwrap();
        }
    }
    // The first consumer is gone, but its delivery is still acknowledged on its channel.
    held.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c2.next())
            .await
            .is_err(),
        "nothing else is delivered"
    );
    t.close().await.unwrap();
}

/// Bytes that are not UTF-8 where AMQP has short strings (a perform's message id, a header
/// name, a broadcast's routing key) are accepted by RabbitMQ from any publisher. Each used
/// to make the client fail to decode the frame and close the connection; the broker then
/// redelivered the same perform first, for good (~3,900 reconnects a minute, nothing else
/// consumed). Now such a message is refused as an invalid message, and dead-lettered with
/// its reason when it is a perform, and what follows is consumed on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_strings_that_are_not_utf8_are_refused_not_fatal() {
    use std::time::Duration;

    use aether::{Action, Bytes, ConsumeOptions, TopicFilter, WorkQueue};
    use integration_tests::harness::{Harness, union};
    use integration_tests::raw_amqp::{RawAmqp, RawMessage};
    let h = AmqpHarness::from_env();
    let t = h.connect().await;
    let u = union();
    let wait = Duration::from_secs(20);
    let q = WorkQueue::new(&u, "j", "t", "x", "g").unwrap();
    let mut consumer = t.consume(&q, ConsumeOptions::new()).await.unwrap();
    let mut sub = t
        .subscribe(
            &format!("{u}/j/t/x/+/status")
                .parse::<TopicFilter>()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut raw = RawAmqp::connect(&h.url().unwrap()).await;
    let work = format!("aether.{u}.work");
    let key = format!("{u}.j.t.x");
    raw.publish(&RawMessage {
        exchange: &work,
        routing_key: key.as_bytes(),
        message_id: Some(b"bad\xff\xfe"),
        body: b"{}",
        ..Default::default()
    })
    .await;
    raw.publish(&RawMessage {
        exchange: &work,
        routing_key: key.as_bytes(),
        message_id: Some(b"tid2"),
        headers: vec![(b"x-\xc3", b"v")],
        body: b"{}",
    })
    .await;
    let good = q.topic("good1", Action::Perform).unwrap();
    t.enqueue(&good, Bytes::from_static(b"{}")).await.unwrap();
    let invalid = tokio::time::timeout(wait, consumer.next())
        .await
        .expect("the bad message id refused")
        .expect("consumer open")
        .expect_err("a message id that is not UTF-8 is an invalid topic");
    assert!(
        invalid.raw_topic.contains("bad"),
        "{}: {}",
        invalid.raw_topic,
        invalid.error
    );
    // The message with a header name that is not UTF-8 is a task like any other.
    for tid in ["tid2", "good1"] {
        let d = tokio::time::timeout(wait, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{tid} after the bad message"))
            .expect("consumer open")
            .expect("a valid delivery");
        assert_eq!(d.topic.tid(), tid);
        d.ack().await.unwrap();
    }

    // A broadcast whose routing key is not UTF-8, then a good one: the subscriber is told
    // of the bad one and gets the good one, without a reconnection in between.
    let bad_key = [format!("{u}.j.t.x.").as_bytes(), b"\xff", b".status"].concat();
    raw.publish(&RawMessage {
        exchange: &format!("aether.{u}"),
        routing_key: &bad_key,
        body: b"bad",
        ..Default::default()
    })
    .await;
    let good = format!("{u}/j/t/x/ok/status").parse().unwrap();
    t.publish(&good, Bytes::from_static(b"good")).await.unwrap();
    let invalid = tokio::time::timeout(wait, sub.next())
        .await
        .expect("the bad routing key reported")
        .expect("subscription open")
        .expect_err("a routing key that is not UTF-8 is an invalid topic");
    assert!(
        invalid.raw_topic.contains(".j.t.x."),
        "{}",
        invalid.raw_topic
    );
    let m = tokio::time::timeout(wait, sub.next())
        .await
        .expect("the good broadcast")
        .expect("subscription open")
        .expect("a valid topic");
    assert_eq!(&m.payload[..], b"good");
    t.close().await.unwrap();
}

/// A perform whose tid (message id) is not a valid segment is refused, and stored in the
/// dead-letter queue with its reason in `x-aether-reason` (the broker's own dead-lettering
/// of a rejected message carried none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tid_is_dead_lettered_with_its_reason() {
    use std::time::Duration;

    use aether::aether_amqp::amqprs::channel::{
        BasicGetArguments, ExchangeDeleteArguments, QueueDeleteArguments,
    };
    use aether::{ConsumeOptions, WorkQueue};
    use integration_tests::brokers::amqp::raw_channel;
    use integration_tests::harness::{Harness, union};
    use integration_tests::raw_amqp::{RawAmqp, RawMessage};
    let h = AmqpHarness::from_env();
    let u = union();
    let dead = format!("aether.dl.{u}");
    let url = format!("{}&dead_letter={dead}", h.url().unwrap());
    let t = aether::connect(&url).await.unwrap();
    let q = WorkQueue::new(&u, "j", "t", "x", "g").unwrap();
    let mut consumer = t.consume(&q, ConsumeOptions::new()).await.unwrap();
    let mut raw = RawAmqp::connect(&url).await;
    raw.publish(&RawMessage {
        exchange: &format!("aether.{u}.work"),
        routing_key: format!("{u}.j.t.x").as_bytes(),
        message_id: Some(b"bad.tid"),
        body: b"{}",
        ..Default::default()
    })
    .await;
    let invalid = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("the bad perform refused")
        .expect("consumer open")
        .expect_err("a tid holding '.' is an invalid topic");
    assert!(
        invalid.raw_topic.contains("bad.tid"),
        "{}",
        invalid.raw_topic
    );

    let (conn, ch) = raw_channel(&url).await.unwrap();
    let start = tokio::time::Instant::now();
    let (_, properties, body) = loop {
        let got = ch
            .basic_get(BasicGetArguments::new(&dead).no_ack(true).finish())
            .await
            .unwrap();
        if let Some(m) = got {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing in the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body, b"{}");
    let headers = format!("{:?}", properties.headers());
    assert!(
        headers.contains("x-aether-reason") && headers.contains("invalid topic"),
        "dead letter headers: {headers}"
    );
    let _ = ch.queue_delete(QueueDeleteArguments::new(&dead)).await;
    let _ = ch
        .exchange_delete(ExchangeDeleteArguments::new(&dead))
        .await;
    let _ = ch.close().await;
    let _ = conn.close().await;
    t.close().await.unwrap();
    h.cleanup(&u).await;
}

/// A client's first perform on a (job, task, context) whose replies other nodes already
/// broadcast gets its result. The route that waits for the client's replies subscribed,
/// then started its router; a broadcast arriving before the route was whole ended the
/// router and dropped the subscription, and every task of that route waited for good
/// (seen as the cluster bench's quorum run stalling at the start of a round, its queues
/// and exchange shared with another process). Each round is a new client node (a new
/// route) while another node floods the route's topics with statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_perform_among_other_nodes_broadcasts_gets_its_result() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use aether::{Bytes, Error, TaskContext, Topic};
    use integration_tests::brokers::amqp_cluster::CLUSTER_QUERY;
    use integration_tests::harness::{Harness, node, union};

    let h = AmqpHarness::with_query(CLUSTER_QUERY);
    let u = union();
    let wn = node(&h, &u, |b| b).await;
    let w = wn
        .worker()
        .announce(false)
        .handle(
            "bench",
            "echo",
            "x",
            |_ctx: TaskContext, v: u32| async move { Ok::<_, Error>(v) },
        )
        .start()
        .await
        .unwrap();
    // Another node's replies on the same route: statuses of tasks this client never sent.
    let noise = h.connect().await;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, u) = (stop.clone(), u.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let topic: Topic = format!("{u}/bench/echo/x/other{i}/status").parse().unwrap();
                let _ = noise.publish(&topic, Bytes::from_static(b"{}")).await;
                i += 1;
            }
            noise.close().await.unwrap();
        })
    };
    const ROUNDS: u32 = 60;
    let mut stalled = Vec::new();
    for round in 0..ROUNDS {
        let cn = node(&h, &u, |b| b).await;
        let task = cn
            .client()
            .perform("bench", "echo", "x", &round)
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), task.result::<u32>()).await {
            Ok(r) => assert_eq!(r.unwrap(), round),
            Err(_) => stalled.push(round),
        }
        cn.close().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    w.shutdown(Duration::from_secs(5)).await.unwrap();
    wn.close().await.unwrap();
    h.cleanup(&u).await;
    assert!(
        stalled.is_empty(),
        "{} of {ROUNDS} first performs never got their result (rounds {stalled:?})",
        stalled.len()
    );
}
