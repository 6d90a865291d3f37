//! MySQL and MariaDB (client/server protocol 4.1): every statement an agent sends becomes a
//! [`crate::command::Command`] that is judged and journaled before it reaches the server, with
//! the server's answer recorded against it.
//!
//! Why this exists: as for PostgreSQL, the connection is far too coarse a unit to gate a
//! database. MySQL's protocol is strictly one command, one answer, so the relay is a loop:
//! read a command, ask the hooks, forward it or answer it with an ERR packet, relay the
//! answer (masking rows on the way).
//!
//! - [`codec`]: packet framing (with a size limit) and field encodings.
//! - [`handshake`]: the greeting and the client's answer, capabilities, password scrambles.
//! - [`startup`]: both legs' connection phase: the gateway is the server toward the agent
//!   (its own greeting; any user, or the target's `local_auth` password) and the client
//!   toward the real server, logging in with the target's credentials.
//! - [`auth`]: the upstream plugin answers that are more than a hash: MariaDB's
//!   `client_ed25519` signature, `caching_sha2_password`'s RSA-encrypted password.
//! - [`results`]: result sets: column definitions → [`crate::command::ResultColumn`]s, rows
//!   through the [`crate::command::Masker`].
//! - [`statements`]: the prepared statements the server confirmed, by id.
//! - [`threads`]: the connection ids agents are given, mapped to the server's threads (`KILL`).
//! - [`relay`]: the command phase.
//!
//! It talks to the rest of the gateway only through [`crate::command::Hooks`].

pub mod auth;
pub mod codec;
pub mod handshake;
pub mod relay;
pub mod results;
pub mod startup;
pub mod statements;
pub mod threads;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use super::{ClientStream, Dial, Ending, Idle, Refusal, RefusalKind};
use crate::{
    command::{HookError, Hooks},
    protocol::Counters,
    target::{Protocol, Target},
    tls::{self, TlsError},
};

pub use codec::FrameError;

/// Why a MySQL session ended early. The client has already been told, in its protocol,
/// whenever that was possible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MyError {
    #[error("protocol error from the client: {0}")]
    Client(FrameError),
    #[error("protocol error from the server: {0}")]
    Server(FrameError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(String),
    #[error("client TLS: {0}")]
    ClientTls(String),
    #[error("upstream authentication failed: {0}")]
    UpstreamAuth(String),
    /// The gateway could not answer the server's authentication plugin.
    #[error("upstream authentication failed: {0}")]
    UpstreamPlugin(#[from] auth::AuthError),
    #[error("client authentication failed")]
    LocalAuth,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Budget(#[from] crate::protocol::buffers::BudgetError),
    #[error("recording failed, command refused: {0}")]
    Journal(#[from] HookError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A timeout, a refusal or an unreachable upstream (the client was told when it could be).
    #[error(transparent)]
    Ended(#[from] Ending),
}

impl MyError {
    fn from_client(e: codec::ReadError) -> MyError {
        match e {
            codec::ReadError::Frame(f) => MyError::Client(f),
            codec::ReadError::Io(io) => MyError::Io(io),
            codec::ReadError::Budget(b) => MyError::Budget(b),
        }
    }

    fn from_server(e: codec::ReadError) -> MyError {
        match e {
            codec::ReadError::Frame(f) => MyError::Server(f),
            codec::ReadError::Io(io) => MyError::Io(io),
            codec::ReadError::Budget(b) => MyError::Budget(b),
        }
    }
}

/// State shared by all MySQL sessions of a gateway: the upstream TLS settings per target, and
/// the connection ids given to agents.
pub struct Shared {
    upstream_tls: HashMap<String, tls::Upstream>,
    pub threads: threads::Registry,
}

impl Shared {
    pub fn new(targets: &[Target]) -> Result<Shared, TlsError> {
        let mut upstream_tls = HashMap::new();
        for t in targets.iter().filter(|t| t.protocol == Protocol::Mysql) {
            let host = t.upstream.map(|a| a.ip().to_string());
            upstream_tls.insert(t.name.clone(), tls::upstream(&t.tls, host.as_deref())?);
        }
        Ok(Shared {
            upstream_tls,
            threads: threads::Registry::default(),
        })
    }
}

/// Everything one session needs besides its two sockets.
pub struct Context<'a, H: Hooks> {
    pub hooks: &'a H,
    pub target: &'a Target,
    pub shared: &'a Shared,
    /// The local CA for the agent's TLS (`None`: TLS is not offered to the agent).
    pub local_ca: Option<&'a tls::LocalCa>,
    pub counters: &'a Counters,
    /// The memory budget for large payloads, shared by every session.
    pub buffers: &'a crate::protocol::buffers::Budget,
    /// What the client dialed: the name its TLS certificate must carry.
    pub dialed: Option<SocketAddr>,
    pub startup_timeout: Duration,
    pub idle: &'a Idle<'a>,
}

/// Runs a whole MySQL session: the agent's connection phase with the gateway (bounded by the
/// start-up timeout), the upstream dialed only once that is accepted, the gateway's own login
/// there, then the command phase (ended by the idle timeout). A refused session gets an ERR
/// packet in place of the greeting, and nothing is dialed for it.
pub async fn serve<H: Hooks>(
    ctx: Context<'_, H>,
    client: impl ClientStream,
    upstream: &impl Dial,
    refusal: Option<Refusal>,
) -> Result<(), MyError> {
    client.no_delay();
    let mut client: crate::protocol::postgres::BoxIo = Box::new(client);
    if let Some(refusal) = refusal {
        let (code, text) = match refusal.kind {
            RefusalKind::TooManySessions => (
                codec::ER_CON_COUNT,
                format!("interceptor: {}", refusal.message),
            ),
            RefusalKind::Policy => (
                codec::ER_BAD_HOST,
                format!(
                    "interceptor: target {:?} is unavailable: {}",
                    ctx.target.name, refusal.message
                ),
            ),
        };
        startup::refuse(&mut client, 0, code, "08004", &text).await;
        return Err(Ending::Refused(refusal).into());
    }
    let upstream_tls = ctx
        .shared
        .upstream_tls
        .get(&ctx.target.name)
        .cloned()
        .ok_or_else(|| {
            MyError::Unsupported(format!("target {} has no TLS settings", ctx.target.name))
        })?;
    let deadline = tokio::time::Instant::now() + ctx.startup_timeout;
    let Some(agent) = startup::accept_client(&ctx, client, deadline).await? else {
        return Ok(());
    };
    let legs = tokio::select! {
        legs = startup::establish(&ctx, agent, upstream, &upstream_tls) => legs?,
        () = ctx.idle.expired() => return Err(Ending::IdleTimeout(ctx.idle.after).into()),
    };
    relay::run(&ctx, legs).await
}
