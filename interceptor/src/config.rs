//! The daemon's configuration: one TOML file, with embedded defaults for everything.
//!
//! Why this exists: a security team deploys the same binary as a service (`interceptor run`) and
//! as a one-shot wrapper (`interceptor exec`). Both read this file; with no file at all the
//! embedded defaults make `exec` work. Unknown keys are errors, not warnings: a misspelled key
//! in a security gate's config must not silently turn a control off. Parse errors name the
//! file, line and column. The reference for every key is `docs/configuration.md`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    approval::ApprovalsConfig,
    capture::CaptureConfig,
    journal::JournalConfig,
    secret::SecretSource,
    target::{
        Credentials, DatabaseCredentials, DestPattern, KubernetesCredentials, Protocol, Target,
    },
    tls::UpstreamTlsConfig,
    toml_file::{in_range, line_and_column, parse_toml},
};

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
    /// Start-up and idle timeouts, and how many sessions may be open (`limits`).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
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

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The key of the `hash` masking strategy (at least 32 bytes). Default: `mask.key` in the
    /// state directory, created with a random key on first use.
    pub hash_key_file: Option<PathBuf>,
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
    /// Threads that run sessions (`exec` and `run`): 1, the default, runs the whole gateway on
    /// one thread, which measured best on small hosts where the agents and the servers share
    /// the cores (docs/performance.md, "Worker threads"); more runs that many workers (a
    /// session may move between them); 0 is one per CPU.
    #[serde(
        default = "default_worker_threads",
        deserialize_with = "worker_threads"
    )]
    pub worker_threads: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            port: default_proxy_port(),
            connect_timeout_secs: default_connect_timeout(),
            buffer_budget_bytes: default_buffer_budget(),
            buffer_wait_secs: default_buffer_wait(),
            worker_threads: default_worker_threads(),
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
fn default_worker_threads() -> usize {
    1
}
fn worker_threads<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(
        d,
        "worker_threads",
        0..=256,
        "0 is one per CPU; more threads than that only contend",
    )
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

/// `[target.credentials]` as written: the union of every protocol's fields. Which ones a
/// target may use depends on its protocol ([`CredentialsConfig::validate`]); a field of another
/// protocol is an error naming it, never ignored.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// Databases and SSH: the login.
    pub user: Option<String>,
    /// Databases: exactly one of these names the password's source.
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// A file name inside systemd's `$CREDENTIALS_DIRECTORY` (LoadCredential=).
    pub password_credential: Option<String>,
    /// Databases: connect to this database instead of the one the client asked for.
    pub database: Option<String>,
    /// MySQL: the server's RSA public key (PEM), for `caching_sha2_password` without TLS.
    pub server_public_key_file: Option<PathBuf>,
    /// HTTP: the header the gateway sets (`Authorization`), and exactly one source of its value.
    pub header: Option<String>,
    pub value_file: Option<PathBuf>,
    pub value_env: Option<String>,
    pub value_credential: Option<String>,
    /// Kubernetes: a bearer token from exactly one source, or a client certificate and key.
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// SSH: the private key (a file, or a systemd credential) and the upstream's known_hosts.
    pub key_file: Option<PathBuf>,
    pub key_credential: Option<String>,
    pub known_hosts: Option<PathBuf>,
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

/// The fields of `[target.credentials]` each protocol family takes, in the order the error
/// messages list them.
const DATABASE_FIELDS: &[&str] = &[
    "user",
    "password_file",
    "password_env",
    "password_credential",
    "database",
];
/// MySQL's: the database login, and the server's RSA key to encrypt the password to.
const MYSQL_FIELDS: &[&str] = &[
    "user",
    "password_file",
    "password_env",
    "password_credential",
    "database",
    "server_public_key_file",
];
const HTTP_FIELDS: &[&str] = &["header", "value_file", "value_env", "value_credential"];
const KUBERNETES_FIELDS: &[&str] = &[
    "token_file",
    "token_env",
    "token_credential",
    "client_cert_file",
    "client_key_file",
];
const SSH_FIELDS: &[&str] = &["user", "key_file", "key_credential", "known_hosts"];

