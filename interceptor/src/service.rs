//! `interceptor run`: the service that captures configured cgroups and systemd units.
//!
//! Why this exists: on an agent host the gate must hold even while the daemon restarts. Links
//! and maps are pinned in bpffs, so the kernel keeps steering captured connections to the proxy
//! port while the daemon is down, where nothing listens: they are refused, never sent direct.
//! A restarted daemon adopts the pins instead of re-attaching, so there is no window in which
//! the cgroups are unprotected.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::signal::unix::{signal, SignalKind};

use crate::{
    capture::{
        cgroup::{cgroup2_mount, cgroup_of_unit, Cgroup},
        peer::CapturedCgroups,
        programs::{forward_kernel_logs, link_dir, Programs, Settings},
        CaptureError, CaptureMode,
    },
    config::Config,
    exec::{require_root, unix_capture_gap, ExecError, GatewayParts},
    gateway::{self, Listeners, RunIds},
};

/// The cgroups the config names: `[capture] cgroups` and the cgroups of `[capture] units`.
pub fn captured_cgroups(config: &Config, mount: &Path) -> Result<Vec<Cgroup>, ExecError> {
    let mut paths: Vec<String> = config.capture.cgroups.clone();
    for unit in &config.capture.units {
        paths.push(cgroup_of_unit(unit)?);
    }
    if paths.is_empty() {
        return Err(ExecError::Config(
            "nothing to capture: set [capture] cgroups or units".to_owned(),
        ));
    }
    paths
        .iter()
        .map(|p| {
            let rel = p.trim_start_matches('/');
            if rel.is_empty() || rel.split('/').any(|c| c == "..") {
                return Err(ExecError::Config(format!(
                    "capture cgroup {p:?} must be a path below the cgroup2 mount"
                )));
            }
            Ok(Cgroup::ensure(mount.join(rel))?)
        })
        .collect()
}

