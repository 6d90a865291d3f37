//! Metrics: counters and a latency histogram, and the endpoint that serves them in the
//! Prometheus text format (0.0.4).
//!
//! Why this exists: an operator's monitoring wants to see, without reading the journal, how
//! many sessions run, what policy decides, whether approvals pile up, whether the journal is
//! slow and whether the SIEM keeps up. The endpoint is off by default (`[metrics] listen`) and
//! only listens on loopback or on a Unix socket: target and rule names are not for the network.
//!
//! The counters are small maps behind a mutex rather than a metrics crate's registry, because
//! `interceptor status` reads the same values back as numbers, which registries such as
//! prometheus-client do not expose; writing the text format itself is a few lines
//! ([`Exposition`]). HTTP is hyper's.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Counts by a fixed set of label values (`N` labels), e.g. sessions by (target, protocol).
/// Label sets are few (targets × rules), so a linear scan finds them without allocating.
pub struct LabeledCounts<const N: usize> {
    counts: Mutex<Vec<([String; N], i64)>>,
}

impl<const N: usize> Default for LabeledCounts<N> {
    fn default() -> Self {
        LabeledCounts {
            counts: Mutex::new(Vec::new()),
        }
    }
}

impl<const N: usize> LabeledCounts<N> {
    pub fn add(&self, labels: [&str; N], delta: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts
            .iter_mut()
            .find(|(l, _)| l.iter().zip(labels.iter()).all(|(a, b)| a == b))
        {
            Some((_, n)) => *n += delta,
            None => counts.push((labels.map(str::to_owned), delta)),
        }
    }

    /// Every label set with its count, sorted by labels.
    pub fn snapshot(&self) -> Vec<([String; N], i64)> {
        let mut all = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        all.sort();
        all
    }
}

/// Upper bounds of the latency buckets, in seconds: 100 µs to 2.5 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram over [`LATENCY_BUCKETS`], lock-free to observe.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is above the largest bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per bound of [`LATENCY_BUCKETS`].
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// The upper bound of the bucket that holds quantile `q` (0..1): an estimate from above.
    /// `None` without observations, or when the quantile is above the largest bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil() as u64;
        self.cumulative
            .iter()
            .zip(LATENCY_BUCKETS)
            .find(|(n, _)| **n >= rank)
            .map(|(_, bound)| bound)
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len());
        for bucket in &self.buckets[..LATENCY_BUCKETS.len()] {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Writes the Prometheus text format: one `# HELP`/`# TYPE` per family, then its samples.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family; `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        use std::fmt::Write as _;
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// A counter family with one label: a sample per (label value, count).
    pub fn counter_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        counts: impl Iterator<Item = (&'a str, i64)>,
    ) {
        self.family(name, "counter", help);
        for (value, count) in counts {
            self.sample(name, &[(label, value)], count as f64);
        }
    }

    /// A histogram family's samples (the family must be started with kind `histogram`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&h.cumulative) {
            let le = format_value(*bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, *count as f64);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with_le, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[metrics]`: where the endpoint listens. Absent: no endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `127.0.0.1:9464`, `[::1]:9464`, or `unix:/run/interceptor/metrics.sock`.
    pub listen: Option<String>,
}

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "http://{addr}/metrics"),
            Endpoint::Unix(path) => write!(f, "unix:{} (GET /metrics)", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("[metrics] listen = {0:?}: {1}")]
    Config(String, &'static str),
    #[error("metrics endpoint {endpoint}: {source}")]
    Bind {
        endpoint: String,
        source: std::io::Error,
    },
}

impl MetricsConfig {
    /// The endpoint, if one is configured. Only loopback addresses and Unix sockets: the
    /// metrics name targets, rules and users' units.
    pub fn endpoint(&self) -> Result<Option<Endpoint>, MetricsError> {
        let Some(listen) = self.listen.as_deref() else {
            return Ok(None);
        };
        if let Some(path) = listen.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(MetricsError::Config(
                    listen.to_owned(),
                    "a Unix socket path must be absolute",
                ));
            }
            return Ok(Some(Endpoint::Unix(PathBuf::from(path))));
        }
        let addr: SocketAddr = listen.parse().map_err(|_| {
            MetricsError::Config(
                listen.to_owned(),
                "expected 127.0.0.1:PORT, [::1]:PORT or unix:/path",
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(MetricsError::Config(
                listen.to_owned(),
                "the metrics endpoint listens on loopback or a Unix socket only (the metrics \
                 name targets and rules); scrape it through a local agent or proxy",
            ));
        }
        Ok(Some(Endpoint::Tcp(addr)))
    }
}

