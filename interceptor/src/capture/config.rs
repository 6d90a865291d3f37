//! `[capture]`: which connections the eBPF programs steer into the proxy, which cgroups and
//! units they watch in service mode, and what Unix sockets captured processes may reach.
//!
//! Capture owns its section; `config` assembles it into the daemon's file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::target::DestPattern;

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
    pub unix: super::unix::UnixCaptureConfig,
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

impl CaptureConfig {
    /// `intercept`, parsed.
    pub fn extra_intercepts(&self) -> Result<Vec<DestPattern>, String> {
        self.intercept
            .iter()
            .map(|p| DestPattern::parse(p).map_err(|e| format!("capture.intercept: {e}")))
            .collect()
    }
}
