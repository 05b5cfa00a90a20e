//! Work queues: fan-out to workgroups, acknowledgements, prefetch, giving work back,
//! durability, dead letters.

use aether::{DeadLetter, DeadLetterReason, Error};

use super::*;

/// Two workgroups, one with two consumers: each workgroup gets every perform exactly once
/// (the core relies on this for its `workgroup` setting), each on one of its consumers.
pub async fn every_workgroup_receives_each_perform(h: &dyn Harness, u: &str) {
    const N: usize = 20;
    let p = h.connect().await;
    let mut consumers = Vec::new();
    for group in ["audit", "audit", "billing"] {
        let t = h.connect().await;
        let c = consume(&t, &queue(u, group), N).await;
        consumers.push((group, t, c));
    }
    let sent = tids("w", N);
    enqueue_all(&p, &queue(u, "audit"), &sent).await;

    let mut got: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut by_consumer = [0usize; 3];
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.values().map(Vec::len).sum::<usize>() < 2 * N {
        let mut progressed = false;
        for (i, (group, _, c)) in consumers.iter_mut().enumerate() {
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), c.next()).await {
                let d = d.expect("a valid delivery");
                got.entry(*group)
                    .or_default()
                    .push(d.topic.tid().to_owned());
                by_consumer[i] += 1;
                d.ack().await.expect("ack");
                progressed = true;
            }
        }
        assert!(
            progressed || tokio::time::Instant::now() < deadline,
            "timed out: workgroups got {got:?}"
        );
    }
    for group in ["audit", "billing"] {
        let c = counts(got[group].iter().map(String::as_str));
        assert_eq!(
            c.keys().cloned().collect::<BTreeSet<_>>(),
            set(&sent),
            "{group} got every perform"
        );
        assert!(
            c.values().all(|n| *n == 1),
            "{group} got one copy of each: {c:?}"
        );
    }
    for (_, _, c) in consumers.iter_mut() {
        nothing_more(c, "every perform was taken once per workgroup").await;
    }
    p.close().await.expect("close");
    for (_, t, _) in consumers {
        t.close().await.expect("close");
    }
}

/// A delivery nacked with `requeue` comes back to its workgroup; one nacked without is
/// gone.
pub async fn nack_with_requeue_comes_back(h: &dyn Harness, u: &str) {
    let t = h.connect().await;
    let q = queue(u, "g");
    let mut c = consume(&t, &q, 1).await;
    enqueue_all(&t, &q, &["again".into()]).await;
    let d = next_delivery(&mut c, "the first delivery").await;
    assert_eq!(d.topic.tid(), "again");
    d.nack(true).await.expect("nack with requeue");
    let d = next_delivery(&mut c, "the requeued delivery").await;
    assert_eq!(d.topic.tid(), "again");
    assert_eq!(d.payload, "again".as_bytes());
    d.nack(false).await.expect("nack without requeue");
    nothing_more(&mut c, "a delivery nacked without requeue is gone").await;
    t.close().await.expect("close");
}

/// At most `prefetch` deliveries are outstanding: with 2 held, a third comes only once one
/// of them is settled.
pub async fn prefetch_bounds_outstanding_deliveries(h: &dyn Harness, u: &str) {
    let t = h.connect().await;
    let q = queue(u, "g");
    let mut c = consume(&t, &q, 2).await;
    let sent = tids("p", 5);
    enqueue_all(&t, &q, &sent).await;
    let first = next_delivery(&mut c, "the first delivery").await;
    let second = next_delivery(&mut c, "the second delivery").await;
    nothing_more(
        &mut c,
        "two deliveries are outstanding with a prefetch of 2",
    )
    .await;
    let mut seen = vec![first.topic.tid().to_owned(), second.topic.tid().to_owned()];
    first.ack().await.expect("ack");
    let third = next_delivery(&mut c, "a delivery once one is settled").await;
    seen.push(third.topic.tid().to_owned());
    nothing_more(&mut c, "still two outstanding").await;
    second.ack().await.expect("ack");
    third.ack().await.expect("ack");
    for i in 3..5 {
        let d = next_delivery(&mut c, &format!("delivery {i}")).await;
        seen.push(d.topic.tid().to_owned());
        d.ack().await.expect("ack");
    }
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), set(&sent));
    t.close().await.expect("close");
}

/// Where the transport redelivers, a delivery dropped unacknowledged on a live connection
/// (its handler crashed) comes back to the workgroup.
pub async fn dropped_delivery_comes_back(h: &dyn Harness, u: &str) {
    let t = h.connect().await;
    let q = queue(u, "g");
    let mut c = consume(&t, &q, 1).await;
    enqueue_all(&t, &q, &["dropped".into()]).await;
    let d = next_delivery(&mut c, "the delivery").await;
    drop(d);
    let again = next_delivery(&mut c, "the dropped delivery again").await;
    assert_eq!(again.topic.tid(), "dropped");
    assert_eq!(again.payload, "dropped".as_bytes());
    again.ack().await.expect("ack");
    nothing_more(&mut c, "it came back once").await;
    t.close().await.expect("close");
}

