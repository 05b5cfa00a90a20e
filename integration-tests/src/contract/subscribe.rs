//! Broadcast: subscriptions live on return, ended by close, wildcards, order, gaps.

use aether::Error;

use super::*;

/// A message published right after `subscribe` returns is delivered, whether it is
/// published on the subscriber's own connection or on another one, every time.
pub async fn subscription_is_active_when_subscribe_returns(h: &dyn Harness, u: &str) {
    let s = h.connect().await;
    let p = h.connect().await;
    for i in 0..20 {
        let topic = t(u, &format!("c/active/x/{i}/status"));
        let exact: TopicFilter = topic.as_str().parse().expect("filter");
        let mut sub = s.subscribe(&exact).await.expect("subscribe");
        let publisher = if i % 2 == 0 { &p } else { &s };
        publisher
            .publish(&topic, Bytes::from(format!("m{i}")))
            .await
            .expect("publish");
        let (got, payload) = next_message(&mut sub, &format!("message {i}")).await;
        assert_eq!(got, topic);
        assert_eq!(payload, format!("m{i}").as_bytes());
    }
    s.close().await.expect("close");
    p.close().await.expect("close");
}

/// `close` ends every subscription and consumer of the connection (their `next` returns
/// `None`), every later call fails with `Closed`, a second `close` succeeds, and other
/// connections carry on.
pub async fn close_ends_subscriptions_and_consumers(h: &dyn Harness, u: &str) {
    let t1 = h.connect().await;
    let other = h.connect().await;
    let filter = f(u, "c/close/x/+/status");
    let mut sub = t1.subscribe(&filter).await.expect("subscribe");
    let mut sub2 = t1
        .subscribe(&f(u, "c/close/y/+/status"))
        .await
        .expect("subscribe");
    let q = queue(u, "g");
    let mut consumer = consume(&t1, &q, 4).await;
    let mut others = other.subscribe(&filter).await.expect("subscribe");

    t1.close().await.expect("close");
    for (what, sub) in [("first", &mut sub), ("second", &mut sub2)] {
        let end = tokio::time::timeout(WAIT, async {
            // Anything already buffered may still come out; then the end.
            while sub.next().await.is_some() {}
        })
        .await;
        assert!(end.is_ok(), "the {what} subscription did not end on close");
    }
    let end = tokio::time::timeout(WAIT, async { while consumer.next().await.is_some() {} }).await;
    assert!(end.is_ok(), "the consumer did not end on close");

    let topic = t(u, "c/close/x/1/status");
    let closed = |what: &str, r: Result<(), Error>| {
        assert!(
            matches!(r, Err(Error::Closed)),
            "{what} after close: {r:?}, expected Closed"
        );
    };
    closed("publish", t1.publish(&topic, Bytes::from("late")).await);
    closed("subscribe", t1.subscribe(&filter).await.map(drop));
    closed(
        "enqueue",
        t1.enqueue(&perform(&q, "late"), Bytes::from("late")).await,
    );
    closed(
        "consume",
        t1.consume(&q, ConsumeOptions::new()).await.map(drop),
    );
    t1.close().await.expect("a second close succeeds");

    other
        .publish(&topic, Bytes::from("still"))
        .await
        .expect("another connection still publishes");
    let (_, payload) = next_message(&mut others, "a message on another connection").await;
    assert_eq!(payload, "still".as_bytes());
    other.close().await.expect("close");
}

