//! SSH (`protocol = "ssh"`): the gateway is the SSH server the agent logs in to and the SSH
//! client the real server sees, so every channel request (a command, a shell, a subsystem, a
//! forward) is a [`crate::command::Command`] judged, journaled and, when held, approved before
//! the server hears of it.
//!
//! Why this exists: an agent's `ssh host 'rm -rf /srv'` is one connection carrying commands
//! that plain TCP relaying cannot see (the bytes are encrypted end to end). Terminating SSH
//! is the only way to judge each command, to keep the server's key away from the agent, and to
//! record interactive shells.
//!
//! - [`agent`]: the agent's leg, a russh server. It accepts any login (the kernel already said
//!   which process and user this is; the journal's session records that) and hands every
//!   channel to this session's task as an [`agent::Event`].
//! - [`upstream`]: the server's leg, a russh client logging in with `[target.credentials]`
//!   (user and OpenSSH private key) after checking the server's host key against the target's
//!   `known_hosts`. A mismatch ends the session and is journaled.
//! - [`channel`]: one session channel: its requests judged through [`Hooks`], then relayed,
//!   output masked, shells recorded as `terminal` events.
//! - [`forward`]: `direct-tcpip` channels and `tcpip-forward` requests, judged as forwards.
//! - [`sftp`]: the `sftp` subsystem's packets, each operation that opens, changes or removes a
//!   file judged on its own.
//!
//! russh runs each leg's connection on a task of its own, which cannot borrow the session's
//! hooks; so those tasks only pass messages, and everything that judges or records runs here,
//! on the session's task (the channels concurrently, so a held command never stalls the others).

pub mod agent;
pub mod channel;
pub mod forward;
pub mod known_hosts;
pub mod recording;
pub mod sftp;
pub mod upstream;

use std::{sync::Arc, time::Duration};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::mpsc;

use super::{ClientStream, Counters, Dial, Ending, Idle, Refusal};
use crate::{
    command::Hooks,
    ssh_trust::{SshTrust, SshTrustError},
    target::{Protocol, Target},
};

/// The ciphers the gateway offers toward the agent: AES-GCM first, then AES-CTR, and not
/// ChaCha20-Poly1305. The gateway decrypts and encrypts every byte twice (once per leg), and
/// ring's AES-GCM, on the CPU's AES instructions, costs a fraction of russh's ChaCha20-Poly1305
/// (docs/performance.md, SSH). The client's order decides which cipher a connection uses, and
/// OpenSSH's puts ChaCha20 first, so offering it would choose it; every SSH client in use
/// (OpenSSH, paramiko, asyncssh) also speaks AES.
pub const AGENT_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// The ciphers the gateway asks the server for, in its order (as the client, its order
/// decides): AES-GCM first for the reason above, ChaCha20-Poly1305 kept for a server without
/// AES-GCM.
pub const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Why an SSH session ended early. Refused channels do not end it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    #[error("agent leg: {0}")]
    Agent(String),
    #[error("upstream: {0}")]
    Upstream(#[from] upstream::UpstreamError),
    #[error("no SSH host key: an ssh target cannot be served")]
    NoHostKey,
    #[error(transparent)]
    Ended(#[from] Ending),
}

/// State shared by all SSH sessions: the server configuration toward agents, with the host key
/// and its certificate from the gateway's SSH CA ([`crate::ssh_trust`]).
pub struct Shared {
    server: Option<Arc<russh::server::Config>>,
}

impl Shared {
    /// Loads (or creates) the SSH CA and host key in `state_dir` when a target speaks SSH;
    /// nothing otherwise, so gateways without SSH targets never touch those files.
    pub fn new(targets: &[Target], state_dir: &std::path::Path) -> Result<Shared, SshTrustError> {
        if !targets.iter().any(|t| t.protocol == Protocol::Ssh) {
            return Ok(Shared { server: None });
        }
        let trust = SshTrust::load_or_create(state_dir)?;
        Ok(Shared {
            server: Some(Arc::new(agent::config(trust))),
        })
    }
}

/// Everything one session needs besides its two legs.
pub struct Context<'a, H: Hooks> {
    pub hooks: &'a H,
    pub target: &'a Target,
    pub shared: &'a Shared,
    pub counters: &'a Counters,
    pub startup_timeout: Duration,
    pub idle: &'a Idle<'a>,
}

