//! A backlog longer than a transport's limit on a work queue: every perform is either
//! consumed or refused to its caller with [`Error::QueueFull`], never dropped. (Redis
//! trimmed the oldest performs past `max_len` before anyone had consumed them.)

use std::collections::BTreeSet;
use std::time::Duration;

use aether::{Action, Bytes, ConsumeOptions, Error, WorkQueue};

use crate::harness::union;

/// Enqueues one and a half times `limit` performs on a queue with no consumer yet through
/// `url` (which sets the transport's limit to `limit`), then consumes: every accepted
/// perform arrives, the rest were refused with `QueueFull`.
pub async fn backlog_past_the_limit_is_refused_not_dropped(url: &str, limit: u64) {
    let t = aether::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let u = union();
    let q = WorkQueue::new(&u, "backlog", "t", "x", "g").unwrap();
    let total = limit * 3 / 2;
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    for i in 0..total {
        let tid = format!("t{i}");
        let topic = q.topic(&tid, Action::Perform).unwrap();
        match t.enqueue(&topic, Bytes::from_static(b"{}")).await {
            Ok(()) => {
                accepted.insert(tid);
            }
            Err(Error::QueueFull { limit: l }) => {
                assert_eq!(l, limit);
                refused += 1;
            }
            Err(e) => panic!("enqueue {i}: {e}"),
        }
    }
    let mut consumer = t
        .consume(&q, ConsumeOptions::new().prefetch(64))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < accepted.len() {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} accepted performs arrived ({refused} refused): dropped",
                    seen.len(),
                    accepted.len()
                )
            })
            .expect("consumer open")
            .expect("a valid delivery");
        seen.insert(d.topic.tid().to_owned());
        d.ack().await.unwrap();
    }
    assert_eq!(seen, accepted);
    assert!(refused > 0, "{total} performs past a limit of {limit}");
    t.close().await.unwrap();
}
