//! Faults in a cluster while tasks flow: in a Redis Cluster a master killed (its replica
//! takes over) or a slot migrated to another master (MOVED and ASK redirections); in a
//! RabbitMQ cluster the leader of the workgroup's quorum queue killed. What must hold:
//! every task of the stream gets exactly one outcome, a success, and no caller sees an
//! error.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::{Aether, Error, TaskContext, WorkQueue};
use tokio::sync::Semaphore;

use crate::brokers::amqp_cluster::RabbitCluster;
use crate::brokers::redis_cluster::RedisCluster;
use crate::harness::union;

/// Tasks in one stream, unless a test asks for another [`Flow`].
pub const TASKS: u32 = 500;
/// Tasks in flight at a time, unless a test asks for another [`Flow`].
pub const IN_FLIGHT: usize = 16;

/// How many tasks a stream sends, and how many at a time.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// Tasks in the stream.
    pub tasks: u32,
    /// Tasks in flight at a time (and the worker's concurrency).
    pub in_flight: usize,
}

impl Default for Flow {
    /// [`TASKS`] at [`IN_FLIGHT`].
    fn default() -> Flow {
        Flow {
            tasks: TASKS,
            in_flight: IN_FLIGHT,
        }
    }
}
/// Outcomes received before the fault is injected.
pub const BEFORE_FAULT: u32 = 100;
/// How long each handler runs: long enough that the stream outlasts the fault.
const WORK: Duration = Duration::from_millis(20);
/// How long the whole stream may take.
const LIMIT: Duration = Duration::from_secs(90);

/// What a stream of tasks through a fault came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Handler runs per task value (more than one: run again after the fault).
    pub runs: BTreeMap<u32, u32>,
    /// Client statistics.
    pub client: aether::Stats,
    /// Wall time of the stream.
    pub elapsed: Duration,
    /// Outcomes in when the fault had been injected.
    pub at_fault: u32,
}

