//! Plain TCP: the connection itself is the command, so relay bytes unchanged in both
//! directions. Half-closes are propagated (a client that shuts down its write side still gets
//! the rest of the response), and the counters stay accurate when a side fails mid-stream.
//!
//! The bytes never enter user space: each direction splices socket → pipe → socket (the
//! client's socket may be TCP or a routed Unix stream; splice takes both). On a
//! 2-core host this roughly halves the proxy's CPU per byte against read/write with a buffer
//! (see docs/performance.md), which is what lets the relay keep up with a direct connection.
//! Protocols that must look at the bytes (PostgreSQL) use their own codec instead.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{io::Interest, net::TcpStream};

use super::{Counters, Socket};

/// Bytes moved per splice call, and the pipe size we ask for.
const CHUNK: usize = 1 << 20;

pub async fn relay(
    client: impl Socket,
    upstream: TcpStream,
    counters: &Counters,
) -> io::Result<()> {
    client.no_delay();
    upstream.no_delay();
    let up = pump(&client, &upstream, &counters.up);
    let down = pump(&upstream, &client, &counters.down);
    super::both_directions(up, down).await
}

/// A non-blocking pipe used as the splice buffer of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors we now own.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // A bigger pipe means fewer syscalls per byte; the default (64 KiB) still works.
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                pipe.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                CHUNK as libc::c_int,
            )
        };
        Ok(pipe)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are valid descriptors for the duration of the call; null offsets mean
    // "use the file position", as required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn pump(from: &impl Socket, to: &impl Socket, counter: &AtomicU64) -> io::Result<()> {
    // Created on the first data, not up front: many connections only ever talk one way.
    let mut pipe: Option<Pipe> = None;
    loop {
        // Fill the pipe from the source socket. The pipe is always empty here.
        let n = loop {
            from.ready(Interest::READABLE).await?;
            let pipe = match &pipe {
                Some(pipe) => pipe,
                None => pipe.insert(Pipe::new()?),
            };
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // Propagate the half-close; the peer may already be gone, which is fine.
            // SAFETY: shutdown on a socket we borrow; it does not close the descriptor.
            unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
            return Ok(());
        }
        let Some(pipe) = &pipe else {
            return Err(io::Error::other("splice buffer missing"));
        };
        // Drain the pipe into the destination socket.
        let mut left = n;
        while left > 0 {
            to.ready(Interest::WRITABLE).await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(m) => {
                    left -= m;
                    counter.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
