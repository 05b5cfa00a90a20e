//! The metrics aether records through the [`metrics`] facade: their names, once.
//!
//! Nothing is recorded until the application installs a recorder (e.g.
//! `metrics-exporter-prometheus`); without one, every update is a branch on a no-op
//! handle. Handles are registered once per route (a client's job and task) and per
//! handler (a worker's), not per task, so **install the recorder before building the
//! [`Aether`](crate::Aether) node**: routes and workers started earlier keep no-op
//! handles. [`describe`] gives each metric its help text and unit.
//!
//! | metric | kind | labels | what |
//! |--------|------|--------|------|
//! | [`CLIENT_PERFORMED`] | counter | job, task, transport | performs sent (first dispatches) |
//! | [`CLIENT_REDISPATCHED`] | counter | job, task, transport | performs sent again after a lease or a gap |
//! | [`CLIENT_SUCCEEDED`], [`CLIENT_FAILED`], [`CLIENT_CANCELLED`], [`CLIENT_DEADLINE_EXCEEDED`], [`CLIENT_LOST`] | counter | job, task, transport | outcomes as the client surfaced them |
//! | [`WORKER_ACCEPTED`] | counter | job, task, workgroup, transport | performs admitted to run |
//! | [`WORKER_SUCCEEDED`], [`WORKER_FAILED`] | counter | job, task, workgroup, transport | completions sent (a cancelled task completes as failed) |
//! | [`WORKER_CANCELLED`] | counter | job, task, workgroup, transport | handler runs cancelled by the client |
//! | [`WORKER_DEAD_LETTERED`] | counter | job, task, workgroup, transport | performs dead-lettered by the worker: undecodable, delivered too often, retries exhausted |
//! | [`WORKER_HANDLER_DURATION`] | histogram, seconds | job, task, workgroup, transport | one handler run |
//! | [`WORKER_QUEUE_WAIT`] | histogram, seconds | job, task, workgroup, transport | from a perform's dispatch (its `sent` header) to a worker admitting it; across hosts their clock difference included |
//! | [`WORKERS_ONLINE`] | gauge | workgroup, transport | workers started and not yet stopped, in this process |
//! | [`TRANSPORT_GAPS`] | counter | transport | interruptions a client's subscriptions reported (after which tasks not heard of are dispatched again) |
//! | [`TRANSPORT_RECONNECTS`] | counter | transport | connections a transport made again after losing one ([`reconnected`], called by each adapter) |
//!
//! The same events feed [`Aether::stats`](crate::Aether::stats). Histograms get their
//! buckets from the exporter: [`DURATION_BUCKETS`] are the ones aether's examples and
//! endpoints use.

use metrics::{Counter, Gauge, Histogram, Unit};

/// Counter: performs sent (first dispatches).
pub const CLIENT_PERFORMED: &str = "aether_client_performed_total";
/// Counter: performs sent again after a lease expired or a gap.
pub const CLIENT_REDISPATCHED: &str = "aether_client_redispatched_total";
/// Counter: tasks the client saw succeed.
pub const CLIENT_SUCCEEDED: &str = "aether_client_succeeded_total";
/// Counter: tasks the client saw fail.
pub const CLIENT_FAILED: &str = "aether_client_failed_total";
/// Counter: tasks the caller cancelled.
pub const CLIENT_CANCELLED: &str = "aether_client_cancelled_total";
/// Counter: tasks past their deadline.
pub const CLIENT_DEADLINE_EXCEEDED: &str = "aether_client_deadline_exceeded_total";
/// Counter: tasks given up after every attempt, or whose transport closed.
pub const CLIENT_LOST: &str = "aether_client_lost_total";
/// Counter: performs a worker admitted to run.
pub const WORKER_ACCEPTED: &str = "aether_worker_accepted_total";
/// Counter: tasks a worker completed as succeeded.
pub const WORKER_SUCCEEDED: &str = "aether_worker_succeeded_total";
/// Counter: tasks a worker completed as failed.
pub const WORKER_FAILED: &str = "aether_worker_failed_total";
/// Counter: handler runs cancelled by the client.
pub const WORKER_CANCELLED: &str = "aether_worker_cancelled_total";
/// Counter: performs a worker dead-lettered.
pub const WORKER_DEAD_LETTERED: &str = "aether_worker_dead_lettered_total";
/// Histogram, seconds: one handler run.
pub const WORKER_HANDLER_DURATION: &str = "aether_worker_handler_duration_seconds";
/// Histogram, seconds: from a perform's dispatch to a worker admitting it (the sender's
/// clock against the worker's).
pub const WORKER_QUEUE_WAIT: &str = "aether_worker_queue_wait_seconds";
/// Gauge: workers started and not yet stopped in this process.
pub const WORKERS_ONLINE: &str = "aether_workers_online";
/// Counter: interruptions reported by a client's reply subscriptions.
pub const TRANSPORT_GAPS: &str = "aether_transport_gaps_total";
/// Counter: connections a transport made again after losing one (see [`reconnected`]).
pub const TRANSPORT_RECONNECTS: &str = "aether_transport_reconnects_total";

