//! Channels: opening them with a callback that records why the broker closed them, and
//! publisher confirms.
//!
//! amqprs reports confirms only through [`ChannelCallback::publish_ack`] /
//! [`ChannelCallback::publish_nack`], so [`Confirms`] numbers published messages itself
//! (RabbitMQ numbers them 1, 2, ... per channel in confirm mode) and settles them by
//! delivery tag, `multiple` acks settling every tag up to the one given.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{Channel, ConfirmSelectArguments};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::error::AmqpError;

/// Why the broker closed a channel, once it has.
#[derive(Debug, Default)]
pub(crate) struct CloseReason(Mutex<Option<(u16, String)>>);

impl CloseReason {
    /// The broker's reason as an error, or a generic closed-channel error.
    pub(crate) fn error(&self) -> AmqpError {
        match &*lock(&self.0) {
            Some((code, text)) => AmqpError::ChannelClosed {
                code: *code,
                text: text.clone(),
            },
            None => AmqpError::Client(amqprs::error::Error::ChannelUseError(
                "the channel is closed".into(),
            )),
        }
    }
}

/// The broker's answer to one published message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Confirm {
    Ack,
    Nack,
}

/// Messages published on one confirm-mode channel and not yet confirmed.
#[derive(Debug, Default)]
pub(crate) struct Confirms(Mutex<ConfirmsInner>);

#[derive(Debug, Default)]
struct ConfirmsInner {
    /// The delivery tag of the last message published.
    last: u64,
    pending: BTreeMap<u64, oneshot::Sender<Confirm>>,
    /// The channel is gone: nothing more will be confirmed.
    closed: bool,
}

impl Confirms {
    /// Numbers the next message. Call it and publish under one lock, so tags follow the
    /// order of messages on the wire. The receiver ends without a value (an error) if the
    /// channel closes first.
    pub(crate) fn register(&self) -> Result<oneshot::Receiver<Confirm>, AmqpError> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Err(AmqpError::Unconfirmed);
        }
        inner.last += 1;
        let (tx, rx) = oneshot::channel();
        let tag = inner.last;
        inner.pending.insert(tag, tx);
        Ok(rx)
    }

    /// Settles `tag`, or with `multiple` every tag up to it.
    fn settle(&self, tag: u64, multiple: bool, how: Confirm) {
        let settled: Vec<oneshot::Sender<Confirm>> = {
            let mut inner = lock(&self.0);
            if multiple {
                let rest = inner.pending.split_off(&(tag + 1));
                let done = std::mem::replace(&mut inner.pending, rest);
                done.into_values().collect()
            } else {
                inner.pending.remove(&tag).into_iter().collect()
            }
        };
        let nack = how == Confirm::Nack;
        for tx in settled {
            let _ = tx.send(if nack { Confirm::Nack } else { Confirm::Ack });
        }
    }

    /// The channel is gone: every waiting publisher learns its message is unconfirmed.
    fn close(&self) {
        let mut inner = lock(&self.0);
        inner.closed = true;
        inner.pending.clear();
    }

    /// Messages waiting for their confirm.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.0).pending.len()
    }
}

/// The callback of every channel this crate opens.
struct Callback {
    /// What the channel is for, in logs.
    role: &'static str,
    reason: Arc<CloseReason>,
    confirms: Option<Arc<Confirms>>,
}

#[async_trait]
impl ChannelCallback for Callback {
    async fn close(
        &mut self,
        channel: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        tracing::warn!(
            channel = channel.channel_id(),
            role = self.role,
            code = close.reply_code(),
            reason = %close.reply_text(),
            "the broker closed an AMQP channel"
        );
        *lock(&self.reason.0) = Some((close.reply_code(), close.reply_text().clone()));
        Ok(())
    }

    async fn cancel(
        &mut self,
        channel: &Channel,
        cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        tracing::info!(
            channel = channel.channel_id(),
            consumer = %cancel.consumer_tag(),
            "the broker cancelled a consumer (its queue was deleted?); it will consume again"
        );
        Ok(())
    }

    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        if let Some(c) = &self.confirms {
            c.settle(ack.delivery_tag(), ack.mutiple(), Confirm::Ack);
        }
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        if let Some(c) = &self.confirms {
            c.settle(nack.delivery_tag(), nack.multiple(), Confirm::Nack);
        }
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        _properties: BasicProperties,
        content: Vec<u8>,
    ) {
        tracing::warn!(
            exchange = %ret.exchange(),
            routing_key = %ret.routing_key(),
            code = ret.reply_code(),
            size = content.len(),
            "the broker returned a message"
        );
    }
}

impl Drop for Callback {
    /// amqprs drops the callback when the channel's dispatcher ends: the channel closed or
    /// the connection went away.
    fn drop(&mut self) {
        if let Some(c) = &self.confirms {
            c.close();
        }
    }
}

/// An open channel with its close reason (and confirms, in confirm mode).
#[derive(Clone)]
pub(crate) struct Chan {
    pub(crate) channel: Channel,
    pub(crate) reason: Arc<CloseReason>,
    pub(crate) confirms: Option<Arc<Confirms>>,
}

impl Chan {
    /// Opens a channel on `conn`; `confirm` puts it in publisher-confirm mode.
    pub(crate) async fn open(
        conn: &Connection,
        role: &'static str,
        confirm: bool,
    ) -> Result<Chan, AmqpError> {
        let channel = conn.open_channel(None).await?;
        let reason = Arc::new(CloseReason::default());
        let confirms = confirm.then(|| Arc::new(Confirms::default()));
        channel
            .register_callback(Callback {
                role,
                reason: reason.clone(),
                confirms: confirms.clone(),
            })
            .await?;
        if confirm {
            channel
                .confirm_select(ConfirmSelectArguments::default())
                .await?;
        }
        Ok(Chan {
            channel,
            reason,
            confirms,
        })
    }

    pub(crate) fn is_open(&self) -> bool {
        self.channel.is_open()
    }

    /// The error for a failed operation: the broker's close reason where it closed the
    /// channel, else the client's error.
    pub(crate) fn failure(&self, e: amqprs::error::Error) -> AmqpError {
        if self.channel.is_connection_open() && !self.channel.is_open() {
            self.reason.error()
        } else {
            AmqpError::Client(e)
        }
    }
}

impl std::fmt::Debug for Chan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chan")
            .field("id", &self.channel.channel_id())
            .field("open", &self.is_open())
            .finish()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind these locks; a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_acks_settle_every_tag_up_to_theirs() {
        let c = Confirms::default();
        let mut rx: Vec<_> = (0..5).map(|_| c.register().unwrap()).collect();
        c.settle(3, true, Confirm::Ack);
        for r in rx.iter_mut().take(3) {
            assert_eq!(r.try_recv().unwrap(), Confirm::Ack);
        }
        assert_eq!(c.waiting(), 2);
        c.settle(5, false, Confirm::Nack);
        assert_eq!(rx[4].try_recv().unwrap(), Confirm::Nack);
        assert!(rx[3].try_recv().is_err(), "tag 4 still waits");
        c.close();
        assert!(matches!(
            rx[3].try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(c.register(), Err(AmqpError::Unconfirmed)));
    }
}
