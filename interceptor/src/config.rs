//! The daemon's configuration: one TOML file, with embedded defaults for everything.
//!
//! Why this exists: a security team deploys the same binary as a service (`interceptor run`) and
//! as a one-shot wrapper (`interceptor exec`). Both read this file; with no file at all the
//! embedded defaults make `exec` work. Unknown keys are errors, not warnings: a misspelled key
//! in a security gate's config must not silently turn a control off. Parse errors name the
//! file, line and column. The reference for every key is `docs/configuration.md`.

use std::{
    collections::HashMap,
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
    /// Well-formed TOML whose values don't make sense (together). `line` is where the
    /// offending value is, when it can be found.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
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
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    #[serde(default)]
    pub masking: MaskingConfig,
    /// Start-up and idle timeouts, and how many sessions may be open (`gateway::limits`).
    #[serde(default)]
    pub limits: crate::gateway::limits::LimitsConfig,
    /// The Prometheus endpoint; off unless `listen` is set.
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    /// Where journal events are shipped (SIEMs, files for log shippers).
    #[serde(default, rename = "sink")]
    pub sinks: Vec<crate::ship::SinkConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// The file this came from and its text, for error messages found after parsing.
    #[serde(skip)]
    pub origin: Option<(PathBuf, String)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// The service's control socket; `exec` runs put `exec-<run id>.sock` beside it.
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
    /// Members of this group (and root) may approve; the socket is mode 0660 with this group.
    #[serde(default = "default_approvers_group")]
    pub group: String,
    /// How long a held command waits when its rule sets no `review_timeout_secs`.
    #[serde(
        default = "default_review_timeout",
        deserialize_with = "review_timeout"
    )]
    pub timeout_secs: u64,
    /// POST each new request here (http:// or https://).
    pub webhook: Option<String>,
    /// `json` (the request as JSON) or `slack` (a Slack-compatible `{"text": …}`).
    #[serde(default)]
    pub webhook_format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            socket: default_control_socket(),
            group: default_approvers_group(),
            timeout_secs: default_review_timeout(),
            webhook: None,
            webhook_format: WebhookFormat::default(),
        }
    }
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/interceptor/control.sock")
}
fn default_approvers_group() -> String {
    "interceptor-approvers".to_owned()
}
fn default_review_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policy file or directory for every target without its own `policy`. Default: the
    /// embedded `policies/default.toml`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Where the daemon keeps what it creates for itself (the local CA for client-side TLS).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/interceptor")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
    /// Rows of each result kept in the journal, after masking (0, the default, keeps none).
    #[serde(default)]
    pub result_sample_rows: usize,
    /// How hard each commit is pushed to disk.
    #[serde(default)]
    pub sync: JournalSync,
    /// Events older than this many days may be pruned (`interceptor journal prune`, and the
    /// daemon daily). `None` keeps everything.
    pub retention_days: Option<u32>,
    /// Bytes of a statement's (masked) text the journal keeps; a longer one is kept as this
    /// prefix with its full length and SHA-256 (`journal::clip_statement`).
    #[serde(default = "default_statement_max_bytes")]
    pub statement_max_bytes: usize,
}

fn default_statement_max_bytes() -> usize {
    crate::journal::DEFAULT_STATEMENT_MAX_BYTES
}

/// SQLite's `synchronous` setting for the journal (always in WAL mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalSync {
    /// `synchronous=NORMAL`: a commit survives a crash of the daemon; a power loss may lose
    /// the last commits (never corrupt the journal).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before anything is forwarded.
    Full,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_journal_path(),
            result_sample_rows: 0,
            sync: JournalSync::Normal,
            retention_days: None,
            statement_max_bytes: default_statement_max_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The key of the `hash` masking strategy (at least 32 bytes). Default: `mask.key` in the
    /// state directory, created with a random key on first use.
    pub hash_key_file: Option<PathBuf>,
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
    /// Seconds to wait for the upstream TCP handshake (1 to 300).
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "connect_timeout"
    )]
    pub connect_timeout_secs: u64,
    /// Bytes of large messages (over 1 MiB) all sessions may buffer at once
    /// (`protocol::buffers`).
    #[serde(default = "default_buffer_budget")]
    pub buffer_budget_bytes: usize,
    /// Seconds a large message waits for that budget before it is refused.
    #[serde(default = "default_buffer_wait")]
    pub buffer_wait_secs: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            port: default_proxy_port(),
            connect_timeout_secs: default_connect_timeout(),
            buffer_budget_bytes: default_buffer_budget(),
            buffer_wait_secs: default_buffer_wait(),
        }
    }
}