/// Every transport takes `+` (one level): the core subscribes to replies and cancels with
/// it. `#` (the rest) works where `multi_level_wildcards` says so, and is refused with
/// `Unsupported` where not.
pub async fn single_level_wildcard_required_multi_level_or_unsupported(h: &dyn Harness, u: &str) {
    let p = h.connect().await;
    let s = h.connect().await;
    let caps = s.capabilities();
    let mut plus = s
        .subscribe(&f(u, "c/+/x/+/status"))
        .await
        .expect("every transport takes `+`");
    let hash = s.subscribe(&f(u, "c/#")).await;
    let mut hash = match (caps.multi_level_wildcards, hash) {
        (true, Ok(sub)) => Some(sub),
        (true, Err(e)) => panic!("multi_level_wildcards is set, yet `#` was refused: {e}"),
        (false, Err(Error::Unsupported { .. })) => None,
        (false, other) => panic!(
            "multi_level_wildcards is not set: `#` must be refused with Unsupported, got {other:?}"
        ),
    };
    let published = [
        t(u, "c/a/x/1/status"),
        t(u, "c/a/y/2/status"),
        t(u, "c/b/x/3/complete"),
        t(u, "d/a/x/4/status"),
        t(u, "c/b/x/5/status"),
    ];
    for topic in &published {
        p.publish(topic, Bytes::from(topic.to_string()))
            .await
            .expect("publish");
    }
    let mut subs = vec![("c/+/x/+/status", &mut plus)];
    if let Some(hash) = hash.as_mut() {
        subs.push(("c/#", hash));
    }
    for (pattern, sub) in subs {
        let filter = f(u, pattern);
        let want: Vec<&Topic> = published.iter().filter(|t| filter.matches(t)).collect();
        for expected in want {
            let (got, _) = next_message(sub, pattern).await;
            assert_eq!(&got, expected, "{pattern}: in publish order, matching only");
        }
    }
    p.close().await.expect("close");
    s.close().await.expect("close");
}

/// 200 messages from one publisher on one topic arrive in the order sent, on every
/// transport (order within one subscription is no capability; `ordered` is about order
/// across subscriptions, which the client adapts to).
pub async fn broadcasts_from_one_publisher_arrive_in_order(h: &dyn Harness, u: &str) {
    const N: usize = 200;
    let p = h.connect().await;
    let s = h.connect().await;
    let topic = t(u, "c/order/x/1/status");
    let mut sub = s
        .subscribe(&topic.as_str().parse().expect("filter"))
        .await
        .expect("subscribe");
    for i in 0..N {
        p.publish(&topic, Bytes::from(i.to_string()))
            .await
            .expect("publish");
    }
    for i in 0..N {
        let (_, payload) = next_message(&mut sub, &format!("message {i}")).await;
        assert_eq!(
            payload,
            i.to_string().as_bytes(),
            "message {i} out of order"
        );
    }
    p.close().await.expect("close");
    s.close().await.expect("close");
}

/// A subscription has a gap counter exactly where the transport reports `gap_signals`,
/// and the counter starts where nothing was missed.
pub async fn gap_counter_exactly_where_gap_signals(h: &dyn Harness, u: &str) {
    let s = h.connect().await;
    let caps = s.capabilities();
    let sub = s
        .subscribe(&f(u, "c/gap/x/+/status"))
        .await
        .expect("subscribe");
    match (caps.gap_signals, sub.gaps()) {
        (true, Some(gaps)) => {
            assert!(
                !gaps.has_changed().unwrap_or(false),
                "a fresh subscription already reports a gap"
            )
        }
        (true, None) => panic!("gap_signals is set, yet the subscription has no gap counter"),
        (false, Some(_)) => {
            panic!("gap_signals is not set, yet the subscription has a gap counter")
        }
        (false, None) => {}
    }
    s.close().await.expect("close");
}

/// On a broker restarted under a subscription, the gap counter moves, and once it has, the
/// subscription receives again without being renewed.
pub async fn gap_counter_moves_after_a_broker_restart(h: &dyn Harness, u: &str) {
    let broker = h.private_broker().await.expect("a private broker");
    let s = broker.connect().await;
    let p = broker.connect().await;
    let topic = t(u, "c/restart/x/1/status");
    let mut sub = s
        .subscribe(&topic.as_str().parse().expect("filter"))
        .await
        .expect("subscribe");
    let mut gaps = sub.gaps().expect("a gap counter");
    let before = *gaps.borrow_and_update();
    broker.restart().await;
    tokio::time::timeout(WAIT, gaps.changed())
        .await
        .expect("the gap counter to move after the restart")
        .expect("the counter's transport is open");
    assert!(*gaps.borrow() > before, "the counter only goes up");
    // Back: a message published now arrives. The publisher may still be reconnecting.
    let start = tokio::time::Instant::now();
    while let Err(e) = p.publish(&topic, Bytes::from("after")).await {
        assert!(start.elapsed() < WAIT, "the publisher never came back: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, payload) = next_message(&mut sub, "a message after the restart").await;
    assert_eq!(payload, "after".as_bytes());
    s.close().await.expect("close");
    p.close().await.expect("close");
}
