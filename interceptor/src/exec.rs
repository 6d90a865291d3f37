//! `interceptor exec -- CMD`: put one command (an agent run) under the gate for its lifetime.
//!
//! Why this exists: the quickest way to capture an agent with zero configuration. This process
//! owns everything for the run: a transient cgroup, the eBPF links (detached when it exits,
//! even if it is killed), a private gateway on a free loopback port, and the run's row in the
//! journal. CMD runs inside the cgroup as an unprivileged user, so it can neither detach the
//! programs nor move itself out.

use std::{ffi::CString, os::fd::AsRawFd as _, sync::Arc, time::Duration};

use nix::{
    sys::signal::{kill, Signal},
    unistd::{Pid, User},
};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    approval::{notify::Webhook, Approvals},
    capture::{
        cgroup::{cgroup2_mount, Cgroup},
        peer::CapturedCgroups,
        programs::{forward_kernel_logs, Programs, Settings},
        CaptureError, CaptureMode,
    },
    config::Config,
    gateway::{self, Gateway, Listeners, RunIds},
    journal::{Journal, JournalError, RunRecord},
    policy::Engine,
    run_trust::{RunTrust, TrustOptions},
    target::Target,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    #[error(
        "interceptor {0} needs root: it loads eBPF programs and creates cgroups (run it with sudo)"
    )]
    NotRoot(&'static str),
    #[error("unknown user {0:?} for --user")]
    UnknownUser(String),
    #[error("no command given: use `interceptor exec -- CMD [ARGS…]`")]
    NoCommand,
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("proxy listener: {0}")]
    Listen(std::io::Error),
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Ship(#[from] crate::ship::ShipError),
    /// `--trust-tls`/`--trust-ssh` could not prepare the run's trust files.
    #[error(transparent)]
    Trust(#[from] crate::run_trust::RunTrustError),
    /// The open-file limit cannot hold `[limits] max_sessions`.
    #[error("cannot start: {0}")]
    Descriptors(#[from] crate::limits::DescriptorBudget),
}

/// What a gateway needs besides capture, built the same way by `exec` and `run`.
pub(crate) struct GatewayParts {
    pub journal: Journal,
    pub approvals: Arc<Approvals>,
    pub policy: Arc<Engine>,
    pub stats: Arc<crate::gateway::stats::Stats>,
    protocols: crate::protocol::Shared,
    mask_key: Option<Arc<crate::mask::HashKey>>,
    /// The limits in force, checked against the open-file limit.
    pub limits: crate::limits::Limits,
}

impl GatewayParts {
    pub fn from_config(config: &Config, targets: &[Target]) -> Result<GatewayParts, ExecError> {
        // First: a gateway whose sessions cannot all have their descriptors must not start.
        let limits = config.limits.limits(crate::limits::open_file_limit())?;
        let policy = Arc::new(Engine::new(
            crate::policy::load_policies(config).map_err(|e| ExecError::Config(e.to_string()))?,
        ));
        let journal = Journal::open_with(&config.journal)?;
        let webhook = config.approvals.webhook.clone().map(|url| Webhook {
            url,
            format: config.approvals.webhook_format,
        });
        let approvals = Arc::new(Approvals::new(journal.clone(), webhook));
        let budget = crate::protocol::buffers::Budget::new(
            config.proxy.buffer_budget_bytes,
            Duration::from_secs(config.proxy.buffer_wait_secs),
        );
        let protocols = crate::protocol::Shared::new(targets, &config.state.dir, budget)
            .map_err(|e| ExecError::Config(e.to_string()))?;
        let key_path = config
            .masking
            .hash_key_file
            .clone()
            .unwrap_or_else(|| config.state.dir.join("mask.key"));
        let mask_key = match crate::mask::HashKey::load_or_create(&key_path) {
            Ok(key) => Some(Arc::new(key)),
            Err(e) => {
                tracing::warn!(error = %e, "no masking hash key: the hash strategy will redact instead");
                None
            }
        };
        Ok(GatewayParts {
            journal,
            approvals,
            policy,
            stats: Arc::default(),
            protocols,
            mask_key,
            limits,
        })
    }

    pub fn gateway(
        self,
        config: &Config,
        lookup: Arc<dyn crate::capture::ConnectionLookup>,
        targets: Vec<Target>,
        run_ids: RunIds,
        listeners: &Listeners,
        captured: CapturedCgroups,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            lookup,
            journal: self.journal,
            targets,
            run_ids,
            connect_timeout: Duration::from_secs(config.proxy.connect_timeout_secs),
            own_addrs: listeners.addrs(),
            identities: Default::default(),
            protocols: self.protocols,
            policy: self.policy,
            approvals: self.approvals,
            review_timeout: Duration::from_secs(config.approvals.timeout_secs),
            mask_key: self.mask_key,
            sample_rows: config.journal.result_sample_rows,
            captured,
            stats: self.stats,
            admission: crate::limits::Admission::new(self.limits),
        })
    }
}

/// Unix-socket capture is missing on this host (kernels before 6.7): what `exec` and `run`
/// journal about it.
pub(crate) struct CaptureGap {
    reason: String,
}

