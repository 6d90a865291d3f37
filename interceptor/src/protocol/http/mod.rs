//! HTTP/1.1 and HTTP/2, in cleartext (`protocol = "http"`) or over TLS (`"https"`): every
//! request is a [`crate::command::Command`] judged, journaled and, when held, approved before
//! the upstream sees it, then relayed with the target's credential header in the agent's place.
//!
//! Why this exists: most of what an agent does outside its process is HTTP (REST APIs, MCP tool
//! servers, its LLM provider). The connection is far too coarse a unit to gate; the request is
//! the unit a human can approve (`DELETE https://host/api/customers/1`).
//!
//! - [`request`]: the one reading of a request head (method, authority, path, query) that is
//!   both judged and forwarded; ambiguous ones are refused.
//! - [`relay`]: one request: limits, hooks (allow, deny, hold), credential injection, hop-by-hop
//!   headers, the exchange and its result. Refusals are answered in HTTP's own form (a
//!   `application/problem+json` body) and leave the connection usable.
//! - [`upstream`]: the session's upstream connection (HTTP/1.1 or HTTP/2 by ALPN).
//! - [`mcp`]: the JSON-RPC messages of an MCP POST as commands, and the tool annotations
//!   learned from `tools/list` answers.
//! - [`body`]: response bodies masked incrementally (JSON, server-sent events, text).
//!
//! The agent's leg is served by hyper's own connection drivers on this task: the futures
//! hyper would spawn (HTTP/2 streams, the upstream connection) are run by [`LocalExec`] inside
//! the session, so they may borrow the session's hooks and never outlive it.

pub mod body;
pub mod mcp;
pub mod relay;
pub mod request;
pub mod upstream;

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    sync::mpsc,
};

use super::{kubernetes, ClientStream, Counters, Dial, Ending, Idle, Refusal};
use crate::{
    command::{CommandResult, Hooks},
    protocol::postgres::Io,
    target::{Protocol, Target},
    tls::{self, LocalCa, TlsError, UpstreamTlsMode},
};

/// Largest request head (request line and headers) read from the agent; larger is answered
/// 431 and the connection ends.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why an HTTP session ended early. Individual requests that fail are answered in HTTP and
/// do not end the session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("client TLS: {0}")]
    ClientTls(String),
    #[error("no local CA: an https target cannot be served")]
    NoLocalCa,
    #[error("client connection: {0}")]
    Client(#[from] hyper::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Ended(#[from] Ending),
}

/// State shared by all HTTP sessions: the local CA for the agents' TLS leg and each target's
/// upstream TLS.
pub struct Shared {
    local_ca: Option<Arc<LocalCa>>,
    upstream_tls: HashMap<String, tls::Upstream>,
    /// The tool annotations learned from each MCP endpoint's `tools/list` answers, shared by
    /// every session (an agent may list the tools on one connection and call them on another).
    mcp: mcp::Registries,
}

impl Shared {
    /// An `https` or `kubernetes` target's upstream is TLS unless `[target.tls] mode =
    /// "disable"` (a Kubernetes target presents its client certificate, when it logs in with
    /// one, in that handshake: read once here, so rotating it needs a restart); an `http`
    /// target's is cleartext unless the mode is `require` or `verify-full` (so an agent may speak
    /// plain HTTP to the gateway while the gateway speaks HTTPS to the real server).
    pub fn new(targets: &[Target], local_ca: Option<Arc<LocalCa>>) -> Result<Shared, TlsError> {
        let mut upstream_tls = HashMap::new();
        for t in targets {
            let tls_upstream = match (t.protocol, t.tls.mode) {
                (Protocol::Https | Protocol::Kubernetes, UpstreamTlsMode::Disable) => false,
                (Protocol::Https | Protocol::Kubernetes, _) => true,
                (Protocol::Http, UpstreamTlsMode::Require | UpstreamTlsMode::VerifyFull) => true,
                _ => false,
            };
            if tls_upstream {
                let host = t.upstream.map(|a| a.ip().to_string());
                let client = kubernetes::client_identity(t)?;
                upstream_tls.insert(
                    t.name.clone(),
                    tls::upstream_as(&t.tls, host.as_deref(), client)?,
                );
            }
        }
        Ok(Shared {
            local_ca,
            upstream_tls,
            mcp: mcp::Registries::default(),
        })
    }
}

