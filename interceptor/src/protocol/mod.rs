//! Protocol codecs: what the gateway does with the bytes of one session.
//!
//! Why this exists: every protocol (plain TCP today; PostgreSQL, Kubernetes, SSH next) plugs
//! into the same session phases in `gateway::session`. A protocol module gets the two connected
//! streams and the session's byte counters and runs the relay phase; it never touches capture,
//! policy or the journal directly. Adding a protocol is a new module here plus one match arm.

pub mod tcp;

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use crate::config::Protocol;

/// Bytes relayed in each direction, readable while the relay runs and after it fails.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client (agent) to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// Runs the relay phase of `protocol` until both sides are done or one fails.
pub async fn relay(
    protocol: Protocol,
    client: TcpStream,
    upstream: TcpStream,
    counters: &Counters,
) -> std::io::Result<()> {
    match protocol {
        Protocol::Tcp => tcp::relay(client, upstream, counters).await,
    }
}
