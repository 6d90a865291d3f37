//! PostgreSQL v3: every statement an agent sends becomes a [`Command`] that is judged and
//! journaled before it reaches the server, with the server's answer recorded against it.
//!
//! Why this exists: for databases the connection is far too coarse a unit to gate. This module
//! speaks enough of the protocol, in both directions, to know which statement each result
//! belongs to, while relaying every byte it does not need to change untouched.
//!
//! - [`codec`]: framing (with a size limit) and the message bodies we read or build.
//! - [`startup`]: SSL/GSS negotiation, cancel requests, and authentication on both legs,
//!   including credential injection (the client never sees the upstream secret).
//! - [`relay`]: the query phase: simple and extended protocol, pipelining, COPY, results.
//! - [`results`]: what result columns are, and masking of rows, COPY output and notices.
//! - [`catalog`]: table OID + attribute number → `schema.table.column`, for column rules.
//! - [`cancel`]: the map from the keys we gave clients to the server's real keys.
//! - [`reading`]: the session settings that decide how the server reads text, pinned.
//! - [`numbers`]: numbers in text and binary formats, as decimal text for the detectors.
//! - [`names`]: the prepared statements and portals the server keeps, mirrored from its
//!   confirmations.
//!
//! It talks to the rest of the gateway only through [`crate::command::Hooks`].

pub mod cancel;
pub mod catalog;
pub mod codec;
pub mod names;
pub mod numbers;
pub mod reading;
pub mod relay;
pub mod results;
pub mod startup;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{ClientStream, Dial, Ending, Idle, Refusal, RefusalKind};

use crate::{
    command::{HookError, Hooks},
    protocol::Counters,
    target::{Protocol, Target},
    tls::{self, LocalCa, TlsError},
};

pub use codec::FrameError;

