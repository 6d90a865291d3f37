//! The agent's leg: a russh server that accepts any login and passes everything else to the
//! session's task as [`Event`]s.
//!
//! Why it accepts any login: the kernel has already attributed the connection to a process
//! and a user, which the journal's session records; a password or key the agent presents
//! would prove nothing more, and the agent must hold no real credential at all. The login
//! still waits for the upstream's (see [`Event::Login`]), so an agent is only told it is in
//! once the gateway is in too.
//!
//! Why it only passes messages: russh runs this handler on a task of its own, which cannot
//! borrow the session's hooks. Channel requests (exec, shell, pty, env, x11, subsystem) arrive
//! on the [`Channel`] itself and are answered by the session through the session's handle.

use std::{borrow::Cow, time::Duration};

use russh::{
    server::{Auth, ChannelOpenHandle, Config, Handler, Msg, Session},
    Channel, ChannelId, MethodKind, MethodSet, SshId,
};
use tokio::sync::{mpsc, oneshot};

use crate::ssh_trust::SshTrust;

/// What the agent's connection asks of the session.
pub enum Event {
    /// A login attempt; answered `true` once the upstream login succeeded.
    Login {
        user: String,
        /// `none`, `password` or `publickey`: how the agent tried (never what it presented).
        method: &'static str,
        answer: oneshot::Sender<bool>,
    },
    /// The login was accepted.
    Authenticated,
    /// A session channel (exec, shell or subsystem to come), already confirmed.
    Session(Channel<Msg>),
    /// A `direct-tcpip` channel (`ssh -L`, `ssh -W`), not yet confirmed.
    DirectTcpip(DirectOpen),
    /// A `tcpip-forward` global request (`ssh -R`); answered with whether it is granted.
    TcpipForward {
        address: String,
        port: u32,
        answer: oneshot::Sender<bool>,
    },
}

/// A `direct-tcpip` channel waiting for its answer: dropping `reply` refuses it.
pub struct DirectOpen {
    pub channel: Channel<Msg>,
    pub host: String,
    pub port: u32,
    pub reply: ChannelOpenHandle,
}

/// The server configuration: the gateway's host key and its certificate, the login methods
/// agents' clients try first, and no inactivity timer of russh's own (the session's
/// [`crate::protocol::Idle`] keeps that clock, and knows about held commands).
pub fn config(trust: SshTrust) -> Config {
    Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-interceptor")),
        methods: MethodSet::from(
            &[
                MethodKind::None,
                MethodKind::PublicKey,
                MethodKind::Password,
            ][..],
        ),
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![trust.host_key],
        certificates: vec![trust.host_cert],
        inactivity_timeout: None,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: Cow::Borrowed(super::AGENT_CIPHERS),
            ..russh::Preferred::default()
        },
        ..Config::default()
    }
}

/// One agent connection's handler.
pub struct Agent {
    events: mpsc::Sender<Event>,
    /// Shown as the login banner of a session the gateway refuses.
    refusal: Option<String>,
}

impl Agent {
    pub fn new(events: mpsc::Sender<Event>, refusal: Option<String>) -> Agent {
        Agent { events, refusal }
    }

    async fn login(&mut self, user: &str, method: &'static str) -> Result<Auth, russh::Error> {
        let (answer, answered) = oneshot::channel();
        let asked = Event::Login {
            user: user.to_owned(),
            method,
            answer,
        };
        if self.events.send(asked).await.is_err() {
            return Ok(Auth::reject());
        }
        Ok(match answered.await {
            Ok(true) => Auth::Accept,
            _ => Auth::Reject {
                proceed_with_methods: Some(MethodSet::empty()),
                partial_success: false,
            },
        })
    }
}

impl Handler for Agent {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self
            .refusal
            .as_ref()
            .map(|message| format!("interceptor: {message}\r\n")))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.login(user, "none").await
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.login(user, "password").await
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.login(user, "publickey").await
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let _ = self.events.send(Event::Authenticated).await;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let _ = self.events.send(Event::Session(channel)).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let open = DirectOpen {
            channel,
            host: host_to_connect.to_owned(),
            port: port_to_connect,
            reply,
        };
        let _ = self.events.send(Event::DirectTcpip(open)).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (answer, answered) = oneshot::channel();
        let asked = Event::TcpipForward {
            address: address.to_owned(),
            port: *port,
            answer,
        };
        if self.events.send(asked).await.is_err() {
            return Ok(false);
        }
        Ok(answered.await.unwrap_or(false))
    }

    /// Answered here, while russh still knows whether this request wants an answer (answering
    /// later, from the channel's task, could consume the answer owed to the exec or shell
    /// that follows). The pty itself reaches the channel's task, which replays it upstream.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    /// Refused here (see [`Agent::pty_request`]); the channel's task journals it.
    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    /// Refused here (see [`Agent::pty_request`]); the channel's task journals it.
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    /// Never relayed: the channel's task journals the request (it arrives there too).
    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
