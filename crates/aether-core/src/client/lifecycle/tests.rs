//! The lifecycle as tables: each row a policy and a sequence of steps, each step an event
//! at a time (ms after the first dispatch) and the effects it must have, written short:
//!
//! | short | effect |
//! |-------|--------|
//! | `p40` | progress 40 surfaced |
//! | `dup` | a duplicate counted |
//! | `beat` | a heartbeat counted |
//! | `ok`, `failed`, `cancelled`, `deadline`, `lost3`, `closed` | the outcome |
//! | `wake` | the supervisor woken to read its timers again |
//! | `send2` | dispatch number 2 |
//! | `cancel` | the cancel sent to the worker |
//! | `dl3` | the perform dead-lettered after 3 dispatches |
//!
//! Three pseudo-events check instead of acting: `NextWake` (`at1100` or `never`), `Done`
//! (`done` or `running`) and `State`.

use super::*;
use crate::envelope::{Codec, Header, encode_raw};

use Ev::*;

/// Client lease 1 s, three attempts, backoff 100, 200, 400 ms.
const LEASE: u64 = 1000;

/// MQTT, or memory without redelivery: every silence is chased.
const LOSSY: Redispatch = Redispatch {
    before_accept: true,
    after_accept: true,
    on_gap: true,
};
/// Redis streams, AMQP: the broker keeps performs and redelivers a dead worker's, and
/// reports gaps.
const REDELIVERING: Redispatch = Redispatch {
    before_accept: false,
    after_accept: false,
    on_gap: true,
};
/// A broker that redelivers but reports no gaps: accepted tasks are watched.
const NO_GAP_SIGNALS: Redispatch = Redispatch {
    before_accept: false,
    after_accept: true,
    on_gap: true,
};
/// `Config::redispatch = Some(false)`.
const OFF: Redispatch = Redispatch {
    before_accept: false,
    after_accept: false,
    on_gap: false,
};

#[derive(Clone, Copy, Debug)]
enum Ev {
    Sent(u64),
    /// A status with this progress and worker lease (ms).
    Report(u8, Option<u64>),
    /// A status with this progress and number (`seq`), from worker `"w1"` or `"w2"`, which
    /// promised a 300 ms lease.
    Numbered(u8, u32, &'static str),
    Success,
    Failure,
    /// A reply that is neither a status nor a completion.
    Stray,
    Gap(u64),
    Cancel,
    Detach,
    Close,
    Tick,
    NextWake,
    Done,
    State,
}

struct Row {
    name: &'static str,
    redispatch: Redispatch,
    deadline: Option<u64>,
    steps: &'static [(u64, Ev, &'static str)],
}

const fn row(
    name: &'static str,
    redispatch: Redispatch,
    steps: &'static [(u64, Ev, &'static str)],
) -> Row {
    Row {
        name,
        redispatch,
        deadline: None,
        steps,
    }
}

const fn with_deadline(mut r: Row, ms: u64) -> Row {
    r.deadline = Some(ms);
    r
}

