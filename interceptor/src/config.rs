//! The daemon's configuration: one TOML file, with embedded defaults for everything.
//!
//! Why this exists: a security team deploys the same binary as a service (`interceptor run`) and
//! as a one-shot wrapper (`interceptor exec`). Both read this file; with no file at all the
//! embedded defaults make `exec` work. Unknown keys are errors, not warnings: a misspelled key
//! in a security gate's config must not silently turn a control off. Parse errors name the
//! file, line and column. The reference for every key is `docs/configuration.md`.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Where the service looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/interceptor/config.toml";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or a value of the wrong shape.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed TOML whose values don't make sense together.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_journal_path(),
        }
    }
}

fn default_journal_path() -> PathBuf {
    PathBuf::from("/var/lib/interceptor/journal.db")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Listener port on 127.0.0.1 and [::1] for `run`. `exec` always picks a free port so two
    /// runs never collide.
    #[serde(default = "default_proxy_port")]
    pub port: u16,
    /// Seconds to wait for the upstream TCP handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            port: default_proxy_port(),
            connect_timeout_secs: default_connect_timeout(),
        }
    }
}

fn default_proxy_port() -> u16 {
    15001
}
fn default_connect_timeout() -> u64 {
    10
}

/// Which connections the eBPF programs steer into the proxy.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Every outbound TCP connection.
    All,
    /// Only destinations in `capture.intercept` and the targets' `intercept` lists.
    Listed,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UdpPolicy {
    /// DNS (port 53) only.
    #[default]
    DnsOnly,
    /// Any UDP destination.
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Default: `all` for `exec`, `listed` for `run`.
    pub mode: Option<CaptureMode>,
    /// Extra destinations to intercept in `listed` mode: "ip:port", "[ip6]:port" or "*:port".
    #[serde(default)]
    pub intercept: Vec<String>,
    #[serde(default)]
    pub udp: UdpPolicy,
    /// Service mode: cgroup v2 paths (relative to the cgroup2 mount) to capture. Created if absent.
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// Service mode: systemd units whose cgroup is captured (resolved with systemctl).
    #[serde(default)]
    pub units: Vec<String>,
    /// Service mode: where programs' links and maps are pinned so capture outlives the daemon.
    #[serde(default = "default_bpffs_dir")]
    pub pin_dir: PathBuf,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            mode: None,
            intercept: Vec::new(),
            udp: UdpPolicy::default(),
            cgroups: Vec::new(),
            units: Vec::new(),
            pin_dir: default_bpffs_dir(),
        }
    }
}

fn default_bpffs_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/interceptor")
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain TCP relay: the connection itself is the command.
    #[default]
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Destinations the agent dials that belong to this target.
    #[serde(default)]
    pub intercept: Vec<String>,
    /// Where the gateway connects instead (default: the dialed address).
    pub upstream: Option<String>,
}

/// A destination pattern from `intercept` lists: an exact address, or any address on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestPattern {
    Exact(SocketAddr),
    AnyAddress(u16),
}

impl DestPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(port) = text.strip_prefix("*:") {
            return port
                .parse::<u16>()
                .map(DestPattern::AnyAddress)
                .map_err(|_| format!("invalid port in {text:?}"));
        }
        text.parse::<SocketAddr>()
            .map(|addr| DestPattern::Exact(normalize(addr)))
            .map_err(|_| format!("{text:?} is not \"ip:port\", \"[ip6]:port\" or \"*:port\""))
    }

    pub fn matches(&self, dst: SocketAddr) -> bool {
        match *self {
            DestPattern::Exact(addr) => addr == normalize(dst),
            DestPattern::AnyAddress(port) => port == dst.port(),
        }
    }
}

/// IPv4 and v4-mapped IPv6 name the same destination; compare them as IPv4.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// A target after validation: patterns parsed, upstream resolved to an address.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub protocol: Protocol,
    pub intercept: Vec<DestPattern>,
    pub upstream: Option<SocketAddr>,
}

impl Config {
    /// Loads `path`. A missing file at the default path means "embedded defaults"; a missing file
    /// the operator named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        config.targets().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        config
            .extra_intercepts()
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })?;
        Ok(config)
    }

    /// Validated targets, in file order (the first matching target wins).
    pub fn targets(&self) -> Result<Vec<Target>, String> {
        let mut names = std::collections::HashSet::new();
        self.targets
            .iter()
            .map(|t| {
                if t.name.is_empty() {
                    return Err("a [[target]] has an empty name".to_owned());
                }
                if !names.insert(t.name.as_str()) {
                    return Err(format!("target {:?} is defined twice", t.name));
                }
                let intercept = t
                    .intercept
                    .iter()
                    .map(|p| DestPattern::parse(p).map_err(|e| format!("target {:?}: {e}", t.name)))
                    .collect::<Result<Vec<_>, _>>()?;
                let upstream = t
                    .upstream
                    .as_deref()
                    .map(|u| {
                        u.parse::<SocketAddr>().map_err(|_| {
                            format!("target {:?}: upstream {u:?} is not \"ip:port\"", t.name)
                        })
                    })
                    .transpose()?;
                Ok(Target {
                    name: t.name.clone(),
                    protocol: t.protocol,
                    intercept,
                    upstream,
                })
            })
            .collect()
    }

    pub fn extra_intercepts(&self) -> Result<Vec<DestPattern>, String> {
        self.capture
            .intercept
            .iter()
            .map(|p| DestPattern::parse(p).map_err(|e| format!("capture.intercept: {e}")))
            .collect()
    }
}

/// 1-based line and column of a byte offset, for error messages.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