impl CredentialsConfig {
    /// The fields given, by their config names.
    fn given(&self) -> Vec<&'static str> {
        let present = [
            ("user", self.user.is_some()),
            ("password_file", self.password_file.is_some()),
            ("password_env", self.password_env.is_some()),
            ("password_credential", self.password_credential.is_some()),
            ("database", self.database.is_some()),
            (
                "server_public_key_file",
                self.server_public_key_file.is_some(),
            ),
            ("header", self.header.is_some()),
            ("value_file", self.value_file.is_some()),
            ("value_env", self.value_env.is_some()),
            ("value_credential", self.value_credential.is_some()),
            ("token_file", self.token_file.is_some()),
            ("token_env", self.token_env.is_some()),
            ("token_credential", self.token_credential.is_some()),
            ("client_cert_file", self.client_cert_file.is_some()),
            ("client_key_file", self.client_key_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("key_credential", self.key_credential.is_some()),
            ("known_hosts", self.known_hosts.is_some()),
        ];
        present
            .into_iter()
            .filter_map(|(name, given)| given.then_some(name))
            .collect()
    }

    /// The environment variables secrets are read from: `exec` keeps them from the agent.
    pub fn secret_env(&self) -> impl Iterator<Item = &String> {
        [&self.password_env, &self.value_env, &self.token_env]
            .into_iter()
            .flatten()
    }

    /// The secret files named directly (not through `$CREDENTIALS_DIRECTORY`), by field, for
    /// `config check`'s file checks.
    pub fn secret_files(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [
            ("password_file", &self.password_file),
            ("value_file", &self.value_file),
            ("token_file", &self.token_file),
            ("client_key_file", &self.client_key_file),
            ("key_file", &self.key_file),
        ]
        .into_iter()
        .filter_map(|(name, path)| Some((name, path.as_ref()?)))
    }

    /// The credentials a target of `protocol` takes: only its protocol's fields, every required
    /// one, and exactly one source for each secret. Errors name the field (quoted, so the
    /// message can be placed on its line) and the protocol.
    fn validate(&self, protocol: Protocol) -> Result<Credentials, String> {
        let allowed = match protocol {
            Protocol::Postgres => DATABASE_FIELDS,
            Protocol::Mysql => MYSQL_FIELDS,
            Protocol::Http | Protocol::Https => HTTP_FIELDS,
            Protocol::Kubernetes => KUBERNETES_FIELDS,
            Protocol::Ssh => SSH_FIELDS,
            Protocol::Tcp => &[],
        };
        if let Some(stray) = self.given().into_iter().find(|f| !allowed.contains(f)) {
            return Err(if allowed.is_empty() {
                format!(
                    "credentials: a {} target takes no credentials (the gateway does not \
                     log in for it), but \"{stray}\" is set",
                    protocol.as_str()
                )
            } else {
                format!(
                    "credentials: a {} target takes {}; \"{stray}\" belongs to another protocol",
                    protocol.as_str(),
                    allowed.join(", ")
                )
            });
        }
        match protocol {
            Protocol::Postgres | Protocol::Mysql => Ok(Credentials::Database(DatabaseCredentials {
                user: required(&self.user, "user")?,
                password: one_source(
                    "password",
                    &self.password_file,
                    &self.password_env,
                    &self.password_credential,
                )?
                .ok_or("credentials: one of password_file, password_env or password_credential is required")?,
                database: self.database.clone(),
                server_public_key: self.server_public_key_file.clone(),
            })),
            Protocol::Http | Protocol::Https => Ok(Credentials::Http {
                header: required(&self.header, "header")?,
                value: one_source("value", &self.value_file, &self.value_env, &self.value_credential)?
                    .ok_or("credentials: one of value_file, value_env or value_credential is required")?,
            }),
            Protocol::Kubernetes => {
                let token = one_source(
                    "token",
                    &self.token_file,
                    &self.token_env,
                    &self.token_credential,
                )?;
                let cert = match (&self.client_cert_file, &self.client_key_file) {
                    (Some(cert), Some(key)) => Some(KubernetesCredentials::ClientCertificate {
                        cert: SecretSource::File(cert.clone()),
                        key: SecretSource::File(key.clone()),
                    }),
                    (None, None) => None,
                    _ => {
                        return Err("credentials: client_cert_file and client_key_file go \
                                    together"
                            .to_owned())
                    }
                };
                match (token, cert) {
                    (Some(token), None) => Ok(Credentials::Kubernetes(KubernetesCredentials::Token(token))),
                    (None, Some(cert)) => Ok(Credentials::Kubernetes(cert)),
                    (Some(_), Some(_)) => Err("credentials: give a token (token_file, token_env or \
                         token_credential) or a client certificate (client_cert_file and \
                         client_key_file), not both"
                        .to_owned()),
                    (None, None) => Err("credentials: a kubernetes target needs a token \
                         (token_file, token_env or token_credential) or a client certificate \
                         (client_cert_file and client_key_file)"
                        .to_owned()),
                }
            }
            Protocol::Ssh => Ok(Credentials::Ssh {
                user: required(&self.user, "user")?,
                key: one_source("key", &self.key_file, &None, &self.key_credential)?
                    .ok_or("credentials: one of key_file or key_credential is required")?,
                known_hosts: self.known_hosts.clone().ok_or(
                    "credentials: known_hosts is required: the gateway checks the real server's \
                     host key against it",
                )?,
            }),
            Protocol::Tcp => Err("credentials: a tcp target takes no credentials".to_owned()),
        }
    }
}

