//! A task's lifecycle as its client follows it, as a pure tracker: events in, effects out.
//!
//! No I/O and no clock: the caller says what happened and when ([`Lifecycle::on`]), and
//! carries out the [`Effect`]s. The route feeds it replies and gaps, the handle its
//! cancel and drop, the supervisor the time: it sleeps until [`Lifecycle::next_wake`] (or
//! until woken) and ticks.
//!
//! What it decides:
//! - **Progress and outcome**: replies go through the [state machine](crate::state), in
//!   the order the route delivers them (statuses sent before a completion first); a
//!   repeated, stale or late reply is a duplicate, counted, never surfaced twice. The
//!   first outcome wins.
//! - **Heartbeats**: an aether worker numbers its statuses (`seq`), and heartbeats with
//!   a status repeating its progress. A numbered status not heard before that changes
//!   nothing is a heartbeat, counted apart; only one whose number was heard already (from
//!   the same worker) is a duplicate. Unnumbered statuses (a Python worker's, which sends
//!   no heartbeats) are judged by their progress alone, as above.
//! - **Leases**: a task no worker accepted is dispatched again when silent for the
//!   client's lease, where the transport may have dropped it; an accepted one when its
//!   worker stopped heartbeating, where the transport would not hand it to another worker
//!   (after a kill -9, a redelivering broker does, and a client re-send would run it
//!   twice). An expired lease waits out the backoff first, and anything heard meanwhile (a
//!   late heartbeat, another worker that took the task over) calls the re-send off. After
//!   `max_attempts` expired leases the task is lost and its perform dead-lettered.
//! - **Gaps**: a gap in the route's subscriptions may have lost the replies of a task
//!   dispatched before it. One not heard of since goes again at once; an accepted one
//!   only if its worker stays silent for half its lease (it heartbeats every third). A
//!   dispatch still under way lost nothing; a worker that promised no heartbeats (a Python
//!   one) cannot be told from a busy one, so its task is left alone. Gap redispatches do
//!   not count toward `max_attempts`.
//! - **Deadline**: at the deadline the task ends and the worker is told to cancel.

use std::time::{Duration, Instant};

use crate::action::{Action, Status};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::node::Backoff;
use crate::state::{Applied, TaskEvent, TaskState};

/// How a client follows its tasks: the node's settings and the transport's promises.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// How long a task may stay silent before a dispatch again (the client's lease).
    pub(super) lease: Duration,
    /// Dispatches after which a task whose leases expired is lost.
    pub(super) max_attempts: u32,
    /// The pause between an expired lease and the next dispatch.
    pub(super) backoff: Backoff,
    pub(super) redispatch: Redispatch,
    /// When the caller gives up on the task.
    pub(super) deadline: Option<Instant>,
}

/// When a silent task is dispatched again.
#[derive(Clone, Copy, Debug)]
pub(super) struct Redispatch {
    /// No worker accepted it within the lease.
    pub(super) before_accept: bool,
    /// The worker that accepted it stopped heartbeating.
    pub(super) after_accept: bool,
    /// The route's subscriptions reported a gap that may have lost its replies.
    pub(super) on_gap: bool,
}

/// Something that happened to a task.
// Events are handed over at once, never stored: a boxed reply would cost an allocation
// per status for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Event {
    /// A dispatch reached the transport, when the route had reported `gaps` gaps.
    Sent { gaps: u64 },
    /// A status or completion from a worker.
    Reply(Envelope),
    /// The route's subscriptions reported gap number `gap`.
    Gap(u64),
    /// The caller cancelled the task.
    Cancelled,
    /// The caller dropped its handle.
    Detached,
    /// The route's subscriptions ended: the transport was closed.
    Closed,
    /// Time passed: what is due by now happens.
    Tick,
}

