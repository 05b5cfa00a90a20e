//! A backlog longer than the transport's limit on a work queue.

use std::collections::BTreeMap;

use tokio::sync::watch;

use super::*;

/// The backlog limit the case sets where the transport has one
/// ([`Harness::connect_limited`]).
const LIMIT: u64 = 40;
/// Tasks sent while the only worker is busy: half again the limit.
const TASKS: u64 = LIMIT * 3 / 2;

/// A backlog longer than the transport's limit either completes in full or is refused to
/// the caller (`perform` fails with [`Error::QueueFull`]), never dropped: every task whose
/// `perform` succeeded completes, with its own result. (Redis used to trim the oldest
/// performs past `max_len`; their callers heard nothing until their deadline.)
///
/// The worker (concurrency 1) holds its first task until every `perform` has returned, or
/// none has for a while (the in-memory broker's `enqueue` waits for room instead of
/// refusing). Where a transport drops what it cannot buffer (MQTT's consumer buffer), the
/// client's lease redispatch must bring the task back.
pub async fn backlog_past_the_limit_completes_or_is_refused(h: &dyn Harness, u: &str) {
    let lease = |b: aether::AetherBuilder| b.lease(SHORT_LEASE);
    let wn = limited_node(h, u, lease).await;
    let (open, opened) = watch::channel(false);
    let runs: Arc<Mutex<BTreeMap<u64, usize>>> = Default::default();
    let r = runs.clone();
    let _w = announce(wn.worker())
        .concurrency(1)
        .handle("b", "log", "x", move |_ctx: TaskContext, n: u64| {
            *r.lock().unwrap().entry(n).or_default() += 1;
            let mut opened = opened.clone();
            async move {
                let _ = opened.wait_for(|o| *o).await;
                Ok::<_, Error>(n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let cn = limited_node(h, u, lease).await;
    let client = cn.client();
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..TASKS {
        let client = client.clone();
        sends.spawn(async move { (n, client.perform("b", "log", "x", &n).await) });
    }
    let mut returned = Vec::new();
    let quiet = Duration::from_millis(500);
    while let Ok(Some(sent)) = tokio::time::timeout(quiet, sends.join_next()).await {
        returned.push(sent.expect("a send task"));
    }
    open.send_replace(true);
    while let Some(sent) = within("the remaining sends", sends.join_next()).await {
        returned.push(sent.expect("a send task"));
    }
    let mut refused = 0;
    let mut accepted = Vec::new();
    for (n, sent) in returned {
        match sent {
            Ok(task) => accepted.push((n, task)),
            Err(Error::QueueFull { .. }) => refused += 1,
            Err(e) => panic!("perform {n}: {e}"),
        }
    }
    let accepted_count = accepted.len();
    for (n, task) in accepted {
        let what = format!("task {n} of {accepted_count} accepted ({refused} refused)");
        let result: u64 = within(&what, task.result())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(result, n * 2);
    }
    assert!(
        accepted_count as u64 >= LIMIT,
        "only {accepted_count} of {TASKS} accepted below a limit of {LIMIT}"
    );
    let stats = cn.stats();
    assert_eq!(stats.succeeded, accepted_count as u64, "{stats:?}");
    assert_eq!(stats.failed + stats.lost, 0, "{stats:?}");
}

/// A node on a connection with the backlog limit set to [`LIMIT`], where the transport has
/// one.
async fn limited_node(
    h: &dyn Harness,
    union: &str,
    tweak: impl FnOnce(aether::AetherBuilder) -> aether::AetherBuilder,
) -> aether::Aether {
    let t = match h.connect_limited(LIMIT).await {
        Some(t) => t,
        None => h.connect().await,
    };
    tweak(aether::Aether::builder().union(union).transport(t))
        .build()
        .expect("node settings")
}
