//! `loadgen`: the servers and clients behind `make bench`.
//!
//! Why this exists: the capture's costs (the connect() hook, the proxy hop, the relay) are
//! only meaningful as ratios against the same workload without them, measured in the same run.
//! This tool runs one bounded workload and prints one JSON line; `scripts/bench.sh` runs it
//! directly and under `interceptor exec` and writes the ratios to docs/performance.md.
//! Every workload has a fixed count and a wall-clock cap; addresses must be loopback.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until killed: `echo` echoes; `source` sends --bytes then closes; `hello` sends
    /// one byte then closes.
    Serve {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "echo")]
        mode: String,
        #[arg(long, default_value_t = 0)]
        bytes: u64,
    },
    /// connect, read the `hello` server's byte until EOF, close; --count times. The server
    /// closes first, so TIME_WAIT stays on its side and client ports are never reused early.
    Setup {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        count: u64,
    },
    /// Read everything a `source` server sends: relay throughput.
    Bulk {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
}

/// No workload may run longer than this, whatever its count.
const WALL_CLOCK_CAP: Duration = Duration::from_secs(60);

fn require_loopback(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("{addr}: benchmarks only talk to loopback addresses");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { addr, mode, bytes } => serve(addr, &mode, bytes),
        Command::Setup { addr, count } => {
            require_loopback(addr)?;
            let mut in_connect = Duration::ZERO;
            let (done, elapsed) = repeat(count, || {
                // socket() + connect(): where the capture hooks run.
                let started = Instant::now();
                let mut stream = TcpStream::connect(addr)?;
                in_connect += started.elapsed();
                let mut got = Vec::with_capacity(1);
                stream.read_to_end(&mut got)?;
                if got != b"x" {
                    return Err(std::io::Error::other(
                        "the hello server's byte did not arrive",
                    ));
                }
                Ok(())
            })?;
            report("setup", done, elapsed, None, Some(in_connect))
        }
        Command::Bulk { addr, bytes } => {
            require_loopback(addr)?;
            let start = Instant::now();
            let mut stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(WALL_CLOCK_CAP))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let elapsed = start.elapsed();
            if total != bytes {
                bail!("received {total} bytes, expected {bytes}");
            }
            report("bulk", 1, elapsed, Some(total), None)
        }
    }
}

fn repeat(
    count: u64,
    mut once: impl FnMut() -> std::io::Result<()>,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut done = 0;
    while done < count && start.elapsed() < WALL_CLOCK_CAP {
        once().with_context(|| format!("iteration {done}"))?;
        done += 1;
    }
    Ok((done, start.elapsed()))
}

fn report(
    workload: &str,
    ops: u64,
    elapsed: Duration,
    bytes: Option<u64>,
    in_connect: Option<Duration>,
) -> anyhow::Result<()> {
    let secs = elapsed.as_secs_f64();
    let mut line = serde_json::json!({
        "workload": workload,
        "ops": ops,
        "seconds": secs,
        "ops_per_sec": ops as f64 / secs,
    });
    if let Some(t) = in_connect {
        line["connects_per_sec"] = (ops as f64 / t.as_secs_f64()).into();
    }
    if let Some(bytes) = bytes {
        line["bytes"] = bytes.into();
        line["mb_per_sec"] = (bytes as f64 / secs / 1e6).into();
    }
    println!("{line}");
    Ok(())
}

fn serve(addr: SocketAddr, mode: &str, bytes: u64) -> anyhow::Result<()> {
    require_loopback(addr)?;
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("listening {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mode = mode.to_owned();
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let _ = match mode.as_str() {
                "source" => source(&mut stream, bytes),
                "hello" => stream.write_all(b"x"),
                _ => echo(&mut stream),
            };
        });
    }
    Ok(())
}

fn echo(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn source(stream: &mut TcpStream, bytes: u64) -> std::io::Result<()> {
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)
}
