//! Plain TCP: the connection itself is the command, so relay bytes unchanged in both
//! directions. Half-closes are propagated (a client that shuts down its write side still gets
//! the rest of the response), and the counters stay accurate when a side fails mid-stream.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::Counters;

/// Per-direction buffer. Large enough for bulk transfers to amortise syscalls.
const BUFFER: usize = 64 * 1024;

pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    counters: &Counters,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(client_read, upstream_write, &counters.up);
    let down = pump(upstream_read, client_write, &counters.down);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    // One direction finishing (EOF) lets the other carry on; an error ends the session.
    while !(up_done && down_done) {
        tokio::select! {
            result = &mut up, if !up_done => { up_done = true; result?; }
            result = &mut down, if !down_done => { down_done = true; result?; }
        }
    }
    Ok(())
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Propagate the half-close; the peer may already be gone, which is fine.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
