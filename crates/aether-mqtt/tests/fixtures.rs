//! The wire format against a real capture of Python AetherMagic 0.2.9 over MQTT
//! (`tests/fixtures/python-aethermagic-mqtt.txt`, taken with `mosquitto_sub -v`): aether
//! decodes every message, and produces the same topics and the same JSON envelopes for the
//! same messages: byte for byte once Python's `json.dumps` separators (`", "` and `": "`)
//! are taken out, which JSON readers ignore.

use aether_core::envelope::{Codec, Header, encode};
use aether_core::{Action, DEFAULT_WORKGROUP, Envelope, Status, Topic, TopicFilter, WorkQueue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const CAPTURE: &str = include_str!("fixtures/python-aethermagic-mqtt.txt");

/// The capture's messages: `(topic, payload)`, in order.
fn messages() -> Vec<(&'static str, &'static str)> {
    CAPTURE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once(' ').expect("TOPIC PAYLOAD"))
        .collect()
}

/// `json` without the whitespace outside strings: Python's `json.dumps` output in the
/// compact form aether writes.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

const WORKER: &str = "704976d4-e9ff-11f1-a3ec-02fc00000001";
const CLIENT: &str = "717b417c-e9ff-11f1-8322-02fc00000001";

#[test]
fn the_capture_is_what_the_fixture_says() {
    let m = messages();
    assert_eq!(m.len(), 7);
    let actions: Vec<&str> = m
        .iter()
        .map(|(t, _)| t.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "idle", "online", "online", "perform", "status", "status", "complete"
        ]
    );
}

#[test]
fn aether_decodes_every_python_message() {
    for (raw_topic, payload) in messages() {
        let topic: Topic = raw_topic
            .parse()
            .unwrap_or_else(|e| panic!("{raw_topic}: {e}"));
        assert_eq!(topic.as_str(), raw_topic);
        let env = Envelope::decode(payload.as_bytes().to_vec().into())
            .unwrap_or_else(|e| panic!("{raw_topic}: {e}"));
        let h = env.header();
        assert_eq!(h.action, topic.action(), "{raw_topic}");
        assert_eq!(h.host, "vm");
        assert!(h.client == WORKER || h.client == CLIENT, "{}", h.client);
        // The keys Python always sends empty.
        for key in [&h.job, &h.workgroup, &h.task, &h.context, &h.tid] {
            assert_eq!(key, "");
        }
        // None of aether's optional keys.
        assert_eq!(
            (h.attempt, h.lease, h.deadline, h.seq),
            (None, None, None, None)
        );
        assert!(h.error.is_none() && h.headers.is_none());
        assert_eq!(env.codec(), Codec::Json);
    }
}

#[test]
fn python_values_decode_into_aether_types() {
    let m = messages();
    let perform = Envelope::decode(m[3].1.as_bytes().to_vec().into()).unwrap();
    assert_eq!(
        (perform.header().status, perform.header().progress),
        (Status::Initialized, 0)
    );
    #[derive(Debug, PartialEq, Deserialize)]
    struct Input {
        i: u32,
    }
    assert_eq!(perform.data::<Input>().unwrap(), Input { i: 0 });

    let accepted = Envelope::decode(m[4].1.as_bytes().to_vec().into()).unwrap();
    assert_eq!(
        (accepted.header().status, accepted.header().progress),
        (Status::Progress, 0),
        "the worker's first reply is progress 0"
    );
    assert_eq!(accepted.data_value(), json!({}));

    let half = Envelope::decode(m[5].1.as_bytes().to_vec().into()).unwrap();
    assert_eq!(half.header().progress, 50);
    assert_eq!(half.data_value(), json!({"stage": "half"}));

    let done = Envelope::decode(m[6].1.as_bytes().to_vec().into()).unwrap();
    assert_eq!(
        (done.header().status, done.header().progress),
        (Status::Succeed, 100)
    );
    #[derive(Debug, PartialEq, Deserialize)]
    struct Echo {
        echo: Input,
        by: String,
    }
    assert_eq!(
        done.data::<Echo>().unwrap(),
        Echo {
            echo: Input { i: 0 },
            by: "python".into()
        }
    );

    // A failed task differs only in its status.
    let failed = m[6].1.replace("\"succeed\"", "\"failed\"");
    let failed = Envelope::decode(failed.into_bytes().into()).unwrap();
    assert_eq!(failed.header().status, Status::Failed);
}

/// The data of the capture's messages, as typed values that serialize in Python's key
/// order.
#[derive(Serialize)]
struct Stage {
    stage: &'static str,
}
#[derive(Serialize)]
struct Input {
    i: u32,
}
#[derive(Serialize)]
struct Echo {
    echo: Input,
    by: &'static str,
}