const ROWS: &[Row] = &[
    row(
        "progress in order, then the result",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (20, Report(40, Some(300)), "p40"),
            (30, Report(80, Some(300)), "p80"),
            (40, Success, "ok"),
            (41, State, "succeeded"),
            (41, Done, "done"),
            (41, NextWake, "never"),
        ],
    ),
    row(
        "redelivered and stale reports are duplicates, the first outcome wins",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (11, Report(0, Some(300)), "dup"),
            (12, Report(50, Some(300)), "p50"),
            (13, Report(50, Some(300)), "dup"),
            (14, Report(30, Some(300)), "dup"),
            (15, Success, "ok"),
            (16, Success, "dup"),
            (17, Failure, "dup"),
            (18, Report(90, Some(300)), "dup"),
            (19, State, "succeeded"),
        ],
    ),
    row(
        "numbered statuses: heartbeats are not duplicates, a number heard twice is",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Numbered(0, 1, "w1"), "wake p0"),
            (110, Numbered(0, 2, "w1"), "beat"),
            (111, Numbered(0, 2, "w1"), "dup"),
            (120, Numbered(50, 3, "w1"), "p50"),
            (220, Numbered(50, 4, "w1"), "beat"),
            (221, Numbered(50, 3, "w1"), "dup"),
            (320, Numbered(50, 5, "w1"), "beat"),
            (321, Numbered(50, 1, "w1"), "dup"),
            (322, Numbered(50, 4, "w1"), "dup"),
            // Overtaken in flight by number 7, then heard: news to nobody, yet no repeat.
            (330, Numbered(70, 7, "w1"), "p70"),
            (331, Numbered(60, 6, "w1"), "beat"),
            (332, Numbered(60, 6, "w1"), "dup"),
            (340, Success, "ok"),
            (341, Success, "dup"),
            (342, Numbered(70, 8, "w1"), "dup"),
        ],
    ),
    row(
        "numbered statuses: another worker numbers afresh",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Numbered(0, 1, "w1"), "wake p0"),
            (20, Numbered(40, 2, "w1"), "p40"),
            (30, Numbered(0, 1, "w2"), "beat"),
            (40, Numbered(40, 2, "w2"), "beat"),
            (41, Numbered(40, 2, "w2"), "dup"),
            (50, Numbered(60, 3, "w2"), "p60"),
            (60, Failure, "failed"),
        ],
    ),
    row(
        "numbered statuses: far behind the highest is taken as heard",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Numbered(0, 1, "w1"), "wake p0"),
            (20, Numbered(0, 100, "w1"), "beat"),
            (21, Numbered(0, 36, "w1"), "beat"),
            (22, Numbered(0, 35, "w1"), "dup"),
            (23, Numbered(0, 1000, "w1"), "beat"),
            (24, Numbered(0, 999, "w1"), "beat"),
            (25, Numbered(0, 100, "w1"), "dup"),
        ],
    ),
    row(
        "a completion without statuses",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Failure, "wake failed"),
            (11, State, "failed"),
        ],
    ),
    row(
        "a reply that is no status or completion is not heard",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (999, Stray, ""),
            (1000, Tick, ""),
            (1100, Tick, "send2"),
        ],
    ),
    row(
        "lossy: an unaccepted task silent for the lease goes again after the backoff, until lost",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (0, NextWake, "at1000"),
            (999, Tick, ""),
            (1000, Tick, ""),
            (1000, NextWake, "at1100"),
            (1100, Tick, "send2"),
            (1100, NextWake, "at2100"),
            (1105, Sent(0), ""),
            (2100, Tick, ""),
            (2100, NextWake, "at2300"),
            (2300, Tick, "send3"),
            (2301, Sent(0), ""),
            (3300, Tick, "lost3 dl3"),
            (3300, State, "timed out"),
            (3300, Done, "done"),
        ],
    ),
    row(
        "redelivering: an unaccepted task waits in the broker, unwatched",
        REDELIVERING,
        &[
            (0, Sent(0), ""),
            (0, NextWake, "never"),
            (60_000, Tick, ""),
            (60_000, Done, "running"),
        ],
    ),
    row(
        "redelivering: an accepted task whose worker died is the broker's to redeliver",
        REDELIVERING,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (10, NextWake, "never"),
            (10_000, Tick, ""),
        ],
    ),
    row(
        "no gap signals: an accepted task is watched, an unaccepted one is not",
        NO_GAP_SIGNALS,
        &[
            (0, Sent(0), ""),
            (0, NextWake, "never"),
            (10, Report(0, Some(300)), "wake p0"),
            (10, NextWake, "at1010"),
            (1010, Tick, ""),
            (1110, Tick, "send2"),
            (1110, NextWake, "never"),
        ],
    ),
    row(
        "lossy: a silent worker is given the longer of its lease and the client's",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(3000)), "wake p0"),
            (10, NextWake, "at3010"),
            (3009, Tick, ""),
            (3010, Tick, ""),
            (3110, Tick, "send2"),
        ],
    ),
    row(
        "heartbeats keep an accepted task alive",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (300, Report(0, Some(300)), "dup"),
            (600, Report(10, Some(300)), "p10"),
            (900, Tick, ""),
            (900, NextWake, "at1600"),
        ],
    ),
    row(
        "a worker's new lease wakes the supervisor",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (20, Report(10, Some(600)), "wake p10"),
            (30, Report(20, Some(600)), "p20"),
            (40, Report(30, None), "p30"),
        ],
    ),
    row(
        "kill -9, lossy: heard of during the backoff (another worker took it over), no re-send",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (1010, Tick, ""),
            (1010, NextWake, "at1110"),
            (1050, Report(0, Some(300)), "dup"),
            (1110, Tick, ""),
            (1110, NextWake, "at2050"),
        ],
    ),
    row(
        "a Python worker promises no heartbeats: its accepted task is left alone",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, None), "wake p0"),
            (10, NextWake, "never"),
            (100, Gap(1), ""),
            (100_000, Tick, ""),
        ],
    ),
    row(
        "gaps before any worker was heard of: at once, not counted toward max_attempts",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (100, Gap(1), "wake"),
            (100, NextWake, "at100"),
            (100, Tick, "send2"),
            (101, Sent(1), ""),
            (200, Gap(2), "wake"),
            (200, Tick, "send3"),
            (201, Sent(2), ""),
            (1200, Tick, ""),
            (1300, Tick, "send4"),
            (2300, Tick, ""),
            (2500, Tick, "send5"),
            (3500, Tick, "lost5 dl5"),
        ],
    ),
    row(
        "a gap while the dispatch is under way lost nothing",
        LOSSY,
        &[
            (0, Gap(1), ""),
            (5, Sent(1), ""),
            (6, NextWake, "at1000"),
            (6, Tick, ""),
            (7, Gap(1), ""),
            (8, Gap(2), "wake"),
        ],
    ),
    row(
        "an accepted task heard of after the gap lost nothing",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (100, Gap(1), "wake"),
            (100, NextWake, "at250"),
            (200, Report(0, Some(300)), "dup"),
            (250, Tick, ""),
            (250, NextWake, "at1200"),
        ],
    ),
    row(
        "redelivering: an accepted task silent for half its worker's lease after a gap goes again",
        REDELIVERING,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (100, Gap(1), "wake"),
            (100, NextWake, "at250"),
            (249, Tick, ""),
            (250, Tick, "send2"),
            (251, Sent(1), ""),
            (251, NextWake, "never"),
            (400, Success, "wake ok"),
        ],
    ),
    row(
        "two gaps, one probe",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(0, Some(300)), "wake p0"),
            (100, Gap(1), "wake"),
            (120, Gap(2), "wake"),
            (120, NextWake, "at250"),
            (250, Tick, "send2"),
        ],
    ),
    row(
        "a gap during the backoff is answered by the lease's dispatch",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (1000, Tick, ""),
            (1050, Gap(1), "wake"),
            (1050, NextWake, "at1100"),
            (1100, Tick, "send2"),
            (1101, Sent(1), ""),
            (1101, NextWake, "at2100"),
            (1500, Tick, ""),
        ],
    ),
    row(
        "redispatch off: gaps and silence are waited out",
        OFF,
        &[
            (0, Sent(0), ""),
            (100, Gap(1), ""),
            (100, NextWake, "never"),
            (150, Report(0, Some(300)), "wake p0"),
            (200, Gap(2), ""),
            (5000, Tick, ""),
        ],
    ),
    with_deadline(
        row(
            "at the deadline the task ends and its worker is told; a late completion is a duplicate",
            REDELIVERING,
            &[
                (0, Sent(0), ""),
                (0, NextWake, "at2000"),
                (10, Report(0, Some(300)), "wake p0"),
                (1999, Tick, ""),
                (2000, Tick, "deadline cancel"),
                (2000, State, "timed out"),
                (2100, Success, "dup"),
                (2200, Tick, ""),
            ],
        ),
        2000,
    ),
    with_deadline(
        row(
            "the deadline during the backoff",
            LOSSY,
            &[
                (0, Sent(0), ""),
                (1000, Tick, ""),
                (1000, NextWake, "at1050"),
                (1050, Tick, "deadline cancel"),
            ],
        ),
        1050,
    ),
    row(
        "cancel ends the task; the worker's answer is a duplicate",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (10, Report(20, Some(300)), "wake p20"),
            (20, Cancel, "cancelled"),
            (30, Failure, "dup"),
            (31, Cancel, ""),
            (31, State, "cancelled"),
            (31, Done, "done"),
        ],
    ),
    row(
        "the transport closed",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (5, Close, "closed"),
            (5, State, "timed out"),
            (6, Success, "wake dup"),
        ],
    ),
    row(
        "a dropped handle with nothing watched: nothing left to do",
        REDELIVERING,
        &[(0, Sent(0), ""), (5, Detach, "wake"), (5, Done, "done")],
    ),
    row(
        "a dropped handle still watched is followed to the end",
        LOSSY,
        &[
            (0, Sent(0), ""),
            (5, Detach, "wake"),
            (5, Done, "running"),
            (1000, Tick, ""),
            (1100, Tick, "send2"),
        ],
    ),
    with_deadline(
        row(
            "a dropped handle with a deadline is followed to it",
            REDELIVERING,
            &[
                (0, Sent(0), ""),
                (5, Detach, "wake"),
                (5, Done, "running"),
                (500, Tick, "deadline cancel"),
                (500, Done, "done"),
            ],
        ),
        500,
    ),
];

