//! One captured connection, start to finish, as a fixed sequence of phases (after Pingora's
//! `ProxyHttp`):
//!
//! 1. **identify**: the kernel's connect-time record for this client tuple, completed from
//!    /proc. No record means the connection did not come through our hooks: journal an anomaly
//!    and close. A routed Unix connection has no kernel record: its peer's credentials stand
//!    in, and a peer outside the captured cgroups is an anomaly in the same way
//!    (`capture::peer`).
//! 2. **route**: which target (if any) the original destination belongs to, and the upstream.
//!    A routed Unix socket belongs to the target of the listener it arrived on.
//!
//! From phase 3 on, a session is the same whichever listener it came from: the agent's leg is a
//! [`ClientStream`], TCP or Unix.
//! 3. **decide**: policy judges the connection itself (an egress allowlist for plain TCP).
//! 4. **record**: the session and that decision are committed to the journal *before*
//!    anything else happens. If the journal cannot be written, the connection is closed.
//! 5. **admit**: one that would loop into the gateway ends here; one that policy denies, or
//!    that a limit on open sessions refuses (`limits`), is refused: the protocol tells the
//!    client why in its own words, once the client can hear it (phase 6).
//! 6. **client start-up**: the protocol's start-up with the client (PostgreSQL: TLS, the
//!    start-up packet, `local_auth`), within `[limits] startup_timeout_secs`. Plain TCP has
//!    none.
//! 7. **upstream**: only for an accepted client, the protocol dials through [`Upstream`]: the
//!    one address admitted in phase 5, within the connect timeout.
//! 8. **relay**: the protocol module moves the bytes, judging each command through the hooks,
//!    until both sides are done, one fails, or the session is idle for
//!    `[limits] idle_timeout_secs`.
//! 9. **log**: always runs last: close, byte counts and outcome go to the journal.
//!
//! Phases 6 to 8 run inside the protocol (`protocol::serve`), which knows when its client is
//! accepted and how to tell it why not; what they may do is decided here.

use std::{net::SocketAddr, os::fd::AsFd as _, sync::Arc};

use tokio::net::{TcpStream, UnixStream};
use tracing::Instrument as _;

use super::{
    hooks::{SessionHooks, SessionInfo},
    unix_routes::UnixRoute,
    Gateway,
};
use crate::{
    capture::{identity::Identity, peer, programs::key_addr},
    journal::{Event, NewSession, Outcome},
    policy::{DecisionKind, Request, Subject},
    protocol::{
        self, ClientStream, Counters, Dial, DialError, Ending, Idle, ProtocolError, Refusal,
        RefusalKind,
    },
    target::Target,
};

/// Who arrived, where they were going, and the target that is: the outcome of phases 1 and 2.
struct Arrival<'g> {
    identity: Identity,
    /// The client's address as journaled: `ip:port`, or `unix` for a routed socket.
    client_addr: String,
    /// What the client dialed, as journaled: `ip:port`, or `unix:<path>`.
    destination: String,
    /// The TCP address the client dialed (`None` for a routed Unix socket): the upstream of a
    /// target without one, and what the loop guard checks.
    dialed: Option<SocketAddr>,
    target: Option<&'g Target>,
}

/// A TCP connection from the loopback listeners.
pub async fn run(gateway: Arc<Gateway>, client: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("session", client = %peer);
    async {
        // Phase 1: identify.
        let Some(record) = gateway.lookup.take(peer) else {
            tracing::warn!(client = %peer, "connection without a capture record: closed");
            let anomaly = Anomaly {
                client_addr: peer.to_string(),
                original_dst: "unknown".to_owned(),
                protocol: "tcp",
                identity: Identity::default(),
                reason: "no capture record for client".to_owned(),
                detail: "no capture record",
            };
            journal_anomaly(&gateway, anomaly).await;
            return; // dropping `client` closes it
        };
        let identity = gateway.identities.identify(&record);
        let original_dst = key_addr(&record.dst);
        // Phase 2: route.
        let arrival = Arrival {
            identity,
            client_addr: peer.to_string(),
            destination: original_dst.to_string(),
            dialed: Some(original_dst),
            target: gateway.route(original_dst),
        };
        handle(&gateway, arrival, client).await
    }
    .instrument(span)
    .await
}

