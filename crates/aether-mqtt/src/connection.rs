//! The paho client underneath: its options, its callbacks (message dispatch, restoring
//! subscriptions after a reconnection, the link state) and its safe teardown.

use std::sync::Arc;
use std::time::Duration;

use aether_core::{Bytes, Error, Result};
use paho_mqtt as paho;
use tokio::sync::watch;

use crate::config::{MqttConfig, MqttVersion};
use crate::error::{MqttError, paho as paho_err};
use crate::router::{Arrival, REDELIVERIES, Router};

/// The state of the connection, as the paho callbacks report it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Link {
    pub(crate) up: bool,
    /// Connections established so far (the first one included).
    pub(crate) connects: u64,
    /// The latest connection on which every subscription has been restored.
    pub(crate) restored: u64,
}

/// Creates the paho client and installs its callbacks: messages go to `router`; the
/// connection's ups and downs to `link`; every (re)connection restores the subscriptions.
pub(crate) fn create(
    config: &MqttConfig,
    client_id: &str,
    router: &Arc<Router>,
    link: &Arc<watch::Sender<Link>>,
) -> Result<paho::AsyncClient> {
    let version = match config.version {
        MqttVersion::V5 => paho::MQTT_VERSION_5,
        MqttVersion::V3_1_1 => paho::MQTT_VERSION_3_1_1,
    };
    // Publishes wait for a permit before reaching paho, so its buffer never overflows;
    // the margin is for the few it gets without one (give-backs from dropped consumers).
    let buffered = i32::try_from(config.max_inflight * 2 + 4096).unwrap_or(i32::MAX);
    let create = paho::CreateOptionsBuilder::new()
        .server_uri(config.server_uri())
        .client_id(client_id)
        .persistence(paho::PersistenceType::None)
        .mqtt_version(version)
        .max_buffered_messages(buffered)
        .send_while_disconnected(true)
        .finalize();
    let client = paho::AsyncClient::new(create).map_err(paho_err)?;
    let v5 = config.version == MqttVersion::V5;

    let r = router.clone();
    client.set_message_callback(move |_cli, msg| {
        if let Some(msg) = msg {
            dispatch(&r, &msg, v5);
        }
    });
    let (r, l) = (router.clone(), link.clone());
    let runtime = tokio::runtime::Handle::try_current().ok();
    client.set_connected_callback(move |cli| {
        // Restore the subscriptions first: on a clean session the broker forgot them.
        let n = l.borrow().connects + 1;
        if n > 1 {
            aether_core::observe::metrics::reconnected("mqtt");
        }
        let pending = restore(cli, &r, v5, n, &l, runtime.as_ref());
        l.send_modify(|l| {
            l.up = true;
            l.connects = n;
            if !pending {
                l.restored = n;
            }
        });
    });
    let l = link.clone();
    client.set_connection_lost_callback(move |_cli| {
        tracing::warn!("mqtt connection lost; reconnecting");
        l.send_modify(|l| l.up = false);
    });
    let l = link.clone();
    client.set_disconnected_callback(move |_cli, _props, reason| {
        tracing::warn!(%reason, "the mqtt broker disconnected us; reconnecting");
        l.send_modify(|l| l.up = false);
    });

    Ok(client)
}

/// Drops a client off paho's threads (after disconnecting it if asked). A connect token
/// holds a clone of the client and paho drops it inside its callback, with its global lock
/// held: were that the last clone, destroying the client there would wait on that lock
/// forever, and so would any paho call made on paho's threads. So wait for the token (on a
/// thread of its own), then take paho's lock once (`is_connected`) so its callback has
/// returned, and only then drop the client here.
pub(crate) fn retire(client: paho::AsyncClient, token: Option<paho::Token>, disconnect: bool) {
    let retired = std::thread::Builder::new()
        .name("aether-mqtt-retire".into())
        .spawn(move || {
            if let Some(token) = token {
                let _ = token.wait();
            }
            if disconnect {
                let _ = client.disconnect(None).wait_for(Duration::from_secs(2));
            }
            let _ = client.is_connected();
            drop(client);
        });
    if let Err(e) = retired {
        tracing::warn!(error = %e, "could not start a thread to drop a failed mqtt client");
    }
}

