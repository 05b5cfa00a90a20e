//! CURVE security: the device as a CURVE server (its secret key), clients with the device's
//! public key and their own pair, and the device's list of allowed client keys enforced
//! by a ZAP handler (one per process, as ZeroMQ has one per context).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use aether_core::{Error, Result};

use crate::config::ZmqConfig;

/// A CURVE key pair in Z85 text (40 characters each), as the URL keys take them.
#[derive(Clone, PartialEq, Eq)]
pub struct CurveKeys {
    /// The public key, to give to the other side.
    pub public: String,
    /// The secret key, to keep.
    pub secret: aether_core::Secret,
}

impl CurveKeys {
    /// A new random key pair (needs a libzmq with CURVE; see [`has_curve`](crate::has_curve)).
    pub fn generate() -> Result<CurveKeys> {
        let pair =
            zmq::CurveKeyPair::new().map_err(|e| config_err(format!("CURVE key pair: {e}")))?;
        let z85 = |k: &[u8]| zmq::z85_encode(k).map_err(|e| config_err(format!("Z85: {e:?}")));
        Ok(CurveKeys {
            public: z85(&pair.public_key)?,
            secret: aether_core::Secret::new(z85(&pair.secret_key)?),
        })
    }
}

impl std::fmt::Debug for CurveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveKeys")
            .field("public", &self.public)
            .field("secret", &self.secret)
            .finish()
    }
}

fn config_err(why: String) -> Error {
    Error::Config(why)
}

/// The 32 bytes of a Z85 key, naming the setting in the error (never the value).
pub(crate) fn decode_key(setting: &str, z85: &str) -> Result<[u8; 32]> {
    zmq::z85_decode(z85)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| {
            config_err(format!(
                "{setting} is not a CURVE key: expected 40 Z85 characters"
            ))
        })
}

/// Checks the CURVE settings of `config` fit together and the linked libzmq has CURVE.
pub(crate) fn validate(config: &ZmqConfig) -> Result<()> {
    let any = config.curve_secret_key.is_some()
        || config.curve_public_key.is_some()
        || config.curve_server_key.is_some()
        || !config.curve_clients.is_empty();
    if !any {
        return Ok(());
    }
    if !crate::has_curve() {
        return Err(config_err(
            "CURVE keys are set, but the linked libzmq has no CURVE: install libzmq3-dev \
             (built with libsodium) and build with the workspace's .cargo/config.toml"
                .into(),
        ));
    }
    if let Some(k) = &config.curve_secret_key {
        decode_key("curve_secret_key", k.expose())?;
    }
    if let Some(k) = &config.curve_public_key {
        decode_key("curve_public_key", k)?;
        if config.curve_secret_key.is_none() {
            return Err(config_err(
                "curve_public_key needs its curve_secret_key".into(),
            ));
        }
    }
    if let Some(k) = &config.curve_server_key {
        decode_key("curve_server_key", k)?;
    }
    for k in &config.curve_clients {
        decode_key("curve_clients", k)?;
    }
    if !config.curve_clients.is_empty() && config.curve_secret_key.is_none() {
        return Err(config_err(
            "curve_clients restricts a CURVE device: set its curve_secret_key too".into(),
        ));
    }
    Ok(())
}

/// The ZAP domain of a device that admits only some client keys: the handler answers for
/// every domain registered here and admits everything else (devices without a list).
fn registry() -> &'static Mutex<HashMap<String, Vec<[u8; 32]>>> {
    static ALLOWED: OnceLock<Mutex<HashMap<String, Vec<[u8; 32]>>>> = OnceLock::new();
    ALLOWED.get_or_init(Default::default)
}

/// Admits only `keys` on sockets of ZAP domain `domain`, starting the process's ZAP handler
/// on first use.
pub(crate) fn allow(domain: &str, keys: &[String]) -> Result<()> {
    let keys = keys
        .iter()
        .map(|k| decode_key("curve_clients", k))
        .collect::<Result<Vec<_>>>()?;
    start_handler()?;
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(domain.to_owned(), keys);
    Ok(())
}

/// Forgets a domain (its device stopped).
pub(crate) fn forget(domain: &str) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(domain);
}

fn start_handler() -> Result<()> {
    static STARTED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            let socket = crate::device::context()
                .socket(zmq::REP)
                .and_then(|s| s.bind("inproc://zeromq.zap.01").map(|()| s))
                .map_err(|e| format!("the ZAP handler: {e}"))?;
            std::thread::Builder::new()
                .name("aether-zmq-zap".into())
                .spawn(move || serve(socket))
                .map(drop)
                .map_err(|e| format!("the ZAP handler thread: {e}"))
        })
        .clone()
        .map_err(config_err)
}

/// Answers ZAP requests (RFC 27): version, id, domain, address, identity, mechanism,
/// credentials; a CURVE client is admitted where its domain allows its key.
fn serve(socket: zmq::Socket) {
    loop {
        let Ok(request) = socket.recv_multipart(0) else {
            return;
        };
        let field = |i: usize| request.get(i).map(Vec::as_slice).unwrap_or_default();
        let domain = String::from_utf8_lossy(field(2)).into_owned();
        let admitted = match registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domain)
        {
            None => true,
            Some(keys) => field(5) == b"CURVE" && keys.iter().any(|k| k[..] == *field(6)),
        };
        if !admitted {
            tracing::warn!(domain, "a CURVE client with an unknown key was refused");
        }
        let (code, text): (&[u8], &[u8]) = if admitted {
            (b"200", b"OK")
        } else {
            (b"400", b"unknown client key")
        };
        let reply: [&[u8]; 6] = [b"1.0", field(1), code, text, b"", b""];
        if socket.send_multipart(reply, 0).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_generate_decode_and_never_print_the_secret() {
        let keys = CurveKeys::generate().unwrap();
        assert_eq!(keys.public.len(), 40);
        decode_key("k", &keys.public).unwrap();
        decode_key("k", keys.secret.expose()).unwrap();
        assert!(!format!("{keys:?}").contains(keys.secret.expose()));
        let err = decode_key("curve_server_key", "short")
            .unwrap_err()
            .to_string();
        assert!(err.contains("curve_server_key"), "{err}");
    }
}