/// A connection the kernel routed from `route.routed` to this listener (`unix_routes`).
pub async fn run_unix(gateway: Arc<Gateway>, client: UnixStream, route: Arc<UnixRoute>) {
    let span = tracing::info_span!("session", client = "unix", routed = %route.routed);
    async {
        let destination = format!("unix:{}", route.routed);
        // Phase 1: identify, by the peer's credentials, and only a captured peer: anyone on
        // the host can reach the listener's file.
        let record = match peer::attribute(client.as_fd(), &gateway.captured) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, %destination, "routed Unix connection from outside the capture: closed");
                let (pid, uid, gid) = e.credentials().unwrap_or_default();
                let anomaly = Anomaly {
                    client_addr: "unix".to_owned(),
                    original_dst: destination,
                    protocol: "unix",
                    identity: Identity {
                        pid,
                        uid,
                        gid,
                        ..Identity::default()
                    },
                    reason: e.to_string(),
                    detail: "not a captured process",
                };
                journal_anomaly(&gateway, anomaly).await;
                return;
            }
        };
        let identity = gateway.identities.identify(&record);
        // Phase 2: route. The listener is the route's; config validation gave its target an
        // upstream.
        let arrival = Arrival {
            identity,
            client_addr: "unix".to_owned(),
            destination,
            dialed: None,
            target: gateway.targets.iter().find(|t| t.name == route.target),
        };
        handle(&gateway, arrival, client).await
    }
    .instrument(span)
    .await
}

