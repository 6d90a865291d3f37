//! A target as the gateway uses it: what it intercepts, where it connects, which protocol it
//! speaks and with which credentials.
//!
//! Why this exists apart from `config`: capture (what to steer), the gateway (where a
//! connection belongs) and the protocols (how to speak upstream) all need targets, and they sit
//! below `config`, which reads `[[target]]` tables and validates them into these types.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;

use crate::{secret::SecretSource, tls::UpstreamTlsConfig};

/// The protocol a target speaks. Every protocol the command model covers is named here, built
/// or not, so a config can say what a target is before this version can speak it; loading such
/// a config is an error (`config` checks [`Protocol::is_built`]), never a plain TCP relay.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(try_from = "String")]
pub enum Protocol {
    /// Plain TCP relay: the connection itself is the command.
    #[default]
    Tcp,
    /// PostgreSQL v3 wire protocol: every statement is a command.
    Postgres,
    /// MySQL/MariaDB client/server protocol: every statement is a command.
    Mysql,
    /// HTTP/1.1 and HTTP/2 in cleartext: every request is a command.
    Http,
    /// HTTP over TLS, terminated with the local CA: every request is a command.
    Https,
    /// The Kubernetes API, over the HTTPS gateway: every API request is a command.
    Kubernetes,
    /// SSH, terminated with the gateway's host key: every channel request is a command.
    Ssh,
}

impl Protocol {
    pub const ALL: [Protocol; 7] = [
        Protocol::Tcp,
        Protocol::Postgres,
        Protocol::Mysql,
        Protocol::Http,
        Protocol::Https,
        Protocol::Kubernetes,
        Protocol::Ssh,
    ];

    /// The name in the config and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Kubernetes => "kubernetes",
            Protocol::Ssh => "ssh",
        }
    }
}

impl TryFrom<String> for Protocol {
    type Error = String;

    fn try_from(name: String) -> Result<Protocol, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let all: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown protocol {name:?}: expected one of {}",
                    all.join(", ")
                )
            })
    }
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

/// Validated upstream credentials: what the gateway presents upstream in the agent's place,
/// by protocol family. Secrets stay [`SecretSource`]s, read when a connection needs them (so
/// rotation needs no restart); the Debug form names sources, never secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// PostgreSQL and MySQL: a user and its password.
    Database(DatabaseCredentials),
    /// HTTP and HTTPS: one header the gateway sets on every request (`Authorization`, …).
    Http { header: String, value: SecretSource },
    /// The Kubernetes API: a bearer token, or a client certificate.
    Kubernetes(KubernetesCredentials),
    /// SSH: a user and its private key; `known_hosts` is what the real server is checked against.
    Ssh {
        user: String,
        key: SecretSource,
        known_hosts: PathBuf,
    },
}

/// A database login. The password is only read when a connection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseCredentials {
    pub user: String,
    pub password: SecretSource,
    /// Connect to this database instead of the one the client asked for.
    pub database: Option<String>,
    /// MySQL: the server's RSA public key (a PEM file) that `caching_sha2_password` encrypts
    /// the password to when the upstream leg is not TLS. `None`: asked of the server.
    pub server_public_key: Option<std::path::PathBuf>,
}

/// How the gateway authenticates to the Kubernetes API: exactly one way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubernetesCredentials {
    Token(SecretSource),
    ClientCertificate {
        cert: SecretSource,
        key: SecretSource,
    },
}

impl Credentials {
    /// The database login, for the database protocols.
    pub fn database(&self) -> Option<&DatabaseCredentials> {
        match self {
            Credentials::Database(login) => Some(login),
            _ => None,
        }
    }

    /// Every secret, named as its config key, so start-up can read each once and stop with a
    /// clear error when one is missing.
    pub fn secrets(&self) -> Vec<(&'static str, &SecretSource)> {
        match self {
            Credentials::Database(login) => vec![("password", &login.password)],
            Credentials::Http { value, .. } => vec![("value", value)],
            Credentials::Kubernetes(KubernetesCredentials::Token(token)) => vec![("token", token)],
            Credentials::Kubernetes(KubernetesCredentials::ClientCertificate { cert, key }) => {
                vec![("client_cert", cert), ("client_key", key)]
            }
            Credentials::Ssh { key, .. } => vec![("key", key)],
        }
    }
}

/// 64 MiB: larger than any sane statement or row, small enough that one client cannot make
/// the gateway buffer gigabytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// 16 MiB: the default for HTTP targets, whose request bodies are read whole before they are
/// judged (API calls and tool calls are small; uploads that are not can raise it).
pub const DEFAULT_HTTP_MAX_MESSAGE_BYTES: usize = 16 << 20;

impl Protocol {
    /// The `max_message_bytes` of a target that does not set it.
    pub fn default_max_message_bytes(self) -> usize {
        match self {
            Protocol::Http | Protocol::Https | Protocol::Kubernetes => {
                DEFAULT_HTTP_MAX_MESSAGE_BYTES
            }
            _ => DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}
