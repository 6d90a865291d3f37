//! The connection phase, on both legs, in two steps.
//!
//! [`accept_client`], before any upstream exists: the gateway greets the agent as a server
//! would (its own salt, the capabilities it can follow, TLS when the local CA is there), reads
//! the agent's answer, refuses a collation whose charset the gateway cannot read exactly, and
//! checks the target's `local_auth` password when there is one (as `mysql_native_password`,
//! switching the agent to it when needed). Without `local_auth` any user and password are
//! accepted: the agent's own credentials are never used upstream. It must end by the start-up
//! deadline.
//!
//! [`establish`], once the agent is accepted: the gateway dials the server, starts TLS there
//! per `[target.tls]` (before any credential is sent; `require` and `verify-full` fail
//! closed when the server offers none), and logs in as a client with the target's
//! credentials, switching plugins when the server asks: `mysql_native_password`,
//! `caching_sha2_password` (its fast path; its full path with the password in clear over
//! TLS, or encrypted to the server's RSA key without TLS), MariaDB's `client_ed25519` (a
//! signature of the server's nonce, see [`super::auth`]), and `mysql_clear_password` over
//! TLS only. Any other plugin ends the session with an error to the agent. The agent only
//! ever sees the server's OK. The server's `sql_mode` is then checked: modes that change how
//! statements are tokenized end the session.
//!
//! The RSA exchange uses the target's `server_public_key_file` when it is set, else the key
//! the server sends, which on a plain upstream whoever can rewrite packets can replace to
//! read the password. With `verify-full` TLS the password goes over the verified channel and
//! the exchange is never used; that, or a pinned key, is the setting for
//! `caching_sha2_password` accounts.

use tokio::{io::BufStream, time::Instant};

use super::{
    auth,
    codec::{self, read_packet, write_packet, Packet},
    handshake::{self, caps, Greeting, Response},
    threads::Registration,
    Context, MyError,
};
use crate::{
    command::Hooks,
    protocol::{postgres::BoxIo, Dial, Ending},
    target::Credentials,
    tls::{self, UpstreamTlsMode},
};

/// The version the gateway announces to agents. A 5.7 version keeps clients from assuming
/// MySQL 8 collations (utf8mb4_0900_ai_ci), which MariaDB does not know.
pub const SERVER_VERSION: &str = "5.7.99-interceptor";

/// `sql_mode` flags that change where strings, identifiers and statements end, and the
/// combination modes that include them. A server session with any of them is not served.
const UNREAD_MODES: [&str; 7] = [
    "ANSI_QUOTES",
    "NO_BACKSLASH_ESCAPES",
    "ANSI",
    "ORACLE",
    "MSSQL",
    "DB2",
    "POSTGRESQL",
];

/// The largest payload of the connection phase, on either leg: greetings, handshake answers
/// (with connection attributes), auth switches, a server's RSA key and the gateway's own small
/// queries all fit many times over. Kept at the size below which payloads never wait for the
/// memory budget, so that no unauthenticated peer can hold any of it.
const STARTUP_MAX: usize = crate::protocol::buffers::LARGE;

/// The agent's leg once its connection phase with the gateway is accepted.
pub struct AgentLeg {
    pub client: BoxIo,
    pub response: Response,
    /// The sequence id of the gateway's next packet to the agent (its final OK).
    pub next_seq: u8,
    /// The connection id the agent was given.
    pub thread: Registration,
}

/// Both legs after the connection phase, ready for the command phase.
pub struct Legs {
    pub client: BufStream<BoxIo>,
    pub server: BufStream<BoxIo>,
    /// The capabilities in force on both legs.
    pub capabilities: u32,
    /// The agent's connection id, mapped to the server's thread while the session lasts.
    pub thread: Registration,
}

/// Tells the client why its session ends (best effort: it may already be gone).
pub async fn refuse(io: &mut BoxIo, seq: u8, code: u16, sqlstate: &str, text: &str) {
    let _ = write_packet(io, seq, &codec::err_body(code, sqlstate, text)).await;
}

