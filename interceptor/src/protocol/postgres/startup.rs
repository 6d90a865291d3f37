//! Start-up: from the first packet to the first ReadyForQuery, on both legs, in two steps.
//!
//! [`accept_client`], the client's start-up with the gateway, before any upstream exists:
//! SSLRequest (terminated with the local CA when available), GSSENCRequest (declined),
//! CancelRequest, StartupMessage, and `local_auth` when the target has one. It must end by a
//! deadline (`[limits] startup_timeout_secs`); a late client is closed, and told so when the
//! protocol lets the server speak (while it owes the gateway its password).
//!
//! [`establish`], once the session has dialed the upstream: TLS per the target's mode, then
//! authentication. With credentials, the gateway authenticates itself (SCRAM-SHA-256, md5 or
//! cleartext) and tells the client only "AuthenticationOk"; without, the exchange passes
//! through unchanged except that SCRAM-SHA-256-PLUS is not offered (channel binding cannot
//! span two TLS sessions). The client always gets a BackendKeyData key we generated (see
//! [`super::cancel`]); a CancelRequest is forwarded with the server's real key.

use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use super::{
    cancel::{new_client_key, Key},
    codec::{self, backend, frontend, Message, Startup},
    reading, BoxIo, Context, PgError,
};
use crate::{
    command::Hooks,
    protocol::Ending,
    target::{Credentials, DatabaseCredentials},
    tls::{self, UpstreamTlsMode},
};

/// Both legs after start-up, ready for the query phase.
pub struct Legs {
    pub client: BoxIo,
    pub server: BoxIo,
    /// Bytes already read from each side beyond the start-up messages.
    pub client_buf: BytesMut,
    pub server_buf: BytesMut,
    pub client_key: Key,
    pub server_key: Key,
    /// The database the gateway logged in to (with credentials; `None` in passthrough).
    pub database: Option<String>,
}

/// The server side once authenticated (the client leg stays with the caller).
struct Authenticated {
    server: BoxIo,
    client_buf: BytesMut,
    server_buf: BytesMut,
    client_key: Key,
    server_key: Key,
    database: Option<String>,
}

const SCRAM: &str = "SCRAM-SHA-256";

