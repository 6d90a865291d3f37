//! Capture: putting an agent's connections through the gateway and saying who made them.
//!
//! Why this exists: the gate is only as good as its coverage. This module owns everything that
//! touches the kernel: finding and managing cgroup v2 directories ([`cgroup`]), loading and
//! attaching the eBPF programs and reading their records ([`programs`]), and completing the
//! kernel's identity record from /proc ([`identity`]). The gateway asks one question of it:
//! "who is behind this accepted socket, and where were they going?" ([`ConnectionLookup`] for
//! TCP; [`peer`] for a Unix socket the kernel routed to the gateway ([`unix`])).

pub mod cgroup;
mod config;
pub mod identity;
pub mod peer;
pub mod programs;
pub mod recapture;
pub mod unix;

use std::net::SocketAddr;

pub use config::{CaptureConfig, CaptureMode, UdpPolicy};
pub use interceptor_common::ConnRecord;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("no cgroup v2 filesystem is mounted (checked /proc/mounts); mount one with `mount -t cgroup2 none /sys/fs/cgroup`")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF programs: {0}")]
    Load(String),
    #[error("attaching {program} to {cgroup}: {message}")]
    Attach {
        program: &'static str,
        cgroup: String,
        message: String,
    },
    #[error("eBPF map {map}: {message}")]
    Map { map: &'static str, message: String },
    #[error("bpffs at {path}: {message}")]
    Pin {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("systemd unit {unit}: {message}")]
    Unit { unit: String, message: String },
    /// `[capture.unix] required = true` on a host that cannot capture Unix sockets.
    #[error(
        "[capture.unix] required = true, but Unix-socket capture is unavailable: {reason}; fix: {}",
        unix::FIX_UNAVAILABLE
    )]
    UnixRequired { reason: String },
}

/// What the gateway needs from the capture: the connect-time record of an accepted client.
pub trait ConnectionLookup: Send + Sync {
    /// Looks up and removes the record for the client address `peer` that accept() returned.
    /// `None` means the connection did not come through our hooks (or its record was evicted):
    /// the gateway must refuse it.
    fn take(&self, peer: SocketAddr) -> Option<ConnRecord>;
}