/// Everything one session needs besides its two sockets.
pub struct Context<'a, H: Hooks> {
    pub hooks: &'a H,
    pub target: &'a Target,
    pub shared: &'a Shared,
    pub counters: &'a Counters,
    /// What the agent dialed (the name its certificate carries); `None` for a Unix route.
    pub dialed: Option<SocketAddr>,
    pub startup_timeout: Duration,
    pub idle: &'a Idle<'a>,
}

/// Serves one agent connection: TLS first for `https` (within the start-up timeout), then
/// requests until the agent closes, the connection idles out, or a request ends it (too large,
/// malformed). A refused session answers its first request with the refusal and ends.
pub async fn serve<H: Hooks>(
    ctx: Context<'_, H>,
    client: impl ClientStream,
    upstream: &impl Dial,
    refusal: Option<Refusal>,
) -> Result<(), HttpError> {
    client.no_delay();
    let client: Leg<'_> = Box::new(Counted {
        inner: client,
        counters: ctx.counters,
    });
    // The Kubernetes API is HTTPS to its clients too (kubectl will not send a token in clear).
    let tls_leg = matches!(ctx.target.protocol, Protocol::Https | Protocol::Kubernetes);
    let (io, h2) = if tls_leg {
        match tokio::time::timeout(ctx.startup_timeout, accept_tls(&ctx, client)).await {
            Ok(accepted) => accepted?,
            Err(_) => return Err(Ending::StartupTimeout(ctx.startup_timeout).into()),
        }
    } else {
        (client, false)
    };
    // Declared before `relay`, so dropped after it: the upstream's connection tasks own what
    // they use.
    let (upstream_exec, mut upstream_tasks) = LocalExec::<'static>::new();
    let (reports, mut reported) = mpsc::unbounded_channel();
    let shutdown = tokio::sync::Notify::new();
    let relay = relay::Relay {
        hooks: ctx.hooks,
        target: ctx.target,
        scheme: if tls_leg { "https" } else { "http" },
        kube: ctx.target.protocol == Protocol::Kubernetes,
        counters: ctx.counters,
        upstream: upstream::Upstream::new(
            upstream,
            ctx.shared.upstream_tls.get(&ctx.target.name),
            upstream_exec,
        ),
        refusal: refusal.clone(),
        registries: &ctx.shared.mcp,
        reports,
        shutdown: &shutdown,
        tunnel: std::sync::Mutex::new(None),
        credential: std::sync::Mutex::new(None),
    };
    // Boxed so that HTTP/1.1 can be served without shutting the leg down ([`H1`]).
    let service = hyper::service::service_fn(|request| Box::pin(relay.handle(request)));
    // Declared after `relay`, so dropped before it: HTTP/2 streams borrow it.
    let (exec, mut spawned) = LocalExec::new();
    let io = TokioIo::new(io);
    let connection: Pin<Box<dyn Connection<'_> + '_>> = if h2 {
        let mut builder = http2::Builder::new(exec.clone());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD_BYTES as u32);
        Box::pin(builder.serve_connection(io, service))
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(ctx.startup_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        Box::pin(H1 {
            conn: Some(builder.serve_connection(io, service)),
            leg: None,
        })
    };
    let mut connection = connection;
    let mut tasks = FuturesUnordered::new();
    let served = loop {
        tokio::select! {
            served = connection.as_mut() => break served,
            Some(task) = spawned.recv() => tasks.push(task),
            Some(task) = upstream_tasks.recv() => tasks.push(task),
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
            Some(report) = reported.recv() => relay.record(report),
            () = shutdown.notified() => connection.as_mut().shutdown(),
            () = ctx.idle.expired() => {
                return Err(Ending::IdleTimeout(ctx.idle.after).into());
            }
        }
    };
    let leg = connection.as_mut().take_leg();
    // Responses whose bodies ended with the connection still report.
    drop(connection);
    while let Ok(report) = reported.try_recv() {
        relay.record(report);
    }
    served?;
    let tunnel = relay.tunnel.lock().ok().and_then(|mut t| t.take());
    match (tunnel, leg) {
        (Some(tunnel), Some((leg, early))) => {
            // The 101 is written: the session is the stream now. The upstream's connection
            // task is what hands over its side, so the session's tasks keep running.
            let before = ctx.counters.snapshot();
            let relay::Tunnel {
                upstream: switched,
                event,
                protocol,
                started,
                stream,
            } = tunnel;
            let (ended, summary) = {
                let stream = async {
                    if let Some((channels, framing)) = stream {
                        let upgraded = TokioIo::new(switched.await.map_err(StreamEnd::Switch)?);
                        let recorder = kubernetes::exec::Recorder {
                            hooks: ctx.hooks,
                            event,
                            started,
                            masking: ctx.hooks.body_masking(),
                            channels,
                        };
                        kubernetes::relay_stream(framing, leg, early.to_vec(), upgraded, &recorder)
                            .await
                            .map(Some)
                            .map_err(StreamEnd::Frames)
                    } else {
                        splice(switched, leg, &early).await.map(|()| None)
                    }
                };
                tokio::pin!(stream);
                loop {
                    tokio::select! {
                        ended = &mut stream => break match ended {
                            Ok(summary) => (None, summary),
                            Err(e) => (Some(e), None),
                        },
                        Some(task) = upstream_tasks.recv() => tasks.push(task),
                        Some(task) = spawned.recv() => tasks.push(task),
                        Some(()) = tasks.next(), if !tasks.is_empty() => {}
                        () = ctx.idle.expired() => break (Some(StreamEnd::Idle), None),
                    }
                }
            };
            let after = ctx.counters.snapshot();
            let up = early.len() as u64 + after.0.saturating_sub(before.0);
            let down = after.1.saturating_sub(before.1);
            let frames = summary
                .as_ref()
                .map(|s| {
                    let exit = s.exit.map(|c| format!(", exit {c}")).unwrap_or_default();
                    let ports = if s.ports.is_empty() {
                        String::new()
                    } else {
                        let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
                        format!(", ports {}", ports.join(","))
                    };
                    format!(
                        ", {} frames up ({} data bytes), {} frames down ({} data bytes){exit}{ports}",
                        s.frames_in, s.bytes_in, s.frames_out, s.bytes_out
                    )
                })
                .unwrap_or_default();
            let masked = summary.map(|s| s.masked).unwrap_or_default();
            relay.record(relay::Report {
                event,
                result: CommandResult {
                    status: Some(101),
                    bytes: Some(down),
                    tag: Some(format!(
                        "{protocol}: {up} bytes up, {down} bytes down{frames}"
                    )),
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    error: ended.as_ref().map(ToString::to_string),
                    masked,
                    ..CommandResult::default()
                },
            });
            if matches!(ended, Some(StreamEnd::Idle)) {
                return Err(Ending::IdleTimeout(ctx.idle.after).into());
            }
        }
        (tunnel, Some((mut leg, _))) => {
            if let Some(tunnel) = tunnel {
                // A 101 the agent's leg never finished receiving.
                relay.record(relay::Report {
                    event: tunnel.event,
                    result: CommandResult {
                        status: Some(101),
                        error: Some("the agent left before the switch".to_owned()),
                        ..CommandResult::default()
                    },
                });
            }
            // Served without hyper's shutdown (see [`H1`]): close the leg as it would have.
            let _ = tokio::time::timeout(ctx.startup_timeout, leg.shutdown()).await;
        }
        (_, None) => {}
    }
    match refusal {
        Some(refusal) => Err(Ending::Refused(refusal).into()),
        None => Ok(()),
    }
}