/// Serves one agent connection: the SSH handshake and login within the start-up timeout (the
/// upstream login happens during the agent's, so a server that refuses us refuses the agent),
/// then channels until the agent disconnects or the session idles out. A refused session
/// shows the refusal as the login banner and rejects every login.
pub async fn serve<H: Hooks>(
    ctx: Context<'_, H>,
    client: impl ClientStream,
    dial: &impl Dial,
    refusal: Option<Refusal>,
) -> Result<(), SshError> {
    let config = ctx.shared.server.clone().ok_or(SshError::NoHostKey)?;
    client.no_delay();
    let (events, mut incoming) = mpsc::channel(16);
    let handler = agent::Agent::new(events, refusal.as_ref().map(|r| r.message.clone()));
    let running = russh::server::run_stream(config, client, handler)
        .await
        .map_err(|e| SshError::Agent(e.to_string()))?;
    let handle = running.handle();
    tokio::pin!(running);

    // The start-up: until the agent's login is settled, which needs the upstream's.
    let startup = tokio::time::sleep(ctx.startup_timeout);
    tokio::pin!(startup);
    let mut up: Option<upstream::Upstream> = None;
    let up = loop {
        tokio::select! {
            event = incoming.recv() => match event {
                Some(agent::Event::Login { user, method, answer }) => {
                    if let Some(refusal) = &refusal {
                        let _ = answer.send(false);
                        return Err(Ending::Refused(refusal.clone()).into());
                    }
                    match upstream::login(ctx.target, dial, ctx.hooks).await {
                        Ok(connected) => {
                            ctx.hooks.note(
                                "ssh_login",
                                serde_json::json!({
                                    "agent_user": user,
                                    "agent_method": method,
                                    "upstream_user": connected.user,
                                    "upstream_host_key": connected.host_key_fingerprint,
                                }),
                            );
                            let _ = answer.send(true);
                            up = Some(connected);
                        }
                        Err(e) => {
                            let _ = answer.send(false);
                            return Err(e.into());
                        }
                    }
                }
                Some(agent::Event::Authenticated) => {
                    if let Some(up) = up.take() {
                        break up;
                    }
                }
                // Nothing else can come before a login; what does is dropped (and refused).
                Some(_) => {}
                None => return Ok(()),
            },
            () = &mut startup => return Err(Ending::StartupTimeout(ctx.startup_timeout).into()),
            ended = &mut running => {
                return ended.map_err(|e| SshError::Agent(e.to_string()));
            }
        }
    };

    let cx = channel::Cx {
        hooks: ctx.hooks,
        counters: ctx.counters,
        agent: handle,
        upstream: &up,
        masking: ctx.hooks.body_masking(),
    };
    let mut channels = FuturesUnordered::new();
    let served = loop {
        tokio::select! {
            event = incoming.recv() => match event {
                Some(agent::Event::Session(chan)) => {
                    let task: ChannelTask<'_> = Box::pin(channel::run(&cx, chan));
                    channels.push(task);
                },
                Some(agent::Event::DirectTcpip(open)) => {
                    let task: ChannelTask<'_> = Box::pin(forward::direct(&cx, open));
                    channels.push(task);
                }
                Some(agent::Event::TcpipForward { address, port, answer }) => {
                    forward::remote(&cx, &address, port, answer).await;
                }
                Some(agent::Event::Login { answer, .. }) => {
                    // A second login on a connection already logged in: refused.
                    let _ = answer.send(false);
                }
                Some(agent::Event::Authenticated) => {}
                None => break Ok(()),
            },
            Some(()) = channels.next() => {}
            ended = &mut running => {
                break ended.map_err(|e| SshError::Agent(e.to_string()));
            }
            () = ctx.idle.expired() => {
                break Err(Ending::IdleTimeout(ctx.idle.after).into());
            }
        }
    };
    // Channels still open end with the connection.
    drop(channels);
    up.disconnect().await;
    served
}

/// A channel's future: it borrows the session, so it is run here, never spawned.
type ChannelTask<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_legs_offer_aes_gcm_first_and_only_ciphers_russh_implements() {
        for list in [AGENT_CIPHERS, UPSTREAM_CIPHERS] {
            assert_eq!(list[0], russh::cipher::AES_256_GCM);
            assert!(list.iter().all(|c| russh::cipher::ALL_CIPHERS.contains(&c)));
        }
        // Toward the agent the client's order decides: ChaCha20 offered would be chosen.
        assert!(!AGENT_CIPHERS.contains(&russh::cipher::CHACHA20_POLY1305));
    }
}