#[test]
fn lifecycle_table() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    for row in ROWS {
        let policy = Policy {
            lease: Duration::from_millis(LEASE),
            max_attempts: 3,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(400)),
            redispatch: row.redispatch,
            deadline: row.deadline.map(at),
        };
        let mut lc = Lifecycle::new(policy, t0);
        for (i, &(ms, ev, want)) in row.steps.iter().enumerate() {
            let got = match ev {
                NextWake => lc.next_wake().map_or("never".to_owned(), |w| {
                    format!("at{}", (w - t0).as_millis())
                }),
                Done => if lc.is_done() { "done" } else { "running" }.to_owned(),
                State => lc.state().to_string(),
                _ => show(&lc.on(event(ev), at(ms))),
            };
            assert_eq!(got, want, "{}: step {i}, {ev:?} at {ms} ms", row.name);
        }
    }
}

fn event(ev: Ev) -> Event {
    match ev {
        Sent(gaps) => Event::Sent { gaps },
        Report(p, lease) => Event::Reply(reply(Action::Status, Status::Progress, p, lease)),
        Numbered(p, seq, worker) => {
            let mut h = Header::new(Action::Status, "host", worker)
                .status(Status::Progress)
                .progress(p);
            h.lease = Some(300);
            h.seq = Some(seq);
            Event::Reply(Envelope::decode(encode_raw(Codec::Json, &h, b"{}")).expect("valid"))
        }
        Success => Event::Reply(reply(Action::Complete, Status::Succeed, 100, None)),
        Failure => Event::Reply(reply(Action::Complete, Status::Failed, 100, None)),
        Stray => Event::Reply(reply(Action::Perform, Status::Progress, 0, None)),
        Gap(n) => Event::Gap(n),
        Cancel => Event::Cancelled,
        Detach => Event::Detached,
        Close => Event::Closed,
        Tick => Event::Tick,
        NextWake | Done | State => unreachable!("checks are not events"),
    }
}