fn default_buffer_budget() -> usize {
    crate::protocol::buffers::DEFAULT_BUDGET_BYTES
}
fn default_buffer_wait() -> u64 {
    crate::protocol::buffers::DEFAULT_WAIT_SECS
}

impl ProxyConfig {
    /// Values that would make the gateway refuse every large message, or wait forever.
    fn validate(&self, targets: &[Target]) -> Result<(), String> {
        if self.buffer_wait_secs == 0 || self.buffer_wait_secs > 3600 {
            return Err(format!(
                "[proxy] buffer_wait_secs = {}: must be between 1 and 3600",
                self.buffer_wait_secs
            ));
        }
        // A target's largest message must fit the budget whole (its tag and length too).
        if let Some(t) = targets
            .iter()
            .find(|t| t.max_message_bytes.saturating_add(5) > self.buffer_budget_bytes)
        {
            return Err(format!(
                "[proxy] buffer_budget_bytes = {}: smaller than target {:?}'s \
                 max_message_bytes ({}), whose largest messages could then never be read",
                self.buffer_budget_bytes, t.name, t.max_message_bytes
            ));
        }
        Ok(())
    }
}

fn default_proxy_port() -> u16 {
    15001
}
fn default_connect_timeout() -> u64 {
    10
}
fn connect_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(
        d,
        "connect_timeout_secs",
        1..=300,
        "0 would fail every upstream connection",
    )
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
    /// Default: `all`, for `exec` and `run` alike; `listed` is an opt-in gap (docs/security.md).
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
    /// Which Unix-domain sockets captured processes may connect to (`capture::unix` owns it).
    #[serde(default)]
    pub unix: crate::capture::unix::UnixCaptureConfig,
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
            unix: Default::default(),
        }
    }
}

fn default_bpffs_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/interceptor")
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(try_from = "String")]
pub enum Protocol {
    /// Plain TCP relay: the connection itself is the command.
    #[default]
    Tcp,
    /// PostgreSQL v3 wire protocol: every statement is a command.
    Postgres,
}

/// Protocols planned (issue 17 shapes their command model) but not built yet.
const PLANNED_PROTOCOLS: [&str; 5] = ["mysql", "http", "https", "kubernetes", "ssh"];

impl TryFrom<String> for Protocol {
    type Error = String;

    /// A protocol this version does not speak is an error, never plain TCP: relaying a
    /// database or an API unparsed would journal connections where commands were expected.
    fn try_from(name: String) -> Result<Protocol, String> {
        match name.as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "postgres" => Ok(Protocol::Postgres),
            planned if PLANNED_PROTOCOLS.contains(&planned) => Err(format!(
                "protocol {planned:?} is not built yet: this version speaks \"tcp\" and \
                 \"postgres\" (a target is never relayed as plain TCP in its place)"
            )),
            other => Err(format!(
                "unknown protocol {other:?}: expected \"tcp\" or \"postgres\""
            )),
        }
    }
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
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
    /// Largest protocol message accepted in either direction; larger ends the session. At
    /// least [`MIN_MAX_MESSAGE_BYTES`].
    #[serde(default, deserialize_with = "max_message_bytes")]
    pub max_message_bytes: Option<usize>,
    /// Credentials the gateway uses upstream instead of the client's (the client never sees them).
    pub credentials: Option<CredentialsConfig>,
    /// TLS on the gateway's upstream leg.
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
    /// How the client authenticates to the gateway when `credentials` are set.
    #[serde(default)]
    pub local_auth: LocalAuthConfig,
    /// Policy file or directory for this target (overrides `[policy] path`).
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    pub user: String,
    /// Exactly one of these names the password's source.
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// A file name inside systemd's `$CREDENTIALS_DIRECTORY` (LoadCredential=).
    pub password_credential: Option<String>,
    /// Connect to this database instead of the one the client asked for.
    pub database: Option<String>,
}

/// Where a secret comes from. Resolved at start-up (so a missing file stops the daemon with a
/// clear error) and read again for each connection (so rotation needs no restart).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(v) => write!(f, "env ${v}"),
        }
    }
}

