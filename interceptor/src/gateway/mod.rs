//! The gateway: listeners on loopback, one task per captured connection.
//!
//! Why this exists: it ties capture, journal and protocols together without any of them
//! knowing about each other. The accept loop here is deliberately dull; the interesting part,
//! the fixed sequence of phases every session goes through, is in [`session`]. Besides the
//! loopback TCP listeners it accepts on the listeners of routed Unix sockets ([`unix_routes`]).

pub mod hooks;
pub mod session;
pub mod stats;
pub mod unix_refusals;
pub mod unix_routes;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::task::TaskTracker;

use crate::{
    capture::{
        identity::IdentityCache, peer::CapturedCgroups, programs::Steering, ConnectionLookup,
    },
    journal::Journal,
    target::{DestPattern, Target},
};

/// How sessions get their run id.
#[derive(Debug, Clone)]
pub enum RunIds {
    /// `exec`: the gateway serves exactly one run.
    Fixed(String),
    /// Service: one run per incarnation of a captured cgroup (a restarted unit gets a new
    /// cgroup, hence a new id).
    PerCgroup,
}

impl RunIds {
    pub fn for_cgroup(&self, cgroup_id: u64) -> String {
        match self {
            RunIds::Fixed(id) => id.clone(),
            RunIds::PerCgroup => format!("cg-{cgroup_id}"),
        }
    }
}

/// Everything a session task needs; shared read-only by all of them.
pub struct Gateway {
    pub lookup: Arc<dyn ConnectionLookup>,
    pub journal: Journal,
    pub targets: Vec<Target>,
    pub run_ids: RunIds,
    pub connect_timeout: Duration,
    /// The listeners' own addresses: a captured connection to them would loop.
    pub own_addrs: Vec<SocketAddr>,
    pub identities: IdentityCache,
    pub protocols: crate::protocol::Shared,
    pub policy: std::sync::Arc<crate::policy::Engine>,
    pub approvals: std::sync::Arc<crate::approval::Approvals>,
    pub review_timeout: Duration,
    /// The `hash` masking strategy's key; `None` (it could not be read) makes hashing redact.
    pub mask_key: Option<std::sync::Arc<crate::mask::HashKey>>,
    /// Rows of each result the journal keeps (masked).
    pub sample_rows: usize,
    /// Where the programs are attached: a routed Unix connection is served only to a peer in
    /// one of these (`capture::peer`).
    pub captured: CapturedCgroups,
    /// Sessions, decisions and anomalies so far (`interceptor status`, metrics).
    pub stats: Arc<stats::Stats>,
    /// The sessions open now, against the limits, and the timeouts (`[limits]`).
    pub admission: crate::limits::Admission,
}

impl Gateway {
    /// The target of a connection to `original_dst`, the most specific match first: a target
    /// that intercepts that exact address; else the target whose upstream it is (an agent that
    /// learnt a target's real address, and perhaps its password, reaches the same gate there:
    /// parsed and judged as that target, never relayed as plain TCP); else a target that
    /// intercepts any address on its port. So a catch-all `*:5432` never shadows a target
    /// added for one address; two targets with the same pattern are a config error.
    pub fn route(&self, original_dst: SocketAddr) -> Option<&Target> {
        route_in(&self.targets, original_dst)
    }

    pub fn is_own_address(&self, dst: SocketAddr) -> bool {
        let dst = crate::target::normalize(dst);
        self.own_addrs.iter().any(|own| {
            own.port() == dst.port() && (own.ip() == dst.ip() || dst.ip().is_unspecified())
        })
    }
}

/// [`Gateway::route`] over a list of targets.
pub fn route_in(targets: &[Target], original_dst: SocketAddr) -> Option<&Target> {
    let dst = crate::target::normalize(original_dst);
    let intercepts = |t: &&Target, exact: bool| {
        t.intercept.iter().any(|p: &DestPattern| {
            matches!(p, DestPattern::Exact(_)) == exact && p.matches(original_dst)
        })
    };
    targets
        .iter()
        .find(|t| intercepts(t, true))
        .or_else(|| {
            targets
                .iter()
                .find(|t| t.upstream.map(crate::target::normalize) == Some(dst))
        })
        .or_else(|| targets.iter().find(|t| intercepts(t, false)))
}

/// The proxy's listening sockets: 127.0.0.1 and, when the host has IPv6, [::1]; and one Unix
/// listener per routed socket path (bound separately, [`unix_routes::bind`]).
pub struct Listeners {
    pub v4: TcpListener,
    pub v6: Option<TcpListener>,
    pub unix: Vec<unix_routes::RouteListener>,
}