fn reply(action: Action, status: Status, progress: u8, lease: Option<u64>) -> Envelope {
    let mut h = Header::new(action, "host", "worker")
        .status(status)
        .progress(progress);
    h.lease = lease;
    Envelope::decode(encode_raw(Codec::Json, &h, b"{}")).expect("a valid envelope")
}

fn show(effects: &[Effect]) -> String {
    let short = |e: &Effect| match e {
        Effect::Progress { percent, .. } => format!("p{percent}"),
        Effect::Duplicate => "dup".into(),
        Effect::Heartbeat => "beat".into(),
        Effect::Finish(o) => match o {
            Outcome::Succeeded(_) => "ok".into(),
            Outcome::Failed(_) => "failed".into(),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::DeadlineExceeded => "deadline".into(),
            Outcome::Lost(n) => format!("lost{n}"),
            Outcome::Closed => "closed".into(),
        },
        Effect::Reschedule => "wake".into(),
        Effect::Dispatch { attempt, .. } => format!("send{attempt}"),
        Effect::SendCancel => "cancel".into(),
        Effect::DeadLetter { attempts } => format!("dl{attempts}"),
    };
    effects.iter().map(short).collect::<Vec<_>>().join(" ")
}

/// Why a dispatch goes again is logged: a lease or a gap.
#[test]
fn dispatches_say_why() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let policy = Policy {
        lease: Duration::from_millis(LEASE),
        max_attempts: 3,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(400)),
        redispatch: LOSSY,
        deadline: None,
    };
    let mut lc = Lifecycle::new(policy, t0);
    lc.on(Event::Sent { gaps: 0 }, t0);
    lc.on(Event::Gap(1), ms(10));
    let why = |effects: Vec<Effect>| match effects.as_slice() {
        [Effect::Dispatch { why, .. }] => *why,
        other => panic!("not one dispatch: {other:?}"),
    };
    assert!(why(lc.on(Event::Tick, ms(10))).contains("interrupted"));
    lc.on(Event::Sent { gaps: 1 }, ms(11));
    lc.on(Event::Tick, ms(1010));
    assert_eq!(why(lc.on(Event::Tick, ms(1110))), "lease expired");
}

/// A failed completion's message: aether's `error` key, else (a Python worker's) its data.
#[test]
fn failure_messages() {
    let table: &[(Option<&str>, &[u8], &str)] = &[
        (Some("boom"), b"{\"error\":\"boom\"}", "boom"),
        (None, b"\"disk full\"", "disk full"),
        (None, b"{}", "failed"),
        (None, b"null", "failed"),
        (None, b"{\"code\":7}", "{\"code\":7}"),
    ];
    for &(error, data, want) in table {
        let mut h = Header::new(Action::Complete, "host", "worker").status(Status::Failed);
        h.error = error.map(str::to_owned);
        let env = Envelope::decode(encode_raw(Codec::Json, &h, data)).expect("envelope");
        match Outcome::Failed(env).into_result("t1") {
            Err(Error::TaskFailed { tid, message, .. }) => {
                assert_eq!((tid.as_str(), message.as_str()), ("t1", want));
            }
            other => panic!("{want}: {other:?}"),
        }
    }
}
