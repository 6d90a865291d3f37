//! The session's one upstream connection, opened on the first request that is allowed, and
//! again when the server closes a kept-alive connection.
//!
//! Why this exists: the agent's leg may be HTTP/2 with concurrent streams while the upstream
//! speaks HTTP/1.1, or the other way round; hyper translates, and this module keeps one
//! sender that every request of the session goes through (HTTP/1.1 one exchange at a time,
//! HTTP/2 multiplexed). A request is never retried on a new connection: a held-then-approved
//! `DELETE` runs at most once.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, client::conn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use super::LocalExec;
use crate::{
    protocol::{postgres::BoxIo, Dial, DialError},
    tls,
};

/// The upstream could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream HTTP: {0}")]
    Http(#[from] hyper::Error),
}

enum Sender {
    H1(conn::http1::SendRequest<Full<Bytes>>),
    H2(conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

pub struct Upstream<'a, D: Dial> {
    dial: &'a D,
    tls: Option<&'a tls::Upstream>,
    /// Runs the connections' tasks, which own what they use.
    exec: LocalExec<'static>,
    sender: Mutex<Option<Sender>>,
}

impl<'a, D: Dial> Upstream<'a, D> {
    pub fn new(dial: &'a D, tls: Option<&'a tls::Upstream>, exec: LocalExec<'static>) -> Self {
        Upstream {
            dial,
            tls,
            exec,
            sender: Mutex::new(None),
        }
    }

    /// Dials, with TLS when the target's upstream has it, offering `alpn`; whether the server
    /// chose HTTP/2.
    async fn dial(&self, alpn: &[&[u8]]) -> Result<(BoxIo, bool), UpstreamError> {
        let tcp = self.dial.dial().await?;
        let _ = tcp.set_nodelay(true);
        let addr = self.dial.addr();
        let tls = self.tls.and_then(|t| Some((t, t.connector.as_ref()?)));
        Ok(match tls {
            None => (Box::new(tcp), false),
            Some((tls, connector)) => {
                let stream = connector
                    .with_alpn(alpn.iter().map(|p| p.to_vec()).collect())
                    .connect(tls.name_for(addr), tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                (Box::new(stream), h2)
            }
        })
    }

    /// Dials (ALPN: HTTP/2 when the server offers it).
    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let (io, h2) = self.dial(&[b"h2", b"http/1.1"]).await?;
        let io = TokioIo::new(io);
        if h2 {
            let (sender, connection) = conn::http2::Builder::new(self.exec.clone())
                .handshake(io)
                .await?;
            self.exec.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, connection) = conn::http1::handshake(io).await?;
            self.exec.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Sends a request asking to switch protocols on a connection of its own, HTTP/1.1 only
    /// (upgrades do not exist in HTTP/2), that may become the stream: the session's shared
    /// connection keeps serving its other requests. The caller takes the switched connection
    /// with [`hyper::upgrade::on`] when the answer is 101.
    pub async fn send_upgrade(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (io, _) = self.dial(&[b"http/1.1"]).await?;
        let (mut sender, connection) = conn::http1::handshake(TokioIo::new(io)).await?;
        self.exec.spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended");
            }
        });
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }

    /// Sends one request; `build` makes it for HTTP/2 (`true`) or HTTP/1.1.
    pub async fn send(
        &self,
        build: impl FnOnce(bool) -> Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut guard = self.sender.lock().await;
        let sender = match guard.take() {
            Some(open) if !open.is_closed() => guard.insert(open),
            _ => guard.insert(self.connect().await?),
        };
        let response = match sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                let response = sender.send_request(build(false));
                drop(guard);
                response.await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                let response = sender.send_request(build(true));
                drop(guard);
                response.await?
            }
        };
        Ok(response)
    }
}
