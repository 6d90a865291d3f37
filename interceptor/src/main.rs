//! The `interceptor` command line: parse, validate into a config, dispatch. Everything with
//! logic lives in the library; this file only turns errors into messages and exit codes.

mod cli_exit;

use std::{path::PathBuf, process::ExitCode};

use cli_exit::Failure;

use clap::{Parser, Subcommand};
use interceptor::{
    config::{Config, DEFAULT_CONFIG_PATH},
    journal::reader::{
        get_session, list_sessions, open_read_only, session_events, EventRow, SessionFilter,
        SessionRow,
    },
};

#[derive(Parser)]
#[command(
    name = "interceptor",
    version,
    about = "A host-level gate between AI agents and the infrastructure they touch"
)]
struct Cli {
    /// Configuration file. Without one, embedded defaults apply.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// More diagnostics from interceptor itself (dependencies stay at warn): -v debug,
    /// -vv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Diagnostics filter, in tracing's EnvFilter syntax (e.g. `interceptor=debug,warn`).
    /// Overrides -v and RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER", value_parser = interceptor::logging::parse_filter)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the local CA certificate (PEM), creating the CA if there is none yet (as root).
    Pem,
    /// Print known_hosts lines that SSH clients trust for the gateway's SSH host key, creating
    /// the SSH CA and host key if there are none yet (as root).
    ///
    /// By default two lines: `@cert-authority * ssh-ed25519 … interceptor-ssh-ca`, for OpenSSH
    /// (`ssh`, `scp`, `sftp`, `git`) and asyncssh, which accept the gateway's host certificate
    /// under any host name; and `* ssh-ed25519 …`, the host key itself, for clients without
    /// certificate support that match wildcards. OpenSSH and asyncssh use the line they
    /// need and skip the other. paramiko refuses to load a file that holds an
    /// `@cert-authority` line and matches names exactly: give it only the host-key line, in a
    /// file of its own, with the names it connects to (`--plain --pattern
    /// 'db1,[127.0.0.5]:2222'`; `[host]:port` for ports other than 22). OpenSSH: append the
    /// lines to /etc/ssh/ssh_known_hosts (docs/trust.md).
    #[command(name = "known-hosts")]
    KnownHosts {
        /// Only the `@cert-authority` line (OpenSSH, asyncssh).
        #[arg(long, conflicts_with = "plain")]
        openssh: bool,
        /// Only the host-key line (clients without certificate support: paramiko).
        #[arg(long)]
        plain: bool,
        /// The host field of the lines: a known_hosts pattern list (comma-separated,
        /// `*`/`?` wildcards, `[host]:port`).
        #[arg(long, default_value = "*", value_name = "PATTERN")]
        pattern: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run one command with all its outbound connections captured, journaled and relayed.
    Exec {
        /// Run CMD as this user (default: $SUDO_USER if set, else the caller).
        #[arg(long)]
        user: Option<String>,
        /// Make CMD's TLS clients trust the local CA: SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
        /// NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE and GIT_SSL_CAINFO name a bundle of the
        /// system's CA certificates plus the local CA, made for this run and removed after.
        #[arg(long)]
        trust_tls: bool,
        /// Make CMD's SSH clients trust the gateway's SSH host key: `ssh` (also through git)
        /// runs with a known_hosts file of the `ca known-hosts` lines added; asyncssh and
        /// paramiko users read INTERCEPTOR_KNOWN_HOSTS and INTERCEPTOR_SSH_HOST_KEY.
        #[arg(long)]
        trust_ssh: bool,
        /// The command and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Service mode: capture the cgroups and systemd units named in the config.
    Run,
    /// Check that this host can run the gate, with a fix for each problem.
    Doctor {
        /// Print the checks as a JSON array (name, ok, essential, detail, fix).
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Ask the running service to re-read its policy files (root only). All load, or none:
    /// a broken file is reported and the policies in force stay.
    Reload,
    /// Show the service: unit, daemon, pinned capture, sessions, pending approvals, journal
    /// head and verification, and each sink's lag. Exits 5 when the daemon does not answer.
    Status {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the service's pinned capture (detaches the programs from its cgroups).
    Detach,
    /// What agents' clients trust: the local CA that the gateway's TLS certificates chain
    /// to, and the SSH CA and host key of the SSH gateway.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Print a kubeconfig for an agent to reach a Kubernetes target through the gateway: the
    /// address it dials and the local CA, and no user credential (the gateway logs in).
    Kubeconfig {
        /// The `[[target]]` (protocol "kubernetes") to write it for.
        #[arg(long, value_name = "NAME")]
        target: String,
    },
    /// Install the systemd service: user, groups, directories, unit, default config; then
    /// enable and start it. Idempotent (re-run to upgrade).
    Install {
        /// Only write the files below DIR (no users, no systemctl).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Don't enable and start the unit.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and remove the systemd service and detach its capture; config and state stay.
    Uninstall {
        /// Only remove the files below DIR (no systemctl, no detach).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Also remove the config, the state (journal, CA), the logs and the binary.
        #[arg(long)]
        purge: bool,
    },
    /// See and decide commands held for approval.
    Approvals {
        /// Control socket (default: the configured one, and every running `exec`'s beside it).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Validate, explain and test policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Look at journaled sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Verify, export and prune the journal.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Shipping journal events to SIEMs (`[[sink]]` in the config).
    Ship {
        #[command(subcommand)]
        command: ShipCommand,
    },
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, interceptor(8), as roff to stdout; with --dir, write it and one
    /// page per subcommand (interceptor-status(8), …) there. The package builds them this way.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the config, its targets (no overlapping intercept patterns), every policy it
    /// uses, and its secret files; one line per check. Exit 1 when a file it names is
    /// missing or unreadable, 2 when the config or a policy is invalid.
    Check {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Check the hash chain; reports the first edited, deleted or reordered event.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Write events as NDJSON, one record per event, oldest first.
    Export {
        /// Record format.
        #[arg(long, default_value = "ocsf")]
        format: String,
        /// Only events after this sequence number.
        #[arg(long)]
        since: Option<i64>,
    },
    /// Delete events older than `[journal] retention_days`, keeping the rest verifiable.
    Prune,
    /// Rebuild the database (the index) from the segment log.
    Reindex,
}

#[derive(Subcommand)]
enum ShipCommand {
    /// Each sink's cursor, lag and last error.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Pending requests.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One pending request, in full.
    Show { id: String },
    /// Let the held command run.
    Approve {
        id: String,
        /// once: this execution; run: the same statement for the rest of the run.
        #[arg(long, default_value = "once")]
        scope: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse the held command.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Follow new requests: an interactive prompt on a terminal, JSON lines otherwise.
    Watch,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file or directory (default: the policies the configuration uses).
    Check { path: Option<PathBuf> },
    /// Show the decision for a command of any kind, the rule that made it, and what the
    /// command does. Give exactly one of --sql, --connect, --http, --mcp, --kube, --ssh.
    Explain {
        /// Target name (its policy and protocol apply).
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        uid: Option<u32>,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        exe: Option<String>,
        #[arg(long)]
        unit: Option<String>,
        #[arg(long)]
        cgroup: Option<String>,
        #[arg(long)]
        run: Option<String>,
        /// SQL to judge.
        #[arg(long, group = "command")]
        sql: Option<String>,
        /// A connection to this "ip:port".
        #[arg(long, group = "command")]
        connect: Option<String>,
        /// An HTTP request: 'METHOD URL', e.g. 'DELETE https://127.0.0.2/v1/items/7'.
        #[arg(long, group = "command")]
        http: Option<String>,
        /// An MCP call: 'tools/call NAME {JSON arguments}', 'resources/read URI', or a method.
        #[arg(long, group = "command")]
        mcp: Option<String>,
        /// A Kubernetes request, kubectl-like: 'delete pods/web-1 -n default'.
        #[arg(long, group = "command")]
        kube: Option<String>,
        /// An SSH command line ('rm -rf /srv'), or '@shell', '@subsystem sftp',
        /// '@forward 127.0.0.1:5432'.
        #[arg(long, group = "command")]
        ssh: Option<String>,
        /// A login inside a session, as MySQL's COM_CHANGE_USER asks it: 'USER [database DB]'.
        #[arg(long, group = "command")]
        login: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run a table of cases (TOML) and compare decisions; non-zero exit on any mismatch.
    Test { cases: PathBuf },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions, oldest first.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Only sessions started at or after this time: RFC 3339 (UTC unless an offset is
        /// given), a prefix such as 2026-11-28, or a duration ago such as 2h.
        #[arg(long)]
        since: Option<String>,
        /// Only sessions started at or before this time (a prefix includes the whole period).
        #[arg(long)]
        until: Option<String>,
        /// Only sessions of this target.
        #[arg(long)]
        target: Option<String>,
        /// Only sessions of this user name or uid.
        #[arg(long)]
        user: Option<String>,
        /// Only sessions of this run id.
        #[arg(long)]
        run: Option<String>,
        /// Only sessions with this outcome (closed, refused, upstream_failed, error, anomaly,
        /// timeout).
        #[arg(long)]
        outcome: Option<String>,
        /// Only sessions where a command, the connection, or an approver was decided this way.
        #[arg(long, value_parser = ["allow", "deny", "review"])]
        decision: Option<String>,
    },
    /// One session and its events (statements, decisions, approvals, results), in order.
    Show {
        /// The session id (from `sessions list`).
        id: i64,
        /// Print `{ "session": …, "events": [ … ] }` instead of a timeline.
        #[arg(long)]
        json: bool,
    },
    /// Play a session back: statements, decisions and the (masked) results the agent saw,
    /// and terminal sessions' output as it came, paced by the journal's timestamps.
    Replay {
        /// The session id (from `sessions list`).
        id: i64,
        /// Playback speed: 1 = real time, 10 = ten times faster, 0 = no pauses.
        #[arg(
            long,
            default_value_t = 1.0,
            value_name = "X",
            allow_negative_numbers = true
        )]
        speed: f64,
        /// Longest pause between two events, in seconds (long idle gaps are cut to this).
        #[arg(
            long,
            default_value_t = 5.0,
            value_name = "SECS",
            allow_negative_numbers = true
        )]
        max_wait: f64,
        /// Terminal sessions (SSH, Kubernetes exec): also play what the agent typed
        /// (highlighted); by default only the output is played.
        #[arg(long)]
        input: bool,
        /// Terminal sessions: write the recorded text as it is, escape sequences included
        /// (colors, cursor moves). Only for recordings you trust: by default anything that
        /// would act on your terminal is shown escaped.
        #[arg(long)]
        raw: bool,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let explicit = path.is_some();
    let path = path
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    Ok(Config::load(&path, explicit)?)
}

/// Every statement allocates (messages, analyses, journal rows) and frees it a moment later:
/// glibc's allocator took 8% of the gateway's CPU in pgbench profiles, and mimalloc's
/// thread-local free lists cost less (figures in docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Memory freed after a burst of large messages goes back to the system at once. mimalloc
/// otherwise purges freed pages only at a later allocation of the same thread, and a gateway
/// that falls idle after the burst would keep its peak for good. Measured with
/// scripts/bench-ab.sh: no cost per transaction within noise (docs/performance.md).
fn return_freed_memory_at_once() {
    // `mi_option_purge_delay` in mimalloc.h (v2 and v3 alike); libmimalloc-sys names only
    // some of the options. tests/tests/large_messages.rs checks the effect on RSS.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a process-wide option of the allocator before any thread is started; the
    // call takes plain integers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// The local CA's certificate (PEM), creating the CA if there is none yet (as root).
fn local_ca_pem(config: &Config) -> anyhow::Result<String> {
    let path = config.state.dir.join("ca.pem");
    // The certificate is public; only creating the CA needs root (the key is 0600).
    match std::fs::read_to_string(&path) {
        Ok(pem) => Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            interceptor::tls::LocalCa::load_or_create(&config.state.dir)?;
            Ok(std::fs::read_to_string(&path)?)
        }
        // The kind stays, so a permission problem exits 3.
        Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())).into()),
    }
}

fn main() -> ExitCode {
    return_freed_memory_at_once();
    let cli = Cli::parse();
    let asked = interceptor::logging::asked(cli.log_level.as_deref(), cli.verbose);
    // exec shares the terminal with CMD: only warnings and errors by default.
    let exec = matches!(cli.command, Command::Exec { .. });
    let service = matches!(cli.command, Command::Run);
    interceptor::logging::init(asked.as_deref(), if exec { "warn" } else { "info" });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Our error types already include their causes in their messages. The service's
            // reason to stop goes through the logger, so journald files it as an error
            // (`journalctl -p err` shows it); a plain stderr line would be filed as info.
            if service {
                tracing::error!("interceptor: {e}");
            } else {
                eprintln!("interceptor: {e}");
            }
            cli_exit::classify(&e, exec).into()
        }
    }
}

/// Each session holds two sockets: lift the soft fd limit to the hard one so a busy gateway is
/// not capped at the common default of 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    gateway_runtime(1)
}