/// The mount point of the bpf filesystem that holds `pin_dir` in this mount namespace, from
/// the text of /proc/self/mounts (the longest bpf mount point above it).
fn bpf_mount_of(mounts: &str, pin_dir: &Path) -> Option<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "bpf")
                .then(|| PathBuf::from(crate::capture::cgroup::unescape_mount_path(f[1])))
        })
        .filter(|m| pin_dir.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

/// A process of the host's mount namespace to compare with: init, or, where this process may
/// not look into init (a sandbox whose init is not ours to inspect), the kernel's thread
/// spawner, whose namespace is the kernel's initial one. `None` when neither can be read.
fn host_process() -> Option<PathBuf> {
    let readable = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok();
    if readable("1") {
        return Some(PathBuf::from("/proc/1"));
    }
    let kthreadd = std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    (kthreadd && readable("2")).then(|| PathBuf::from("/proc/2"))
}

/// Whether `mount_point` is, in the host's mount namespace too, the very bpf filesystem this
/// process sees there. Pins live as long as their filesystem is mounted somewhere; one that
/// only this process's namespace has (systemd's ProtectSystem and PrivateMounts give the
/// service a namespace of its own) is unmounted when the service stops, and the capture with
/// it. `/proc/PID/root` resolves paths in that process's mount namespace.
fn visible_to_host(host: &Path, mount_point: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let theirs = host
        .join("root")
        .join(mount_point.strip_prefix("/").unwrap_or(mount_point));
    let is_bpf = nix::sys::statfs::statfs(&theirs)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    let same = match (std::fs::metadata(mount_point), std::fs::metadata(&theirs)) {
        (Ok(ours), Ok(theirs)) => ours.dev() == theirs.dev(),
        _ => false,
    };
    is_bpf && same
}

/// Whether this process shares the host's mount namespace (a mount it makes is the host's).
fn in_host_mount_namespace(host: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (
        std::fs::metadata("/proc/self/ns/mnt"),
        std::fs::metadata(host.join("ns/mnt")),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Why `pin_dir` cannot hold pins that outlive the daemon, if it cannot (see
/// [`ensure_bpffs`]). `Ok(Some(mount point))` when it can as it is; `Ok(None)` when no bpf
/// filesystem holds it yet and this process could mount one at /sys/fs/bpf that the host
/// keeps.
pub fn pin_dir_placement(pin_dir: &Path) -> Result<Option<PathBuf>, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
    let fix = "mount bpffs on the host before the service starts: `mount -t bpf bpf /sys/fs/bpf` \
               (or enable systemd's sys-fs-bpf.mount, or add it to /etc/fstab)";
    let Some(host) = host_process() else {
        return Err(format!(
            "cannot tell whether the bpf filesystem holding {} outlives the service: neither \
             /proc/1 nor /proc/2 can be inspected (is /proc mounted with hidepid?)",
            pin_dir.display()
        ));
    };
    match bpf_mount_of(&mounts, pin_dir) {
        Some(m) if visible_to_host(&host, &m) => Ok(Some(m)),
        Some(m) => Err(format!(
            "{} is on a bpf filesystem mounted at {} only in this process's mount namespace: \
             it would be unmounted when the service stops, and with it the capture that \
             refuses captured connections while the service is down; {fix}",
            pin_dir.display(),
            m.display()
        )),
        None if !pin_dir.starts_with("/sys/fs/bpf") => Err(format!(
            "{} is not on a bpf filesystem; mount one there or use a pin_dir under \
             /sys/fs/bpf",
            pin_dir.display()
        )),
        None if in_host_mount_namespace(&host) => Ok(None),
        None => Err(format!(
            "no bpf filesystem is mounted at /sys/fs/bpf, and one mounted by the service \
             (which runs in a mount namespace of its own) would be unmounted when it stops, \
             taking the capture of stopped-service connections with it; {fix}"
        )),
    }
}

/// Makes sure `pin_dir` is on a bpf filesystem that outlives the daemon, mounting one at
/// /sys/fs/bpf when this process shares the host's mount namespace. Refuses otherwise: a
/// capture pinned where it dies with the service would let captured agents connect direct
/// once the service stops (fail open).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), CaptureError> {
    let refused = |message: String| CaptureError::Pin {
        path: pin_dir.to_owned(),
        message,
    };
    if pin_dir_placement(pin_dir).map_err(refused)?.is_some() {
        return Ok(());
    }
    let target = Path::new("/sys/fs/bpf");
    std::fs::create_dir_all(target).map_err(|e| CaptureError::Pin {
        path: target.to_owned(),
        message: e.to_string(),
    })?;
    nix::mount::mount(
        Some("bpf"),
        target,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| CaptureError::Pin {
        path: target.to_owned(),
        message: format!("mounting bpffs: {e}"),
    })?;
    // Mounted in init's namespace: check it took, as the host sees it.
    match pin_dir_placement(pin_dir).map_err(refused)? {
        Some(_) => Ok(()),
        None => Err(refused(
            "bpffs was mounted but does not hold the pin_dir".to_owned(),
        )),
    }
}

/// True when a previous daemon left a complete capture for every cgroup behind.
fn pins_complete(pin_dir: &Path, cgroups: &[Cgroup]) -> bool {
    let maps = pin_dir.join("maps");
    // Pins of an older daemon lack the Unix-socket maps (and routes) and links: start over, so
    // an upgrade brings Unix-socket capture wherever the kernel has it.
    let unix_links = crate::capture::unix::probe().is_ok();
    [
        interceptor_common::maps::CONFIG,
        interceptor_common::maps::UNIX_CONFIG,
        interceptor_common::maps::UNIX_ROUTES,
    ]
    .iter()
    .all(|m| maps.join(m).exists())
        // Pins of a daemon that did not pin its programs cannot recapture a recreated cgroup.
        && crate::capture::programs::programs_dir(pin_dir)
            .join(interceptor_common::programs::CONNECT4)
            .exists()
        && cgroups.iter().all(|cg| {
            cg.id().ok().is_some_and(|id| {
                let dir = link_dir(pin_dir, id);
                std::fs::read_dir(&dir).is_ok_and(|d| d.count() > 0)
                    && (!unix_links || dir.join(crate::capture::unix::LINK_CONNECT).exists())
            })
        })
}

/// Unpins everything under `pin_dir`: the links detach once no process holds them.
pub fn detach(pin_dir: &Path) -> Result<bool, CaptureError> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(pin_dir).map_err(|e| CaptureError::Pin {
        path: pin_dir.to_owned(),
        message: e.to_string(),
    })?;
    Ok(true)
}

pub async fn run(config: Config) -> Result<(), ExecError> {
    require_root("run")?;
    let mount = cgroup2_mount()?;
    let targets = config.targets().map_err(ExecError::Config)?;
    let cgroups = captured_cgroups(&config, &mount)?;
    let pin_dir: PathBuf = config.capture.pin_dir.clone();
    ensure_bpffs(&pin_dir)?;

    let parts = GatewayParts::from_config(&config, &targets)?;
    let (journal, approvals, policy, stats) = (
        parts.journal.clone(),
        parts.approvals.clone(),
        parts.policy.clone(),
        parts.stats.clone(),
    );
    let metrics_endpoint = config
        .metrics
        .endpoint()
        .map_err(|e| ExecError::Config(e.to_string()))?;
    match journal.expire_service_approvals().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            expired = n,
            "approvals pending before the restart are expired"
        ),
        Err(e) => return Err(e.into()),
    }
    // The route directory is removed when the daemon stops: routed connects then fail
    // (ENOENT) until it is back.
    let (listeners, _route_dir) = Listeners::bind_with_routes(
        config.proxy.port,
        &config.runtime_dir(),
        "service",
        &targets,
    )
    .map_err(ExecError::Listen)?;
    // Capture-all unless the operator opts into `listed`: every connection an agent makes is
    // journaled, a target's or not (issue 15).
    let settings = Settings::from_config(
        &config.capture,
        &targets,
        CaptureMode::All,
        &listeners.steering(),
    )
    .map_err(ExecError::Config)?;

    let mut programs = if pins_complete(&pin_dir, &cgroups) {
        tracing::info!(pin_dir = %pin_dir.display(), "adopting the pinned capture");
        Programs::adopt(&pin_dir)?
    } else {
        // Stale or partial pins (config changed, or a cgroup was re-created): start over.
        detach(&pin_dir)?;
        let mut programs = Programs::load(Some(&pin_dir))?;
        // Configure before attaching, so the first connect already finds the proxy.
        programs.configure(&settings)?;
        // From the programs `load` just pinned: the same attach as a recreated cgroup's.
        for cgroup in &cgroups {
            crate::capture::programs::attach_from_pins(&pin_dir, cgroup)?;
        }
        programs
    };
    programs.configure(&settings)?;
    let unix_gap = unix_capture_gap(&config, &programs)?;
    if let Some(gap) = &unix_gap {
        journal.event(gap.event("service")).await?;
    }
    let kernel_logs = programs
        .take_logger()
        .map(|l| tokio::spawn(forward_kernel_logs(l)));
    let recapture = {
        let watched = cgroups
            .iter()
            .map(|c| {
                Ok(crate::capture::recapture::Watched {
                    path: c.path().to_owned(),
                    attached: c.id()?,
                })
            })
            .collect::<Result<Vec<_>, CaptureError>>()?;
        let journal = journal.clone();
        tokio::spawn(crate::capture::recapture::keep_captured(
            pin_dir.clone(),
            watched,
            move |outcome| journal_recapture(&journal, outcome),
        ))
    };
    let unix_refusals = programs.take_unix_refusals();

    let captured = CapturedCgroups {
        paths: cgroups
            .iter()
            .map(|c| match c.path().strip_prefix(&mount) {
                Ok(rel) => format!("/{}", rel.display()),
                Err(_) => c.path().display().to_string(),
            })
            .collect(),
        mount,
    };
    let target_count = targets.len();
    let observed = Arc::new(crate::status::Observed {
        stats,
        journal: journal.clone(),
        approvals: approvals.clone(),
        started: std::time::SystemTime::now(),
        capture_mode: if settings.intercept_all {
            "all"
        } else {
            "listed"
        }
        .to_owned(),
        cgroups: captured.paths.clone(),
        pin_dir: pin_dir.clone(),
        listeners: listeners
            .addrs()
            .iter()
            .map(ToString::to_string)
            .chain(
                listeners
                    .unix
                    .iter()
                    .map(|r| format!("unix:{}", r.route.routed)),
            )
            .collect(),
        metrics: metrics_endpoint.as_ref().map(ToString::to_string),
        limits: parts.limits,
        journal_path: config.journal.path.clone(),
        sinks: config.sinks.clone(),
    });
    let gateway = parts.gateway(
        &config,
        Arc::new(programs),
        targets,
        RunIds::PerCgroup,
        &listeners,
        captured,
    );
    let port = listeners.port4();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(gateway::serve(gateway, listeners, unix_refusals, stop_rx));
    let shipper = crate::ship::Shipper::start(&config.journal.path, &config.sinks)?;
    for stale in crate::approval::control::remove_stale(&config.approvals.socket) {
        tracing::info!(socket = %stale.display(), "removed a stale control socket of an ended run");
    }
    let status = ready_status(cgroups.len(), target_count, &config.journal.path);
    let reloader = Arc::new(PolicyReloader {
        config: config.clone(),
        engine: policy.clone(),
        ready_status: status.clone(),
    });
    let control = crate::approval::control::start(
        &config.approvals.socket,
        &config.approvals.group,
        crate::approval::control::Daemon {
            approvals: approvals.clone(),
            reload: Some({
                let reloader = reloader.clone();
                Arc::new(move || reloader.reload())
            }),
            status: Some({
                let observed = observed.clone();
                Arc::new(move || serde_json::to_value(observed.status()).unwrap_or_default())
            }),
        },
    );
    // Off unless configured; a configured endpoint that cannot be bound stops the start, like
    // any other listener the operator asked for.
    let _metrics = match &metrics_endpoint {
        Some(endpoint) => Some(
            crate::metrics::serve(endpoint, crate::journal::SERVICE_USER, {
                let observed = observed.clone();
                Arc::new(move || observed.exposition())
            })
            .await
            // A taken port is a runtime failure (exit 1), not a config error: the config was
            // validated when it was loaded.
            .map_err(|e| ExecError::Listen(std::io::Error::other(e.to_string())))?,
        ),
        None => None,
    };
    let names: Vec<String> = cgroups
        .iter()
        .map(|c| c.path().display().to_string())
        .collect();
    tracing::info!(port, cgroups = ?names, "capture ready");
    sd_notify(&format!("READY=1\nSTATUS={status}"));
    let watchdog = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
    .map(|every| tokio::spawn(ping_watchdog(every)));

    let hangups = tokio::spawn(reload_policies_on_sighup(reloader));
    let pruner = config.journal.retention_days.map(|days| {
        let sinks = config.sinks.iter().map(|s| s.name.clone()).collect();
        tokio::spawn(prune_daily(journal.clone(), days, sinks))
    });
    wait_for_stop().await;
    hangups.abort();
    if let Some(p) = pruner {
        p.abort();
    }
    tracing::info!(
        "stopping; the pinned capture stays attached and refuses connections until restart"
    );
    recapture.abort();
    gateway::drain(stop_tx, server, &journal).await?;
    shipper.stop(crate::ship::STOP_GRACE).await;
    if let Some(task) = kernel_logs {
        task.abort();
    }
    drop(control);
    if let Some(task) = watchdog {
        task.abort();
    }
    Ok(())
}

