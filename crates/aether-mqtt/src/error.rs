//! The MQTT adapter's own errors, handed to the core as
//! [`Error::Transport`](aether_core::Error::Transport) with backend `"mqtt"`.

use aether_core::Error;

/// What can go wrong in the MQTT adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The broker refused a subscription.
    #[error("the broker refused the subscription to {filter} (code 0x{code:02x})")]
    SubscribeRefused {
        /// The filter as sent to the broker.
        filter: String,
        /// The SUBACK return or reason code.
        code: i32,
    },
    /// The first connection failed.
    #[error("cannot connect to {uri}: {source}")]
    Connect {
        /// The broker address, without credentials.
        uri: String,
        /// paho's error.
        #[source]
        source: paho_mqtt::Error,
    },
    /// The paho client failed.
    #[error(transparent)]
    Paho(#[from] paho_mqtt::Error),
}

impl From<MqttError> for Error {
    fn from(e: MqttError) -> Error {
        Error::transport("mqtt", e)
    }
}

/// Wraps a paho error for the core.
pub(crate) fn paho(e: paho_mqtt::Error) -> Error {
    MqttError::Paho(e).into()
}

/// Whether an operation failed because the connection dropped, so it may succeed once the
/// client has reconnected.
pub(crate) fn is_disconnect(e: &paho_mqtt::Error) -> bool {
    use paho_mqtt::Error as E;
    matches!(
        e,
        E::Disconnected | E::OperationIncomplete | E::TcpTlsConnectFailure | E::SocketError(_)
    )
}
