//! What broadcast subscriptions ([`crate::broadcast`]) and work-queue consumers
//! ([`crate::work`]) share: both live across reconnections and consume on whatever
//! connection is current, attaching to each new one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aether_core::Result;
use tokio::time::Instant;

use crate::channel::Chan;
use crate::error::AmqpError;
use crate::session::Session;
use crate::transport::Shared;

/// A subscription or consumer that consumes on the current connection.
pub(crate) trait Attach: Send + Sync + 'static {
    /// Declares what it needs on `session` and consumes there, unless it already does
    /// (its consumer tag `ended` having ended counts as not).
    fn attach<'a>(
        self: &'a Arc<Self>,
        shared: &'a Arc<Shared>,
        session: &'a Arc<Session>,
        ended: Option<&'a str>,
    ) -> impl Future<Output = Result<(), AmqpError>> + Send + 'a;

    /// What it is, for logs: its filter or its queue.
    fn describe(&self) -> &dyn fmt::Display;
}

/// Attaches `state` for the first time, riding out a reconnection within the publish
/// timeout.
pub(crate) async fn attach_first<S: Attach>(shared: &Arc<Shared>, state: &Arc<S>) -> Result<()> {
    let deadline = Instant::now() + shared.config.operation_timeout;
    loop {
        let session = shared.session(deadline).await?;
        match state.attach(shared, &session, None).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_connection_loss() && !session.is_alive() => session.lost().await,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Attaches again after the consumer `ended` stopped; boxed as `Send` to cut the
/// `attach` → `forward` → `attach` cycle the compiler cannot prove `Send` through.
pub(crate) fn reattach<S: Attach>(
    state: Arc<S>,
    shared: Arc<Shared>,
    session: Arc<Session>,
    ended: String,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        if let Err(e) = state.attach(&shared, &session, Some(&ended)).await {
            tracing::warn!(of = %state.describe(), error = %e, "could not consume again after the channel closed");
        }
    })
}

/// Where a subscription or consumer consumes now.
#[derive(Default)]
pub(crate) struct Attachment {
    /// The generation of the connection.
    pub(crate) generation: u64,
    pub(crate) chan: Option<Chan>,
    /// The consumer tag.
    pub(crate) tag: String,
}

impl Attachment {
    /// Whether it consumes on `session` already, on an open channel, under a tag other
    /// than the one that `ended`.
    pub(crate) fn is_current(&self, session: &Session, ended: Option<&str>) -> bool {
        let stale = ended.is_some_and(|tag| tag == self.tag);
        !stale
            && self.generation == session.generation
            && self.chan.as_ref().is_some_and(Chan::is_open)
    }
}

/// A consumer tag unique in the process: `aether-{kind}-{n}`.
pub(crate) fn consumer_tag(kind: &str) -> String {
    static TAGS: AtomicU64 = AtomicU64::new(1);
    format!("aether-{kind}-{}", TAGS.fetch_add(1, Ordering::Relaxed))
}