/// Logs and journals what `recapture` did: a captured cgroup that was removed or replaced is
/// evidence worth keeping (someone stopped a unit or the slice), and a failure to capture it
/// again is an error an operator must see.
fn journal_recapture(
    journal: &crate::journal::Journal,
    outcome: Result<crate::capture::recapture::Recaptured, CaptureError>,
) {
    let detail = match outcome {
        Ok(r) => {
            tracing::warn!(cgroup = %r.path.display(), previous = r.previous, id = r.id, created = r.created,
                "a captured cgroup was removed or replaced: captured again");
            serde_json::json!({
                "action": if r.created { "recreated_and_captured" } else { "captured_again" },
                "cgroup": r.path.display().to_string(),
                "previous_id": r.previous,
                "id": r.id,
            })
        }
        Err(e) => {
            tracing::error!(error = %e, "a captured cgroup could not be captured again");
            serde_json::json!({ "action": "capture_failed", "error": e.to_string() })
        }
    };
    journal.record_event(crate::journal::Event::note(None, "capture", detail));
}

/// How often to send WATCHDOG=1: half of `$WATCHDOG_USEC` (WatchdogSec=), if systemd set it
/// for this process (`$WATCHDOG_PID`, when present, must be ours).
fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    me: u32,
) -> Option<std::time::Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(me)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(std::time::Duration::from_micros(usec / 2))
}