/// Runs the agent's connection phase with the gateway, which must end by `deadline`.
/// `Ok(None)`: the agent left.
pub async fn accept_client<H: Hooks>(
    ctx: &Context<'_, H>,
    mut client: BoxIo,
    deadline: Instant,
) -> Result<Option<AgentLeg>, MyError> {
    let salt = handshake::new_salt()
        .map_err(|_| MyError::Unsupported("no random source for the salt".to_owned()))?;
    let mut capabilities = caps::FOLLOWED;
    if ctx.local_ca.is_some() {
        capabilities |= caps::SSL;
    }
    let thread = ctx.shared.threads.register(&ctx.target.name);
    let greeting = Greeting {
        version: SERVER_VERSION.to_owned(),
        connection_id: thread.id(),
        salt: salt.clone(),
        capabilities,
        collation: handshake::GATEWAY_COLLATION,
        status: 0x0002, // autocommit
        plugin: handshake::NATIVE_PASSWORD.to_owned(),
    };
    let sent = write_packet(&mut client, 0, &greeting.encode()).await?;
    ctx.counters
        .down
        .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
    let accepted = tokio::time::timeout_at(deadline, answer(ctx, client, &salt, thread)).await;
    match accepted {
        Ok(result) => result,
        Err(_) => Err(Ending::StartupTimeout(ctx.startup_timeout).into()),
    }
}

/// The agent's answer to the greeting: TLS when asked, its response, `local_auth`.
async fn answer<H: Hooks>(
    ctx: &Context<'_, H>,
    mut client: BoxIo,
    salt: &[u8],
    thread: Registration,
) -> Result<Option<AgentLeg>, MyError> {
    let max = STARTUP_MAX.min(ctx.target.max_message_bytes);
    let Some(mut packet) = read_packet(&mut client, max)
        .await
        .map_err(MyError::from_client)?
    else {
        return Ok(None);
    };
    if Response::is_ssl_request(&packet.body) {
        let Some(ca) = ctx.local_ca else {
            refuse(
                &mut client,
                packet.seq.wrapping_add(1),
                codec::ER_HANDSHAKE,
                "08S01",
                "interceptor: TLS was not offered",
            )
            .await;
            return Err(MyError::ClientTls(
                "TLS asked for but not offered".to_owned(),
            ));
        };
        client = Box::new(
            ca.accept_agent(client, ctx.dialed, &[])
                .await
                .map_err(MyError::ClientTls)?,
        );
        packet = match read_packet(&mut client, max)
            .await
            .map_err(MyError::from_client)?
        {
            Some(p) => p,
            None => return Ok(None),
        };
    }
    let mut seq = packet.seq.wrapping_add(1);
    let response = match Response::parse(&packet.body) {
        Ok(r) => r,
        Err(e) => {
            let text = format!("interceptor: bad handshake: {e}");
            refuse(&mut client, seq, codec::ER_HANDSHAKE, "08S01", &text).await;
            return Err(MyError::Client(e));
        }
    };
    if handshake::readable_collation(response.collation).is_none() {
        let text = format!(
            "interceptor: collation {} is refused: the gateway reads statements only in \
             utf8mb4, utf8mb3, latin1 or ascii",
            response.collation
        );
        refuse(
            &mut client,
            seq,
            codec::ER_SPECIFIC_ACCESS_DENIED,
            "42000",
            &text,
        )
        .await;
        return Err(MyError::Unsupported(text));
    }
    if let Some(local) = &ctx.target.local_password {
        let mut given = response.auth.clone();
        if response.plugin.as_deref() != Some(handshake::NATIVE_PASSWORD) {
            // The agent answered for another plugin: ask again for the one checked here.
            let switch = handshake::auth_switch_body(handshake::NATIVE_PASSWORD, salt);
            write_packet(&mut client, seq, &switch).await?;
            let Some(reply) = read_packet(&mut client, max)
                .await
                .map_err(MyError::from_client)?
            else {
                return Ok(None);
            };
            given = reply.body;
            seq = reply.seq.wrapping_add(1);
        }
        let expected = local.read().map_err(MyError::UpstreamAuth)?;
        let wanted = handshake::native_scramble(expected.as_bytes(), salt);
        if !crate::protocol::postgres::startup::constant_time_eq(&given, &wanted) {
            let text = format!(
                "interceptor: Access denied for user '{}' (local_auth)",
                response.user
            );
            refuse(&mut client, seq, codec::ER_ACCESS_DENIED, "28000", &text).await;
            ctx.hooks.note(
                "auth",
                serde_json::json!({ "ok": false, "error": "local_auth: wrong password" }),
            );
            return Err(MyError::LocalAuth);
        }
    }
    Ok(Some(AgentLeg {
        client,
        response,
        next_seq: seq,
        thread,
    }))
}

