//! HTTP workloads for `scripts/bench-http.sh`: an upstream that serves JSON from memory, and a
//! keep-alive load client. Both are hyper on tokio, so neither is the bottleneck the bench
//! measures; the client times itself (the gateway's start-up is not counted).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HOST},
    Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::timeout};

/// One request (head to the end of its body) may take at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A customer record like the bulk section's table: an email in every record, a valid card
/// number (Luhn) in every fourth, so the masking detectors have work.
fn record(i: u64) -> String {
    let card = if i.is_multiple_of(4) {
        "4111 1111 1111 1111"
    } else {
        "n/a"
    };
    format!(
        r#"{{"id":{i},"name":"Customer {i}","email":"user{i}@example.com","card":"{card}","note":"{:032x}","address":"{} Main Street","score":{}}}"#,
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        i % 300 + 1,
        (i * 7) % 1000
    )
}

/// Records until the text reaches `bytes`: a JSON array, or JSON lines.
fn records(bytes: usize, lines: bool) -> Bytes {
    let mut out = String::with_capacity(bytes + 256);
    if !lines {
        out.push('[');
    }
    let mut i = 1;
    while out.len() < bytes {
        if !lines && i > 1 {
            out.push(',');
        }
        out.push_str(&record(i));
        if lines {
            out.push('\n');
        }
        i += 1;
    }
    if !lines {
        out.push(']');
    }
    Bytes::from(out)
}

struct Bodies {
    small: Bytes,
    json: Bytes,
    ndjson: Bytes,
}

impl Bodies {
    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (content_type, body) = match path {
            "/small" => ("application/json", self.small.clone()),
            "/large.json" => ("application/json", self.json.clone()),
            "/large.ndjson" => ("application/x-ndjson", self.ndjson.clone()),
            _ => {
                let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *response.status_mut() = StatusCode::NOT_FOUND;
                return response;
            }
        };
        let mut response = Response::new(Full::new(body));
        response.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    }
}

/// Serves until killed: `/small` (one record, about 170 bytes), `/large.json` (an array of
/// about `json_bytes`), `/large.ndjson` (JSON lines, about `ndjson_bytes`).
pub fn serve(addr: SocketAddr, json_bytes: usize, ndjson_bytes: usize) -> anyhow::Result<()> {
    let bodies = Arc::new(Bodies {
        small: Bytes::from(record(4)),
        json: records(json_bytes, false),
        ndjson: records(ndjson_bytes, true),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        println!("listening {}", listener.local_addr()?);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = bodies.respond(request.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// What one connection of the load did.
#[derive(Default)]
struct Done {
    latencies: Vec<Duration>,
    bytes: u64,
}

/// `requests` GETs of `path` over `connections` keep-alive connections, stopped after `seconds`
/// at most; every answer must be 200. Prints one JSON line.
pub fn load(
    addr: SocketAddr,
    path: &str,
    connections: u64,
    requests: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let next = Arc::new(AtomicU64::new(0));
    let done = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (next, path) = (next.clone(), path.to_owned());
            tasks.push(tokio::spawn(async move {
                connection(addr, &path, &next, requests, deadline).await
            }));
        }
        let mut all = Done::default();
        for task in tasks {
            let one = task.await.context("a connection's task")??;
            all.latencies.extend(one.latencies);
            all.bytes += one.bytes;
        }
        anyhow::Ok(all)
    })?;
    let secs = started.elapsed().as_secs_f64();
    let mut latencies = done.latencies;
    latencies.sort();
    let ops = latencies.len() as u64;
    let at = |q: f64| {
        latencies
            .get(((ops as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let line = serde_json::json!({
        "workload": "http",
        "path": path,
        "connections": connections,
        "ops": ops,
        "seconds": secs,
        "ops_per_sec": ops as f64 / secs,
        "bytes": done.bytes,
        "mb_per_sec": done.bytes as f64 / secs / 1e6,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
    });
    println!("{line}");
    Ok(())
}

async fn connection(
    addr: SocketAddr,
    path: &str,
    next: &AtomicU64,
    requests: u64,
    deadline: Instant,
) -> anyhow::Result<Done> {
    let stream = timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = timeout(
        REQUEST_TIMEOUT,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .context("handshake timed out")??;
    let driver = tokio::spawn(conn);
    let mut done = Done::default();
    let host = addr.to_string();
    while Instant::now() < deadline && next.fetch_add(1, Ordering::Relaxed) < requests {
        let request = Request::get(path)
            .header(HOST, &host)
            .body(Empty::<Bytes>::new())?;
        let started = Instant::now();
        let bytes = timeout(REQUEST_TIMEOUT, async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    bytes += data.len() as u64;
                }
            }
            if status != StatusCode::OK {
                bail!("GET {path}: {status}");
            }
            anyhow::Ok(bytes)
        })
        .await
        .with_context(|| format!("GET {path} timed out"))??;
        done.latencies.push(started.elapsed());
        done.bytes += bytes;
    }
    drop(sender);
    driver.abort();
    Ok(done)
}