/// Pings systemd's watchdog from the runtime itself: a wedged event loop stops the pings and
/// systemd restarts the daemon (the pins refuse connections meanwhile).
async fn ping_watchdog(every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        sd_notify("WATCHDOG=1");
    }
}

/// Applies `[journal] retention_days` once a day (the first time an hour after start, so a
/// restart loop does not prune repeatedly). Events no sink has delivered stay.
async fn prune_daily(journal: crate::journal::Journal, retention_days: u32, sinks: Vec<String>) {
    let mut next = std::time::Duration::from_secs(3600);
    loop {
        tokio::time::sleep(next).await;
        next = std::time::Duration::from_secs(24 * 3600);
        let options = crate::journal::PruneOptions {
            retention_days,
            sinks: sinks.clone(),
        };
        match journal.prune(options).await {
            Ok(report) => tracing::info!(?report, "journal pruned"),
            Err(e) => tracing::error!(error = %e, "journal prune failed"),
        }
    }
}

/// What `systemctl status interceptor` shows on its `Status:` line once the capture is ready.
fn ready_status(cgroups: usize, targets: usize, journal: &Path) -> String {
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    format!(
        "capturing {}, {}, journal at {}",
        plural(cgroups, "cgroup"),
        plural(targets, "target"),
        journal.display()
    )
}