impl SecretSource {
    /// Reads the secret. Trailing newlines (as `echo` writes them) are not part of it.
    pub fn read(&self) -> Result<String, String> {
        let raw =
            match self {
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {path:?}: {e}"))?,
                SecretSource::Env(var) => std::env::var(var)
                    .map_err(|_| format!("environment variable {var} is not set"))?,
            };
        Ok(raw.trim_end_matches(['\n', '\r']).to_owned())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    Disable,
    /// TLS if the server offers it, plaintext otherwise; certificates are not checked.
    #[default]
    Prefer,
    /// TLS or nothing; certificates are not checked.
    Require,
    /// TLS with the certificate chain and host name checked.
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    #[serde(default)]
    pub mode: UpstreamTlsMode,
    /// CA bundle (PEM) for verify-full; default: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Name to verify; default: the upstream host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LocalAuthMode {
    /// The kernel already told us who the caller is.
    #[default]
    Trust,
    /// The client must present `password_file`'s password (cleartext, on the loopback leg).
    Password,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LocalAuthConfig {
    #[serde(default)]
    pub mode: LocalAuthMode,
    pub password_file: Option<PathBuf>,
}

/// A destination pattern from `intercept` lists: an exact address, or any address on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestPattern {
    Exact(SocketAddr),
    AnyAddress(u16),
}

impl DestPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("unix:") {
            // Unix sockets are routed per target (`Config::targets` takes them out of the list
            // before this runs); elsewhere (`capture.intercept`) they mean nothing.
            return Err(format!(
                "{text:?}: a Unix socket is routed by listing it in a [[target]]'s intercept"
            ));
        }
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

    /// As written in a config: `ip:port`, `[ip6]:port` or `*:port`.
    pub fn describe(&self) -> String {
        match *self {
            DestPattern::Exact(addr) => addr.to_string(),
            DestPattern::AnyAddress(port) => format!("*:{port}"),
        }
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

/// A target after validation: patterns parsed, upstream resolved to an address, secret
/// sources checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub protocol: Protocol,
    pub intercept: Vec<DestPattern>,
    /// Unix socket paths (`unix:/path` in `intercept`) whose connects the kernel routes to the
    /// gateway as this target. Such a target has an `upstream`: there is no dialed address to
    /// fall back on.
    pub unix_routes: Vec<String>,
    pub upstream: Option<SocketAddr>,
    pub max_message_bytes: usize,
    pub credentials: Option<Credentials>,
    pub tls: UpstreamTlsConfig,
    /// `Some` when clients must present this password to the gateway.
    pub local_password: Option<SecretSource>,
}

/// Validated upstream credentials. The password is only read when a connection needs it.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: SecretSource,
    pub database: Option<String>,
}

/// 64 MiB: larger than any sane statement or row, small enough that one client cannot make
/// the gateway buffer gigabytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The smallest `max_message_bytes`: the largest start-up packet PostgreSQL accepts. Below it,
/// clients the server would serve fail at start-up (at 0, every session does).
pub const MIN_MAX_MESSAGE_BYTES: usize = crate::protocol::postgres::codec::MAX_STARTUP_LEN;

fn max_message_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    in_range(
        d,
        "max_message_bytes",
        MIN_MAX_MESSAGE_BYTES..,
        "a smaller limit fails start-up packets PostgreSQL accepts; 0 fails every session",
    )
    .map(Some)
}

impl CredentialsConfig {
    fn validate(&self) -> Result<Credentials, String> {
        let sources = [
            self.password_file.clone().map(SecretSource::File),
            self.password_env.clone().map(SecretSource::Env),
            self.password_credential.as_ref().map(|name| {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").unwrap_or_default();
                SecretSource::File(Path::new(&dir).join(name))
            }),
        ];
        let mut given = sources.into_iter().flatten();
        let password = given.next().ok_or(
            "credentials: one of password_file, password_env or password_credential is required",
        )?;
        if given.next().is_some() {
            return Err(
                "credentials: give only one of password_file, password_env, password_credential"
                    .to_owned(),
            );
        }
        Ok(Credentials {
            user: self.user.clone(),
            password,
            database: self.database.clone(),
        })
    }
}

