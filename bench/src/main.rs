//! `loadgen`: the servers and clients behind `make bench`.
//!
//! Why this exists: the capture's costs (the connect() hook, the proxy hop, the relay) are
//! only meaningful as ratios against the same workload without them, measured in the same run.
//! This tool runs one bounded workload and prints one JSON line; `scripts/bench-capture.sh` runs
//! it directly and under `interceptor exec` and writes the ratios to docs/performance.md, and
//! `scripts/bench-memory.sh` holds idle sessions open through the gateway to weigh them.
//! Every workload has a fixed count and a wall-clock cap; addresses must be loopback.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod http;

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
    /// Hold --count idle sessions open: the gateway's memory per session. At each stage it
    /// prints a JSON line `{"state": S, …}` and waits until the file --control-dir/S exists:
    /// `ready`; --warmup sessions opened together and closed, `warm`; --pause-at sessions
    /// open, `paused`; all --count open, `held`; then it closes them and prints `released`. A
    /// session is a connection with one byte echoed through an `echo` server, or a PostgreSQL
    /// start-up with --pg-user. Everything, waits included, ends within --timeout seconds (at
    /// most 300).
    Hold {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 0)]
        warmup: u64,
        #[arg(long, default_value_t = 0)]
        pause_at: u64,
        #[arg(long)]
        control_dir: PathBuf,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Speak PostgreSQL: a start-up message as this user (the server must trust it), then
        /// wait for ReadyForQuery.
        #[arg(long)]
        pg_user: Option<String>,
        #[arg(long, default_value = "postgres")]
        pg_database: String,
    },
    /// An HTTP/1.1 upstream, until killed: `GET /small` is one JSON record (about 170 bytes),
    /// `/large.json` a JSON array of about --json-bytes, `/large.ndjson` JSON lines of about
    /// --ndjson-bytes; records with an email each and a card number in every fourth.
    HttpServe {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1_000_000)]
        json_bytes: usize,
        #[arg(long, default_value_t = 1_000_000)]
        ndjson_bytes: usize,
    },
    /// --requests GETs of --path over --connections keep-alive connections (at most --seconds,
    /// capped at 60); every answer must be 200. Prints requests/s, MB/s and latencies.
    HttpLoad {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "/small")]
        path: String,
        #[arg(long, default_value_t = 8)]
        connections: u64,
        #[arg(long)]
        requests: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

/// No workload may run longer than this, whatever its count.
const WALL_CLOCK_CAP: Duration = Duration::from_secs(60);

/// `hold` waits for files as well as connecting, so it gets a longer cap.
const HOLD_CAP: Duration = Duration::from_secs(300);

fn require_loopback(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("{addr}: benchmarks only talk to loopback addresses");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { addr, mode, bytes } => serve(addr, &mode, bytes),
        Command::HttpServe {
            addr,
            json_bytes,
            ndjson_bytes,
        } => {
            require_loopback(addr)?;
            http::serve(addr, json_bytes, ndjson_bytes)
        }
        Command::HttpLoad {
            addr,
            path,
            connections,
            requests,
            seconds,
        } => {
            require_loopback(addr)?;
            let seconds = Duration::from_secs(seconds).min(WALL_CLOCK_CAP).as_secs();
            http::load(addr, &path, connections, requests, seconds)
        }
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
        Command::Hold {
            addr,
            count,
            warmup,
            pause_at,
            control_dir,
            timeout,
            pg_user,
            pg_database,
        } => {
            require_loopback(addr)?;
            let session = Session {
                addr,
                pg: pg_user.as_deref().map(|user| (user, pg_database.as_str())),
                deadline: Instant::now() + Duration::from_secs(timeout).min(HOLD_CAP),
            };
            let stage = |state: &str, connections: usize| {
                let line = serde_json::json!({"workload": "hold", "state": state, "connections": connections});
                println!("{line}");
                session.wait_for(&control_dir.join(state))
            };
            stage("ready", 0)?;
            drop(session.open_many(warmup)?);
            stage("warm", 0)?;
            let mut held = session.open_many(pause_at.min(count))?;
            stage("paused", held.len())?;
            held.extend(session.open_many(count - held.len() as u64)?);
            let waited = stage("held", held.len());
            drop(held);
            println!(
                "{}",
                serde_json::json!({"workload": "hold", "state": "released"})
            );
            waited
        }
    }
}

/// How `hold` opens its sessions, and when it must give up.
struct Session<'a> {
    addr: SocketAddr,
    pg: Option<(&'a str, &'a str)>,
    deadline: Instant,
}

impl Session<'_> {
    fn open_many(&self, count: u64) -> anyhow::Result<Vec<TcpStream>> {
        let mut held = Vec::with_capacity(count as usize);
        while (held.len() as u64) < count {
            if Instant::now() >= self.deadline {
                bail!("only {} of {count} sessions opened in time", held.len());
            }
            let mut stream = TcpStream::connect(self.addr)
                .with_context(|| format!("connection {} to {}", held.len(), self.addr))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            match self.pg {
                Some((user, database)) => pg_startup(&mut stream, user, database),
                None => ping(&mut stream),
            }
            .with_context(|| format!("session {}", held.len()))?;
            held.push(stream);
        }
        Ok(held)
    }

    /// Polls for `file` until the deadline.
    fn wait_for(&self, file: &Path) -> anyhow::Result<()> {
        while !file.exists() {
            if Instant::now() >= self.deadline {
                bail!("{} did not appear in time", file.display());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// One byte through an `echo` server: the session is relayed end to end, then left idle.
fn ping(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"p")?;
    let mut got = [0u8; 1];
    stream.read_exact(&mut got)
}

/// A PostgreSQL start-up (protocol 3.0, no TLS, a server that trusts `user`), up to
/// ReadyForQuery: the session is idle and ready, as a connection pool's would be.
fn pg_startup(stream: &mut TcpStream, user: &str, database: &str) -> std::io::Result<()> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", database)] {
        for text in [key, value] {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    stream.write_all(&message)?;
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(std::io::Error::other(format!("message length {len}")));
        }
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body)?;
        match header[0] {
            b'Z' => return Ok(()),
            b'E' => {
                return Err(std::io::Error::other(format!(
                    "server error: {}",
                    String::from_utf8_lossy(&body).replace('\0', " ")
                )))
            }
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(std::io::Error::other(
                    "the server asked for a password: hold needs a trusted user",
                ))
            }
            _ => {}
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
