//! Raw elements written into a Redis work queue by someone other than aether (with
//! `redis-cli`, bytes as given): each is refused, or dead-lettered, with a reason that says
//! what is wrong with it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use aether::{ConsumeOptions, Consumed, InvalidMessage, WorkQueue};

use crate::brokers::redis::{DEFAULT_URL, URL_VAR};
use crate::harness::union;

const WAIT: Duration = Duration::from_secs(20);

/// A Redis work queue of its own (a private key prefix, deleted at the end).
#[derive(Debug)]
pub struct RawQueue {
    base: String,
    prefix: String,
    /// The URL of an aether connection to it.
    pub url: String,
    /// The queue.
    pub queue: WorkQueue,
}

impl RawQueue {
    /// A queue on the shared Redis in `mode` (`streams` or `list`), workgroup `g`.
    pub fn new(mode: &str) -> RawQueue {
        let base = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let prefix = format!(
            "aetherraw{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}mode={mode}&prefix={prefix}");
        let base = base.split('?').next().unwrap_or(&base).to_owned();
        let queue = WorkQueue::new(&union(), "j", "t", "x", "g").unwrap();
        RawQueue {
            base,
            prefix,
            url,
            queue,
        }
    }

    /// The key `{prefix}:{u:j:t:x}:{rest}`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{{{}}}:{rest}", self.prefix, self.queue.key(':'))
    }

    /// Runs `redis-cli` with `args`, and `last` as a last argument read from stdin (so it
    /// may hold any bytes); returns its output.
    pub fn cli(&self, args: &[&str], last: Option<&[u8]>) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-u", &self.base, "--raw"]);
        if last.is_some() {
            cmd.arg("-x");
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(last.unwrap_or_default()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().expect("redis-cli output");
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The queue's dead-letter stream as text.
    pub fn dead_letters(&self) -> String {
        self.cli(&["XRANGE", &self.key("dead"), "-", "+"], None)
    }
}

impl Drop for RawQueue {
    fn drop(&mut self) {
        let keys = self.cli(
            &["--scan", "--pattern", &format!("{}:*", self.prefix)],
            None,
        );
        for key in keys.lines().filter(|k| !k.is_empty()) {
            self.cli(&["DEL", key], None);
        }
    }
}

/// Waits for what the consumer yields next, expecting a refusal.
pub async fn next_refusal(consumer: &mut aether::Consumer, what: &str) -> InvalidMessage {
    let item: Consumed = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing consumed"))
        .expect("consumer open");
    match item {
        Err(invalid) => invalid,
        Ok(d) => panic!("{what}: delivered as tid {:?}", d.topic.tid()),
    }
}

/// Waits until the queue's dead-letter stream holds `needle`.
pub async fn dead_letter_holding(q: &RawQueue, needle: &str) -> String {
    let start = tokio::time::Instant::now();
    loop {
        let dead = q.dead_letters();
        if dead.contains(needle) {
            return dead;
        }
        assert!(
            start.elapsed() < WAIT,
            "no dead letter holding {needle:?}: {dead}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A perform whose tid is not UTF-8 is refused, and dead-lettered, saying so (it said
/// "the tid segment is empty").
pub async fn tid_not_utf8_is_refused_saying_so(mode: &str) {
    let q = RawQueue::new(mode);
    let t = aether::connect(&q.url).await.expect("redis connection");
    let mut consumer = t.consume(&q.queue, ConsumeOptions::new()).await.unwrap();
    match mode {
        "streams" => q.cli(
            &["XADD", &q.key("stream"), "*", "p", "{}", "r", "0", "t"],
            Some(b"bad\xff\xfe"),
        ),
        _ => q.cli(&["LPUSH", &q.key("wg:g")], Some(b"0:#5:bad\xff\xfe{}")),
    };
    let invalid = next_refusal(&mut consumer, "a tid that is not UTF-8").await;
    let why = invalid.error.to_string();
    assert!(why.contains("not UTF-8"), "{why}");
    assert!(invalid.raw_topic.contains("bad"), "{}", invalid.raw_topic);
    let dead = dead_letter_holding(&q, "not UTF-8").await;
    assert!(!dead.contains("is empty"), "{dead}");
    t.close().await.unwrap();
}

/// List mode: an element whose tid holds `:` (the separator of `{r}:{tid}:{payload}`, as
/// elements were) is refused, not delivered as the tid before the colon with the rest of
/// the tid taken for payload; an element in today's form `{r}:#{tid length}:{tid}{payload}`
/// whose tid holds `:` is refused saying so.
pub async fn list_tid_holding_a_colon_is_refused() {
    let q = RawQueue::new("list");
    let t = aether::connect(&q.url).await.expect("redis connection");
    let mut consumer = t.consume(&q.queue, ConsumeOptions::new()).await.unwrap();
    q.cli(&["LPUSH", &q.key("wg:g")], Some(b"0:bad:tid:{}"));
    let invalid = next_refusal(&mut consumer, "an element whose tid holds ':'").await;
    assert_eq!(&invalid.payload[..], b"0:bad:tid:{}", "{invalid:?}");
    q.cli(&["LPUSH", &q.key("wg:g")], Some(b"0:#7:bad:tid{}"));
    let invalid = next_refusal(&mut consumer, "a tid holding ':'").await;
    let why = invalid.error.to_string();
    assert!(why.contains("Redis key separator"), "{why}");
    assert!(
        invalid.raw_topic.contains("/bad:tid/"),
        "{}",
        invalid.raw_topic
    );
    assert_eq!(&invalid.payload[..], b"{}");
    dead_letter_holding(&q, "Redis key separator").await;
    t.close().await.unwrap();
}

/// A message published (by someone else) on a channel whose name is not UTF-8, matching a
/// subscription's pattern, reaches that subscription as an invalid message, to be counted,
/// instead of vanishing inside the Redis client (fred dropped it with a log line only).
pub async fn channel_not_utf8_reaches_the_subscription_as_invalid() {
    let q = RawQueue::new("streams");
    let t = aether::connect(&q.url).await.expect("redis connection");
    let u = union();
    let filter: aether::TopicFilter = format!("{u}/j/t/+/+/complete").parse().unwrap();
    let mut sub = t.subscribe(&filter).await.unwrap();
    let mut channel = format!("{u}:j:t:x:").into_bytes();
    channel.extend_from_slice(b"bad\xff\xfe:complete");
    // redis-cli -x passes stdin, bytes as they are, as the last argument; PUBLISH wants the
    // channel first, so a script publishes with the channel taken from that argument.
    q.cli(
        &["EVAL", "return redis.call('PUBLISH', ARGV[1], 'x')", "0"],
        Some(&channel),
    );
    let valid: aether::Topic = format!("{u}/j/t/x/good/complete").parse().unwrap();
    t.publish(&valid, aether::Bytes::from_static(b"y"))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("something on the subscription")
        .expect("subscription open");
    match first {
        Err(invalid) => assert!(
            invalid.raw_topic.contains("bad"),
            "{:?}: {}",
            invalid.raw_topic,
            invalid.error
        ),
        Ok(m) => panic!("the bad channel was lost; first came {}", m.topic),
    }
    t.close().await.unwrap();
}