/// Runs `flow.tasks` echo tasks, `flow.in_flight` at a time, through `url` (a cluster), injecting
/// `fault(cluster, the workgroup's queue)` once [`BEFORE_FAULT`] outcomes are in; asserts
/// every task succeeds with its own value, once, and returns the counts.
pub async fn stream_through_fault<C: Send + Sync + 'static>(
    cluster: Arc<C>,
    url: &str,
    flow: Flow,
    fault: fn(&C, &WorkQueue),
) -> Outcome {
    let Flow {
        tasks: count,
        in_flight,
    } = flow;
    let u = union();
    let queue = WorkQueue::new(&u, "flow", "echo", "x", "g").unwrap();
    let runs = Arc::new(Mutex::new(BTreeMap::<u32, u32>::new()));
    let wn = node(url, &u).await;
    let r = runs.clone();
    let worker = wn
        .worker()
        .announce(false)
        .concurrency(in_flight)
        .workgroup("g")
        .handle("flow", "echo", "x", move |_ctx: TaskContext, v: u32| {
            *r.lock().unwrap().entry(v).or_default() += 1;
            async move {
                tokio::time::sleep(WORK).await;
                Ok::<_, Error>(v)
            }
        })
        .start()
        .await
        .unwrap();
    let cn = node(url, &u).await;
    let client = cn.client();
    let slots = Arc::new(Semaphore::new(in_flight));
    let done = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (fault_tx, fault_rx) = tokio::sync::oneshot::channel::<()>();
    let fault_tx = Arc::new(Mutex::new(Some(fault_tx)));
    let injector = tokio::task::spawn_blocking({
        let (cluster, done) = (cluster.clone(), done.clone());
        move || {
            fault_rx
                .blocking_recv()
                .expect("the stream reaches the fault");
            fault(&cluster, &queue);
            done.load(std::sync::atomic::Ordering::SeqCst)
        }
    });
    let start = tokio::time::Instant::now();
    let mut errors = Vec::new();
    // The whole stream is bounded, sending included: a stuck client blocks the sender on
    // the in-flight limit.
    let all = async {
        let mut tasks = tokio::task::JoinSet::new();
        for v in 0..count {
            let permit = slots.clone().acquire_owned().await.unwrap();
            let (client, done, fault_tx) = (client.clone(), done.clone(), fault_tx.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let got = async {
                    let task = client.perform("flow", "echo", "x", &v).await?;
                    task.result::<u32>().await
                }
                .await;
                if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == BEFORE_FAULT {
                    if let Some(tx) = fault_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
                (v, got)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (v, got) = joined.expect("a task of the stream");
            match got {
                Ok(r) if r == v => {}
                other => errors.push(format!("task {v}: {other:?}")),
            }
        }
    };
    if tokio::time::timeout(LIMIT, all).await.is_err() {
        // Release the injector if the fault was not reached, so the runtime can end.
        drop(fault_tx.lock().unwrap().take());
        panic!(
            "the stream did not finish within {LIMIT:?}: {} outcomes, errors so far: {errors:?}",
            done.load(std::sync::atomic::Ordering::SeqCst)
        );
    }
    let elapsed = start.elapsed();
    let done_at_fault_end = injector.await.expect("the fault ran");
    assert!(
        done_at_fault_end < count,
        "the fault ended after the stream ({done_at_fault_end} outcomes in {:?}): make the stream longer",
        start.elapsed()
    );
    assert!(
        errors.is_empty(),
        "callers saw {} errors, the first: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    let stats = cn.stats();
    assert_eq!(
        stats.succeeded,
        u64::from(count),
        "one outcome each: {stats:?}"
    );
    assert_eq!(stats.failed + stats.lost, 0, "{stats:?}");
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len() as u32, count, "every task ran");
    let _ = worker.shutdown(Duration::from_secs(5)).await;
    let _ = cn.close().await;
    let _ = wn.close().await;
    Outcome {
        runs,
        client: stats,
        elapsed,
        at_fault: done_at_fault_end,
    }
}

async fn node(url: &str, union: &str) -> Aether {
    let t = tokio::time::timeout(Duration::from_secs(20), aether::connect(url))
        .await
        .expect("connecting in time")
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    Aether::builder()
        .union(union)
        .lease(Duration::from_secs(3))
        .transport(t)
        .build()
        .expect("node settings")
}

/// The Redis key of `queue`'s stream or lists (its hash tag).
fn redis_key(queue: &WorkQueue) -> String {
    format!("{{{}}}", queue.key(':'))
}

/// Kills the master serving `queue` with SIGKILL; its replica takes over.
pub fn kill_master(cluster: &RedisCluster, queue: &WorkQueue) {
    let master = cluster.master_of(&redis_key(queue));
    cluster.kill_node(master);
    cluster.wait_whole();
}

/// Moves the slot of `queue` to another master the way `redis-cli --cluster reshard` moves
/// each slot (IMPORTING, MIGRATING, MIGRATE of its keys in batches, then NODE), with pauses
/// so that commands meet the slot half-moved (ASK) and then moved (MOVED).
pub fn migrate_slot(cluster: &RedisCluster, queue: &WorkQueue) {
    let key = &redis_key(queue);
    let from = cluster.master_of(key);
    let to = cluster
        .running()
        .find(|i| *i != from && cluster.cli(*i, &["ROLE"]).starts_with("master"))
        .expect("another master");
    let slot = cluster
        .cli(from, &["CLUSTER", "KEYSLOT", key])
        .trim()
        .to_owned();
    let id = |i: usize| cluster.cli(i, &["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(from), id(to));
    let ok = |out: String| assert!(out.trim() == "OK", "migrating slot {slot}: {out}");
    ok(cluster.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]));
    ok(cluster.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]));
    std::thread::sleep(Duration::from_millis(300));
    let to_port = cluster.ports()[to].to_string();
    loop {
        let keys = cluster.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "10"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        args.extend(&keys);
        let out = cluster.cli(from, &args);
        assert!(
            out.trim() == "OK" || out.trim() == "NOKEY",
            "MIGRATE: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in [to, from] {
        ok(cluster.cli(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]));
    }
    assert_eq!(cluster.master_of(key), to, "the slot moved");
}

/// Kills, with SIGKILL, the RabbitMQ node leading `queue`'s quorum queue (with the
/// default `queue_prefix`); another node's replica takes over.
pub fn kill_queue_leader(cluster: &RabbitCluster, queue: &WorkQueue) {
    let name = format!("aether.{}.{}", queue.key('.'), queue.workgroup());
    let leader = cluster.leader_of(&name);
    cluster.kill_node(leader);
    eprintln!("killed {}, the leader of {name}", cluster.node_name(leader));
}
