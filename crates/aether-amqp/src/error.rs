//! What can go wrong talking to RabbitMQ. Surfaces as [`aether_core::Error::Transport`] with
//! backend `"amqp"` and an [`AmqpError`] as its source.

use aether_core::Error;

/// The backend name in [`Error::Transport`].
pub(crate) const BACKEND: &str = "amqp";

/// An AMQP failure, kept as the source of [`Error::Transport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The amqprs client failed (network, protocol, closed channel).
    #[error(transparent)]
    Client(#[from] amqprs::error::Error),
    /// No connection could be opened.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The broker, without the password.
        url: String,
        /// Why.
        reason: String,
    },
    /// The broker closed a channel, e.g. refusing a declaration (`406 PRECONDITION_FAILED`
    /// when a queue exists with other arguments, `403` without permission).
    #[error("the broker closed the channel: {code} {text}")]
    ChannelClosed {
        /// The AMQP reply code.
        code: u16,
        /// The broker's explanation.
        text: String,
    },
    /// A queue exists with other arguments than this configuration declares (RabbitMQ's
    /// `406 PRECONDITION_FAILED`), e.g. a classic dead-letter queue where `queue_type=quorum`
    /// asks for a quorum one.
    #[error(
        "queue {queue:?} already exists with other settings than this URL asks for ({text}); \
         delete it, or give another name: `dead_letter=` for the dead-letter queue, \
         `queue_prefix=` for work and holding queues"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The broker's explanation.
        text: String,
    },
    /// The broker refused a published message (a publisher-confirm nack).
    #[error("the broker refused the message (publisher nack)")]
    Nacked,
    /// The connection or channel went away before the broker confirmed a message, so it may
    /// or may not have been stored.
    #[error("the channel closed before the broker confirmed the message")]
    Unconfirmed,
    /// The channel a delivery came on is closed: the broker has already given the delivery
    /// back to the queue, so it cannot be acknowledged any more.
    #[error("the delivery's channel is closed; the broker has requeued it")]
    DeliveryChannelClosed,
}

impl AmqpError {
    /// Whether retrying on a new connection may succeed.
    pub(crate) fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            AmqpError::Client(
                amqprs::error::Error::NetworkError(_)
                    | amqprs::error::Error::InternalChannelError(_)
                    | amqprs::error::Error::ChannelOpenError(_)
                    | amqprs::error::Error::ChannelUseError(_)
            ) | AmqpError::Unconfirmed
                | AmqpError::Connect { .. }
        )
    }
}

impl From<AmqpError> for Error {
    fn from(e: AmqpError) -> Error {
        Error::transport(BACKEND, e)
    }
}
