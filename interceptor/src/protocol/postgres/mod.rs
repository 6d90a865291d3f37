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

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::ClientStream;

use crate::{
    command::{HookError, Hooks},
    config::{Protocol, Target},
    protocol::Counters,
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
    /// Where `upstream` is connected, for cancel requests.
    pub upstream_addr: SocketAddr,
}

/// Answers a client whose upstream is unreachable: reads its start-up (declining TLS, which
/// the client may refuse; then it just sees the connection close) and sends an ErrorResponse.
pub async fn refuse_before_startup(client: impl ClientStream, target: &Target, reason: &str) {
    let mut client: BoxIo = Box::new(client);
    loop {
        match codec::read_startup(&mut client, target.max_message_bytes).await {
            Ok(Some(codec::Startup::SslRequest | codec::Startup::GssEncRequest)) => {
                if tokio::io::AsyncWriteExt::write_all(&mut client, b"N")
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Some(codec::Startup::Params(_))) => break,
            _ => return,
        }
    }
    let text = format!(
        "interceptor: target {:?} is unavailable: {reason}",
        target.name
    );
    startup::refuse(&mut client, "08001", &text).await;
}

/// Runs a whole PostgreSQL session: start-up on both legs, then the query phase.
pub async fn serve<H: Hooks>(
    ctx: Context<'_, H>,
    client: impl ClientStream,
    upstream: TcpStream,
) -> Result<(), PgError> {
    client.no_delay();
    let _ = upstream.set_nodelay(true);
    let upstream_tls = ctx
        .shared
        .upstream_tls
        .get(&ctx.target.name)
        .cloned()
        .ok_or_else(|| {
            PgError::Unsupported(format!("target {} has no TLS settings", ctx.target.name))
        })?;
    let Some(legs) = startup::establish(&ctx, client, upstream, &upstream_tls).await? else {
        return Ok(()); // a cancel request, or a client that left during start-up
    };
    let _registration =
        ctx.shared
            .cancels
            .register(legs.client_key, legs.server_key, ctx.upstream_addr);
    relay::run(&ctx, legs).await
}
