//! Builds fred clients from a [`RedisConfig`]: the one place that knows fred's
//! configuration types, so the client library could be swapped without touching users.

use std::time::Duration;

use aether_core::{Error, Result};
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{
    ClusterDiscoveryPolicy, Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy, Server,
    ServerConfig, TcpConfig,
};

use crate::config::RedisConfig;

// The error helpers moved to error.rs; re-exported so the adapter's modules keep one path.
pub(crate) use crate::error::{BACKEND, is_nogroup, is_timeout, redis_err};

/// Redirections (MOVED, ASK) fred follows for one command before giving up on it.
const MAX_REDIRECTIONS: u32 = 16;

/// Makes connected fred clients, each with its own connection(s).
#[derive(Clone)]
pub(crate) struct Connector {
    config: Config,
    connection: ConnectionConfig,
    policy: ReconnectPolicy,
    timeout: Duration,
    /// The transport's name, for its reconnection count.
    transport: &'static str,
}

impl Connector {
    pub(crate) fn new(c: &RedisConfig) -> Result<Connector> {
        let server = if c.cluster {
            let mut hosts = vec![Server::new(c.host.as_str(), c.port)];
            hosts.extend(
                c.cluster_nodes
                    .iter()
                    .map(|n| Server::new(n.host.as_str(), n.port)),
            );
            ServerConfig::Clustered {
                hosts,
                policy: ClusterDiscoveryPolicy::UseCache,
            }
        } else {
            ServerConfig::new_centralized(c.host.as_str(), c.port)
        };
        let config = Config {
            fail_fast: true,
            username: c.username.clone(),
            password: c.password.as_ref().map(|p| p.expose().to_owned()),
            server,
            database: (c.database != 0).then_some(c.database),
            #[cfg(feature = "tls")]
            tls: tls_config(c)?,
            ..Config::default()
        };
        #[cfg(not(feature = "tls"))]
        if c.tls {
            return Err(Error::Config(
                "rediss:// needs the `tls` cargo feature of aether-redis".into(),
            ));
        }
        let connection = ConnectionConfig {
            connection_timeout: c.connect_timeout,
            internal_command_timeout: c.connect_timeout,
            // A command in flight when the connection drops is sent again after the
            // reconnection, a few times; in a cluster each redirection (MOVED, ASK) is an
            // attempt too, so there are that many more than redirections.
            max_command_attempts: MAX_REDIRECTIONS + 5,
            // While a slot migrates, nodes disagree on its owner until gossip settles; what
            // is still redirected after these is tried again by `error::rerouted`.
            max_redirections: MAX_REDIRECTIONS,
            tcp: TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            },
            ..ConnectionConfig::default()
        };
        let millis = |d: Duration| d.as_millis().clamp(1, u32::MAX as u128) as u32;
        // Retry forever: reconnect_min, twice that, ... up to reconnect_max.
        let policy = ReconnectPolicy::new_exponential(
            0,
            millis(c.reconnect_min),
            millis(c.reconnect_max),
            2,
        );
        Ok(Connector {
            config,
            connection,
            policy,
            timeout: c.operation_timeout,
            transport: c.mode.transport_name(),
        })
    }

    fn perf(&self, timeout: Duration) -> PerformanceConfig {
        PerformanceConfig {
            default_command_timeout: timeout,
            // Room for bursts of pub/sub messages before a slow reader loses any.
            broadcast_channel_capacity: 8192,
            ..PerformanceConfig::default()
        }
    }

    /// A connected client for ordinary commands.
    pub(crate) async fn client(&self) -> Result<Client> {
        self.client_with_timeout(self.timeout).await
    }

    /// A connected client whose commands may take `extra` longer than the timeout: for a
    /// consumer's blocking reads, which hold their connection.
    pub(crate) async fn blocking_client(&self, extra: Duration) -> Result<Client> {
        self.client_with_timeout(self.timeout + extra).await
    }

    async fn client_with_timeout(&self, timeout: Duration) -> Result<Client> {
        let client = Client::new(
            self.config.clone(),
            Some(self.perf(timeout)),
            Some(self.connection.clone()),
            Some(self.policy.clone()),
        );
        let reconnects = client.reconnect_rx();
        client.init().await.map_err(redis_err)?;
        tokio::spawn(count_reconnects(reconnects, self.transport));
        Ok(client)
    }

    /// A subscriber client, not yet connected (so the caller can listen to its events
    /// first).
    pub(crate) fn subscriber(&self) -> SubscriberClient {
        let client = SubscriberClient::new(
            self.config.clone(),
            Some(self.perf(self.timeout)),
            Some(self.connection.clone()),
            Some(self.policy.clone()),
        );
        tokio::spawn(count_reconnects(client.reconnect_rx(), self.transport));
        client
    }
}

/// Counts each reconnection of one fred client in `aether_transport_reconnects_total`,
/// until the client is gone. fred announces the first connection to each server as a
/// reconnection too: only a server connected to before counts.
async fn count_reconnects(
    mut reconnects: tokio::sync::broadcast::Receiver<Server>,
    transport: &'static str,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut seen = std::collections::HashSet::new();
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                if !seen.insert(server) {
                    aether_core::observe::metrics::reconnected(transport);
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(feature = "tls")]
fn tls_config(c: &RedisConfig) -> Result<Option<fred::types::config::TlsConfig>> {
    if !c.tls {
        return Ok(None);
    }
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = &c.tls_ca {
        let pem = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the TLS CA file {}: {e}",
                path.display()
            ))
        })?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
            Error::Config(format!(
                "the TLS CA file {} is not PEM: {e}",
                path.display()
            ))
        })?;
        builder.add_root_certificate(cert);
    }
    if c.tls_insecure {
        builder
            .danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true);
    }
    let connector = fred::types::config::TlsConnector::try_from(builder).map_err(redis_err)?;
    Ok(Some(connector.into()))
}