pub(crate) fn connect_options(
    config: &MqttConfig,
    client_id: &str,
) -> Result<paho::ConnectOptions> {
    let mut b = match config.version {
        MqttVersion::V5 => paho::ConnectOptionsBuilder::new_v5(),
        MqttVersion::V3_1_1 => paho::ConnectOptionsBuilder::new_v3(),
    };
    b.keep_alive_interval(config.keep_alive)
        .connect_timeout(config.connect_timeout)
        .automatic_reconnect(config.reconnect_min, config.reconnect_max);
    match config.version {
        MqttVersion::V5 => {
            b.clean_start(config.clean_session);
            if !config.clean_session {
                let mut props = paho::Properties::new();
                let secs = u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX);
                props
                    .push_u32(paho::PropertyCode::SessionExpiryInterval, secs)
                    .map_err(paho_err)?;
                b.properties(props);
            }
        }
        MqttVersion::V3_1_1 => {
            b.clean_session(config.clean_session);
        }
    }
    if let Some(user) = &config.username {
        b.user_name(user.as_str());
    }
    if let Some(password) = &config.password {
        b.password(password.expose());
    }
    if let Some(presence) = &config.presence {
        let (topic, payload) = presence.will(client_id)?;
        b.will_message(paho::Message::new(topic.as_str(), payload, 1));
    }
    if config.tls {
        let mut s = paho::SslOptionsBuilder::new();
        for (what, path) in [
            ("tls_ca", &config.tls_ca),
            ("tls_cert", &config.tls_cert),
            ("tls_key", &config.tls_key),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                return Err(Error::Config(format!("TLS {what} {}: {e}", path.display())));
            }
        }
        let bad_path = |what: &str, e: paho::Error| Error::Config(format!("TLS {what}: {e}"));
        if let Some(ca) = &config.tls_ca {
            s.trust_store(ca).map_err(|e| bad_path("tls_ca", e))?;
        }
        if let Some(cert) = &config.tls_cert {
            s.key_store(cert).map_err(|e| bad_path("tls_cert", e))?;
        }
        if let Some(key) = &config.tls_key {
            s.private_key(key).map_err(|e| bad_path("tls_key", e))?;
        }
        if let Some(pw) = &config.tls_key_password {
            s.private_key_password(pw.expose());
        }
        s.enable_server_cert_auth(true)
            .verify(config.tls_verify_hostname);
        b.ssl_options(s.finalize());
    }
    Ok(b.finalize())
}

/// Routes one message from paho's callback thread.
fn dispatch(router: &Router, msg: &paho::Message, v5: bool) {
    let mut ids = [0u32; 4];
    let mut n = 0;
    let mut redeliveries = 0;
    if v5 {
        let props = msg.properties();
        for p in props.iter(paho::PropertyCode::SubscriptionIdentifier) {
            if let (Some(id), true) = (p.get_int(), n < ids.len()) {
                ids[n] = id as u32;
                n += 1;
            }
        }
        if let Some(r) = props.find_user_property(REDELIVERIES) {
            redeliveries = r.parse().unwrap_or(0);
        }
    }
    router.dispatch(Arrival {
        topic: msg.topic(),
        payload: Bytes::copy_from_slice(msg.payload()),
        subscriptions: &ids[..n],
        redeliveries,
    });
}

/// The SUBSCRIBE of one broker subscription: QoS 1, tagged with its identifier on MQTT 5.
pub(crate) fn subscribe_token(
    client: &paho::AsyncClient,
    filter: &str,
    id: u32,
    v5: bool,
) -> paho::Token {
    if v5 {
        let mut props = paho::Properties::new();
        if props
            .push_int(paho::PropertyCode::SubscriptionIdentifier, id as i32)
            .is_err()
        {
            // Cannot happen: the identifier is an integer property. Fails the SUBSCRIBE.
            return paho::Token::from_error(-1);
        }
        client.subscribe_with_options(filter, 1, paho::SubscribeOptions::default(), props)
    } else {
        client.subscribe(filter, 1)
    }
}

/// Re-subscribes everything after connection number `n` is up, from paho's callback
/// thread. Returns whether answers are pending (`link` is marked restored when they come).
fn restore(
    client: &paho::AsyncClient,
    router: &Router,
    v5: bool,
    n: u64,
    link: &Arc<watch::Sender<Link>>,
    runtime: Option<&tokio::runtime::Handle>,
) -> bool {
    let subs = router.subscriptions();
    if subs.is_empty() {
        return false;
    }
    tracing::info!(
        count = subs.len(),
        "mqtt connected; restoring subscriptions"
    );
    let tokens: Vec<(String, paho::Token)> = subs
        .into_iter()
        .map(|(filter, id)| {
            let tok = subscribe_token(client, &filter, id, v5);
            (filter, tok)
        })
        .collect();
    // Wait for the answers where a runtime can; paho completes the tokens either way.
    let Some(rt) = runtime else { return false };
    let link = link.clone();
    rt.spawn(async move {
        for (filter, tok) in tokens {
            if let Err(e) = check_suback(&filter, tok.await) {
                tracing::error!(%filter, error = %e, "could not restore a subscription");
            }
        }
        link.send_modify(|l| l.restored = l.restored.max(n));
    });
    true
}

pub(crate) fn check_suback(filter: &str, rsp: paho::Result<paho::ServerResponse>) -> Result<()> {
    match rsp {
        Ok(rsp) => match rsp.subscribe_response() {
            Some(code) if code >= 0x80 => Err(MqttError::SubscribeRefused {
                filter: filter.to_owned(),
                code,
            }
            .into()),
            _ => Ok(()),
        },
        Err(paho::Error::ReasonCode(code, _)) => Err(MqttError::SubscribeRefused {
            filter: filter.to_owned(),
            code: code as i32,
        }
        .into()),
        Err(e) => Err(paho_err(e)),
    }
}
