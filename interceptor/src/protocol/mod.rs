//! Protocol codecs: what the gateway does with the bytes of one session.
//!
//! Why this exists: every protocol plugs into the same session phases (`gateway::session`)
//! and talks to policy, journal and masking only through [`crate::command::Hooks`]. Plain TCP
//! ([`tcp`]) relays bytes; PostgreSQL ([`postgres`]) turns statements into commands. Adding a
//! protocol is a new module here, a [`Shared`] field if it needs cross-session state, and one
//! match arm in [`serve`].
//!
//! The agent's leg is any [`ClientStream`]: TCP from the loopback listeners, or a Unix stream
//! from a routed socket (`gateway::unix_routes`), so each protocol is written once for both. The
//! upstream leg is always TCP.

pub mod buffers;
pub mod postgres;
pub mod tcp;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{Interest, Ready},
    net::{TcpStream, UnixStream},
};

use crate::{
    command::Hooks,
    config::{Protocol, Target},
};

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

/// Drives the two directions of a session together. One finishing (end of stream) lets the
/// other carry on, so half-closes work; an error in either ends the session.
pub async fn both_directions<E>(
    up: impl std::future::Future<Output = Result<(), E>>,
    down: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), E> {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            result = &mut up, if !up_done => { up_done = true; result?; }
            result = &mut down, if !down_done => { down_done = true; result?; }
        }
    }
    Ok(())
}

/// What the relays need of a socket besides reading and writing: readiness and its descriptor
/// (the TCP relay splices between descriptors), and Nagle turned off where the transport has it.
pub trait Socket: AsRawFd + Send + Sync + 'static {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    fn no_delay(&self);
}

/// The agent's leg of a session.
pub trait ClientStream: Socket + postgres::Io {}
impl<T: Socket + postgres::Io> ClientStream for T {}

impl Socket for TcpStream {
    async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        TcpStream::ready(self, interest).await
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl Socket for UnixStream {
    async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        UnixStream::ready(self, interest).await
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        UnixStream::try_io(self, interest, f)
    }
    /// A Unix stream has no Nagle to turn off.
    fn no_delay(&self) {}
}

/// State protocols keep across sessions (TLS material, cancel keys, the memory budget).
pub struct Shared {
    pub postgres: postgres::Shared,
    /// Bytes of large messages all sessions may buffer at once.
    pub buffers: buffers::Budget,
}

impl Shared {
    pub fn new(
        targets: &[Target],
        state_dir: &std::path::Path,
        buffers: buffers::Budget,
    ) -> Result<Shared, crate::tls::TlsError> {
        Ok(Shared {
            postgres: postgres::Shared::new(targets, state_dir)?,
            buffers,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::PgError),
}

/// One session as the protocol sees it.
pub struct Session<'a, H: Hooks> {
    pub hooks: &'a H,
    pub target: Option<&'a Target>,
    pub shared: &'a Shared,
    pub counters: &'a Counters,
    /// The TCP address the client dialed; `None` for a routed Unix socket.
    pub dialed: Option<SocketAddr>,
    pub upstream_addr: SocketAddr,
}

/// Tells a client that its session cannot start, in its protocol if it has one (plain TCP
/// just closes). Bounded in time: a silent client cannot hold the task.
pub async fn refuse(target: Option<&Target>, client: impl ClientStream, reason: &str) {
    if let Some(t) = target.filter(|t| t.protocol == Protocol::Postgres) {
        let refusal = postgres::refuse_before_startup(client, t, reason);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), refusal).await;
    }
}

/// Runs the relay phase of the session's protocol until both sides are done or one fails.
pub async fn serve<H: Hooks>(
    session: Session<'_, H>,
    client: impl ClientStream,
    upstream: TcpStream,
) -> Result<(), ProtocolError> {
    match session.target {
        Some(target) if target.protocol == Protocol::Postgres => {
            let ctx = postgres::Context {
                hooks: session.hooks,
                target,
                shared: &session.shared.postgres,
                buffers: &session.shared.buffers,
                counters: session.counters,
                dialed: session.dialed,
                upstream_addr: session.upstream_addr,
            };
            Ok(postgres::serve(ctx, client, upstream).await?)
        }
        _ => Ok(tcp::relay(client, upstream, session.counters).await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_defaults_prepare_without_a_fixed_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let targets = crate::config::Config::embedded()
            .targets()
            .expect("targets");
        let budget = buffers::Budget::new(buffers::DEFAULT_BUDGET_BYTES, Default::default());
        let shared =
            Shared::new(&targets, dir.path(), budget).expect("a postgres target without upstream");
        assert!(shared.postgres.local_ca.is_some());
    }
}
