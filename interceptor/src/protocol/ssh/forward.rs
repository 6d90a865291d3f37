//! Forwards: `direct-tcpip` channels (`ssh -L`, `ssh -W`) and `tcpip-forward` requests
//! (`ssh -R`), each judged as a `forward` command.
//!
//! Why they are commands at all: a forward carries traffic the gateway cannot read past it,
//! to wherever the server can reach, so the shipped policy refuses every one. A direct
//! forward a policy allows is relayed byte for byte (and counted); a remote forward is
//! journaled and refused whatever the policy says, since this version does not relay
//! connections from the server back into the agent's host.

use russh::ChannelOpenFailure;
use tokio::sync::oneshot;

use super::{
    agent::DirectOpen,
    channel::{command, judge, refused, Cx},
};
use crate::command::{CommandResult, Hooks, SshChannel, SshRequest};

fn forward(destination: String) -> SshRequest {
    SshRequest {
        channel: SshChannel::Forward,
        command: None,
        line: None,
        subsystem: None,
        forward: Some(destination),
    }
}

/// A `direct-tcpip` channel: judged, then refused or relayed through a channel of the same
/// kind on the server.
pub async fn direct<H: Hooks>(cx: &Cx<'_, H>, open: DirectOpen) {
    let request = forward(format!("{}:{}", open.host, open.port));
    let text = request.canonical();
    let event = match judge(cx, &command(&text, &request), None).await {
        Ok(event) => event,
        Err((event, message)) => {
            refused(cx, event, None, &message);
            open.reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
    };
    let began = std::time::Instant::now();
    let up = match cx
        .upstream
        .handle
        .channel_open_direct_tcpip(open.host.clone(), open.port, "127.0.0.1", 0)
        .await
    {
        Ok(up) => up,
        Err(e) => {
            refused(
                cx,
                Some(event),
                None,
                &format!("the server could not connect: {e}"),
            );
            open.reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    open.reply.accept().await;
    let mut agent = open.channel.into_stream();
    let mut server = up.into_stream();
    let copied = tokio::io::copy_bidirectional(&mut agent, &mut server).await;
    let (up_bytes, down_bytes) = copied.as_ref().map(|c| *c).unwrap_or((0, 0));
    use std::sync::atomic::Ordering::Relaxed;
    cx.counters.up.fetch_add(up_bytes, Relaxed);
    cx.counters.down.fetch_add(down_bytes, Relaxed);
    let result = CommandResult {
        bytes: Some(down_bytes),
        duration_ms: began.elapsed().as_secs_f64() * 1000.0,
        error: copied.err().map(|e| e.to_string()),
        ..CommandResult::default()
    };
    cx.hooks.result(event, &result);
}

/// A `tcpip-forward` global request: judged and journaled, always answered no.
pub async fn remote<H: Hooks>(
    cx: &Cx<'_, H>,
    address: &str,
    port: u32,
    answer: oneshot::Sender<bool>,
) {
    let request = forward(format!("remote {address}:{port}"));
    let text = request.canonical();
    let message = match judge(cx, &command(&text, &request), None).await {
        Ok(event) => {
            let message = "interceptor: remote forwards (ssh -R) are not relayed by this version";
            refused(cx, Some(event), None, message);
            message.to_owned()
        }
        Err((event, message)) => {
            refused(cx, event, None, &message);
            message
        }
    };
    tracing::debug!(%message, "tcpip-forward refused");
    let _ = answer.send(false);
}