async fn send(
    io: &mut BoxIo,
    msgs: &[Message],
    counter: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    for m in msgs {
        m.encode(&mut out);
    }
    io.write_all(&out).await?;
    io.flush().await?;
    counter.fetch_add(out.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Tells the client why its session ends (best effort: it may already be gone).
pub async fn refuse(io: &mut BoxIo, sqlstate: &str, text: &str) {
    let mut out = BytesMut::new();
    backend::error(b'E', "FATAL", sqlstate, text).encode(&mut out);
    let _ = io.write_all(&out).await;
    let _ = io.flush().await;
}

/// What the client's start-up with the gateway came to.
pub enum ClientStart {
    /// A session: the client is accepted, and waits for the upstream's start-up.
    Session(ClientLeg),
    /// A CancelRequest with the key the gateway gave some session; nothing more follows.
    Cancel(Key),
}

/// The client's leg once its start-up with the gateway is accepted.
pub struct ClientLeg {
    pub client: BoxIo,
    /// The start-up parameters, pinned (`reading::pin_startup`).
    pub params: Vec<(String, String)>,
    /// Bytes already read beyond the start-up.
    pub client_buf: BytesMut,
}

/// Runs the client's start-up with the gateway, which must end by `deadline`. `authenticate`:
/// ask for the `local_auth` password when the target has one (a client about to be refused is
/// not asked). `Ok(None)`: the client left.
pub async fn accept_client<H: Hooks>(
    ctx: &Context<'_, H>,
    client: impl crate::protocol::ClientStream,
    deadline: Instant,
    authenticate: bool,
) -> Result<Option<ClientStart>, PgError> {
    let late = || PgError::Ended(Ending::StartupTimeout(ctx.startup_timeout));
    // Until its start-up packet is in, the server has no word to say to the client: a late
    // one is just closed (dropping the future closes the socket it owns).
    let first = tokio::time::timeout_at(deadline, first_packet(ctx, Box::new(client))).await;
    let (mut client, params) = match first.map_err(|_| late())?? {
        None => return Ok(None),
        Some((_, FirstPacket::Cancel(key))) => return Ok(Some(ClientStart::Cancel(key))),
        Some((client, FirstPacket::Params(params))) => (client, params),
    };
    let mut client_buf = BytesMut::new();
    let local = ctx.target.local_password.as_ref();
    if let Some(local) = local.filter(|_| authenticate && ctx.target.credentials.is_some()) {
        let checked = local_auth(ctx, &mut client, &mut client_buf, local, deadline).await;
        if let Err(e) = checked {
            ctx.hooks.note(
                "auth",
                serde_json::json!({ "ok": false, "error": e.to_string() }),
            );
            return Err(e);
        }
    }
    Ok(Some(ClientStart::Session(ClientLeg {
        client,
        params,
        client_buf,
    })))
}

/// `local_auth`: the client must present the target's local password by `deadline`.
async fn local_auth<H: Hooks>(
    ctx: &Context<'_, H>,
    client: &mut BoxIo,
    client_buf: &mut BytesMut,
    local: &crate::secret::SecretSource,
    deadline: Instant,
) -> Result<(), PgError> {
    let max = ctx.target.max_message_bytes;
    send(client, &[backend::auth_cleartext()], &ctx.counters.down).await?;
    // The client owes a password now, so it can be told why it is closed.
    let answer = match tokio::time::timeout_at(deadline, read_client(client, client_buf, max)).await
    {
        Ok(answer) => answer?,
        Err(_) => {
            let late = Ending::StartupTimeout(ctx.startup_timeout);
            let text = format!("interceptor: canceling authentication due to timeout: {late}");
            refuse(client, "57014", &text).await;
            return Err(late.into());
        }
    };
    let given = if answer.tag == b'p' {
        frontend::password(&answer.body).map_err(PgError::Client)?
    } else {
        String::new()
    };
    let expected = local.read().map_err(PgError::UpstreamAuth)?;
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        refuse(
            client,
            "28P01",
            "interceptor: password authentication failed",
        )
        .await;
        return Err(PgError::LocalAuth);
    }
    Ok(())
}

/// The packet that says what the client wants, after any TLS negotiation.
enum FirstPacket {
    Params(Vec<(String, String)>),
    Cancel(Key),
}

/// Reads start-up packets until a StartupMessage or a CancelRequest, terminating TLS on the
/// way. `Ok(None)`: the client left.
async fn first_packet<H: Hooks>(
    ctx: &Context<'_, H>,
    mut client: BoxIo,
) -> Result<Option<(BoxIo, FirstPacket)>, PgError> {
    let max = ctx.target.max_message_bytes;
    let mut tls_done = false;
    loop {
        let startup = match codec::read_startup(&mut client, max).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) => {
                refuse(
                    &mut client,
                    "08P01",
                    &format!("interceptor: invalid start-up packet: {e}"),
                )
                .await;
                return Err(PgError::Client(e));
            }
        };
        match startup {
            Startup::SslRequest if !tls_done => {
                client = accept_client_tls(ctx, client).await?;
                tls_done = true;
            }
            Startup::GssEncRequest => {
                client.write_all(b"N").await?;
            }
            Startup::Cancel { pid, key } => {
                return Ok(Some((client, FirstPacket::Cancel((pid, key)))));
            }
            Startup::Params(mut params) => {
                // The session starts in the state the gateway reads statements for.
                if let Err(e) = reading::pin_startup(&mut params) {
                    refuse(&mut client, "0A000", &format!("interceptor: {e}")).await;
                    return Err(PgError::Unsupported(e.to_string()));
                }
                return Ok(Some((client, FirstPacket::Params(params))));
            }
            Startup::SslRequest => {
                refuse(&mut client, "08P01", "interceptor: SSLRequest repeated").await;
                return Err(PgError::Client(codec::FrameError::Malformed {
                    what: "SSLRequest",
                    why: "repeated",
                }));
            }
        }
    }
}

/// The upstream's start-up, once the session has dialed it for an accepted client: TLS, then
/// authentication (the gateway's own login, or the client's relayed).
pub async fn establish<H: Hooks>(
    ctx: &Context<'_, H>,
    leg: ClientLeg,
    upstream: TcpStream,
    upstream_tls: &tls::Upstream,
) -> Result<Legs, PgError> {
    let ClientLeg {
        mut client,
        params,
        client_buf,
    } = leg;
    let server = match connect_upstream_tls(upstream, upstream_tls, ctx.upstream_addr).await {
        Ok(server) => server,
        Err(e) => {
            ctx.hooks.note(
                "error",
                serde_json::json!({ "phase": "upstream_tls", "error": e.to_string() }),
            );
            refuse(
                &mut client,
                "08006",
                &format!(
                    "interceptor: cannot reach target {:?} securely: {e}",
                    ctx.target.name
                ),
            )
            .await;
            return Err(e);
        }
    };

    let result = match &ctx.target.credentials {
        Some(_) => {
            authenticate_with_credentials(ctx, &mut client, server, params, client_buf).await
        }
        None => authenticate_passthrough(ctx, &mut client, server, params, client_buf).await,
    };
    match result {
        Ok(a) => Ok(Legs {
            client,
            server: a.server,
            client_buf: a.client_buf,
            server_buf: a.server_buf,
            client_key: a.client_key,
            server_key: a.server_key,
            database: a.database,
        }),
        Err(e) => {
            ctx.hooks.note(
                "auth",
                serde_json::json!({ "ok": false, "error": e.to_string() }),
            );
            Err(e)
        }
    }
}