/// What the tracker asks for. The first five need no I/O and are carried out where the
/// event was applied; the others are the supervisor's.
#[derive(Debug)]
pub(super) enum Effect {
    /// Surface a progress report to the caller.
    Progress { percent: u8, envelope: Envelope },
    /// A repeated, stale or late reply: count it.
    Duplicate,
    /// A status heard for the first time that changed nothing (a heartbeat): count it.
    Heartbeat,
    /// The task ended: surface the outcome (and wake the supervisor, which stops).
    Finish(Outcome),
    /// The timers changed: wake the supervisor to read [`Lifecycle::next_wake`] again.
    Reschedule,
    /// Dispatch the perform again, numbered `attempt`; report [`Event::Sent`] once the
    /// transport took it.
    Dispatch { attempt: u32, why: &'static str },
    /// Tell the worker to stop: the deadline passed.
    SendCancel,
    /// Put the perform in the dead-letter place: `attempts` dispatches found no worker
    /// that completed it.
    DeadLetter { attempts: u32 },
}

/// How a task ended, as stored until the handle asks.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    Succeeded(Envelope),
    Failed(Envelope),
    Cancelled,
    DeadlineExceeded,
    Lost(u32),
    Closed,
}

impl Outcome {
    pub(super) fn into_result(self, tid: &str) -> Result<Envelope> {
        let tid = || tid.to_owned();
        match self {
            Outcome::Succeeded(env) => Ok(env),
            Outcome::Failed(env) => Err(Error::TaskFailed {
                tid: tid(),
                message: env
                    .header()
                    .error
                    .clone()
                    .unwrap_or_else(|| failure_message(&env)),
                data: env.data_value(),
            }),
            Outcome::Cancelled => Err(Error::Cancelled { tid: tid() }),
            Outcome::DeadlineExceeded => Err(Error::DeadlineExceeded { tid: tid() }),
            Outcome::Lost(attempts) => Err(Error::WorkerLost {
                tid: tid(),
                attempts,
            }),
            Outcome::Closed => Err(Error::Closed),
        }
    }
}

/// A failure message for a completion without aether's `error` key (a Python worker's).
fn failure_message(env: &Envelope) -> String {
    match env.data_value() {
        serde_json::Value::Null => "failed".to_owned(),
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(map) if map.is_empty() => "failed".to_owned(),
        other => other.to_string(),
    }
}

/// One task's lifecycle on its client.
#[derive(Debug)]
pub(super) struct Lifecycle {
    policy: Policy,
    state: TaskState,
    /// When the task last showed a sign of life, or was last dispatched.
    heard: Instant,
    /// Whether any worker reported on it since the last dispatch.
    seen: bool,
    /// The lease the worker that has it promised to heartbeat within.
    worker_lease: Option<Duration>,
    /// The caller dropped its handle.
    detached: bool,
    /// A gap may have lost the task's replies: unless it is heard of first, it is
    /// dispatched again at this time.
    probe: Option<Instant>,
    /// The route's gap count when the latest dispatch reached the transport; `None` while
    /// a dispatch is under way. Only a gap after it can have lost its replies.
    dispatched_at_gap: Option<u64>,
    /// Dispatches so far, which the perform's header numbers.
    attempt: u32,
    /// Dispatches that count toward `max_attempts`: the first and each after an expired
    /// lease. A dispatch after a gap is not a worker lost.
    chances: u32,
    /// A lease expired: the backoff before the next dispatch.
    pause: Option<Pause>,
    /// The numbers of the statuses heard from the worker that sent the latest numbered one.
    numbers: Option<Numbers>,
}

/// The numbers (`seq`) of one worker's statuses heard so far: the highest, and which of
/// the 64 below it. Bounded: a number further below is taken as heard.
#[derive(Clone, Copy, Debug)]
struct Numbers {
    /// The worker's host and client id, hashed.
    sender: u64,
    highest: u32,
    /// Bit `i`: number `highest - 1 - i` was heard.
    below: u64,
}

impl Numbers {
    fn new(sender: u64) -> Numbers {
        Numbers {
            sender,
            highest: 0,
            below: 0,
        }
    }

    /// Records `seq`; false if it was heard already, or is too far below to tell.
    fn first_time(&mut self, seq: u32) -> bool {
        if seq > self.highest {
            let shift = seq - self.highest;
            self.below = self.below.checked_shl(shift).unwrap_or(0)
                | 1u64.checked_shl(shift - 1).unwrap_or(0);
            self.highest = seq;
            return true;
        }
        let Some(bit) = (self.highest - seq).checked_sub(1) else {
            return false;
        };
        let mask = 1u64.checked_shl(bit).unwrap_or(0);
        let first = self.below & mask == 0 && mask != 0;
        self.below |= mask;
        first
    }
}