/// Dials the server, logs in with the target's credentials, tells the agent OK.
pub async fn establish<H: Hooks>(
    ctx: &Context<'_, H>,
    agent: AgentLeg,
    upstream: &impl Dial,
    upstream_tls: &tls::Upstream,
) -> Result<Legs, MyError> {
    let AgentLeg {
        mut client,
        response,
        next_seq,
        thread,
    } = agent;
    let server = match upstream.dial().await {
        Ok(s) => s,
        Err(e) => {
            let text = format!(
                "interceptor: target {:?} is unavailable: {e}",
                ctx.target.name
            );
            refuse(&mut client, next_seq, codec::ER_BAD_HOST, "08S01", &text).await;
            return Err(Ending::Unreachable(e).into());
        }
    };
    let _ = server.set_nodelay(true);
    let addr = upstream.addr();
    match login(ctx, Box::new(server), &response, upstream_tls, addr).await {
        Ok((server, ok, capabilities, server_thread)) => {
            thread.logged_in(server_thread);
            let sent = write_packet(&mut client, next_seq, &ok).await?;
            ctx.counters
                .down
                .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
            ctx.hooks.note(
                "auth",
                serde_json::json!({ "ok": true, "agent_user": response.user }),
            );
            Ok(Legs {
                client: BufStream::new(client),
                server: BufStream::new(server),
                capabilities,
                thread,
            })
        }
        Err(e) => {
            let text = format!(
                "interceptor: cannot log in to target {:?}: {e}",
                ctx.target.name
            );
            let text = ctx.hooks.mask_text(&text).into_owned();
            refuse(
                &mut client,
                next_seq,
                codec::ER_ACCESS_DENIED,
                "28000",
                &text,
            )
            .await;
            ctx.hooks.note(
                "auth",
                serde_json::json!({ "ok": false, "error": e.to_string() }),
            );
            Err(e)
        }
    }
}