impl Listeners {
    /// Binds both on `port` (0: any free port, the same one for both when possible).
    pub fn bind(port: u16) -> std::io::Result<Listeners> {
        for _ in 0..20 {
            let v4 = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
            let chosen = v4.local_addr()?.port();
            match listen(SocketAddr::from((Ipv6Addr::LOCALHOST, chosen))) {
                Ok(v6) => {
                    return Ok(Listeners {
                        v4,
                        v6: Some(v6),
                        unix: Vec::new(),
                    })
                }
                // Another process holds [::1]:chosen; with an ephemeral port, try another.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port == 0 => continue,
                // No IPv6 on this host: IPv6 connects will be refused (fail closed).
                Err(e) => {
                    tracing::warn!(error = %e, "no IPv6 loopback listener; captured IPv6 connections will be refused");
                    return Ok(Listeners {
                        v4,
                        v6: None,
                        unix: Vec::new(),
                    });
                }
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "could not find a port free on both 127.0.0.1 and [::1]",
        ))
    }

    /// [`Listeners::bind`], plus a listener for each Unix socket the targets route
    /// ([`unix_routes::bind`]) under `<runtime_dir>/routes/<run>/`. The directory is removed
    /// when the returned guard drops: keep it until the gateway has stopped.
    pub fn bind_with_routes(
        port: u16,
        runtime_dir: &std::path::Path,
        run: &str,
        targets: &[Target],
    ) -> std::io::Result<(Listeners, Option<unix_routes::RouteDir>)> {
        let mut listeners = Listeners::bind(port)?;
        let (dir, routes) = unix_routes::bind(runtime_dir, run, targets)?;
        listeners.unix = routes;
        Ok((listeners, dir))
    }

    /// Where capture is to steer connections into these listeners.
    pub fn steering(&self) -> Steering {
        Steering {
            port4: self.port4(),
            port6: self.port6(),
            unix_routes: self
                .unix
                .iter()
                .map(|l| (l.route.routed.clone(), l.route.listener.clone()))
                .collect(),
        }
    }

    pub fn port4(&self) -> u16 {
        self.v4.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn port6(&self) -> u16 {
        self.v6
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port())
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.v4.local_addr().into_iter().collect();
        if let Some(v6) = &self.v6 {
            addrs.extend(v6.local_addr());
        }
        addrs
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Stops accepting, gives in-flight sessions a bounded time to finish (so they journal their
/// close), then waits until everything queued for the journal is committed.
pub async fn drain(
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<TaskTracker>,
    journal: &Journal,
) -> Result<(), crate::journal::JournalError> {
    let _ = stop.send(true);
    if let Ok(tracker) = server.await {
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
    journal.flush().await
}

/// Accepts until the task is aborted, handing each connection to `start`.
async fn accept_loop<C, F>(accept: impl Fn() -> F, start: impl Fn(C))
where
    F: std::future::Future<Output = std::io::Result<C>>,
{
    loop {
        match accept().await {
            Ok(connection) => start(connection),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts on all listeners until `shutdown` fires, one task per connection, and journals the
/// kernel's Unix-socket refusals. Returns the tracker so the caller can wait for in-flight
/// sessions (and the last refusals) to finish journaling.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    unix_refusals: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    if let Some(ring) = unix_refusals {
        tracker.spawn(unix_refusals::journal_refusals(
            gateway.clone(),
            ring,
            shutdown.clone(),
        ));
    }
    let mut accepts = Vec::new();
    let all = std::iter::once(listeners.v4).chain(listeners.v6);
    for listener in all {
        let gateway = gateway.clone();
        let tracker = tracker.clone();
        accepts.push(tokio::spawn(async move {
            accept_loop(
                || listener.accept(),
                |(stream, peer)| {
                    tracker.spawn(session::run(gateway.clone(), stream, peer));
                },
            )
            .await
        }));
    }
    for route in listeners.unix {
        let gateway = gateway.clone();
        let tracker = tracker.clone();
        accepts.push(tokio::spawn(async move {
            accept_loop(
                || route.listener.accept(),
                |(stream, _)| {
                    tracker.spawn(session::run_unix(
                        gateway.clone(),
                        stream,
                        route.route.clone(),
                    ));
                },
            )
            .await
        }));
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    for accept in accepts {
        accept.abort();
    }
    tracker.close();
    tracker
}