/// Who sent a reply, hashed: a worker's `host` and `client`.
fn sender(env: &Envelope) -> u64 {
    use std::hash::{Hash, Hasher};
    let h = env.header();
    let mut hasher = std::hash::DefaultHasher::new();
    (h.host.as_str(), h.client.as_str()).hash(&mut hasher);
    hasher.finish()
}

/// The backoff after an expired lease.
#[derive(Clone, Copy, Debug)]
struct Pause {
    until: Instant,
    /// Heard of meanwhile: the dispatch is called off.
    heard: bool,
}

impl Lifecycle {
    /// A task whose first dispatch is under way at `now`.
    pub(super) fn new(policy: Policy, now: Instant) -> Lifecycle {
        Lifecycle {
            policy,
            state: TaskState::Submitted,
            heard: now,
            seen: false,
            worker_lease: None,
            detached: false,
            probe: None,
            dispatched_at_gap: None,
            attempt: 1,
            chances: 1,
            pause: None,
            numbers: None,
        }
    }

    /// Where the task stands.
    pub(super) fn state(&self) -> TaskState {
        self.state
    }

    /// Whether the task has an outcome.
    pub(super) fn ended(&self) -> bool {
        self.state.is_terminal()
    }

    /// Whether the supervisor has nothing more to do: the task ended, or its caller is
    /// gone and no lease or deadline is watched.
    pub(super) fn is_done(&self) -> bool {
        self.ended()
            || (self.detached && self.lease_expiry().is_none() && self.policy.deadline.is_none())
    }

