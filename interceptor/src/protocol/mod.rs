//! Protocol codecs: what the gateway does with the bytes of one session.
//!
//! Why this exists: every protocol plugs into the same session phases (`gateway::session`)
//! and talks to policy, journal and masking only through [`crate::command::Hooks`]. Plain TCP
//! ([`tcp`]) relays bytes; PostgreSQL ([`postgres`]) and MySQL ([`mysql`]) turn statements
//! into commands, HTTP ([`http`]) requests, SSH ([`ssh`]) channel requests. Adding a
//! protocol is a new module here, a [`Shared`] field if it needs cross-session state, and one
//! match arm in [`serve`].
//!
//! The agent's leg is any [`ClientStream`]: TCP from the loopback listeners, or a Unix stream
//! from a routed socket (`gateway::unix_routes`), so each protocol is written once for both. The
//! upstream leg is always TCP, and the protocol opens it through [`Dial`] only once its client's
//! start-up is accepted (at once for plain TCP, which has none): a client that never finishes
//! its start-up never holds a slot on the upstream.
//!
//! Besides the commands, a protocol keeps the session's clocks: the start-up must end within
//! [`Session::startup_timeout`], and the relay ends once [`Idle`] says nothing has moved for
//! too long. How a session ended, when that is more than an error, is an [`Ending`].

pub mod buffers;
pub mod http;
pub mod kubernetes;
pub mod masked_output;
pub mod mysql;
pub mod postgres;
pub mod ssh;
pub mod tcp;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{Interest, Ready},
    net::{TcpStream, UnixStream},
};

use crate::{
    command::Hooks,
    target::{Protocol, Target},
};

/// Bytes relayed in each direction, readable while the relay runs and after it fails.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client (agent) to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
    /// Answers the upstream still owes, for protocols that know (PostgreSQL: its queue of
    /// pending answers). A session waiting for one is busy, not idle, however long the server
    /// takes.
    pub owed: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// When a session is idle: no byte in either direction, no answer owed by the upstream, and
/// nothing the gateway waits on for it (a command held for approval), for `after`.
pub struct Idle<'a> {
    pub after: Duration,
    pub counters: &'a Counters,
    /// True while the gateway itself waits on the session's behalf.
    pub waiting: &'a (dyn Fn() -> bool + Sync),
}

impl Idle<'_> {
    /// Resolves once the session has been idle for `after`. It looks every quarter of that
    /// (between 100 ms and a minute), so it fires at most that late.
    pub async fn expired(&self) {
        use tokio::time::Instant;
        let tick = (self.after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut seen = self.activity();
        let mut since = Instant::now();
        loop {
            let wake = (since + self.after).min(Instant::now() + tick);
            tokio::time::sleep_until(wake).await;
            let now = self.activity();
            if now != seen || self.busy() {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() >= self.after {
                return;
            }
        }
    }

    fn activity(&self) -> (u64, u64) {
        self.counters.snapshot()
    }

    fn busy(&self) -> bool {
        self.counters.owed.load(Ordering::Relaxed) > 0 || (self.waiting)()
    }
}

/// How a protocol reaches its upstream once the client's start-up is accepted. The gateway's
/// implementation (`gateway::session`) dials the one address admitted for the session, past
/// the loop guard, within the connect timeout.
pub trait Dial: Sync {
    /// The address it dials.
    fn addr(&self) -> SocketAddr;
    fn dial(&self) -> impl Future<Output = Result<TcpStream, DialError>> + Send;
}

/// The upstream could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot reach {addr}: {reason}")]
pub struct DialError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// Why the gateway will not serve a session. The protocol says it in its own words once the
/// client can hear it (PostgreSQL: after the client's start-up packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Policy does not allow the connection.
    Policy,
    /// A limit on open sessions (`limits`). A PostgreSQL cancel request is still
    /// forwarded: it is how an agent at its limit stops a runaway statement, and it holds no
    /// session.
    TooManySessions,
}

