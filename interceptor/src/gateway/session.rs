//! One captured connection, start to finish, as a fixed sequence of phases (after Pingora's
//! `ProxyHttp`):
//!
//! 1. **identify**: the kernel's connect-time record for this client tuple, completed from
//!    /proc. No record means the connection did not come through our hooks: journal an anomaly
//!    and close.
//! 2. **route**: which target (if any) the original destination belongs to, and the upstream.
//! 3. **record**: the session is committed to the journal *before* anything goes upstream. If
//!    the journal cannot be written, the connection is closed: fail closed.
//! 4. **admit**: connection-level checks (today: the loop guard).
//! 5. **upstream**: connect, with a timeout.
//! 6. **relay**: the protocol module moves (and later judges and masks) the bytes.
//! 7. **log**: always runs last: close, byte counts and outcome go to the journal.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::{hooks::SessionHooks, Gateway};
use crate::{
    capture::{identity::Identity, programs::key_addr},
    config::Target,
    journal::{Event, NewSession, Outcome},
    protocol::{self, Counters},
};

pub async fn run(gateway: Arc<Gateway>, client: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("session", client = %peer);
    handle(gateway, client, peer).instrument(span).await
}

async fn handle(gateway: Arc<Gateway>, client: TcpStream, peer: SocketAddr) {
    // Phase 1: identify.
    let Some(record) = gateway.lookup.take(peer) else {
        journal_anomaly(&gateway, peer).await;
        return; // dropping `client` closes it
    };
    let identity = gateway.identities.identify(&record);
    let original_dst = key_addr(&record.dst);

    // Phase 2: route.
    let target = gateway.route(original_dst);
    let protocol = target.map(|t| t.protocol).unwrap_or_default();
    let upstream_addr = target.and_then(|t| t.upstream).unwrap_or(original_dst);

    // Phase 3: record, before anything goes upstream.
    let session = NewSession {
        run_id: Some(gateway.run_ids.for_cgroup(identity.cgroup_id)),
        identity,
        client_addr: peer.to_string(),
        original_dst: original_dst.to_string(),
        target: target.map(|t| t.name.clone()),
        protocol: protocol.as_str().to_owned(),
        upstream: Some(upstream_addr.to_string()),
    };
    let pid = session.identity.pid;
    let session_id = match gateway.journal.open_session(session).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, %original_dst, pid, "journal unavailable: refusing connection");
            return;
        }
    };
    tracing::info!(session_id, pid, %original_dst, "session opened");

    let counters = Counters::default();
    let hooks = SessionHooks {
        journal: gateway.journal.clone(),
        session_id,
    };
    let (outcome, detail) = relay_phases(
        &gateway,
        &hooks,
        client,
        original_dst,
        upstream_addr,
        target,
        &counters,
    )
    .await;

    // Phase 7: log. Always runs.
    // Nothing is forwarded after this point, so the close need not hold up the task: it is
    // queued in order, and shutdown waits for the queue (`Journal::flush`).
    let (up, down) = counters.snapshot();
    gateway
        .journal
        .record_close(session_id, up, down, outcome, detail.clone());
    tracing::info!(
        session_id,
        outcome = outcome.as_str(),
        bytes_up = up,
        bytes_down = down,
        detail = detail.as_deref().unwrap_or(""),
        "session closed"
    );
}

/// Phases 4 to 6. Returns the outcome for the log phase.
async fn relay_phases(
    gateway: &Gateway,
    hooks: &SessionHooks,
    client: TcpStream,
    original_dst: SocketAddr,
    upstream_addr: SocketAddr,
    target: Option<&Target>,
    counters: &Counters,
) -> (Outcome, Option<String>) {
    // Phase 4: admit.
    if gateway.is_own_address(upstream_addr) || gateway.is_own_address(original_dst) {
        return (
            Outcome::Refused,
            Some("destination is the gateway itself".to_owned()),
        );
    }

    // Phase 5: upstream.
    let upstream = match tokio::time::timeout(
        gateway.connect_timeout,
        TcpStream::connect(upstream_addr),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return (Outcome::UpstreamFailed, Some(e.to_string())),
        Err(_) => {
            return (
                Outcome::UpstreamFailed,
                Some(format!(
                    "connect timed out after {:?}",
                    gateway.connect_timeout
                )),
            )
        }
    };

    // Phase 6: relay, in the target's protocol.
    let session = protocol::Session {
        hooks,
        target,
        shared: &gateway.protocols,
        counters,
        dialed: original_dst,
        upstream_addr,
    };
    match protocol::serve(session, client, upstream).await {
        Ok(()) => (Outcome::Closed, None),
        Err(e) => (Outcome::Error, Some(e.to_string())),
    }
}

async fn journal_anomaly(gateway: &Gateway, peer: SocketAddr) {
    tracing::warn!(client = %peer, "connection without a capture record: closed");
    let session = NewSession {
        run_id: None,
        identity: Identity {
            comm: String::new(),
            stale: true,
            ..Identity::default()
        },
        client_addr: peer.to_string(),
        original_dst: "unknown".to_owned(),
        target: None,
        protocol: "tcp".to_owned(),
        upstream: None,
    };
    let result = async {
        let id = gateway.journal.open_session(session).await?;
        gateway
            .journal
            .event(Event {
                decision: Some("deny".to_owned()),
                ..Event::note(
                    Some(id),
                    "anomaly",
                    serde_json::json!({ "reason": "no capture record for client", "client": peer.to_string() }),
                )
            })
            .await?;
        gateway
            .journal
            .close_session(id, 0, 0, Outcome::Anomaly, Some("no capture record".to_owned()))
            .await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "could not journal an anomaly");
    }
}