    /// When the next [`Event::Tick`] is due, if anything is scheduled.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        if self.ended() {
            return None;
        }
        let timers = match self.pause {
            Some(p) => [Some(p.until), None],
            None => [self.probe, self.lease_expiry()],
        };
        timers
            .into_iter()
            .chain([self.policy.deadline])
            .flatten()
            .min()
    }

    /// Applies `event`, which happened at `now`.
    pub(super) fn on(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        match event {
            Event::Sent { gaps } => {
                self.dispatched_at_gap = Some(gaps);
                Vec::new()
            }
            Event::Reply(env) => self.on_reply(env, now),
            Event::Gap(gap) => self.on_gap(gap, now),
            Event::Cancelled => self.finish(TaskEvent::Cancelled, Outcome::Cancelled),
            Event::Detached => {
                self.detached = true;
                vec![Effect::Reschedule]
            }
            Event::Closed => self.finish(TaskEvent::TimedOut, Outcome::Closed),
            Event::Tick => self.on_tick(now),
        }
    }

    fn on_reply(&mut self, env: Envelope, now: Instant) -> Vec<Effect> {
        let h = env.header();
        let event = match (h.action, h.status) {
            (Action::Status, _) => TaskEvent::Progress(h.progress),
            (Action::Complete, Status::Succeed) => TaskEvent::Succeeded,
            (Action::Complete, _) => TaskEvent::Failed,
            _ => return Vec::new(),
        };
        self.heard = now;
        // Heard of after the gap: its replies were not lost.
        self.probe = None;
        if let Some(p) = &mut self.pause {
            p.heard = true;
        }
        let lease = h.lease.map(Duration::from_millis);
        let lease_changed = !self.seen || (lease.is_some() && self.worker_lease != lease);
        self.seen = true;
        if lease.is_some() {
            self.worker_lease = lease;
        }
        // At most a reschedule and one more.
        let mut effects = Vec::with_capacity(2);
        if lease_changed {
            effects.push(Effect::Reschedule);
        }
        if event.is_terminal() {
            // The route delivers in the order the worker sent: every status sent before
            // this completion has been applied.
            let outcome = match event {
                TaskEvent::Succeeded => Outcome::Succeeded(env),
                _ => Outcome::Failed(env),
            };
            if !self.finish_into(event, outcome, &mut effects) {
                effects.push(Effect::Duplicate);
            }
            return effects;
        }
        let first_time = h.seq.map(|seq| self.first_time(&env, seq));
        match (self.state.apply(event), first_time) {
            (_, Some(false)) => effects.push(Effect::Duplicate),
            (Ok(Applied::Changed(state)), _) => {
                self.state = state;
                effects.push(Effect::Progress {
                    percent: state.progress(),
                    envelope: env,
                });
            }
            // A numbered status not heard before: a heartbeat, or a report overtaken by a
            // later one.
            (Ok(Applied::Duplicate | Applied::Stale), Some(true)) => {
                effects.push(Effect::Heartbeat);
            }
            // A redelivered or stale report, or one after the outcome.
            (Ok(Applied::Duplicate | Applied::Stale) | Err(_), _) => {
                effects.push(Effect::Duplicate);
            }
        }
        effects
    }

    /// Whether status number `seq` of `env`'s sender is heard for the first time. A
    /// sender other than the last one's starts its numbers afresh.
    fn first_time(&mut self, env: &Envelope, seq: u32) -> bool {
        let sender = sender(env);
        let numbers = match &mut self.numbers {
            Some(n) if n.sender == sender => n,
            other => other.insert(Numbers::new(sender)),
        };
        numbers.first_time(seq)
    }

    /// Gap number `gap`: a task dispatched before it and not heard of since may have lost
    /// its replies in it.
    fn on_gap(&mut self, gap: u64, now: Instant) -> Vec<Effect> {
        let dispatched_before = self.dispatched_at_gap.is_some_and(|d| d < gap);
        if self.ended() || !dispatched_before || !self.policy.redispatch.on_gap {
            return Vec::new();
        }
        let at = match (self.seen, self.worker_lease) {
            (false, _) => now,
            (true, Some(lease)) => now + lease / 2,
            (true, None) => return Vec::new(),
        };
        self.probe.get_or_insert(at);
        vec![Effect::Reschedule]
    }

    fn on_tick(&mut self, now: Instant) -> Vec<Effect> {
        if self.ended() {
            return Vec::new();
        }
        if self.policy.deadline.is_some_and(|d| d <= now) {
            let mut effects = self.finish(TaskEvent::TimedOut, Outcome::DeadlineExceeded);
            effects.push(Effect::SendCancel);
            return effects;
        }
        if let Some(pause) = self.pause {
            if pause.until > now {
                return Vec::new();
            }
            self.pause = None;
            if !pause.heard {
                self.chances += 1;
                return self.dispatch(now, "lease expired");
            }
        }
        if self.probe.is_some_and(|at| at <= now) {
            return self.dispatch(
                now,
                "subscription interrupted; the task's replies may be lost",
            );
        }
        if self.lease_expiry().is_some_and(|at| at <= now) {
            if self.chances >= self.policy.max_attempts {
                let attempts = self.attempt;
                let mut effects = self.finish(TaskEvent::TimedOut, Outcome::Lost(attempts));
                effects.push(Effect::DeadLetter { attempts });
                return effects;
            }
            let until = now + self.policy.backoff.delay(self.chances + 1);
            self.pause = Some(Pause {
                until,
                heard: false,
            });
        }
        Vec::new()
    }

    /// Dispatches the task again: a new dispatch answers every gap so far, and is watched
    /// as if nothing had been heard of the task yet.
    fn dispatch(&mut self, now: Instant, why: &'static str) -> Vec<Effect> {
        self.attempt += 1;
        self.heard = now;
        self.seen = false;
        self.worker_lease = None;
        self.probe = None;
        self.dispatched_at_gap = None;
        vec![Effect::Dispatch {
            attempt: self.attempt,
            why,
        }]
    }

    /// Ends the task with `outcome` unless it already ended.
    fn finish(&mut self, event: TaskEvent, outcome: Outcome) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.finish_into(event, outcome, &mut effects);
        effects
    }

    /// [`finish`](Lifecycle::finish) into `effects`; false if the task had ended already.
    fn finish_into(
        &mut self,
        event: TaskEvent,
        outcome: Outcome,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if self.ended() {
            return false;
        }
        if let Ok(Applied::Changed(s)) = self.state.apply(event) {
            self.state = s;
        }
        effects.push(Effect::Finish(outcome));
        true
    }

    /// When the task's lease runs out if nothing more is heard, where it is watched.
    fn lease_expiry(&self) -> Option<Instant> {
        let r = self.policy.redispatch;
        match (self.seen, self.worker_lease) {
            (false, _) if r.before_accept => Some(self.heard + self.policy.lease),
            (true, Some(l)) if r.after_accept => Some(self.heard + l.max(self.policy.lease)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