/// Re-reads every policy file, for SIGHUP and for `interceptor reload` alike. All of them
/// load, or none: a broken file keeps the policies in force, and the log says why. The outcome
/// is appended to the ready status, so `systemctl status` shows whether the last reload took.
pub struct PolicyReloader {
    config: Config,
    engine: Arc<crate::policy::Engine>,
    ready_status: String,
}

impl PolicyReloader {
    /// Ok: what is in force now; Err: why the previous policies stay.
    pub fn reload(&self) -> Result<String, String> {
        let result = crate::policy::load_policies(&self.config);
        let (outcome, answer) = match result {
            Ok(policies) => {
                let summary = policy_summary(&policies);
                self.engine.replace(policies);
                tracing::info!(policies = %summary, "policies reloaded");
                (
                    "policies reloaded",
                    Ok(format!("policies reloaded: {summary}")),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload failed; keeping the policies in force");
                (
                    "policy reload FAILED, previous policies in force (see the log)",
                    Err(format!(
                        "policy reload failed, the previous policies stay in force: {e}"
                    )),
                )
            }
        };
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        sd_notify(&format!("STATUS={}; {outcome} at {at}", self.ready_status));
        answer
    }
}

/// "2 policies (default: 12 rules, db: 3 rules)" for the reload's answer.
fn policy_summary(policies: &crate::policy::Policies) -> String {
    let rules = |p: &crate::policy::Policy| crate::policy::tooling::rule_count(p);
    let mut parts = vec![format!("default: {} rules", rules(&policies.fallback))];
    let mut targets: Vec<_> = policies.by_target.iter().collect();
    targets.sort_by(|a, b| a.0.cmp(b.0));
    parts.extend(
        targets
            .iter()
            .map(|(t, p)| format!("{t}: {} rules", rules(p))),
    );
    parts.join(", ")
}

async fn reload_policies_on_sighup(reloader: Arc<PolicyReloader>) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        let reloader = reloader.clone();
        // Reading and compiling files blocks: off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
    }
}

async fn wait_for_stop() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Tells systemd (Type=notify) about our state, if it is listening.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let path = PathBuf::from(path);
    let result = if let Some(abstract_name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::watchdog_interval;
    use std::time::Duration;

    #[test]
    fn ready_status_counts_and_names_the_journal() {
        assert_eq!(
            super::ready_status(
                1,
                2,
                std::path::Path::new("/var/lib/interceptor/journal.db")
            ),
            "capturing 1 cgroup, 2 targets, journal at /var/lib/interceptor/journal.db"
        );
    }

    #[test]
    fn half_of_watchdog_usec_for_our_pid_only() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("junk"), None, 7), None);
    }
}