async fn handle(gateway: &Gateway, arrival: Arrival<'_>, client: impl ClientStream) {
    let Arrival {
        identity,
        client_addr,
        destination,
        dialed,
        target,
    } = arrival;
    let protocol = target.map(|t| t.protocol).unwrap_or_default();
    let upstream_addr = target.and_then(|t| t.upstream).or(dialed);

    // Phase 3: decide about the connection itself.
    let groups = gateway
        .identities
        .groups(identity.uid, identity.gid, identity.user.as_deref());
    let run_id = gateway.run_ids.for_cgroup(identity.cgroup_id);
    let subject = Subject {
        uid: identity.uid,
        user: identity.user.clone(),
        groups,
        exe: identity.exe.clone(),
        unit: identity.unit.clone(),
        cgroup: identity.cgroup_path.clone(),
        run_id: Some(run_id.clone()),
    };
    let target_name = target.map(|t| t.name.clone());
    let connection = gateway.policy.evaluate(
        &subject,
        target_name.as_deref(),
        protocol.as_str(),
        Request::Connect {
            destination: &destination,
        },
    );

    // The session's masking applies to what the journal keeps about it, from the first row.
    let masking = gateway.policy.masking(
        &subject,
        target_name.as_deref(),
        protocol.as_str(),
        gateway.mask_key.clone(),
        gateway.sample_rows,
    );
    let mut identity = identity;
    if let (Some(m), Some(cmdline)) = (&masking, &identity.cmdline) {
        identity.cmdline = Some(m.mask_text(cmdline).0.into_owned());
    }

    // Phase 4: record, before anything goes upstream.
    let session = NewSession {
        run_id: Some(run_id),
        identity,
        client_addr,
        original_dst: destination.clone(),
        target: target_name.clone(),
        protocol: protocol.as_str().to_owned(),
        upstream: upstream_addr.map(|a| a.to_string()),
        decision: Some(connection.decision.as_str().to_owned()),
        rule: connection.rule.clone(),
    };
    let pid = session.identity.pid;
    let session_id = match gateway.journal.open_session(session).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, %destination, pid, "journal unavailable: refusing connection");
            return;
        }
    };
    tracing::info!(session_id, pid, %destination, "session opened");
    let _open = gateway
        .stats
        .session_opened(target_name.as_deref().unwrap_or(""), protocol.as_str());
    gateway.stats.decided(
        target_name.as_deref(),
        connection.rule.as_deref(),
        connection.decision.as_str(),
    );

    let counters = Counters::default();
    let hooks = SessionHooks::new(
        gateway.journal.clone(),
        gateway.policy.clone(),
        gateway.approvals.clone(),
        gateway.review_timeout,
        gateway.stats.clone(),
        SessionInfo {
            session_id,
            subject,
            pid,
            target: target_name,
            protocol: protocol.as_str(),
            masking,
        },
    );

    // Phase 5: admit.
    let (outcome, detail) = match admit(gateway, &hooks, upstream_addr, dialed, &connection) {
        Err(why) => {
            tracing::warn!(session_id, %destination, reason = %why, "connection refused");
            (Outcome::Refused, Some(why))
        }
        Ok(Admitted {
            upstream,
            refusal,
            permit,
            telling,
        }) => {
            match &refusal {
                Some(r) if r.kind == RefusalKind::Policy => {
                    tracing::warn!(session_id, %destination, reason = %r.message, "connection refused by policy");
                }
                // A flood of these is what the limits are for: warned about, not one by one.
                Some(r) => {
                    if let Some(refused) = gateway.admission.refusals_to_report() {
                        tracing::warn!(refused, latest = %r.message, "sessions refused by [limits]");
                    }
                }
                None => {}
            }
            // Phases 6 to 8: the protocol's, within what was admitted.
            let waiting = || hooks.awaiting_approval();
            let limits = gateway.admission.limits();
            let session = protocol::Session {
                hooks: &hooks,
                target,
                shared: &gateway.protocols,
                counters: &counters,
                dialed,
                upstream: &upstream,
                startup_timeout: limits.startup_timeout,
                idle: Idle {
                    after: limits.idle_timeout,
                    counters: &counters,
                    waiting: &waiting,
                },
                refusal,
            };
            let served = protocol::serve(session, client).await;
            // The session's place is free again before its close is journaled.
            drop((permit, telling));
            ending(gateway, served)
        }
    };

    // Phase 9: log. Always runs.
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

/// What phase 5 lets a session do.
struct Admitted<'g> {
    /// The only upstream the protocol may dial.
    upstream: Upstream,
    /// Why the client is refused; it is told by the protocol, and nothing is dialed for it.
    refusal: Option<Refusal>,
    /// Counts the session against the limits until it ends (`None` when refused).
    permit: Option<crate::limits::Permit<'g>>,
    /// Counts a refused client being told why.
    telling: Option<crate::limits::RefusalSlot<'g>>,
}