/// TLS with a leaf from the local CA naming what the agent dialed (its SNI and the address),
/// offering HTTP/2 and HTTP/1.1. Returns the stream and whether HTTP/2 was chosen.
async fn accept_tls<'a, H: Hooks>(
    ctx: &Context<'_, H>,
    client: Leg<'a>,
) -> Result<(Leg<'a>, bool), HttpError> {
    let ca = ctx.shared.local_ca.as_ref().ok_or(HttpError::NoLocalCa)?;
    let stream = ca
        .accept_agent(client, ctx.dialed, &[b"h2", b"http/1.1"])
        .await
        .map_err(HttpError::ClientTls)?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((Box::new(stream), h2))
}

/// The agent's leg, plain or TLS, borrowing the session's counters.
type Leg<'a> = Box<dyn Io + 'a>;

/// Why an upgraded stream ended other than by either side closing.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("the upstream's side of the switch was lost: {0}")]
    Switch(hyper::Error),
    #[error("the stream broke off: {0}")]
    Io(#[from] io::Error),
    #[error("the stream was idle too long")]
    Idle,
    #[error(transparent)]
    Frames(#[from] kubernetes::exec::StreamError),
}

/// Relays bytes both ways between the agent's leg (after what it sent early, past the
/// upgrade request's head) and the upstream's switched connection, until both have closed.
/// The bytes are counted by the leg's [`Counted`]; they are frames of another protocol,
/// relayed as they are (nothing in them is judged or masked: see docs/http.md).
async fn splice(
    upstream: hyper::upgrade::OnUpgrade,
    mut leg: Leg<'_>,
    early: &[u8],
) -> Result<(), StreamEnd> {
    let mut upstream = TokioIo::new(upstream.await.map_err(StreamEnd::Switch)?);
    if !early.is_empty() {
        upstream.write_all(early).await?;
    }
    tokio::io::copy_bidirectional(&mut leg, &mut upstream).await?;
    Ok(())
}

/// hyper's server connections, HTTP/1.1 or HTTP/2, as one type.
trait Connection<'a>: Future<Output = Result<(), hyper::Error>> + Send {
    /// Finish the requests in flight, take no more.
    fn shutdown(self: Pin<&mut Self>);

    /// After the connection ended: the agent's leg and the bytes read past the last request,
    /// when they can continue as an upgraded stream (HTTP/1.1).
    fn take_leg(self: Pin<&mut Self>) -> Option<(Leg<'a>, bytes::Bytes)> {
        None
    }
}