impl CaptureGap {
    /// A `capture_gap` event: the run was captured without Unix-socket capture.
    pub fn event(&self, run_id: &str) -> crate::journal::Event {
        crate::journal::Event::note(
            None,
            "capture_gap",
            serde_json::json!({
                "run_id": run_id,
                "gap": "unix_sockets",
                "reason": self.reason,
                "fix": crate::capture::unix::FIX_UNAVAILABLE,
            }),
        )
    }
}

/// Whether Unix-socket capture is in force. Without it, the gate still captures TCP (the kernel
/// gap is the host's, not the config's), but it says so loudly, and the caller journals the
/// returned gap; with `[capture.unix] required = true` it refuses to start instead.
pub(crate) fn unix_capture_gap(
    config: &Config,
    programs: &Programs,
) -> Result<Option<CaptureGap>, ExecError> {
    let Err(unavailable) = programs.unix_status() else {
        return Ok(None);
    };
    let reason = unavailable.to_string();
    if config.capture.unix.required {
        return Err(CaptureError::UnixRequired { reason }.into());
    }
    tracing::warn!(
        reason = %reason,
        fix = crate::capture::unix::FIX_UNAVAILABLE,
        "UNIX SOCKETS ARE NOT CAPTURED: captured processes can reach local database and \
         container-runtime sockets directly, bypassing the gateway"
    );
    Ok(Some(CaptureGap { reason }))
}

/// The account CMD runs as.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    pub home: std::path::PathBuf,
}

/// `--user`, else `$SUDO_USER`, else the caller (no switch).
pub fn resolve_user(requested: Option<&str>) -> Result<Option<RunAs>, ExecError> {
    let name = match requested {
        Some(name) => name.to_owned(),
        None => match std::env::var("SUDO_USER") {
            Ok(name) if !name.is_empty() => name,
            _ => return Ok(None),
        },
    };
    let user = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(uid.into()),
        Err(_) => User::from_name(&name),
    }
    .ok()
    .flatten()
    .ok_or_else(|| ExecError::UnknownUser(name.clone()))?;
    let cname = CString::new(user.name.clone()).map_err(|_| ExecError::UnknownUser(name))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()]);
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        name: user.name,
        home: user.dir,
    }))
}

pub fn require_root(what: &'static str) -> Result<(), ExecError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ExecError::NotRoot(what))
    }
}

/// A short, unique, unguessable-enough label for this run.
fn new_run_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("run-{}", &uuid[..16])
}

/// Runs `command` under capture and returns the exit code to exit with.
pub async fn exec(
    config: Config,
    user: Option<&str>,
    trust: TrustOptions,
    command: &[String],
) -> Result<i32, ExecError> {
    let program = command.first().ok_or(ExecError::NoCommand)?;
    require_root("exec")?;
    let run_as = resolve_user(user)?;
    let mount = cgroup2_mount()?;
    let targets = config.targets().map_err(ExecError::Config)?;

    let parts = GatewayParts::from_config(&config, &targets)?;
    let (journal, approvals) = (parts.journal.clone(), parts.approvals.clone());
    let run_id = new_run_id();
    // The route directory is removed when the run ends (dropped last, after the gateway).
    let (listeners, _route_dir) =
        Listeners::bind_with_routes(0, &config.runtime_dir(), &run_id, &targets)
            .map_err(ExecError::Listen)?;
    let mut programs = Programs::load(None)?;
    let unix_gap = unix_capture_gap(&config, &programs)?;
    programs.configure(
        &Settings::from_config(
            &config.capture,
            &targets,
            CaptureMode::All,
            &listeners.steering(),
        )
        .map_err(ExecError::Config)?,
    )?;
    let kernel_logs = programs
        .take_logger()
        .map(|l| tokio::spawn(forward_kernel_logs(l)));
    let unix_refusals = programs.take_unix_refusals();

    let cgroup = Cgroup::create_owned(mount.join("interceptor").join(&run_id))?;
    programs.attach(&cgroup)?;
    let programs = Arc::new(programs);

    let cgroup_rel = cgroup
        .path()
        .strip_prefix(&mount)
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|_| cgroup.path().display().to_string());
    // The command line is journaled like a statement: secrets redacted, and what the
    // policy's detectors find (for this user, any target) masked.
    let mut command_line = crate::capture::identity::redact_secrets(&shell_words(command));
    let subject = crate::policy::Subject {
        uid: run_as
            .as_ref()
            .map_or_else(|| nix::unistd::getuid().as_raw(), |u| u.uid),
        user: run_as.as_ref().map(|u| u.name.clone()),
        run_id: Some(run_id.clone()),
        ..Default::default()
    };
    if let Some(m) = parts.policy.masking(&subject, None, "exec", None, 0) {
        command_line = m.mask_text(&command_line).0.into_owned();
    }
    journal
        .start_run(RunRecord {
            id: run_id.clone(),
            mode: "exec",
            command: Some(command_line),
            uid: Some(
                run_as
                    .as_ref()
                    .map_or_else(|| nix::unistd::getuid().as_raw(), |u| u.uid),
            ),
            user: run_as.as_ref().map(|u| u.name.clone()),
            cgroup_path: cgroup_rel.clone(),
        })
        .await?;
    if let Some(gap) = unix_gap {
        journal.event(gap.event(&run_id)).await?;
    }

    let captured = CapturedCgroups {
        mount: mount.clone(),
        paths: vec![cgroup_rel],
    };
    let gateway = parts.gateway(
        &config,
        programs.clone(),
        targets,
        RunIds::Fixed(run_id.clone()),
        &listeners,
        captured,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(gateway::serve(gateway, listeners, unix_refusals, stop_rx));
    let shipper = crate::ship::Shipper::start(&config.journal.path, &config.sinks)?;
    // Each run has its own control socket beside the service's, so runs never share one.
    let control = crate::approval::control::start(
        &config
            .approvals
            .socket
            .with_file_name(format!("exec-{run_id}.sock")),
        &config.approvals.group,
        crate::approval::control::Daemon {
            approvals: approvals.clone(),
            reload: None,
            status: None,
        },
    );
    tracing::info!(run_id, cgroup = %cgroup.path().display(), "capture attached; starting command");

    // Removed when the run ends (dropped at the end of this function, error paths included).
    let owner = run_as.as_ref().map_or_else(
        || {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        },
        |u| (u.uid, u.gid),
    );
    let trust = RunTrust::prepare(
        trust,
        &config.state.dir,
        &config.runtime_dir(),
        &run_id,
        owner,
    )?;
    let secret_env: Vec<String> = config
        .targets
        .iter()
        .filter_map(|t| t.credentials.as_ref())
        .flat_map(|c| c.secret_env().cloned())
        .collect();
    let status = run_command(
        &cgroup,
        run_as.as_ref(),
        program,
        &command[1..],
        &run_id,
        &secret_env,
        &trust,
    )
    .await;

    // Tear down in dependency order: nothing of the run may outlive it.
    if let Err(e) = cgroup.remove() {
        tracing::warn!(error = %e, "could not clean up the run cgroup");
    }
    // Approvals die with their run: anything still held is expired (and journaled as such).
    let expired = approvals.expire_all();
    if expired > 0 {
        tracing::warn!(expired, "held statements expired: the run ended");
    }
    // Sessions whose client just died still journal their close.
    gateway::drain(stop_tx, server, &journal).await?;
    // Everything the run journaled is committed: give the sinks a moment to take it.
    shipper.stop(crate::ship::STOP_GRACE).await;
    if let Some(task) = kernel_logs {
        task.abort();
    }
    drop(control);
    drop(programs);
    let code = status?;
    journal.end_run(&run_id, Some(code)).await?;
    Ok(code)
}