/// How a session ended, when that is more than an error: the gateway journals each with its
/// own outcome.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Ending {
    #[error(
        "start-up not completed within {} s ([limits] startup_timeout_secs)",
        .0.as_secs()
    )]
    StartupTimeout(Duration),
    #[error(
        "idle: no traffic for {} s ([limits] idle_timeout_secs)",
        .0.as_secs()
    )]
    IdleTimeout(Duration),
    #[error(transparent)]
    Unreachable(#[from] DialError),
    #[error("{}", .0.message)]
    Refused(Refusal),
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
    pub http: http::Shared,
    pub mysql: mysql::Shared,
    pub ssh: ssh::Shared,
    /// Bytes of large messages all sessions may buffer at once.
    pub buffers: buffers::Budget,
}

impl Shared {
    pub fn new(
        targets: &[Target],
        state_dir: &std::path::Path,
        buffers: buffers::Budget,
    ) -> Result<Shared, SetupError> {
        let postgres = postgres::Shared::new(targets, state_dir)?;
        let http = http::Shared::new(targets, postgres.local_ca.clone())?;
        let mysql = mysql::Shared::new(targets)?;
        let ssh = ssh::Shared::new(targets, state_dir)?;
        Ok(Shared {
            postgres,
            http,
            mysql,
            ssh,
            buffers,
        })
    }
}

/// Why the protocols' shared state could not be prepared (the gateway does not start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Ssh(#[from] crate::ssh_trust::SshTrustError),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("postgres: {0}")]
    Postgres(postgres::PgError),
    #[error("http: {0}")]
    Http(http::HttpError),
    #[error("mysql: {0}")]
    Mysql(mysql::MyError),
    #[error("ssh: {0}")]
    Ssh(ssh::SshError),
    #[error(transparent)]
    Ended(#[from] Ending),
}

impl From<ssh::SshError> for ProtocolError {
    fn from(e: ssh::SshError) -> ProtocolError {
        match e {
            ssh::SshError::Ended(ending) => ProtocolError::Ended(ending),
            other => ProtocolError::Ssh(other),
        }
    }
}

impl From<postgres::PgError> for ProtocolError {
    fn from(e: postgres::PgError) -> ProtocolError {
        match e {
            postgres::PgError::Ended(ending) => ProtocolError::Ended(ending),
            other => ProtocolError::Postgres(other),
        }
    }
}

impl From<mysql::MyError> for ProtocolError {
    fn from(e: mysql::MyError) -> ProtocolError {
        match e {
            mysql::MyError::Ended(ending) => ProtocolError::Ended(ending),
            other => ProtocolError::Mysql(other),
        }
    }
}

impl From<http::HttpError> for ProtocolError {
    fn from(e: http::HttpError) -> ProtocolError {
        match e {
            http::HttpError::Ended(ending) => ProtocolError::Ended(ending),
            other => ProtocolError::Http(other),
        }
    }
}

/// One session as the protocol sees it.
pub struct Session<'a, H: Hooks, D: Dial> {
    pub hooks: &'a H,
    pub target: Option<&'a Target>,
    pub shared: &'a Shared,
    pub counters: &'a Counters,
    /// The TCP address the client dialed; `None` for a routed Unix socket.
    pub dialed: Option<SocketAddr>,
    /// Opens the upstream leg, once the client's start-up is accepted.
    pub upstream: &'a D,
    /// How long the client has, from now, to finish its start-up with the gateway.
    pub startup_timeout: Duration,
    pub idle: Idle<'a>,
    /// Set when the gateway will not serve the session: the protocol tells the client why,
    /// after its start-up when the protocol has one, and never dials (but see
    /// [`RefusalKind::TooManySessions`]).
    pub refusal: Option<Refusal>,
}

