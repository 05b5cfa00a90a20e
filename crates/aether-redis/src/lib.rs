//! The redis transport for aether (work in progress).

use aether_core::{Error, Result, SharedTransport};

/// URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &[];

/// Connects to the broker a URL names.
pub async fn connect(url: &str) -> Result<SharedTransport> {
    Err(Error::Config(format!(
        "the redis adapter is not implemented yet: {}",
        aether_core::url::redact(url)
    )))
}
