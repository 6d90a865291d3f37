//! `[[sink]]` entries: parsed strictly, then validated into one typed [`SinkKind`] per entry.
//!
//! Why the two steps: every sink type shares one TOML table shape, so serde alone cannot tell
//! a misplaced key (`keep` on a syslog sink) from a missing one. [`RawSink`] accepts the union
//! of all keys and rejects anything else (`deny_unknown_fields`); [`SinkConfig`]'s `TryFrom`
//! then checks that each key belongs to the sink's type, with messages that name the sink. The
//! conversion runs during deserialization, so its errors come out of `Config::parse` with the
//! file, line and column like any other config error.
//!
//! Secrets come from files only (`token_file`): an inline `token` is refused with a message
//! saying where to put it. Files named here are only opened when a shipper starts
//! ([`super::Shipper::start`]), so read-only commands work without them.

use std::path::PathBuf;

use serde::Deserialize;

/// One `[[sink]]` of the configuration, validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSink")]
pub struct SinkConfig {
    /// Unique among the sinks: it keys the sink's cursor in the journal.
    pub name: String,
    pub kind: SinkKind,
    /// Events read from the journal per delivery round.
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    File(FileSink),
    Syslog(SyslogSink),
    SplunkHec(HecSink),
}

impl SinkKind {
    /// The `type` key's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Syslog(_) => "syslog",
            SinkKind::SplunkHec(_) => "splunk_hec",
        }
    }
}

/// `type = "file"`: rotating NDJSON for a log shipper (Vector, Fluent Bit) to pick up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSink {
    pub path: PathBuf,
    /// The live file is rotated before it would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` is the newest).
    pub keep: u32,
}

/// `type = "syslog"`: RFC 5424 over TCP with octet-counting framing (RFC 6587), optionally TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSink {
    /// `host:port`.
    pub address: String,
    pub tls: Option<SyslogTls>,
    /// The syslog facility number (0–23).
    pub facility: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTls {
    /// CA bundle (PEM); default: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Name to verify; default: the host of `address`.
    pub server_name: Option<String>,
}

/// `type = "splunk_hec"`: Splunk's HTTP Event Collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HecSink {
    /// Base URL (`https://splunk:8088`), without the `/services/collector/event` path.
    pub url: String,
    /// The HEC token, alone in a file. Read for every delivery, so rotation needs no restart.
    pub token_file: PathBuf,
    /// CA bundle (PEM) for an https URL; default: the system's trust store.
    pub ca_file: Option<PathBuf>,
}

pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
pub const DEFAULT_KEEP: u32 = 5;
pub const DEFAULT_BATCH: usize = 500;
const MAX_BATCH: usize = 10_000;
/// Below this a file would rotate every few records.
const MIN_MAX_BYTES: u64 = 4096;

/// The table as written: the union of every sink type's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    batch_size: Option<usize>,
    // file
    path: Option<PathBuf>,
    max_bytes: Option<u64>,
    keep: Option<u32>,
    // syslog
    address: Option<String>,
    tls: Option<bool>,
    server_name: Option<String>,
    facility: Option<String>,
    // syslog and splunk_hec
    ca_file: Option<PathBuf>,
    // splunk_hec
    url: Option<String>,
    token_file: Option<PathBuf>,
    /// Accepted by the parser only to refuse it with a useful message.
    token: Option<toml::Value>,
}

impl TryFrom<RawSink> for SinkConfig {
    type Error = String;