/// Histogram buckets, in seconds, for [`WORKER_HANDLER_DURATION`] and
/// [`WORKER_QUEUE_WAIT`]: 1 ms to 5 min.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Describes every metric (help text and unit) to the installed recorder. Call it once
/// after installing one; harmless without.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CLIENT_PERFORMED, "Performs sent (first dispatches)");
    describe_counter!(
        CLIENT_REDISPATCHED,
        "Performs sent again after a lease expired or a gap"
    );
    describe_counter!(CLIENT_SUCCEEDED, "Tasks the client saw succeed");
    describe_counter!(CLIENT_FAILED, "Tasks the client saw fail");
    describe_counter!(CLIENT_CANCELLED, "Tasks the caller cancelled");
    describe_counter!(CLIENT_DEADLINE_EXCEEDED, "Tasks past their deadline");
    describe_counter!(CLIENT_LOST, "Tasks given up after every attempt");
    describe_counter!(WORKER_ACCEPTED, "Performs a worker admitted to run");
    describe_counter!(WORKER_SUCCEEDED, "Tasks a worker completed as succeeded");
    describe_counter!(WORKER_FAILED, "Tasks a worker completed as failed");
    describe_counter!(WORKER_CANCELLED, "Handler runs cancelled by the client");
    describe_counter!(WORKER_DEAD_LETTERED, "Performs a worker dead-lettered");
    describe_histogram!(WORKER_HANDLER_DURATION, Unit::Seconds, "One handler run");
    describe_histogram!(
        WORKER_QUEUE_WAIT,
        Unit::Seconds,
        "From a perform's dispatch to a worker admitting it"
    );
    describe_gauge!(WORKERS_ONLINE, "Workers started and not yet stopped");
    describe_counter!(
        TRANSPORT_GAPS,
        "Interruptions reported by a client's reply subscriptions"
    );
    describe_counter!(
        TRANSPORT_RECONNECTS,
        "Connections a transport made again after losing one"
    );
}

/// Counts one reconnection of `transport` (its [`name`](crate::Transport::name)) in
/// [`TRANSPORT_RECONNECTS`]. Adapters call it where a lost connection is back (before or
/// after restoring subscriptions, once per connection that was lost: a transport holding
/// several connections counts each); not for the first connection. A reconnection is
/// rare, so the lookup of the handle on each call costs nothing worth keeping one for.
pub fn reconnected(transport: &'static str) {
    metrics::counter!(TRANSPORT_RECONNECTS, "transport" => transport).increment(1);
}

/// A client's handles for the tasks of one job and task on one transport.
#[derive(Debug)]
pub(crate) struct ClientMetrics {
    pub(crate) performed: Counter,
    pub(crate) redispatched: Counter,
    pub(crate) succeeded: Counter,
    pub(crate) failed: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) deadline_exceeded: Counter,
    pub(crate) lost: Counter,
    /// Of the transport, unlabelled by job and task.
    pub(crate) gaps: Counter,
}

impl ClientMetrics {
    pub(crate) fn new(transport: &'static str, job: &str, task: &str) -> ClientMetrics {
        let labels = [
            ("job", job.to_owned()),
            ("task", task.to_owned()),
            ("transport", transport.to_owned()),
        ];
        let c = |name: &'static str| metrics::counter!(name, &labels);
        ClientMetrics {
            performed: c(CLIENT_PERFORMED),
            redispatched: c(CLIENT_REDISPATCHED),
            succeeded: c(CLIENT_SUCCEEDED),
            failed: c(CLIENT_FAILED),
            cancelled: c(CLIENT_CANCELLED),
            deadline_exceeded: c(CLIENT_DEADLINE_EXCEEDED),
            lost: c(CLIENT_LOST),
            gaps: metrics::counter!(TRANSPORT_GAPS, "transport" => transport),
        }
    }
}

/// A worker's handles for one handler (job, task, workgroup) on one transport.
#[derive(Debug)]
pub(crate) struct WorkerMetrics {
    pub(crate) accepted: Counter,
    pub(crate) succeeded: Counter,
    pub(crate) failed: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) handler_duration: Histogram,
    pub(crate) queue_wait: Histogram,
}

impl WorkerMetrics {
    pub(crate) fn new(
        transport: &'static str,
        job: &str,
        task: &str,
        workgroup: &str,
    ) -> WorkerMetrics {
        let labels = [
            ("job", job.to_owned()),
            ("task", task.to_owned()),
            ("workgroup", workgroup.to_owned()),
            ("transport", transport.to_owned()),
        ];
        let c = |name: &'static str| metrics::counter!(name, &labels);
        WorkerMetrics {
            accepted: c(WORKER_ACCEPTED),
            succeeded: c(WORKER_SUCCEEDED),
            failed: c(WORKER_FAILED),
            cancelled: c(WORKER_CANCELLED),
            dead_lettered: c(WORKER_DEAD_LETTERED),
            handler_duration: metrics::histogram!(WORKER_HANDLER_DURATION, &labels),
            queue_wait: metrics::histogram!(WORKER_QUEUE_WAIT, &labels),
        }
    }
}

/// Counts a worker online while it lives.
#[derive(Debug)]
pub(crate) struct Online(Gauge);

impl Online {
    pub(crate) fn new(transport: &'static str, workgroup: &str) -> Online {
        let labels = [
            ("workgroup", workgroup.to_owned()),
            ("transport", transport.to_owned()),
        ];
        let gauge = metrics::gauge!(WORKERS_ONLINE, &labels);
        gauge.increment(1.0);
        Online(gauge)
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
