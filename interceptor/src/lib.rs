//! interceptor: a host-level gate between AI agents and the infrastructure they touch.
//!
//! The pipeline, end to end (see `docs/architecture.md` for the picture):
//!
//! ```text
//! capture ──▶ gateway::session ──▶ protocol ──▶ policy ──▶ approval / mask ──▶ journal ──▶ relay
//! ```
//!
//! - [`capture`]: eBPF programs on the agent's cgroup steer its connections into the proxy and
//!   say who made them.
//! - [`gateway`]: loopback listeners; every connection runs the phases in [`gateway::session`].
//! - [`protocol`]: what happens to the bytes of a session (plain TCP, PostgreSQL), speaking to
//!   the rest only through the [`command`] seam.
//! - [`policy`]: who × target × what the command does (SQL-aware) → allow, review or deny.
//! - [`approval`]: commands sent to `review` wait for a human, through a control socket.
//! - [`mask`]: result values (and journaled texts) rewritten by column rules and detectors.
//! - [`journal`]: SQLite, committed before forwarding.
//! - [`exec`] and [`service`]: the two ways to put an agent under the gate.
//! - [`config`]: the one TOML file, with embedded defaults.
//! - [`metrics`] and [`status`]: what the service is doing, for monitoring and for operators.

pub mod approval;
pub mod capture;
pub mod command;
pub mod config;
pub mod doctor;
pub mod exec;
/// Fuzz target bodies: for tests and the `fuzzing` feature only (see `interceptor/fuzz/`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gateway;
pub mod group_socket;
pub mod install;
pub mod journal;
/// The import graph between the top-level modules must stay acyclic (a test, see the module).
#[cfg(test)]
mod layering;
pub mod limits;
pub mod logging;
pub mod mask;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod run_trust;
pub mod secret;
pub mod service;
pub mod ship;
pub mod ssh_trust;
pub mod status;
pub mod target;
pub mod tls;
pub mod toml_file;
pub mod view;
