//! [`Presence`]: announcing a dead connection offline through the MQTT last will.

use aether_core::envelope::{Codec, Header, encode_raw};
use aether_core::{Action, Result, Status, Topic};

/// Presence through the MQTT last will: if the connection dies without a clean close, the
/// broker publishes an `online` message with status `dismissed` and progress 0 on
/// `{union}/system/online/{host}/{client}/online`, the topic where workers announce
/// themselves (`connected`, progress 100). A clean [`close`](aether_core::Transport::close)
/// publishes the same message itself.
///
/// Build the node with the same host and client id
/// (`Aether::builder().host(..).client_id(..)`) so its announcements and its will share
/// one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Presence {
    /// The union.
    pub union: String,
    /// The host name. Default: this machine's, up to its first dot (as the core's).
    pub host: String,
    /// The client id. Default: the MQTT client id.
    pub client: Option<String>,
}

impl Presence {
    /// Presence in `union` for this host, with the MQTT client id.
    pub fn new(union: impl Into<String>) -> Self {
        Presence {
            union: union.into(),
            host: short_hostname(),
            client: None,
        }
    }
    /// Sets [`Presence::host`].
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }
    /// Sets [`Presence::client`].
    pub fn client(mut self, client: impl Into<String>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// The will's topic and payload for a connection whose MQTT client id is `client_id`.
    pub(crate) fn will(&self, client_id: &str) -> Result<(Topic, Vec<u8>)> {
        let client = self.client.as_deref().unwrap_or(client_id);
        let topic = Topic::new(
            &self.union,
            "system",
            "online",
            &self.host,
            client,
            Action::Online,
        )?;
        let header = Header::new(Action::Online, &self.host, client)
            .status(Status::Dismissed)
            .progress(0);
        let payload = encode_raw(Codec::Json, &header, b"{}").to_vec();
        Ok((topic, payload))
    }
}

/// This machine's host name up to its first dot: the core's default
/// ([`aether_core::Config::host`]), so the will and the node's announcements agree.
fn short_hostname() -> String {
    aether_core::Config::default().host
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_will_is_an_offline_presence_message() {
        let p = Presence::new("u3").host("vm");
        let (topic, payload) = p.will("aether-1").unwrap();
        assert_eq!(topic.as_str(), "u3/system/online/vm/aether-1/online");
        let env = aether_core::Envelope::decode(payload.into()).unwrap();
        assert_eq!(env.header().action, Action::Online);
        assert_eq!(env.header().status, Status::Dismissed);
        assert_eq!(env.header().progress, 0);
    }
}