impl Config {
    /// The daemon's runtime directory: the control socket's (`/run/interceptor` by default).
    /// `exec` runs put their control sockets there, and every gateway its Unix route listeners.
    pub fn runtime_dir(&self) -> PathBuf {
        self.approvals
            .socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("/run/interceptor"), Path::to_owned)
    }

    /// The configuration without any file: PostgreSQL on its standard port is understood (and
    /// journaled statement by statement) with the client's own credentials passing through.
    pub fn embedded() -> Config {
        Config {
            targets: vec![TargetConfig {
                name: "postgres".to_owned(),
                protocol: Protocol::Postgres,
                intercept: vec!["*:5432".to_owned()],
                ..TargetConfig::default()
            }],
            ..Config::default()
        }
    }

    /// Loads `path`. A missing file at the default path means "embedded defaults"; a missing file
    /// the operator named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::embedded())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            parse_toml(text).map_err(|(line, column, message)| ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message,
            })?;
        let mut config = config;
        config.origin = Some((path.to_owned(), text.to_owned()));
        let targets = config.targets().map_err(|m| config.invalid(m))?;
        if !(256..=64 << 20).contains(&config.journal.statement_max_bytes) {
            return Err(config.invalid(format!(
                "[journal] statement_max_bytes = {}: must be between 256 and 67108864",
                config.journal.statement_max_bytes
            )));
        }
        config
            .proxy
            .validate(&targets)
            .map_err(|m| config.invalid(m))?;
        config.extra_intercepts().map_err(|m| config.invalid(m))?;
        config.capture.unix.rules().map_err(|m| config.invalid(m))?;
        config
            .metrics
            .endpoint()
            .map_err(|e| config.invalid(e.to_string()))?;
        Ok(config)
    }

    fn invalid(&self, message: String) -> ConfigError {
        let (path, text) = self.origin.clone().unwrap_or_default();
        ConfigError::Invalid {
            line: line_of_quoted_value(&text, &message),
            path,
            message,
        }
    }

    /// Reads every secret the targets name, so a missing password file stops `exec` and `run`
    /// at start-up instead of failing the first connection. Read-only commands skip this.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        let targets = self.targets().map_err(|m| self.invalid(m))?;
        for t in &targets {
            if let Some(c) = &t.credentials {
                c.password
                    .read()
                    .map_err(|e| self.invalid(format!("target {:?}: credentials: {e}", t.name)))?;
            }
            if let Some(local) = &t.local_password {
                local
                    .read()
                    .map_err(|e| self.invalid(format!("target {:?}: local_auth: {e}", t.name)))?;
            }
        }
        Ok(())
    }

    /// Validated targets, in file order (the first matching target wins).
    pub fn targets(&self) -> Result<Vec<Target>, String> {
        let mut names = std::collections::HashSet::new();
        let mut routed = std::collections::HashSet::new();
        self.targets
            .iter()
            .map(|t| {
                if t.name.is_empty() {
                    return Err("a [[target]] has an empty name".to_owned());
                }
                if !names.insert(t.name.as_str()) {
                    return Err(format!("target {:?} is defined twice", t.name));
                }
                let (unix, tcp): (Vec<&String>, Vec<&String>) =
                    t.intercept.iter().partition(|p| p.starts_with("unix:"));
                let intercept = tcp
                    .into_iter()
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
                let unix_routes = unix
                    .into_iter()
                    .map(|entry| {
                        let path =
                            unix_route(entry).map_err(|e| format!("target {:?}: {e}", t.name))?;
                        if upstream.is_none() {
                            return Err(format!(
                                "target {:?}: routing {entry:?} needs an upstream \
                                 (\"ip:port\"): the gateway connects there",
                                t.name
                            ));
                        }
                        if !routed.insert(path.clone()) {
                            return Err(format!(
                                "target {:?}: {entry:?} is routed by another target too",
                                t.name
                            ));
                        }
                        if routed.len() > interceptor_common::UNIX_ROUTE_ENTRIES as usize {
                            return Err(format!(
                                "at most {} Unix socket paths can be routed",
                                interceptor_common::UNIX_ROUTE_ENTRIES
                            ));
                        }
                        Ok(path)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let credentials = t
                    .credentials
                    .as_ref()
                    .map(CredentialsConfig::validate)
                    .transpose()
                    .map_err(|e| format!("target {:?}: {e}", t.name))?;
                let local_password = match t.local_auth.mode {
                    LocalAuthMode::Trust => None,
                    LocalAuthMode::Password => {
                        let path = t.local_auth.password_file.clone().ok_or_else(|| {
                            format!(
                                "target {:?}: local_auth: mode \"password\" needs password_file",
                                t.name
                            )
                        })?;
                        Some(SecretSource::File(path))
                    }
                };
                if t.tls.ca_file.as_ref().is_some_and(|p| !p.exists()) {
                    return Err(format!(
                        "target {:?}: tls.ca_file {} does not exist",
                        t.name,
                        t.tls
                            .ca_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ));
                }
                Ok(Target {
                    name: t.name.clone(),
                    protocol: t.protocol,
                    intercept,
                    unix_routes,
                    upstream,
                    max_message_bytes: t.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
                    credentials,
                    tls: t.tls.clone(),
                    local_password,
                })
            })
            .collect::<Result<Vec<Target>, String>>()
            .and_then(|targets| no_shared_patterns(&targets).map(|()| targets))
    }

    pub fn extra_intercepts(&self) -> Result<Vec<DestPattern>, String> {
        self.capture
            .intercept
            .iter()
            .map(|p| DestPattern::parse(p).map_err(|e| format!("capture.intercept: {e}")))
            .collect()
    }
}

/// Two targets may not claim one destination pattern: whichever came first would take every
/// connection and the other would never see one. (Different patterns that overlap, such as
/// `*:5432` and `127.0.0.2:5432`, are fine: the exact one wins, see `gateway::route_in`.)
fn no_shared_patterns(targets: &[Target]) -> Result<(), String> {
    let mut owner: HashMap<DestPattern, &str> = HashMap::new();
    for t in targets {
        for &key in &t.intercept {
            // Parsing normalized exact addresses, so equal destinations are equal patterns.
            match owner.get(&key) {
                Some(first) if *first != t.name => {
                    return Err(format!(
                        "targets {first:?} and {:?} both intercept {}: a destination belongs \
                         to one target",
                        t.name,
                        key.describe()
                    ))
                }
                _ => {
                    owner.insert(key, &t.name);
                }
            }
        }
    }
    Ok(())
}

/// The socket path of a `unix:` intercept entry: a filesystem path the kernel can compare and
/// rewrite. Abstract names are refused: the gateway's listeners are files, and an abstract name
/// has no permissions to say who may reach it.
fn unix_route(entry: &str) -> Result<String, String> {
    let path = entry.strip_prefix("unix:").unwrap_or(entry);
    if path.starts_with('@') {
        return Err(format!(
            "{entry:?}: abstract socket names cannot be routed (only filesystem paths); \
             refuse it with [capture.unix] deny instead"
        ));
    }
    crate::capture::unix::filesystem_path(path).map_err(|e| format!("{entry:?}: {e}"))?;
    Ok(path.to_owned())
}

/// The line of the last quoted value a validation message names (`"…"`), if it appears in
/// the file: points the operator at the offending line, not just the offending target.
fn line_of_quoted_value(text: &str, message: &str) -> Option<usize> {
    let mut quoted = message.split('"').skip(1).step_by(2).collect::<Vec<_>>();
    quoted.reverse();
    quoted.into_iter().filter(|q| !q.is_empty()).find_map(|q| {
        let needle = format!("\"{q}\"");
        text.find(&needle).map(|at| line_and_column(text, at).0)
    })
}

fn review_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(
        d,
        "timeout_secs",
        1..=7 * 24 * 3600,
        "0 expires every held command at once; past a week the agent waiting is long gone",
    )
}