    fn try_from(raw: RawSink) -> Result<SinkConfig, String> {
        let name = raw.name.clone();
        validate_name(&name)?;
        let fail = |message: String| format!("sink {name:?}: {message}");
        if raw.token.is_some() {
            return Err(fail(
                "secrets are not accepted inline: put the token alone in a file (mode 0600) \
                 and name it with token_file"
                    .to_owned(),
            ));
        }
        let allowed: &[&str] = match raw.kind.as_str() {
            "file" => &["path", "max_bytes", "keep"],
            "syslog" => &["address", "tls", "ca_file", "server_name", "facility"],
            "splunk_hec" => &["url", "token_file", "ca_file"],
            other => {
                return Err(fail(format!(
                    "unknown type {other:?} (file, syslog or splunk_hec)"
                )))
            }
        };
        if let Some(key) = raw.present_keys().find(|k| !allowed.contains(k)) {
            return Err(fail(format!(
                "{key} does not apply to type {:?} (its keys: {})",
                raw.kind,
                allowed.join(", ")
            )));
        }
        let batch_size = raw.batch_size.unwrap_or(DEFAULT_BATCH);
        if !(1..=MAX_BATCH).contains(&batch_size) {
            return Err(fail(format!("batch_size must be 1 to {MAX_BATCH}")));
        }
        let kind = match raw.kind.as_str() {
            "file" => {
                let path = raw
                    .path
                    .ok_or_else(|| fail("type \"file\" needs path".to_owned()))?;
                let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
                if max_bytes < MIN_MAX_BYTES {
                    return Err(fail(format!("max_bytes must be at least {MIN_MAX_BYTES}")));
                }
                let keep = raw.keep.unwrap_or(DEFAULT_KEEP);
                if keep == 0 {
                    // Deleting the live file's predecessor at once would race the log shipper
                    // still reading it.
                    return Err(fail("keep must be at least 1".to_owned()));
                }
                SinkKind::File(FileSink {
                    path,
                    max_bytes,
                    keep,
                })
            }
            "syslog" => {
                let address = raw.address.ok_or_else(|| {
                    fail("type \"syslog\" needs address (\"host:port\")".to_owned())
                })?;
                split_host_port(&address).map_err(&fail)?;
                let tls = raw.tls.unwrap_or(false);
                if !tls && (raw.ca_file.is_some() || raw.server_name.is_some()) {
                    return Err(fail("ca_file and server_name need tls = true".to_owned()));
                }
                let facility = match &raw.facility {
                    Some(f) => facility_number(f).ok_or_else(|| {
                        fail(format!(
                            "unknown facility {f:?} (e.g. local0 … local7, auth, authpriv, daemon, user)"
                        ))
                    })?,
                    None => facility_number("local0").unwrap_or(16),
                };
                SinkKind::Syslog(SyslogSink {
                    address,
                    tls: tls.then_some(SyslogTls {
                        ca_file: raw.ca_file,
                        server_name: raw.server_name,
                    }),
                    facility,
                })
            }
            _ => {
                let url = raw.url.ok_or_else(|| {
                    fail("type \"splunk_hec\" needs url (e.g. \"https://splunk:8088\")".to_owned())
                })?;
                let url = url.trim_end_matches('/').to_owned();
                let https = url.starts_with("https://");
                if !https && !url.starts_with("http://") {
                    return Err(fail(format!(
                        "url {url:?} must start with http:// or https://"
                    )));
                }
                if url.contains("/services/collector") {
                    return Err(fail(format!(
                        "url {url:?}: give the base URL; /services/collector/event is added"
                    )));
                }
                if !https && raw.ca_file.is_some() {
                    return Err(fail("ca_file needs an https:// url".to_owned()));
                }
                let token_file = raw.token_file.ok_or_else(|| {
                    fail(
                        "type \"splunk_hec\" needs token_file (the HEC token, alone in a file)"
                            .to_owned(),
                    )
                })?;
                SinkKind::SplunkHec(HecSink {
                    url,
                    token_file,
                    ca_file: raw.ca_file,
                })
            }
        };
        Ok(SinkConfig {
            name,
            kind,
            batch_size,
        })
    }
}

impl RawSink {
    /// The type-specific keys that were given.
    fn present_keys(&self) -> impl Iterator<Item = &'static str> {
        [
            ("path", self.path.is_some()),
            ("max_bytes", self.max_bytes.is_some()),
            ("keep", self.keep.is_some()),
            ("address", self.address.is_some()),
            ("tls", self.tls.is_some()),
            ("server_name", self.server_name.is_some()),
            ("facility", self.facility.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("url", self.url.is_some()),
            ("token_file", self.token_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
    }
}

/// Sink names key cursors and appear in logs and `ship status`: keep them plain.
fn validate_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(format!(
            "sink name {name:?} must be 1 to 64 letters, digits, '_', '-' or '.'"
        ));
    }
    Ok(())
}

/// `host:port` or `[v6]:port` → (host, port).
pub(crate) fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let bad = || format!("address {address:?} is not \"host:port\"");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// RFC 5424 §6.2.1 facility codes by their usual names.
fn facility_number(name: &str) -> Option<u8> {
    const NAMES: [&str; 16] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    ];
    if let Some(n) = NAMES.iter().position(|n| *n == name) {
        return u8::try_from(n).ok();
    }
    let local: u8 = name.strip_prefix("local")?.parse().ok()?;
    (local <= 7).then_some(16 + local)
}

/// Checks what a single entry cannot: names are unique across the sinks.
pub fn validate_all(sinks: &[SinkConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for s in sinks {
        if !seen.insert(s.name.as_str()) {
            return Err(format!("sink {:?} is defined twice", s.name));
        }
    }
    Ok(())
}