/// The gateway's own login: returns the server leg, the server's OK payload, the
/// capabilities in force and the server's thread id for this connection.
async fn login<H: Hooks>(
    ctx: &Context<'_, H>,
    mut server: BoxIo,
    agent: &Response,
    upstream_tls: &tls::Upstream,
    addr: std::net::SocketAddr,
) -> Result<(BoxIo, Vec<u8>, u32, u32), MyError> {
    let max = STARTUP_MAX.min(ctx.target.max_message_bytes);
    let Some(creds) = ctx
        .target
        .credentials
        .as_ref()
        .and_then(Credentials::database)
    else {
        return Err(MyError::Unsupported(
            "a mysql target needs [target.credentials]".to_owned(),
        ));
    };
    let first = read_packet(&mut server, max)
        .await
        .map_err(MyError::from_server)?
        .ok_or_else(|| MyError::UpstreamAuth("the server closed the connection".to_owned()))?;
    if first.is_err() {
        let e = codec::parse_err(&first.body).map_err(MyError::Server)?;
        return Err(MyError::UpstreamAuth(e.message));
    }
    let greeting = Greeting::parse(&first.body).map_err(MyError::Server)?;
    let required = caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH;
    if greeting.capabilities & required != required {
        return Err(MyError::Unsupported(
            "the server does not speak protocol 4.1 with plugin authentication".to_owned(),
        ));
    }
    let database = creds.database.clone().or_else(|| agent.database.clone());
    let mut capabilities = (agent.capabilities & caps::FOLLOWED & greeting.capabilities)
        | required
        | (greeting.capabilities & caps::PLUGIN_AUTH_LENENC_DATA);
    if database.is_some() {
        capabilities |= caps::CONNECT_WITH_DB;
    } else {
        capabilities &= !caps::CONNECT_WITH_DB;
    }
    let mut seq = first.seq.wrapping_add(1);
    let mut tls_on = false;
    let wants_tls =
        upstream_tls.connector.is_some() && upstream_tls.mode != UpstreamTlsMode::Disable;
    if wants_tls && greeting.capabilities & caps::SSL != 0 {
        let request = Response {
            capabilities: capabilities | caps::SSL,
            max_packet: 16 << 20,
            collation: agent.collation,
            ..Response::default()
        };
        write_packet(&mut server, seq, &request.encode_ssl_request()).await?;
        seq = seq.wrapping_add(1);
        if let Some(connector) = &upstream_tls.connector {
            server = connector
                .connect(upstream_tls.name_for(addr), server)
                .await
                .map(|s| Box::new(s) as BoxIo)
                .map_err(|e| MyError::UpstreamTls(e.to_string()))?;
            tls_on = true;
            capabilities |= caps::SSL;
        }
    } else if matches!(
        upstream_tls.mode,
        UpstreamTlsMode::Require | UpstreamTlsMode::VerifyFull
    ) {
        return Err(MyError::UpstreamTls(
            "the server does not support TLS".to_owned(),
        ));
    }
    let password = creds.password.read().map_err(MyError::UpstreamAuth)?;
    let password = password.as_bytes();
    let mut plugin = greeting.plugin.clone();
    if plugin != handshake::NATIVE_PASSWORD && plugin != handshake::CACHING_SHA2 {
        // Answer with the native scramble; the server switches us to its plugin if it must.
        plugin = handshake::NATIVE_PASSWORD.to_owned();
    }
    // The challenge in force: the greeting's salt, or the data of the last auth switch.
    let mut salt = greeting.salt.clone();
    let response = Response {
        capabilities,
        max_packet: 16 << 20,
        collation: agent.collation,
        user: creds.user.clone(),
        auth: scramble(&plugin, password, &salt, tls_on)?,
        database,
        plugin: Some(plugin.clone()),
    };
    write_packet(&mut server, seq, &response.encode()).await?;
    loop {
        let packet = read_packet(&mut server, max)
            .await
            .map_err(MyError::from_server)?
            .ok_or_else(|| MyError::UpstreamAuth("the server closed the connection".to_owned()))?;
        seq = packet.seq.wrapping_add(1);
        match packet.tag() {
            0x00 => {
                check_sql_mode(&mut server, max).await?;
                return Ok((server, packet.body, capabilities, greeting.connection_id));
            }
            0xFF => {
                let e = codec::parse_err(&packet.body).map_err(MyError::Server)?;
                return Err(MyError::UpstreamAuth(format!("{} ({})", e.message, e.code)));
            }
            0xFE => {
                (plugin, salt) =
                    handshake::parse_auth_switch(&packet.body).map_err(MyError::Server)?;
                let auth = scramble(&plugin, password, &salt, tls_on)?;
                write_packet(&mut server, seq, &auth).await?;
            }
            0x01 => match (plugin.as_str(), packet.body.get(1)) {
                // caching_sha2_password: fast authentication succeeded; OK follows.
                (handshake::CACHING_SHA2, Some(3)) => {}
                // Full authentication: the password itself, only ever over TLS.
                (handshake::CACHING_SHA2, Some(4)) if tls_on => {
                    let mut clear = password.to_vec();
                    clear.push(0);
                    write_packet(&mut server, seq, &clear).await?;
                }
                // Without TLS: encrypted to the server's RSA key, the configured one if
                // there is one, else the one the server sends.
                (handshake::CACHING_SHA2, Some(4)) => {
                    let pinned = match &creds.server_public_key {
                        Some(path) => Some(auth::read_public_key(path)?),
                        None => None,
                    };
                    rsa_full_auth(&mut server, seq, max, password, &salt, pinned.as_deref())
                        .await?;
                }
                _ => {
                    return Err(MyError::Unsupported(format!(
                        "authentication data for plugin {plugin}"
                    )))
                }
            },
            other => {
                return Err(MyError::Server(codec::FrameError::Malformed {
                    what: "authentication answer",
                    why: if other == 0 {
                        "empty"
                    } else {
                        "unexpected packet"
                    },
                }))
            }
        }
    }
}