async fn accept_client_tls<H: Hooks>(
    ctx: &Context<'_, H>,
    mut client: BoxIo,
) -> Result<BoxIo, PgError> {
    let Some(ca) = &ctx.shared.local_ca else {
        client.write_all(b"N").await?;
        return Ok(client);
    };
    client.write_all(b"S").await?;
    client.flush().await?;
    let stream = ca
        .accept_agent(client, ctx.dialed, &[])
        .await
        .map_err(PgError::ClientTls)?;
    Ok(Box::new(stream))
}

pub(super) async fn connect_upstream_tls(
    upstream: TcpStream,
    tls: &tls::Upstream,
    addr: std::net::SocketAddr,
) -> Result<BoxIo, PgError> {
    let mut io: BoxIo = Box::new(upstream);
    let Some(connector) = &tls.connector else {
        return Ok(io);
    };
    let mut req = BytesMut::new();
    codec::encode_untagged_code(codec::SSL_REQUEST, &mut req);
    io.write_all(&req).await?;
    let mut answer = [0u8; 1];
    io.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => connector
            .connect(tls.name_for(addr), io)
            .await
            .map(|s| Box::new(s) as BoxIo)
            .map_err(|e| PgError::UpstreamTls(e.to_string())),
        b'N' if tls.mode == UpstreamTlsMode::Prefer => Ok(io),
        b'N' => Err(PgError::UpstreamTls(
            "the server does not support TLS".to_owned(),
        )),
        other => Err(PgError::UpstreamTls(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

pub(super) async fn forward_cancel<H: Hooks>(ctx: &Context<'_, H>, upstream: TcpStream, key: Key) {
    let Some(target) = ctx.shared.cancels.lookup(key) else {
        ctx.hooks.note(
            "cancel",
            serde_json::json!({ "ok": false, "reason": "unknown key" }),
        );
        return;
    };
    // The gateway's connection already goes to this target's upstream; a cancel request is
    // always sent in the clear, as libpq does.
    let mut out = BytesMut::new();
    codec::encode_cancel(target.key.0, target.key.1, &mut out);
    let mut upstream = upstream;
    let ok = upstream.write_all(&out).await.is_ok();
    ctx.hooks.note(
        "cancel",
        serde_json::json!({ "ok": ok, "backend_pid": target.key.0 }),
    );
}

fn password_message(password: &str) -> Message {
    backend::message(b'p', |b| {
        b.put_slice(password.as_bytes());
        b.put_u8(0);
    })
}

/// Reads one message from the server during start-up, mapping framing errors.
async fn read_server(io: &mut BoxIo, buf: &mut BytesMut, max: usize) -> Result<Message, PgError> {
    codec::read_message(io, buf, max)
        .await
        .map_err(PgError::Server)
}

async fn read_client(io: &mut BoxIo, buf: &mut BytesMut, max: usize) -> Result<Message, PgError> {
    codec::read_message(io, buf, max)
        .await
        .map_err(PgError::Client)
}

/// The gateway logs in upstream with the target's credentials; the client only ever sees
/// AuthenticationOk.
async fn authenticate_with_credentials<H: Hooks>(
    ctx: &Context<'_, H>,
    client: &mut BoxIo,
    mut server: BoxIo,
    client_params: Vec<(String, String)>,
    client_buf: BytesMut,
) -> Result<Authenticated, PgError> {
    let max = ctx.target.max_message_bytes;
    let Some(creds) = ctx
        .target
        .credentials
        .as_ref()
        .and_then(Credentials::database)
    else {
        return Err(PgError::Unsupported("no credentials".to_owned()));
    };
    // `local_auth` was the client's start-up with the gateway (`accept_client`).

    let database = creds
        .database
        .clone()
        .or_else(|| {
            client_params
                .iter()
                .find(|(k, _)| k == "database")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| creds.user.clone());
    let mut params: Vec<(String, String)> = client_params
        .into_iter()
        .filter(|(k, _)| k != "user" && k != "database")
        .collect();
    params.insert(0, ("user".to_owned(), creds.user.clone()));
    params.insert(1, ("database".to_owned(), database.clone()));
    let login = match login(&mut server, creds, &params, max).await {
        Ok(login) => login,
        Err(PgError::UpstreamAuth(why)) => return fail_auth(ctx, client, &why).await,
        Err(PgError::Unpinned(why)) => {
            refuse(client, "0A000", &format!("interceptor: {why}")).await;
            return Err(PgError::Unpinned(why));
        }
        Err(e) => return Err(e),
    };
    let client_key = new_client_key();
    let mut to_client = vec![backend::auth_ok()];
    to_client.extend(login.messages);
    // Our key goes just before the final ReadyForQuery, where the server sent its own.
    let ready = to_client.pop();
    to_client.push(backend::backend_key_data(client_key.0, client_key.1));
    to_client.extend(ready);
    send(client, &to_client, &ctx.counters.down).await?;
    ctx.hooks.note(
        "auth",
        serde_json::json!({ "ok": true, "mode": "credentials", "user": creds.user }),
    );
    Ok(Authenticated {
        server,
        client_buf,
        server_buf: login.server_buf,
        client_key,
        server_key: login.server_key,
        database: Some(database),
    })
}

/// The gateway's own login upstream with the target's credentials.
pub(super) struct Login {
    /// Bytes read beyond the final ReadyForQuery.
    pub server_buf: BytesMut,
    pub server_key: Key,
    /// What the server said that a client needs (ParameterStatus, notices), ending with
    /// ReadyForQuery; BackendKeyData is left out (see `server_key`).
    pub messages: Vec<Message>,
}

/// Logs in on `server` (SCRAM-SHA-256, md5 or cleartext) with `params` as the start-up
/// parameters. An authentication failure is [`PgError::UpstreamAuth`].
pub(super) async fn login(
    server: &mut BoxIo,
    creds: &DatabaseCredentials,
    params: &[(String, String)],
    max: usize,
) -> Result<Login, PgError> {
    let mut out = BytesMut::new();
    codec::encode_startup(params, &mut out);
    server.write_all(&out).await?;

    let password = creds.password.read().map_err(PgError::UpstreamAuth)?;
    let mut server_buf = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    let mut messages = Vec::new();
    let mut server_key = (0, 0);
    let refuse = |why: String| Err(PgError::UpstreamAuth(why));
    loop {
        let msg = read_server(server, &mut server_buf, max).await?;
        match msg.tag {
            b'R' => {
                let (code, rest) = backend::auth_request(&msg.body).map_err(PgError::Server)?;
                let reply = match code {
                    0 => None,
                    3 => Some(password_message(&password)),
                    5 => {
                        let salt: [u8; 4] = rest.get(..4).and_then(|s| s.try_into().ok()).ok_or(
                            PgError::Server(codec::FrameError::Malformed {
                                what: "AuthenticationMD5Password",
                                why: "no salt",
                            }),
                        )?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            creds.user.as_bytes(),
                            password.as_bytes(),
                            salt,
                        );
                        Some(password_message(&hash))
                    }
                    10 => {
                        if !backend::sasl_mechanisms(rest).iter().any(|m| m == SCRAM) {
                            return refuse("the server offers no SCRAM-SHA-256".to_owned());
                        }
                        let s =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        let first = s.message().to_vec();
                        scram = Some(s);
                        Some(backend::message(b'p', |b| {
                            b.put_slice(SCRAM.as_bytes());
                            b.put_u8(0);
                            b.put_i32(first.len() as i32);
                            b.put_slice(&first);
                        }))
                    }
                    11 => {
                        let Some(s) = scram.as_mut() else {
                            return refuse("SASLContinue without SASL".to_owned());
                        };
                        if let Err(e) = s.update(rest) {
                            return refuse(e.to_string());
                        }
                        let next = s.message().to_vec();
                        Some(backend::message(b'p', |b| b.put_slice(&next)))
                    }
                    12 => {
                        let Some(s) = scram.as_mut() else {
                            return refuse("SASLFinal without SASL".to_owned());
                        };
                        // Verifies the server knew the password too.
                        if let Err(e) = s.finish(rest) {
                            return refuse(format!("the server's SCRAM proof is invalid: {e}"));
                        }
                        None
                    }
                    other => return refuse(format!("unsupported authentication method {other}")),
                };
                if let Some(reply) = reply {
                    let mut out = BytesMut::new();
                    reply.encode(&mut out);
                    server.write_all(&out).await?;
                    server.flush().await?;
                }
            }
            b'E' => {
                let (_, message) = backend::error_fields(&msg.body);
                return refuse(message.unwrap_or_else(|| "rejected".to_owned()));
            }
            b'K' => server_key = backend::backend_key(&msg.body).map_err(PgError::Server)?,
            b'Z' => {
                messages.push(msg);
                return Ok(Login {
                    server_buf,
                    server_key,
                    messages,
                });
            }
            b'S' => {
                reading::check_status(&msg.body).map_err(PgError::Unpinned)?;
                messages.push(msg);
            }
            // NoticeResponse, NegotiateProtocolVersion: the client needs them.
            _ => messages.push(msg),
        }
    }
}

async fn fail_auth<H: Hooks, T>(
    ctx: &Context<'_, H>,
    client: &mut BoxIo,
    why: &str,
) -> Result<T, PgError> {
    refuse(
        client,
        "28P01",
        &format!(
            "interceptor: authentication to target {:?} failed: {why}",
            ctx.target.name
        ),
    )
    .await;
    Err(PgError::UpstreamAuth(why.to_owned()))
}

/// Without credentials the client authenticates itself; the gateway relays the exchange.
async fn authenticate_passthrough<H: Hooks>(
    ctx: &Context<'_, H>,
    client: &mut BoxIo,
    mut server: BoxIo,
    params: Vec<(String, String)>,
    mut client_buf: BytesMut,
) -> Result<Authenticated, PgError> {
    let max = ctx.target.max_message_bytes;
    let mut out = BytesMut::new();
    codec::encode_startup(&params, &mut out);
    server.write_all(&out).await?;
    ctx.counters
        .up
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    let mut server_buf = BytesMut::new();
    let (client_key, mut server_key) = (new_client_key(), (0, 0));
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone());
    loop {
        let mut msg = read_server(&mut server, &mut server_buf, max).await?;
        let mut expects_answer = false;
        match msg.tag {
            b'R' => {
                let (code, rest) = backend::auth_request(&msg.body).map_err(PgError::Server)?;
                match code {
                    0 | 12 => {}
                    3 | 5 | 11 => expects_answer = true,
                    10 => {
                        let offered: Vec<String> = backend::sasl_mechanisms(rest)
                            .into_iter()
                            .filter(|m| !m.ends_with("-PLUS"))
                            .collect();
                        if offered.is_empty() {
                            return fail_auth(
                                ctx,
                                client,
                                "the server only offers channel binding",
                            )
                            .await;
                        }
                        let names: Vec<&str> = offered.iter().map(String::as_str).collect();
                        msg = backend::auth_sasl(&names);
                        expects_answer = true;
                    }
                    other => {
                        return fail_auth(
                            ctx,
                            client,
                            &format!("unsupported authentication method {other}"),
                        )
                        .await
                    }
                }
            }
            b'K' => {
                server_key = backend::backend_key(&msg.body).map_err(PgError::Server)?;
                msg = backend::backend_key_data(client_key.0, client_key.1);
            }
            b'E' => {
                let (_, message) = backend::error_fields(&msg.body);
                send(client, &[msg], &ctx.counters.down).await?;
                return Err(PgError::UpstreamAuth(message.unwrap_or_default()));
            }
            b'S' => {
                if let Err(e) = reading::check_status(&msg.body) {
                    refuse(client, "0A000", &format!("interceptor: {e}")).await;
                    return Err(PgError::Unpinned(e));
                }
            }
            _ => {}
        }
        let ready = msg.tag == b'Z';
        send(client, &[msg], &ctx.counters.down).await?;
        if expects_answer {
            let answer = read_client(client, &mut client_buf, max).await?;
            if answer.tag != b'p' {
                refuse(
                    client,
                    "08P01",
                    "interceptor: expected an authentication response",
                )
                .await;
                return Err(PgError::Client(codec::FrameError::Malformed {
                    what: "PasswordMessage",
                    why: "unexpected message type",
                }));
            }
            send(&mut server, &[answer], &ctx.counters.up).await?;
        }
        if ready {
            ctx.hooks.note(
                "auth",
                serde_json::json!({ "ok": true, "mode": "passthrough", "user": user }),
            );
            return Ok(Authenticated {
                server,
                client_buf,
                server_buf,
                client_key,
                server_key,
                database: None,
            });
        }
    }
}

/// Compares secrets without leaking where they differ through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