/// A connection closed while it holds a delivery unacknowledged is a crashed consumer: the
/// delivery comes back to another consumer of the workgroup exactly where the transport
/// says it `redelivers_on_crash`; elsewhere it is gone (the client's lease redispatch
/// recovers such tasks).
pub async fn closed_connection_gives_work_back_exactly_where_it_redelivers(
    h: &dyn Harness,
    u: &str,
) {
    let p = h.connect().await;
    let caps = p.capabilities();
    let q = queue(u, "g");
    let crashing = h.connect().await;
    let short = ConsumeOptions::new().prefetch(1).lease(LEASE);
    let mut c1 = consume_with(&crashing, &q, short.clone()).await;
    enqueue_all(&p, &q, &["held".into()]).await;
    let held = next_delivery(&mut c1, "the delivery").await;
    let survivor = h.connect().await;
    let mut c2 = consume_with(&survivor, &q, short).await;
    crashing.close().await.expect("close");
    drop(held);
    drop(c1);
    if caps.redelivers_on_crash {
        let d = next_delivery(&mut c2, "the crashed consumer's delivery").await;
        assert_eq!(d.topic.tid(), "held");
        d.ack().await.expect("ack");
        nothing_more(&mut c2, "it came back once").await;
    } else {
        // Wait past the lease, which a reclaiming transport would use.
        tokio::time::sleep(LEASE).await;
        nothing_more(
            &mut c2,
            "redelivers_on_crash is not set: the crashed consumer's delivery must not come back",
        )
        .await;
    }
    p.close().await.expect("close");
    survivor.close().await.expect("close");
}

/// Dropping a consumer gives back what it had taken but not handed out: with 5 performs
/// and a prefetch of 3, one handed out and held, the other four go to the workgroup's
/// other consumer (which exists when the first is dropped: a transport that is not
/// durable has nobody else to give them to), and the held one can still be acknowledged.
pub async fn dropped_consumer_gives_back_its_buffer(h: &dyn Harness, u: &str) {
    let t = h.connect().await;
    let q = queue(u, "g");
    let mut c1 = consume(&t, &q, 3).await;
    let sent = tids("b", 5);
    enqueue_all(&t, &q, &sent).await;
    let held = next_delivery(&mut c1, "a delivery").await;
    // Give the transport time to fill the prefetch: there is no event for that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = h.connect().await;
    let mut c2 = consume(&other, &q, 10).await;
    drop(c1);
    let mut got = vec![held.topic.tid().to_owned()];
    while got.len() < sent.len() {
        let d = next_delivery(&mut c2, &format!("the other performs (have {got:?})")).await;
        assert_ne!(
            d.topic.tid(),
            held.topic.tid(),
            "the held delivery came back"
        );
        got.push(d.topic.tid().to_owned());
        d.ack().await.expect("ack");
    }
    held.ack()
        .await
        .expect("a held delivery is still acknowledged");
    let c = counts(got.iter().map(String::as_str));
    assert!(c.values().all(|n| *n == 1), "each perform once: {c:?}");
    assert_eq!(c.keys().cloned().collect::<BTreeSet<_>>(), set(&sent));
    nothing_more(&mut c2, "everything was handed out once").await;
    t.close().await.expect("close");
    other.close().await.expect("close");
}

/// Work enqueued while no consumer runs is handed to the first consumer exactly where the
/// transport is `durable`; elsewhere it is gone.
pub async fn enqueued_work_waits_for_a_consumer_exactly_where_durable(h: &dyn Harness, u: &str) {
    let t = h.connect().await;
    let caps = t.capabilities();
    let q = queue(u, "g");
    enqueue_all(&t, &q, &["early".into()]).await;
    let w = h.connect().await;
    let mut c = consume(&w, &q, 1).await;
    if caps.durable {
        let d = next_delivery(&mut c, "the perform enqueued before any consumer").await;
        assert_eq!(d.topic.tid(), "early");
        d.ack().await.expect("ack");
    } else {
        nothing_more(
            &mut c,
            "durable is not set: a perform enqueued before any consumer must not be kept",
        )
        .await;
    }
    t.close().await.expect("close");
    w.close().await.expect("close");
}

/// `dead_letter` stores a letter exactly where `dead_letters` says so, and answers
/// `Unsupported` elsewhere; a rejected delivery is removed from the queue either way.
pub async fn dead_letters_stored_exactly_where_capable(h: &dyn Harness, u: &str) {
    let t = h.connect().await;
    let caps = t.capabilities();
    let letter = DeadLetter {
        topic: format!("{u}/c/dead/x/1/perform"),
        payload: Bytes::from_static(b"{}"),
        reason: DeadLetterReason::Malformed("contract case".into()),
    };
    match (caps.dead_letters, t.dead_letter(letter).await) {
        (true, Ok(())) | (false, Err(Error::Unsupported { .. })) => {}
        (true, Err(e)) => panic!("dead_letters is set, yet dead_letter failed: {e}"),
        (false, r) => {
            panic!("dead_letters is not set: dead_letter must answer Unsupported, got {r:?}")
        }
    }
    let q = queue(u, "g");
    let mut c = consume(&t, &q, 1).await;
    enqueue_all(&t, &q, &["poison".into()]).await;
    let d = next_delivery(&mut c, "the delivery").await;
    let rejected = d
        .reject(DeadLetterReason::Malformed("contract case".into()))
        .await;
    match (caps.dead_letters, rejected) {
        (_, Ok(())) => {}
        (true, Err(e)) => panic!("dead_letters is set, yet reject failed: {}", e.error),
        (false, Err(e)) => panic!(
            "reject must remove the delivery even without a dead-letter place: {}",
            e.error
        ),
    }
    nothing_more(&mut c, "a rejected delivery is removed").await;
    t.close().await.expect("close");
}