/// `caching_sha2_password` full authentication without TLS, from the gateway's side: the
/// password encrypted to the server's RSA key ([`auth::rsa_encrypted_password`]). With a
/// `pinned` key (the target's `server_public_key_file`) it is sent at once; without, the
/// gateway asks for the server's key (a packet holding 0x02) and reads it (a packet starting
/// with 0x01, then the PEM). The server's OK or ERR follows, read by the caller. `seq` is the
/// sequence id of the gateway's next packet.
///
/// A key taken as the server sends it can be anyone's: on a path where someone can rewrite
/// packets, they can send their own key and read the password. That is the protocol's own
/// weakness (every MySQL client's with `get-server-public-key`); a pinned key, or
/// `verify-full` TLS to the server (then this exchange is never used), removes it.
async fn rsa_full_auth(
    server: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    seq: u8,
    max: usize,
    password: &[u8],
    scramble: &[u8],
    pinned: Option<&[u8]>,
) -> Result<(), MyError> {
    if let Some(pem) = pinned {
        let sealed = auth::rsa_encrypted_password(pem, password, scramble)?;
        write_packet(server, seq, &sealed).await?;
        return Ok(());
    }
    write_packet(server, seq, &[0x02]).await?;
    let key = read_packet(server, max)
        .await
        .map_err(MyError::from_server)?
        .ok_or_else(|| MyError::UpstreamAuth("the server closed the connection".to_owned()))?;
    if key.is_err() {
        let e = codec::parse_err(&key.body).map_err(MyError::Server)?;
        return Err(MyError::UpstreamAuth(format!("{} ({})", e.message, e.code)));
    }
    let Some((&0x01, pem)) = key.body.split_first() else {
        return Err(MyError::Server(codec::FrameError::Malformed {
            what: "caching_sha2_password public key",
            why: "not a public key packet",
        }));
    };
    let sealed = auth::rsa_encrypted_password(pem, password, scramble)?;
    write_packet(server, key.seq.wrapping_add(1), &sealed).await?;
    Ok(())
}

/// The answer to a plugin's challenge.
fn scramble(plugin: &str, password: &[u8], salt: &[u8], tls_on: bool) -> Result<Vec<u8>, MyError> {
    match plugin {
        handshake::NATIVE_PASSWORD => Ok(handshake::native_scramble(password, salt)),
        handshake::CACHING_SHA2 => Ok(handshake::caching_sha2_scramble(password, salt)),
        auth::ED25519 => Ok(auth::ed25519_signature(password, salt)?.to_vec()),
        handshake::CLEAR_PASSWORD if tls_on => {
            let mut clear = password.to_vec();
            clear.push(0);
            Ok(clear)
        }
        other => Err(MyError::Unsupported(format!(
            "authentication plugin {other} (the gateway logs in with mysql_native_password, \
             caching_sha2_password, client_ed25519, or mysql_clear_password over TLS)"
        ))),
    }
}

/// Ends the session when the server's `sql_mode` changes how statements are tokenized
/// (the gateway pins it: agents cannot change it, see `policy::mysql`).
async fn check_sql_mode(server: &mut BoxIo, max: usize) -> Result<(), MyError> {
    let mode = single_value(server, max, "SELECT @@SESSION.sql_mode").await?;
    let mode = mode.to_ascii_uppercase();
    if let Some(bad) = mode.split(',').find(|m| UNREAD_MODES.contains(&m.trim())) {
        return Err(MyError::Unsupported(format!(
            "the server's sql_mode includes {bad}, which changes how statements are read; \
             the gateway reads them with the default quoting and escapes"
        )));
    }
    Ok(())
}

/// Runs a query of the gateway's own and returns the first column of its one row.
async fn single_value(server: &mut BoxIo, max: usize, sql: &str) -> Result<String, MyError> {
    let mut body = vec![0x03];
    body.extend_from_slice(sql.as_bytes());
    write_packet(server, 0, &body).await?;
    let mut value = None;
    let mut eofs = 0;
    let mut first = true;
    while eofs < 2 {
        let p: Packet = read_packet(server, max)
            .await
            .map_err(MyError::from_server)?
            .ok_or_else(|| MyError::UpstreamAuth("the server closed the connection".to_owned()))?;
        if p.is_err() {
            let e = codec::parse_err(&p.body).map_err(MyError::Server)?;
            return Err(MyError::UpstreamAuth(format!("{sql}: {}", e.message)));
        }
        if p.is_eof() {
            eofs += 1;
        } else if eofs == 1 && value.is_none() {
            let mut r = codec::Reader::new(&p.body, "row");
            value = Some(
                r.nullable_bytes()
                    .map_err(MyError::Server)?
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            );
        } else if first && p.is_ok() {
            return Err(MyError::Server(codec::FrameError::Malformed {
                what: "answer to the gateway's query",
                why: "no result set",
            }));
        }
        first = false;
    }
    Ok(value.unwrap_or_default())
}

#[cfg(test)]
mod tests;