/// Phase 5: the loop guard, the connection's policy decision, then the limits. `Err`: close
/// without a word, for the reason given (there is no upstream, it is the gateway itself, or
/// too many refused clients are being told why already).
fn admit<'g>(
    gateway: &'g Gateway,
    hooks: &SessionHooks,
    upstream_addr: Option<SocketAddr>,
    dialed: Option<SocketAddr>,
    connection: &crate::policy::Verdict,
) -> Result<Admitted<'g>, String> {
    // A routed socket whose target is gone: nowhere to go, and no dialed address to fall
    // back on.
    let upstream_addr = upstream_addr.ok_or("no upstream for this destination")?;
    if gateway.is_own_address(upstream_addr) || dialed.is_some_and(|d| gateway.is_own_address(d)) {
        return Err("destination is the gateway itself".to_owned());
    }
    let upstream = Upstream {
        addr: upstream_addr,
        timeout: gateway.connect_timeout,
    };
    let subject = &hooks.subject;
    let run = subject.run_id.as_deref().unwrap_or_default();
    // A connection policy does not allow is refused (and so are reviews of connections:
    // there is nothing to hold). It never holds an upstream, so no limit applies.
    let refusal = if connection.decision != DecisionKind::Allow {
        Refusal {
            kind: RefusalKind::Policy,
            message: connection.message.clone(),
        }
    } else {
        match gateway.admission.admit(subject.uid, run) {
            Ok(permit) => {
                return Ok(Admitted {
                    upstream,
                    refusal: None,
                    permit: Some(permit),
                    telling: None,
                })
            }
            Err(too_many) => {
                gateway.stats.refused.add([too_many.key], 1);
                Refusal {
                    kind: RefusalKind::TooManySessions,
                    message: too_many.to_string(),
                }
            }
        }
    };
    // Telling means waiting for the client's start-up, on a descriptor: bounded.
    let Some(telling) = gateway.admission.refusal_slot() else {
        return Err(format!(
            "{} (closed at once: {} refused clients are being told why already)",
            refusal.message,
            crate::limits::REFUSALS_IN_FLIGHT
        ));
    };
    Ok(Admitted {
        upstream,
        refusal: Some(refusal),
        permit: None,
        telling: Some(telling),
    })
}

/// The outcome and detail the log phase journals for what the protocol returned.
fn ending(gateway: &Gateway, served: Result<(), ProtocolError>) -> (Outcome, Option<String>) {
    let ending = match served {
        Ok(()) => return (Outcome::Closed, None),
        Err(ProtocolError::Ended(ending)) => ending,
        Err(e) => return (Outcome::Error, Some(e.to_string())),
    };
    match ending {
        Ending::StartupTimeout(_) => {
            gateway.stats.timeouts.add(["startup"], 1);
            (Outcome::Timeout, Some(ending.to_string()))
        }
        Ending::IdleTimeout(_) => {
            gateway.stats.timeouts.add(["idle"], 1);
            (Outcome::Timeout, Some(ending.to_string()))
        }
        // The reason alone, as before the upstream moved behind the client's start-up.
        Ending::Unreachable(e) => (Outcome::UpstreamFailed, Some(e.reason)),
        Ending::Refused(refusal) => (Outcome::Refused, Some(refusal.message)),
    }
}

/// Phase 7: the session's one upstream, made only in phase 5, past the loop guard.
struct Upstream {
    addr: SocketAddr,
    timeout: std::time::Duration,
}

impl Dial for Upstream {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn dial(&self) -> Result<TcpStream, DialError> {
        match tokio::time::timeout(self.timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            failed => Err(DialError {
                addr: self.addr,
                reason: match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("connect timed out after {:?}", self.timeout),
                },
            }),
        }
    }
}

/// A connection the gateway cannot attribute to a captured process, as journaled.
struct Anomaly {
    client_addr: String,
    original_dst: String,
    protocol: &'static str,
    /// What is known of the peer (nothing, for TCP); never trusted, so always marked stale.
    identity: Identity,
    reason: String,
    detail: &'static str,
}

async fn journal_anomaly(gateway: &Gateway, anomaly: Anomaly) {
    gateway.stats.anomalies.add([anomaly.detail], 1);
    let Anomaly {
        client_addr,
        original_dst,
        protocol,
        identity,
        reason,
        detail,
    } = anomaly;
    let session = NewSession {
        run_id: None,
        identity: Identity {
            comm: String::new(),
            stale: true,
            ..identity
        },
        client_addr: client_addr.clone(),
        original_dst,
        target: None,
        protocol: protocol.to_owned(),
        upstream: None,
        decision: None,
        rule: None,
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
                    serde_json::json!({ "reason": reason, "client": client_addr }),
                )
            })
            .await?;
        gateway
            .journal
            .close_session(id, 0, 0, Outcome::Anomaly, Some(detail.to_owned()))
            .await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "could not journal an anomaly");
    }
}