/// Renders the current metrics; called once per scrape, off the runtime's workers.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A served endpoint: stops serving (and removes its socket file) when dropped.
pub struct Served {
    task: tokio::task::JoinHandle<()>,
    socket: Option<PathBuf>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds `endpoint` and serves `GET /metrics` from `render`. A Unix socket is made mode 0660
/// with `group` (0600 without it), like the journal it summarizes.
pub async fn serve(
    endpoint: &Endpoint,
    group: &str,
    render: Render,
) -> Result<Served, MetricsError> {
    let bind_error = |source| MetricsError::Bind {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_error)?;
            let task = tokio::spawn(async move {
                accept_each(|| async { listener.accept().await.map(|(s, _)| s) }, render).await
            });
            Ok(Served { task, socket: None })
        }
        Endpoint::Unix(path) => {
            let listener = crate::group_socket::bind(path, group).map_err(bind_error)?;
            let task = tokio::spawn(async move {
                accept_each(|| async { listener.accept().await.map(|(s, _)| s) }, render).await
            });
            Ok(Served {
                task,
                socket: Some(path.clone()),
            })
        }
    }
}

/// Serves each connection `accept` yields, until the task is aborted; a failed accept
/// (EMFILE and the like) backs off instead of spinning.
async fn accept_each<S, F>(accept: impl Fn() -> F, render: Render)
where
    F: std::future::Future<Output = std::io::Result<S>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        match accept().await {
            Ok(stream) => serve_connection(stream, render.clone()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One HTTP/1.1 connection (keep-alive allowed): `GET /metrics` answers the text format,
/// anything else 404 or 405.
fn serve_connection<S>(stream: S, render: Render)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::{body::Bytes, Method, Response, StatusCode};
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let render = render.clone();
            async move {
                let reply = |status: StatusCode, content_type: &str, body: String| {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    if let Ok(value) = content_type.parse() {
                        response
                            .headers_mut()
                            .insert(hyper::header::CONTENT_TYPE, value);
                    }
                    Ok::<_, std::convert::Infallible>(response)
                };
                if request.uri().path() != "/metrics" {
                    return reply(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        "not found: GET /metrics\n".into(),
                    );
                }
                if request.method() != Method::GET && request.method() != Method::HEAD {
                    return reply(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        "GET /metrics\n".into(),
                    );
                }
                let body = tokio::task::spawn_blocking(move || render())
                    .await
                    .unwrap_or_else(|e| format!("# rendering failed: {e}\n"));
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body,
                )
            }
        });
    tokio::spawn(async move {
        let io = hyper_util::rt::TokioIo::new(stream);
        // A client that never finishes its request headers is dropped (hyper needs a timer for
        // that).
        let served = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(io, service);
        if let Err(e) = served.await {
            tracing::debug!(error = %e, "metrics connection failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_labels_and_renders_the_text_format() {
        let sessions = LabeledCounts::<2>::default();
        sessions.add(["db", "postgres"], 1);
        sessions.add(["db", "postgres"], 1);
        sessions.add(["", "tcp"], 1);
        assert_eq!(
            sessions.snapshot(),
            vec![
                (["".to_owned(), "tcp".to_owned()], 1),
                (["db".to_owned(), "postgres".to_owned()], 2)
            ]
        );
        let mut out = Exposition::default();
        out.family("x_total", "counter", "Things.");
        out.sample("x_total", &[("rule", "a\"b\\c\nd")], 3.0);
        assert_eq!(
            out.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{rule=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_an_inf_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[3], 2);
        assert_eq!(*s.cumulative.last().unwrap(), 2);
        assert_eq!(s.quantile_bound(0.5), Some(0.001));
        assert_eq!(s.quantile_bound(0.99), None);
        let mut out = Exposition::default();
        out.histogram("lat_seconds", &[], &s);
        let text = out.finish();
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count 3\n"), "{text}");
    }

    #[test]
    fn only_loopback_or_unix_endpoints() {
        let at = |s: &str| {
            MetricsConfig {
                listen: Some(s.to_owned()),
            }
            .endpoint()
        };
        assert!(matches!(at("127.0.0.1:9464"), Ok(Some(Endpoint::Tcp(_)))));
        assert!(matches!(at("[::1]:9464"), Ok(Some(Endpoint::Tcp(_)))));
        assert!(matches!(
            at("unix:/run/x.sock"),
            Ok(Some(Endpoint::Unix(_)))
        ));
        assert!(at("0.0.0.0:9464").is_err());
        assert!(at("unix:relative.sock").is_err());
        assert!(at("localhost").is_err());
        assert!(matches!(MetricsConfig::default().endpoint(), Ok(None)));
    }

    /// The Unix endpoint: mode 0600 without the group, the text format over HTTP/1.1, and
    /// the socket file removed when serving stops.
    #[tokio::test]
    async fn serves_on_a_unix_socket_and_removes_it() {
        use std::os::unix::fs::PermissionsExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        let served = serve(
            &Endpoint::Unix(path.clone()),
            "no-such-group-for-this-test",
            Arc::new(|| "x_total 1\n".to_owned()),
        )
        .await
        .expect("serve");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut stream = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nx_total 1\n"), "{answer}");
        drop(served);
        assert!(!path.exists());
    }
}