/// A required text field of `[target.credentials]`.
fn required(value: &Option<String>, field: &str) -> Result<String, String> {
    value
        .clone()
        .ok_or_else(|| format!("credentials: {field} is required"))
}

/// At most one source of the secret `name` (`<name>_file`, `<name>_env`, `<name>_credential`):
/// `None` when none is given, an error when two are.
fn one_source(
    name: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
    credential: &Option<String>,
) -> Result<Option<SecretSource>, String> {
    let sources = [
        file.clone().map(SecretSource::File),
        env.clone().map(SecretSource::Env),
        credential.as_ref().map(|name| {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").unwrap_or_default();
            SecretSource::File(Path::new(&dir).join(name))
        }),
    ];
    let mut given = sources.into_iter().flatten();
    let first = given.next();
    if given.next().is_some() {
        let mut fields = vec![format!("{name}_file")];
        if env.is_some() || name != "key" {
            fields.push(format!("{name}_env"));
        }
        fields.push(format!("{name}_credential"));
        return Err(format!(
            "credentials: give only one of {}",
            fields.join(", ")
        ));
    }
    Ok(first)
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
        config
            .capture
            .extra_intercepts()
            .map_err(|m| config.invalid(m))?;
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
                for (field, secret) in c.secrets() {
                    secret.read().map_err(|e| {
                        self.invalid(format!("target {:?}: credentials: {field}: {e}", t.name))
                    })?;
                }
                if let Some(path) = c.database().and_then(|d| d.server_public_key.as_ref()) {
                    crate::protocol::mysql::auth::read_public_key(path).map_err(|e| {
                        self.invalid(format!(
                            "target {:?}: credentials: server_public_key_file: {e}",
                            t.name
                        ))
                    })?;
                }
                if let Credentials::Ssh { known_hosts, .. } = c {
                    std::fs::metadata(known_hosts).map_err(|e| {
                        self.invalid(format!(
                            "target {:?}: credentials: known_hosts {:?}: {e}",
                            t.name,
                            known_hosts.display().to_string()
                        ))
                    })?;
                }
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
                    .map(|c| c.validate(t.protocol))
                    .transpose()
                    .map_err(|e| format!("target {:?}: {e}", t.name))?;
                // MySQL's server speaks first, with the salt the client must answer: the
                // gateway greets the agent itself, so it always logs in upstream on its own.
                if t.protocol == Protocol::Mysql && credentials.is_none() {
                    return Err(format!(
                        "target {:?}: a mysql target needs [target.credentials] (user and a \
                         password source): the gateway logs in for the agent",
                        t.name
                    ));
                }
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
                    max_message_bytes: t
                        .max_message_bytes
                        .unwrap_or_else(|| t.protocol.default_max_message_bytes()),
                    credentials,
                    tls: t.tls.clone(),
                    local_password,
                })
            })
            .collect::<Result<Vec<Target>, String>>()
            .and_then(|targets| no_shared_patterns(&targets).map(|()| targets))
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
/// the file, as a value or, failing that, as a key (`header = …`): points the operator at the
/// offending line, not just the offending target. The first quoted value is usually the
/// target's name, so the search starts there: a value or key two targets share is found in
/// the right one.
fn line_of_quoted_value(text: &str, message: &str) -> Option<usize> {
    let quoted = message
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|q| !q.is_empty())
        .collect::<Vec<_>>();
    let from = quoted
        .first()
        .and_then(|name| text.find(&format!("\"{name}\"")))
        .unwrap_or(0);
    let find = |needle: &dyn Fn(&str) -> Option<usize>| {
        needle(&text[from..])
            .map(|at| from + at)
            .or_else(|| needle(text))
    };
    quoted.into_iter().rev().find_map(|q| {
        let as_value = |t: &str| t.find(&format!("\"{q}\""));
        let as_key = |t: &str| {
            let mut offset = 0;
            t.split_inclusive('\n').find_map(|line| {
                let at = offset;
                offset += line.len();
                let rest = line.trim_start().strip_prefix(q)?;
                rest.trim_start()
                    .starts_with('=')
                    .then_some(at + line.len() - line.trim_start().len())
            })
        };
        find(&as_value)
            .or_else(|| find(&as_key))
            .map(|at| line_and_column(text, at).0)
    })
}

#[cfg(test)]
mod tests;