/// Runs the session's protocol: the client's start-up, the upstream once that is accepted,
/// then the relay, until both sides are done or one fails.
pub async fn serve<H: Hooks, D: Dial>(
    session: Session<'_, H, D>,
    client: impl ClientStream,
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
                upstream_addr: session.upstream.addr(),
                startup_timeout: session.startup_timeout,
                idle: &session.idle,
            };
            Ok(postgres::serve(ctx, client, session.upstream, session.refusal).await?)
        }
        Some(target) if target.protocol == Protocol::Mysql => {
            let ctx = mysql::Context {
                hooks: session.hooks,
                target,
                shared: &session.shared.mysql,
                local_ca: session.shared.postgres.local_ca.as_deref(),
                counters: session.counters,
                buffers: &session.shared.buffers,
                dialed: session.dialed,
                startup_timeout: session.startup_timeout,
                idle: &session.idle,
            };
            Ok(mysql::serve(ctx, client, session.upstream, session.refusal).await?)
        }
        Some(target)
            if matches!(
                target.protocol,
                Protocol::Http | Protocol::Https | Protocol::Kubernetes
            ) =>
        {
            let ctx = http::Context {
                hooks: session.hooks,
                target,
                shared: &session.shared.http,
                counters: session.counters,
                dialed: session.dialed,
                startup_timeout: session.startup_timeout,
                idle: &session.idle,
            };
            Ok(http::serve(ctx, client, session.upstream, session.refusal).await?)
        }
        Some(target) if target.protocol == Protocol::Ssh => {
            let ctx = ssh::Context {
                hooks: session.hooks,
                target,
                shared: &session.shared.ssh,
                counters: session.counters,
                startup_timeout: session.startup_timeout,
                idle: &session.idle,
            };
            Ok(ssh::serve(ctx, client, session.upstream, session.refusal).await?)
        }
        _ => {
            // Plain TCP has no start-up: dial at once, or close on a refusal.
            if let Some(refusal) = session.refusal {
                return Err(Ending::Refused(refusal).into());
            }
            let upstream = session.upstream.dial().await.map_err(Ending::from)?;
            tokio::select! {
                relayed = tcp::relay(client, upstream, session.counters) => Ok(relayed?),
                () = session.idle.expired() => {
                    Err(Ending::IdleTimeout(session.idle.after).into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long `Idle::expired` takes to fire (on a paused clock), or `None` within `limit`.
    async fn idle_after(idle: &Idle<'_>, limit: Duration, meanwhile: impl Fn(u64)) -> Option<u64> {
        let start = tokio::time::Instant::now();
        let expired = idle.expired();
        tokio::pin!(expired);
        for second in 1..=limit.as_secs() {
            tokio::select! {
                () = &mut expired => return Some(start.elapsed().as_secs()),
                () = tokio::time::sleep(Duration::from_secs(1)) => meanwhile(second),
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_bytes_nothing_owed_and_nothing_held() {
        let counters = Counters::default();
        let held = std::sync::atomic::AtomicBool::new(false);
        let waiting = || held.load(Ordering::Relaxed);
        let idle = Idle {
            after: Duration::from_secs(8),
            counters: &counters,
            waiting: &waiting,
        };
        // Silent: closed after the timeout, checked every quarter of it.
        let fired = idle_after(&idle, Duration::from_secs(30), |_| {}).await;
        assert!(matches!(fired, Some(8..=10)), "{fired:?}");
        // Bytes in either direction keep it open.
        let fired = idle_after(&idle, Duration::from_secs(30), |s| {
            counters.down.store(s, Ordering::Relaxed)
        })
        .await;
        assert_eq!(fired, None);
        // A statement the server still runs, or one held for approval, is not idle.
        counters.owed.store(1, Ordering::Relaxed);
        assert_eq!(
            idle_after(&idle, Duration::from_secs(30), |_| {}).await,
            None
        );
        counters.owed.store(0, Ordering::Relaxed);
        held.store(true, Ordering::Relaxed);
        assert_eq!(
            idle_after(&idle, Duration::from_secs(30), |_| {}).await,
            None
        );
        // Once it is answered, the clock starts again.
        held.store(false, Ordering::Relaxed);
        let fired = idle_after(&idle, Duration::from_secs(30), |_| {}).await;
        assert!(matches!(fired, Some(8..=10)), "{fired:?}");
    }

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