/// Any byte stream a leg may run over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Why a PostgreSQL session ended early. The client has already been told, in its protocol,
/// whenever that was possible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
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
    #[error("client authentication failed")]
    LocalAuth,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("recording failed, command refused: {0}")]
    Journal(#[from] HookError),
    #[error("refused by policy: {0}")]
    Denied(String),
    #[error("session state the gateway cannot read for: {0}")]
    Unpinned(String),
    /// The server went away with commands unanswered (each got that as its result).
    #[error("upstream lost mid-statement: {why} ({unanswered} command(s) unanswered)")]
    UpstreamLost { unanswered: usize, why: String },
    #[error("memory budget: {0}")]
    Budget(#[from] crate::protocol::buffers::BudgetError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A timeout, a refusal or an unreachable upstream (the client was told when it could be).
    #[error(transparent)]
    Ended(#[from] Ending),
}

/// State shared by all PostgreSQL sessions of a gateway.
pub struct Shared {
    /// `None` when the state directory is unusable: clients asking for TLS are told "no".
    pub local_ca: Option<Arc<LocalCa>>,
    upstream_tls: HashMap<String, tls::Upstream>,
    pub cancels: cancel::Registry,
    pub catalogs: catalog::Catalogs,
}

impl Shared {
    /// Prepares TLS for every PostgreSQL target. The local CA is created lazily in `state_dir`.
    pub fn new(targets: &[Target], state_dir: &std::path::Path) -> Result<Shared, TlsError> {
        let mut upstream_tls = HashMap::new();
        for t in targets.iter().filter(|t| t.protocol == Protocol::Postgres) {
            let host = t.upstream.map(|a| a.ip().to_string());
            upstream_tls.insert(t.name.clone(), tls::upstream(&t.tls, host.as_deref())?);
        }
        let local_ca = match LocalCa::load_or_create(state_dir) {
            Ok(ca) => Some(Arc::new(ca)),
            Err(e) => {
                tracing::warn!(error = %e, "no local CA: PostgreSQL clients that require TLS will be refused");
                None
            }
        };
        Ok(Shared {
            local_ca,
            upstream_tls,
            cancels: cancel::Registry::default(),
            catalogs: catalog::Catalogs::default(),
        })
    }
}

/// Everything one session needs besides its two sockets.
pub struct Context<'a, H: Hooks> {
    pub hooks: &'a H,
    pub target: &'a Target,
    pub shared: &'a Shared,
    /// The memory budget for large messages, shared with every other session.
    pub buffers: &'a crate::protocol::buffers::Budget,
    pub counters: &'a Counters,
    /// What the client dialed: the name its TLS certificate must carry (`None`: a routed Unix
    /// socket, which has no address to name).
    pub dialed: Option<SocketAddr>,
    /// Where the upstream leg goes (the session dials it), for cancel requests and the
    /// catalog's own connections.
    pub upstream_addr: SocketAddr,
    /// How long the client has to finish its start-up with the gateway.
    pub startup_timeout: Duration,
    /// When the session counts as idle, from the upstream's start-up on.
    pub idle: &'a Idle<'a>,
}

/// Runs a whole PostgreSQL session: the client's start-up with the gateway (bounded by the
/// start-up timeout), the upstream dialed only once that is accepted, the upstream's start-up,
/// then the query phase (both ended by the idle timeout). A refused session is told why after
/// its start-up packet, and nothing is dialed for it (except for a cancel request, see
/// [`RefusalKind::TooManySessions`]).
pub async fn serve<H: Hooks>(
    ctx: Context<'_, H>,
    client: impl ClientStream,
    upstream: &impl Dial,
    refusal: Option<Refusal>,
) -> Result<(), PgError> {
    client.no_delay();
    let upstream_tls = ctx
        .shared
        .upstream_tls
        .get(&ctx.target.name)
        .cloned()
        .ok_or_else(|| {
            PgError::Unsupported(format!("target {} has no TLS settings", ctx.target.name))
        })?;
    // The client's start-up. A refused client is not asked to authenticate first.
    let deadline = tokio::time::Instant::now() + ctx.startup_timeout;
    let start = startup::accept_client(&ctx, client, deadline, refusal.is_none()).await?;
    let mut leg = match start {
        // The client left during its start-up.
        None => return Ok(()),
        Some(startup::ClientStart::Cancel(key)) => {
            if let Some(r) = refusal.filter(|r| r.kind != RefusalKind::TooManySessions) {
                return Err(Ending::Refused(r).into());
            }
            let server = dial(&ctx, upstream, None).await?;
            startup::forward_cancel(&ctx, server, key).await;
            return Ok(());
        }
        Some(startup::ClientStart::Session(leg)) => leg,
    };
    if let Some(refusal) = refusal {
        let (sqlstate, text) = match refusal.kind {
            RefusalKind::TooManySessions => ("53300", format!("interceptor: {}", refusal.message)),
            RefusalKind::Policy => (
                "08001",
                format!(
                    "interceptor: target {:?} is unavailable: {}",
                    ctx.target.name, refusal.message
                ),
            ),
        };
        startup::refuse(&mut leg.client, sqlstate, &text).await;
        return Err(Ending::Refused(refusal).into());
    }
    // The upstream, now that the client is accepted.
    let server = dial(&ctx, upstream, Some(&mut leg.client)).await?;
    let _ = server.set_nodelay(true);
    let legs = tokio::select! {
        legs = startup::establish(&ctx, leg, server, &upstream_tls) => legs?,
        () = ctx.idle.expired() => return Err(Ending::IdleTimeout(ctx.idle.after).into()),
    };
    let _registration =
        ctx.shared
            .cancels
            .register(legs.client_key, legs.server_key, ctx.upstream_addr);
    relay::run(&ctx, legs).await
}

/// Dials the upstream. On failure the client, when it is listening, is told why (08001).
async fn dial<H: Hooks>(
    ctx: &Context<'_, H>,
    upstream: &impl Dial,
    client: Option<&mut BoxIo>,
) -> Result<tokio::net::TcpStream, PgError> {
    match upstream.dial().await {
        Ok(server) => Ok(server),
        Err(e) => {
            if let Some(client) = client {
                let text = format!(
                    "interceptor: target {:?} is unavailable: {e}",
                    ctx.target.name
                );
                startup::refuse(client, "08001", &text).await;
            }
            Err(Ending::Unreachable(e).into())
        }
    }
}