/// Reads an integer that must lie in `range`, for keys where a value outside it would make the
/// gate refuse everything (a zero timeout or limit) or mean nothing (an absurd one). Rejected
/// while deserializing, so the error carries the value's line and column like any parse
/// error; `why` says what the value would do.
pub(crate) fn in_range<'de, D, T>(
    deserializer: D,
    key: &str,
    range: impl std::ops::RangeBounds<T>,
    why: &str,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + std::fmt::Display,
{
    use std::ops::Bound::{Included, Unbounded};
    let value = T::deserialize(deserializer)?;
    if range.contains(&value) {
        return Ok(value);
    }
    let allowed = match (range.start_bound(), range.end_bound()) {
        (Included(lo), Included(hi)) => format!("{lo} to {hi}"),
        (Included(lo), Unbounded) => format!("at least {lo}"),
        (Unbounded, Included(hi)) => format!("at most {hi}"),
        _ => "another value".to_owned(),
    };
    Err(serde::de::Error::custom(format!(
        "{key} = {value} is out of range: give {allowed} ({why})"
    )))
}

/// Deserializes TOML; on error, the 1-based line and column it points at and what is wrong.
/// Every file the daemon reads (config, policies, policy test cases) reports errors this way.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, (usize, usize, String)> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or((1, 1));
        (line, column, e.message().to_owned())
    })
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

pub mod check;

#[cfg(test)]
mod tests;