/// HTTP/1.1 served without hyper shutting the agent's leg at the end, so that after a 101 the
/// leg is taken back for the stream. hyper's own upgrade API would need a `'static` stream,
/// and the leg borrows the session (its counters).
struct H1<'a, S: hyper::service::HttpService<hyper::body::Incoming>> {
    conn: Option<http1::Connection<TokioIo<Leg<'a>>, S>>,
    leg: Option<(Leg<'a>, bytes::Bytes)>,
}

impl<'a, S> Future for H1<'a, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<(), hyper::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match conn.poll_without_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                if let Some(conn) = this.conn.take() {
                    let parts = conn.into_parts();
                    this.leg = Some((parts.io.into_inner(), parts.read_buf));
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<'a, S> Connection<'a> for H1<'a, S>
where
    Self: Future<Output = Result<(), hyper::Error>> + Send,
    S: hyper::service::HttpService<hyper::body::Incoming> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        if let Some(conn) = self.get_mut().conn.as_mut() {
            Pin::new(conn).graceful_shutdown();
        }
    }

    fn take_leg(self: Pin<&mut Self>) -> Option<(Leg<'a>, bytes::Bytes)> {
        self.get_mut().leg.take()
    }
}

impl<'a, I, S, E> Connection<'a> for http2::Connection<I, S, E>
where
    Self: Future<Output = Result<(), hyper::Error>> + Send,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

type Task<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Runs what hyper would spawn (HTTP/2 streams, client connections) inside the session's own
/// task, so those futures may borrow the session and end with it.
#[derive(Clone)]
pub struct LocalExec<'a> {
    tasks: mpsc::UnboundedSender<Task<'a>>,
}

impl<'a> LocalExec<'a> {
    fn new() -> (Self, mpsc::UnboundedReceiver<Task<'a>>) {
        let (tasks, spawned) = mpsc::unbounded_channel();
        (LocalExec { tasks }, spawned)
    }

    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'a) {
        // The receiver lives as long as the session; after it, nothing needs running.
        let _ = self.tasks.send(Box::pin(task));
    }
}

impl<'a, F: Future<Output = ()> + Send + 'a> hyper::rt::Executor<F> for LocalExec<'a> {
    fn execute(&self, future: F) {
        self.spawn(future);
    }
}

/// The agent's leg, counting bytes each way for the session (and its idle clock).
struct Counted<'a, S> {
    inner: S,
    counters: &'a Counters,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counters.up.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counters.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