/// Spawns CMD inside the cgroup as `run_as`, forwards signals, and returns its exit code
/// (128 + signal number if it was killed, as shells do).
async fn run_command(
    cgroup: &Cgroup,
    run_as: Option<&RunAs>,
    program: &str,
    args: &[String],
    run_id: &str,
    secret_env: &[String],
    trust: &RunTrust,
) -> Result<i32, ExecError> {
    let procs = cgroup.procs_file()?;
    let procs_fd = procs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).env("INTERCEPTOR_RUN_ID", run_id);
    // Credentials handed to the gateway through the environment are the gateway's, not the
    // agent's: the command must not inherit them.
    for var in secret_env {
        cmd.env_remove(var);
    }
    trust.apply(&mut cmd);
    let switch = run_as.map(|u| (u.uid, u.gid, u.groups.clone()));
    if let Some(user) = run_as {
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls
    // on memory allocated before the fork. It joins the cgroup first, while still root, then
    // drops privileges; std's own uid/gid handling would run before it, too early.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &switch {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // If this process dies, its links detach and CMD would be uncaptured: take CMD
            // down with it. Set after setuid, which clears the parent-death signal. The
            // "parent" is the forking thread: this runs on the block_on (main) thread, which
            // lives as long as the process.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        command: program.to_owned(),
        source,
    })?;
    drop(procs);
    let pid = child.id().map(|p| Pid::from_raw(p as i32));

    let mut forwarded = Vec::new();
    for (kind, sig) in [
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ] {
        if let Ok(stream) = signal(kind) {
            forwarded.push((stream, sig));
        }
    }
    let status = loop {
        let any_signal = futures_select_signal(&mut forwarded);
        tokio::select! {
            status = child.wait() => break status,
            sig = any_signal => {
                if let (Some(pid), Some(sig)) = (pid, sig) {
                    let _ = kill(pid, sig);
                }
            }
        }
    };
    let status = status.map_err(|source| ExecError::Spawn {
        command: program.to_owned(),
        source,
    })?;
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// Waits for the first of several signal streams.
async fn futures_select_signal(
    streams: &mut [(tokio::signal::unix::Signal, Signal)],
) -> Option<Signal> {
    if streams.is_empty() {
        std::future::pending::<()>().await;
    }
    let futures = streams.iter_mut().map(|(stream, sig)| {
        let sig = *sig;
        Box::pin(async move { stream.recv().await.map(|_| sig) })
    });
    let (result, _, _) = futures_util::future::select_all(futures).await;
    result
}

fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