/// The runtime sessions run on: one thread (`[proxy] worker_threads = 1`, the default), or a
/// multi-thread runtime with that many workers (0: one per CPU).
fn gateway_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    raise_fd_limit();
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if workers > 1 {
            builder.worker_threads(workers);
        }
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Generated from the definitions above, so they need no config.
    match cli.command {
        Command::Completions { shell } => return print_completions(shell),
        Command::Man { dir } => return print_man_pages(dir.as_deref()),
        _ => {}
    }
    let config = load_config(cli.config.as_ref())?;
    if matches!(cli.command, Command::Exec { .. } | Command::Run) {
        config.check_secrets()?;
    }
    match cli.command {
        Command::Exec {
            user,
            trust_tls,
            trust_ssh,
            command,
        } => {
            let trust = interceptor::run_trust::TrustOptions {
                tls: trust_tls,
                ssh: trust_ssh,
            };
            let workers = config.proxy.worker_threads;
            let code = gateway_runtime(workers)?.block_on(interceptor::exec::exec(
                config,
                user.as_deref(),
                trust,
                &command,
            ))?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Run => {
            let workers = config.proxy.worker_threads;
            gateway_runtime(workers)?.block_on(interceptor::service::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { json } => {
            let checks = interceptor::doctor::run_checks(&config);
            print_checks(&checks, json, ExitCode::FAILURE)
        }
        Command::Config {
            command: ConfigCommand::Check { json },
        } => {
            let report = interceptor::doctor::config_check::run(&config);
            let failed = if report.invalid {
                cli_exit::ExitKind::Usage.into()
            } else {
                ExitCode::FAILURE
            };
            print_checks(&report.checks, json, failed)
        }
        Command::Reload => runtime()?.block_on(reload(&config)),
        Command::Status { json } => runtime()?.block_on(status(&config, json)),
        Command::Ca {
            command: CaCommand::Pem,
        } => {
            print!("{}", local_ca_pem(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kubeconfig { target } => {
            let targets = config.targets().map_err(|e| anyhow::anyhow!(e))?;
            let text = interceptor::protocol::kubernetes::kubeconfig::render(
                &targets,
                &target,
                &local_ca_pem(&config)?,
            )?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command:
                CaCommand::KnownHosts {
                    openssh,
                    plain,
                    pattern,
                },
        } => {
            use interceptor::ssh_trust::{KnownHostsLines, SshPublicKeys, SshTrustError};
            let lines = match (openssh, plain) {
                (true, _) => KnownHostsLines::CertAuthority,
                (_, true) => KnownHostsLines::HostKey,
                _ => KnownHostsLines::Both,
            };
            // The public keys are readable by the state directory's group; only creating the
            // keys needs root.
            let keys = SshPublicKeys::read_or_create(&config.state.dir)?;
            let text = keys.known_hosts(&pattern, lines).map_err(|e| match e {
                SshTrustError::Pattern(_) => Failure::usage(e.to_string()),
                e => e.into(),
            })?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach => {
            let pin_dir = &config.capture.pin_dir;
            if interceptor::service::detach(pin_dir)? {
                println!("detached: removed {}", pin_dir.display());
            } else {
                println!("nothing pinned at {}", pin_dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Install { root, no_start } => {
            let report = interceptor::install::install(&interceptor::install::InstallOptions {
                root,
                no_start,
                binary: None,
            })?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall { root, purge } => {
            let report =
                interceptor::install::uninstall(&interceptor::install::UninstallOptions {
                    root,
                    purge,
                    pin_dir: Some(config.capture.pin_dir.clone()),
                })?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("printed before the config loads")
        }
        Command::Sessions { command } => run_sessions(&config, command),
        Command::Policy { command } => run_policy(&config, command),
        Command::Approvals { socket, command } => {
            runtime()?.block_on(run_approvals(&config, socket, command))
        }
        Command::Journal {
            command: JournalCommand::Verify { json },
        } => {
            let report = interceptor::journal::verify::verify_file(&config.journal.path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Journal {
            command: JournalCommand::Prune,
        } => {
            let Some(retention_days) = config.journal.retention_days else {
                return Err(Failure::usage(
                    "journal prune: set [journal] retention_days to say what may go",
                ));
            };
            let options = interceptor::journal::PruneOptions {
                retention_days,
                // Events a configured sink has not acknowledged yet are kept.
                sinks: config.sinks.iter().map(|s| s.name.clone()).collect(),
            };
            let report = interceptor::journal::prune_file(&config.journal, &options)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal {
            command: JournalCommand::Reindex,
        } => {
            let report = interceptor::journal::reindex_file(&config.journal)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal {
            command: JournalCommand::Export { format, since },
        } => {
            if format != "ocsf" {
                return Err(Failure::usage(format!(
                    "journal export: unknown format {format:?} (known: ocsf)"
                )));
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match interceptor::ship::export(&config.journal.path, since.unwrap_or(0), &mut out) {
                // `| head`: the reader has what it wanted.
                Err(interceptor::ship::ShipError::Output(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => drop(other?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ship {
            command: ShipCommand::Status { json },
        } => {
            let rows = interceptor::ship::status(&config.journal.path, &config.sinks)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", interceptor::ship::status_table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_approvals(
    config: &Config,
    socket: Option<PathBuf>,
    command: ApprovalsCommand,
) -> anyhow::Result<ExitCode> {
    use interceptor::approval::{
        control::{self, Answer, Call, ControlError},
        Scope,
    };
    if let ApprovalsCommand::Watch = command {
        interceptor::approval::watch::run(
            socket,
            config.approvals.socket.clone(),
            config.approvals.group.clone(),
        )
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let sockets = match socket {
        Some(s) => vec![s],
        None => control::sockets(&config.approvals.socket),
    };
    if sockets.is_empty() {
        return Err(ControlError::NotRunning(config.approvals.socket.clone()).into());
    }
    let call = match &command {
        ApprovalsCommand::List { .. } | ApprovalsCommand::Watch => Call::List,
        ApprovalsCommand::Show { id } => Call::Show { id: id.clone() },
        ApprovalsCommand::Approve { id, scope, reason } => Call::Approve {
            id: id.clone(),
            scope: match scope.as_str() {
                "once" => Scope::Once,
                "run" => Scope::Run,
                other => {
                    return Err(Failure::usage(format!(
                        "--scope must be once or run, not {other:?}"
                    )))
                }
            },
            reason: reason.clone(),
        },
        ApprovalsCommand::Deny { id, reason } => Call::Deny {
            id: id.clone(),
            reason: reason.clone(),
        },
    };
    let mut requests = Vec::new();
    let mut answered = false;
    // Sockets nobody listens on (left by killed runs) are noted and skipped; any other
    // failure means the answer may be incomplete.
    let mut stale = Vec::new();
    let mut errors = Vec::new();
    for path in &sockets {
        let error = match control::call(path, &call).await {
            Ok(Answer::Requests(list)) => {
                answered = true;
                requests.extend(list);
                continue;
            }
            Ok(Answer::Request(r)) => {
                // A decision or a show: one socket knows the id; that is the answer.
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Answer::Error(e)) => {
                answered = true;
                ControlError::from_answer(e)
            }
            Ok(Answer::Reloaded(_) | Answer::Status(_)) => {
                answered = true;
                ControlError::Refused("unexpected answer".to_owned())
            }
            Err(e) => ControlError::from_io(path, &config.approvals.group, e),
        };
        if error.is_stale() {
            stale.push(error);
        } else {
            errors.push(error);
        }
    }
    if !answered && errors.is_empty() && !stale.is_empty() {
        // Every socket is stale: no daemon to ask.
        return Err(stale.swap_remove(0).into());
    }
    for s in &stale {
        eprintln!("interceptor: ignoring {s}");
    }
    match command {
        ApprovalsCommand::List { json } => {
            // Failures first, so "(no pending approvals)" is never printed for a list that
            // could not be read.
            if let Some(first) = errors.into_iter().next() {
                if !requests.is_empty() {
                    print_requests(&requests, json)?;
                }
                return Err(first.into());
            }
            print_requests(&requests, json)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            // Every socket said no: the most specific reason is the one that is not "unknown".
            let reason = errors
                .iter()
                .position(|e| !matches!(e, ControlError::UnknownRequest(_)))
                .unwrap_or(0);
            match errors.into_iter().nth(reason) {
                Some(e) => Err(e.into()),
                None => Err(anyhow::anyhow!("no answer from {}", sockets[0].display())),
            }
        }
    }
}

/// A report of checks (`doctor`, `config check`): lines or JSON; `failed` when an essential
/// check failed.
fn print_checks(
    checks: &[interceptor::doctor::Check],
    json: bool,
    failed: ExitCode,
) -> anyhow::Result<ExitCode> {
    let healthy = if json {
        println!("{}", serde_json::to_string_pretty(checks)?);
        !checks.iter().any(|c| c.is_failure())
    } else {
        interceptor::doctor::print(checks)
    };
    Ok(if healthy { ExitCode::SUCCESS } else { failed })
}

/// `interceptor reload`: the service's policy reload through its control socket, so the
/// outcome (and a broken file's error) reaches the caller, which SIGHUP cannot do.
async fn reload(config: &Config) -> anyhow::Result<ExitCode> {
    use interceptor::approval::control::{self, Answer, Call, ControlError};
    let socket = &config.approvals.socket;
    if !control::may_exist(socket) {
        return Err(ControlError::NotRunning(socket.clone()).into());
    }
    match control::call(socket, &Call::Reload).await {
        Ok(Answer::Reloaded(done)) => {
            println!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Answer::Error(e)) => Err(ControlError::from_answer(e).into()),
        Ok(other) => Err(anyhow::anyhow!("unexpected answer to reload: {other:?}")),
        Err(e) => Err(ControlError::from_io(socket, &config.approvals.group, e).into()),
    }
}

/// `interceptor status`: the report, then the exit code of its worst part: 5 when the daemon
/// does not answer, 3 when the caller may not ask it, 1 when the journal does not verify.
async fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    use interceptor::{
        approval::control::{self, Answer, Call, ControlError},
        status::DaemonState,
    };
    let socket = &config.approvals.socket;
    let daemon = if !control::may_exist(socket) {
        DaemonState::NotRunning(ControlError::NotRunning(socket.clone()).to_string())
    } else {
        match control::call(socket, &Call::Status).await {
            Ok(Answer::Status(value)) => match serde_json::from_value(value) {
                Ok(status) => DaemonState::Running(Box::new(status)),
                Err(e) => DaemonState::Error(format!("unreadable status: {e}")),
            },
            Ok(Answer::Error(e)) => match ControlError::from_answer(e) {
                ControlError::NotPermitted(e) => DaemonState::PermissionDenied(e),
                other => DaemonState::Error(other.to_string()),
            },
            Ok(other) => DaemonState::Error(format!("unexpected answer: {other:?}")),
            Err(e) => match ControlError::from_io(socket, &config.approvals.group, e) {
                e @ ControlError::PermissionDenied { .. } => {
                    DaemonState::PermissionDenied(e.to_string())
                }
                e if e.is_stale() => DaemonState::NotRunning(e.to_string()),
                e => DaemonState::Error(e.to_string()),
            },
        }
    };
    // A CLI with nothing else to run: reading the journal may block its one thread.
    let report = interceptor::status::gather(config, daemon);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(match &report.daemon {
        DaemonState::NotRunning(_) | DaemonState::Error(_) => {
            cli_exit::ExitKind::Unreachable.into()
        }
        DaemonState::PermissionDenied(_) => cli_exit::ExitKind::Permission.into(),
        DaemonState::Running(_) if report.journal.verified == Some(false) => ExitCode::FAILURE,
        DaemonState::Running(_) => ExitCode::SUCCESS,
    })
}

/// `approvals list`: JSON, or one block per pending request.
fn print_requests(requests: &[interceptor::approval::Request], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(requests)?);
    } else if requests.is_empty() {
        println!("(no pending approvals)");
    } else {
        for r in requests {
            println!(
                "{}  {}  run {}  {} (pid {}, uid {})  target {}  rule {}\n    {}",
                r.id,
                r.requested_at,
                r.run_id.as_deref().unwrap_or("-"),
                r.user.as_deref().unwrap_or("?"),
                r.pid,
                r.uid,
                r.target.as_deref().unwrap_or("-"),
                r.rule.as_deref().unwrap_or("-"),
                r.statement
            );
        }
    }
    Ok(())
}

fn run_policy(config: &Config, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    use interceptor::{
        command::Family,
        policy::{self, asked::Asked, tooling},
    };
    match command {
        PolicyCommand::Check { path } => {
            let policies = match &path {
                Some(p) => tooling::single(p)?,
                None => policy::load_policies(config)?,
            };
            let mut all = vec![("(default)".to_owned(), policies.fallback.clone())];
            all.extend(
                policies
                    .by_target
                    .iter()
                    .map(|(t, p)| (t.clone(), p.clone())),
            );
            for (name, p) in all {
                let from = if p.sources.is_empty() {
                    "the embedded default".to_owned()
                } else {
                    p.sources
                        .iter()
                        .map(|s| s.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("ok: {name}: {} rules from {from}", tooling::rule_count(&p));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Explain {
            target,
            user,
            uid,
            groups,
            exe,
            unit,
            cgroup,
            run,
            sql,
            connect,
            http,
            mcp,
            kube,
            ssh,
            login,
            json,
        } => {
            let (family, text) = [
                (Family::Sql, sql),
                (Family::Connect, connect),
                (Family::Http, http),
                (Family::Mcp, mcp),
                (Family::Kubernetes, kube),
                (Family::Ssh, ssh),
                (Family::Login, login),
            ]
            .into_iter()
            .find_map(|(f, t)| t.map(|t| (f, t)))
            .ok_or_else(|| {
                Failure::usage(
                    "give one of --sql, --connect, --http, --mcp, --kube, --ssh or --login",
                )
            })?;
            let asked = Asked::parse(family, &text).map_err(Failure::usage)?;
            let policies = policy::load_policies(config)?;
            let protocol = config
                .targets()
                .map_err(Failure::usage)?
                .into_iter()
                .find(|t| Some(&t.name) == target.as_ref())
                .map(|t| t.protocol.as_str())
                .unwrap_or(asked.default_protocol());
            let subject = tooling::SubjectSpec {
                user,
                uid,
                groups,
                exe,
                unit,
                cgroup,
                run,
            }
            .subject();
            let engine = policy::Engine::new(policies);
            let verdict = engine.evaluate(&subject, target.as_deref(), protocol, asked.operation());
            if json {
                let op = asked.operation();
                let mut value = serde_json::to_value(&verdict)?;
                if let serde_json::Value::Object(map) = &mut value {
                    map.insert("kind".into(), op.family().as_str().into());
                    map.insert("command".into(), op.canonical().into());
                    map.insert("action".into(), op.action().into());
                    map.insert("objects".into(), op.objects().into());
                    if let Some((key, detail)) = op.detail() {
                        map.insert(key.into(), detail);
                    }
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", tooling::explain_text(&asked, &verdict));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test { cases } => {
            let file = tooling::load_cases(&cases)?;
            let policies = match &file.policy {
                Some(p) => {
                    let base = cases.parent().unwrap_or(std::path::Path::new("."));
                    tooling::single(&base.join(p))?
                }
                None => policy::load_policies(config)?,
            };
            let results = tooling::run_cases(policies, &file.cases);
            let failed = results.iter().filter(|r| !r.passed).count();
            for r in &results {
                let status = if r.passed { "ok  " } else { "FAIL" };
                println!("{status} {}: {}", r.name, r.detail);
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `sessions list|show|replay`: query the journal (read-only), then print JSON or one of the
/// library's views (`interceptor::view`).
fn run_sessions(config: &Config, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    use interceptor::{
        journal::reader::{command_counts, TimeBound},
        view::{self, replay, Term},
    };
    let conn = open_read_only(&config.journal.path)?;
    let load = |id: i64| -> anyhow::Result<(SessionRow, Vec<EventRow>)> {
        let session = get_session(&conn, id)?
            .ok_or_else(|| Failure::not_found(format!("no session {id} in the journal")))?;
        Ok((session, session_events(&conn, id)?))
    };
    match command {
        SessionsCommand::List {
            json,
            since,
            until,
            target,
            user,
            run,
            outcome,
            decision,
        } => {
            let now = std::time::SystemTime::now();
            let bound = |t: Option<String>| t.map(|t| TimeBound::parse(&t, now)).transpose();
            let filter = SessionFilter {
                since: bound(since)?,
                until: bound(until)?,
                target,
                user,
                run,
                outcome,
                decision,
            };
            let rows = list_sessions(&conn, &filter)?;
            if json {
                view::write_stdout(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
            } else {
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let counts = command_counts(&conn, &ids)?;
                view::write_stdout(&view::sessions::sessions_table(
                    &rows,
                    &counts,
                    &Term::stdout(),
                ))?;
            }
        }
        SessionsCommand::Show { id, json } => {
            let (session, events) = load(id)?;
            if json {
                let doc = serde_json::json!({ "session": session, "events": events });
                view::write_stdout(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
            } else {
                let counts = command_counts(&conn, &[id])?;
                view::write_stdout(&view::sessions::timeline(
                    &session,
                    &events,
                    counts.get(&id),
                    &Term::stdout(),
                ))?;
            }
        }
        SessionsCommand::Replay {
            id,
            speed,
            max_wait,
            input,
            raw,
        } => {
            let pace = replay::Pace::new(speed, max_wait)?;
            let streams = replay::Streams { input, raw };
            let (session, events) = load(id)?;
            let counts = command_counts(&conn, &[id])?;
            let mut out = std::io::stdout().lock();
            match replay::play(
                &session,
                &events,
                counts.get(&id),
                &pace,
                streams,
                &Term::stdout(),
                &mut out,
                &mut std::thread::sleep,
            ) {
                // A closed pipe (`| head`) means the reader has seen enough.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `interceptor completions SHELL`: the completion script for SHELL, from the clap definitions.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let mut cli = Cli::command();
    clap_complete::generate(shell, &mut cli, "interceptor", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `interceptor man`: interceptor(8) in roff, from the clap definitions (`make deb` ships it).
fn print_man_pages(dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let Some(dir) = dir else {
        let page = clap_mangen::Man::new(Cli::command()).section("8");
        page.render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir)?;
    // Built, so that subcommands carry their display names (`interceptor-approvals-list`),
    // which is what the top page's SUBCOMMANDS section refers to.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    write_man_page(&cli, dir)?;
    Ok(ExitCode::SUCCESS)
}

/// `cmd`'s page, `<display name>.8`, and those of its visible subcommands.
fn write_man_page(cmd: &clap::Command, dir: &std::path::Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_page(sub, dir)?;
    }
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let mut file = std::fs::File::create(dir.join(format!("{name}.8")))?;
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut file)?;
    Ok(())
}
