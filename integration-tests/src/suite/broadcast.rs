//! Broadcast: who receives what, and presence announcements.

use super::*;

/// Broadcast reaches every subscriber whose filter matches, on other connections and its
/// own, and no other. (Absence is checked by ordering: a later message arrives first.)
pub async fn broadcast_reaches_matching_subscribers_only(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let publisher = h.connect().await;
    let other = h.connect().await;
    let a = t(&u, "j/t/x/1/status");
    let b = t(&u, "j/t/x/2/status");
    let mut sub_a1 = other.subscribe(&TopicFilter::exact(&a)).await.unwrap();
    let mut sub_a2 = publisher.subscribe(&TopicFilter::exact(&a)).await.unwrap();
    let mut sub_b = other.subscribe(&TopicFilter::exact(&b)).await.unwrap();
    publisher
        .publish(&a, Bytes::from_static(b"A"))
        .await
        .unwrap();
    publisher
        .publish(&b, Bytes::from_static(b"B"))
        .await
        .unwrap();
    for sub in [&mut sub_a1, &mut sub_a2] {
        let (topic, payload) = next_msg(sub, "message on A").await;
        assert_eq!((topic, &payload[..]), (a.clone(), &b"A"[..]));
    }
    let (topic, payload) = next_msg(&mut sub_b, "message on B").await;
    assert_eq!(
        (topic, &payload[..]),
        (b.clone(), &b"B"[..]),
        "the subscriber of B received A"
    );
    // Unsubscribing by dropping: a new message on A reaches the remaining subscriber only.
    drop(sub_a2);
    publisher
        .publish(&a, Bytes::from_static(b"A2"))
        .await
        .unwrap();
    let (_, payload) = next_msg(&mut sub_a1, "second message on A").await;
    assert_eq!(&payload[..], b"A2");
}

/// `+` matches one level, `#` the rest; literal levels still filter.
pub async fn wildcard_filters(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let p = h.connect().await;
    let s = h.connect().await;
    let mut plus = s.subscribe(&f(&u, "j/+/x/+/status")).await.unwrap();
    let mut hash = s.subscribe(&f(&u, "j/#")).await.unwrap();
    let mut narrow = s.subscribe(&f(&u, "j/t2/x/+/complete")).await.unwrap();
    // The last two match every filter between them, so a message that should not have
    // arrived would show up before them: no waiting for absence.
    let published = [
        t(&u, "j/t1/x/1/status"),
        t(&u, "j/t2/y/2/status"),
        t(&u, "j/t2/x/3/complete"),
        t(&u, "k/t1/x/4/status"),
        t(&u, "j/t3/x/5/idle"),
        t(&u, "j/t9/x/9/status"),
        t(&u, "j/t2/x/9/complete"),
    ];
    for topic in &published {
        p.publish(topic, Bytes::from(topic.to_string()))
            .await
            .unwrap();
    }
    for (sub, pattern) in [
        (&mut plus, "j/+/x/+/status"),
        (&mut hash, "j/#"),
        (&mut narrow, "j/t2/x/+/complete"),
    ] {
        let filter = f(&u, pattern);
        let want: Vec<String> = published
            .iter()
            .filter(|t| filter.matches(t))
            .map(|t| t.to_string())
            .collect();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let (topic, payload) = next_msg(sub, pattern).await;
            assert_eq!(payload, topic.to_string().as_bytes());
            got.push(topic.to_string());
        }
        assert_eq!(got, want, "{pattern}");
    }
}

/// Starting a worker publishes `online` (status connected) and `idle` (status online),
/// on the topics Python services use.
pub async fn workers_announce_online_and_idle(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let watcher = h.connect().await;
    let mut online = watcher
        .subscribe(&f(&u, "system/online/+/+/online"))
        .await
        .unwrap();
    let mut idle = watcher.subscribe(&f(&u, "a/b/x/+/idle")).await.unwrap();
    let wn = node(h, &u, |b| b).await;
    let _w = wn
        .worker()
        .handle("a", "b", "x", |_ctx: TaskContext, _: ()| async {
            Ok::<_, Error>(())
        })
        .start()
        .await
        .unwrap();
    let (topic, payload) = next_msg(&mut online, "online").await;
    assert_eq!(topic.tid(), wn.config().client_id);
    assert_eq!(topic.context(), wn.config().host);
    let env = aether::Envelope::decode(payload).unwrap();
    assert_eq!(env.header().status, aether::Status::Connected);
    let (_, payload) = next_msg(&mut idle, "idle").await;
    let env = aether::Envelope::decode(payload).unwrap();
    assert_eq!(
        (env.header().status, env.header().progress),
        (aether::Status::Online, 100)
    );
}