#[test]
fn aether_produces_the_same_topics_and_envelopes() {
    let (u, job, task, ctx) = ("u3", "interop", "echo", "x");
    let header = |action: Action, client: &str| Header::new(action, "vm", client);
    let empty = json!({});
    let produced: Vec<(Topic, Vec<u8>)> = vec![
        (
            Topic::new(u, job, task, ctx, "7049783c", Action::Idle).unwrap(),
            encode(Codec::Json, &header(Action::Idle, WORKER), &empty)
                .unwrap()
                .to_vec(),
        ),
        (
            Topic::new(u, "system", "online", "vm", WORKER, Action::Online).unwrap(),
            encode(Codec::Json, &header(Action::Online, WORKER), &empty)
                .unwrap()
                .to_vec(),
        ),
        (
            Topic::new(u, "system", "online", "vm", CLIENT, Action::Online).unwrap(),
            encode(Codec::Json, &header(Action::Online, CLIENT), &empty)
                .unwrap()
                .to_vec(),
        ),
        (
            Topic::new(u, job, task, ctx, "72605384", Action::Perform).unwrap(),
            encode(
                Codec::Json,
                &header(Action::Perform, CLIENT),
                &Input { i: 0 },
            )
            .unwrap()
            .to_vec(),
        ),
        (
            Topic::new(u, job, task, ctx, "72605384", Action::Status).unwrap(),
            encode(Codec::Json, &header(Action::Status, WORKER), &empty)
                .unwrap()
                .to_vec(),
        ),
        (
            Topic::new(u, job, task, ctx, "72605384", Action::Status).unwrap(),
            encode(
                Codec::Json,
                &header(Action::Status, WORKER).progress(50),
                &Stage { stage: "half" },
            )
            .unwrap()
            .to_vec(),
        ),
        (
            Topic::new(u, job, task, ctx, "72605384", Action::Complete).unwrap(),
            encode(
                Codec::Json,
                &header(Action::Complete, WORKER),
                &Echo {
                    echo: Input { i: 0 },
                    by: "python",
                },
            )
            .unwrap()
            .to_vec(),
        ),
    ];
    let captured = messages();
    assert_eq!(produced.len(), captured.len());
    for ((topic, bytes), (raw_topic, payload)) in produced.iter().zip(captured) {
        assert_eq!(topic.as_str(), raw_topic);
        assert_eq!(
            std::str::from_utf8(bytes).unwrap(),
            compact(payload),
            "{raw_topic}"
        );
        // And the same value for any JSON reader.
        let ours: Value = serde_json::from_slice(bytes).unwrap();
        let theirs: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(ours, theirs);
    }
    // A failed completion: the same with "failed".
    let failed = encode(
        Codec::Json,
        &header(Action::Complete, WORKER).status(Status::Failed),
        &Echo {
            echo: Input { i: 0 },
            by: "python",
        },
    )
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&failed).unwrap(),
        compact(&messages()[6].1.replace("\"succeed\"", "\"failed\""))
    );
}

#[test]
fn subscriptions_match_python_services() {
    // The shared subscription Python's AetherTask workers use (workgroup "workgroup").
    let q = WorkQueue::new("u3", "interop", "echo", "x", DEFAULT_WORKGROUP).unwrap();
    assert_eq!(
        aether_mqtt::shared_subscription(&q),
        "$share/u3_interop_workgroup/u3/interop/echo/x/+/perform"
    );
    // Brokers deliver a shared-subscription message with the plain topic: the capture's
    // perform is on the queue.
    let perform: Topic = messages()[3].0.parse().unwrap();
    assert!(q.matches(&perform));
    // A Python client's subscriptions for its task, exact topics.
    for (action, raw) in [
        (Action::Status, messages()[4].0),
        (Action::Complete, messages()[6].0),
    ] {
        let filter = TopicFilter::exact(&perform.with_action(action));
        assert_eq!(filter.as_str(), raw);
        assert!(filter.matches(&raw.parse().unwrap()));
    }
    // What aether's client subscribes to for the same tasks also matches Python's replies.
    assert!(
        q.filter(Action::Status)
            .matches(&messages()[5].0.parse().unwrap())
    );
    assert!(
        q.filter(Action::Complete)
            .matches(&messages()[6].0.parse().unwrap())
    );
}

#[test]
fn compaction_only_drops_whitespace_outside_strings() {
    assert_eq!(
        compact(r#"{"a": "b c", "d": [1, 2], "e": "x\" y"}"#),
        r#"{"a":"b c","d":[1,2],"e":"x\" y"}"#
    );
}
