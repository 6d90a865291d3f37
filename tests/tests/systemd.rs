//! The packaged service under a real systemd (systemd-nspawn booting Debian 12; see
//! `interceptor_tests::nspawn`), as an operator runs it: install the .deb, start the unit,
//! put an agent in `autogen.slice`, stop the service.
//!
//! What it shows, by effects: the unit's sandbox rates at most 3.5 (`systemd-analyze
//! security`); with no bpffs mounted the service refuses to start (its own
//! mount namespace cannot keep pins); started, it is `active` only once ready (Type=notify)
//! and says what it captures (STATUS=); an agent in the slice reaching an unlisted loopback
//! port goes through the gateway and is journaled (capture-all); `systemctl reload` re-reads
//! the policies; a hung daemon is restarted by the watchdog and captures again; stopped, the
//! agent's connects are refused, never sent direct; `detach` lets them go direct again; and
//! `dpkg --purge` stops the service, removes the capture and keeps the journal.
//!
//! Slow: the first run debootstraps the rootfs (about a minute, cached after), each boot takes
//! a few seconds. Needs root, systemd-nspawn and debootstrap (scripts/bootstrap.sh).

use std::time::Duration;

use interceptor_tests::{
    nspawn::{build_package, Container},
    *,
};

/// bash in the agent's unit: one round trip through 127.0.0.2:PORT, or why not.
fn agent(c: &Container, port: u16) -> Output {
    c.sh(&format!(
        "systemd-run --quiet --wait --pipe --slice=autogen.slice --uid=nobody \
         bash -c 'exec 3<>/dev/tcp/127.0.0.2/{port} && printf hello >&3 && head -c 5 <&3'"
    ))
}

#[test]
fn the_packaged_service_under_systemd_captures_and_fails_closed() {
    require_root!();
    for tool in ["systemd-nspawn", "debootstrap", "script", "nsenter"] {
        if !has_program(tool) {
            assert!(
                !in_ci(),
                "{tool} is not installed (scripts/bootstrap.sh installs it)"
            );
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }
    let deb = build_package(Duration::from_secs(600));
    let dir = deb.parent().expect("the .deb has a directory");
    let name = deb
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let echo = EchoServer::start("127.0.0.2");
    // A database target as well: the shipped default policy masks what it returns.
    let pg = PgServer::start();
    pg.psql_db(
        "appdb",
        "CREATE TABLE customers (id int, email text); \
         INSERT INTO customers VALUES (1, 'alice@example.com'); GRANT SELECT ON customers TO PUBLIC",
    );
    let c = Container::boot(&[(dir, "/mnt/deb")]);
    c.ok(&format!("dpkg -i /mnt/deb/{name}"));
    c.ok(&format!(
        "printf '\\n[[target]]\\nname = \"appdb\"\\nprotocol = \"postgres\"\\n\
         intercept = [\"127.0.0.3:{port}\"]\\nupstream = \"127.0.0.1:{port}\"\\n' \
         >> /etc/interceptor/config.toml && interceptor config check",
        port = pg.port()
    ));

    // 1. No bpffs in the container: the unit refuses to start rather than pin where the pins
    //    would die with it.
    let out = c.sh("systemctl start interceptor");
    assert!(!out.success(), "started without bpffs: {}", out.describe());
    let log = c.ok("journalctl -u interceptor --no-pager");
    assert!(log.contains("mount namespace of its own"), "{log}");

    // The unit's sandbox, as systemd rates it (issue 15: at most 3.5).
    let report = c.ok("systemd-analyze security --no-pager interceptor");
    let exposure = report
        .lines()
        .find_map(|l| l.split("interceptor.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{report}"));
    assert!(exposure <= 3.5, "exposure {exposure}\n{report}");

    // 2. With bpffs mounted by the "host" (the container's init), it starts, notifies and
    //    says what it captures.
    c.ok("mount -t bpf bpf /sys/fs/bpf && systemctl reset-failed interceptor && systemctl start interceptor");
    assert_eq!(c.ok("systemctl is-active interceptor").trim(), "active");
    let status = c.ok("systemctl show -p StatusText --value interceptor");
    assert!(status.contains("capturing 1 cgroup"), "{status}");

    // 3. An agent in the slice: its connection to an unlisted port is relayed and journaled.
    let out = agent(&c, echo.port());
    assert!(out.success(), "agent: {}", out.describe());
    assert_eq!(out.stdout, "hello");
    assert_eq!(echo.accepted(), 1);
    let sessions = c.ok("interceptor sessions list --json");
    assert!(
        sessions.contains(&format!("127.0.0.2:{}", echo.port())),
        "{sessions}"
    );

    // `interceptor status` sees the unit and its daemon as one: the unit's main pid answers
    // on the control socket, and counts the agent's session.
    let report: serde_json::Value =
        serde_json::from_str(&c.ok("interceptor status --json")).expect("status --json");
    assert_eq!(report["unit"]["active_state"], json!("active"), "{report}");
    let main_pid = c.ok("systemctl show -p MainPID --value interceptor");
    assert_eq!(
        report["unit"]["main_pid"].to_string(),
        main_pid.trim(),
        "{report}"
    );
    assert_eq!(
        report["daemon"]["running"]["pid"],
        report["unit"]["main_pid"]
    );
    assert_eq!(
        report["daemon"]["running"]["sessions"][0]["total"],
        json!(1),
        "{report}"
    );
    assert_eq!(report["journal"]["verified"], json!(true), "{report}");

    // An agent that speaks PostgreSQL: captured, judged, its results masked, journaled.
    let psql = c.sh(&format!(
        "systemd-run --quiet --wait --pipe --slice=autogen.slice --uid=nobody \
         psql -X -At 'host=127.0.0.3 port={} dbname=appdb user=agent sslmode=disable' \
         -c 'SELECT email FROM customers'",
        pg.port()
    ));
    assert!(psql.success(), "psql agent: {}", psql.describe());
    assert_eq!(
        psql.stdout.trim(),
        "*****@******e.com",
        "{}",
        psql.describe()
    );
    let journaled = c.ok("interceptor sessions list --json --target appdb");
    assert!(
        journaled.contains("\"protocol\": \"postgres\""),
        "{journaled}"
    );
    assert!(
        !c.ok("interceptor sessions list --json").contains("alice@"),
        "raw value journaled"
    );

    // A stopped slice loses its cgroup, and its next start would make a new one without the
    // programs: the daemon creates it again at once, captured, and systemd reuses it.
    c.ok("systemctl stop autogen.slice");
    let out = agent(&c, echo.port());
    assert!(
        out.success(),
        "agent after the slice restarted: {}",
        out.describe()
    );
    assert_eq!(echo.accepted(), 2);
    let sessions: serde_json::Value =
        serde_json::from_str(&c.ok("interceptor sessions list --json")).expect("sessions");
    let to_echo = sessions
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["original_dst"] == json!(format!("127.0.0.2:{}", echo.port())))
        .count();
    assert_eq!(
        to_echo, 2,
        "the agent in the restarted slice was not journaled (went direct?): {sessions}"
    );

    // 4. Reload through the unit (ExecReload= is `interceptor reload`): the policies are
    //    re-read and the status says so.
    c.ok("systemctl reload interceptor");
    let status = c.ok("systemctl show -p StatusText --value interceptor");
    assert!(status.contains("reload"), "{status}");

    // 5. A hung daemon (SIGSTOP) is killed by the watchdog and restarted; the restarted one
    //    adopts the pins and captures again. (A drop-in shortens WatchdogSec for the test.)
    c.ok("mkdir -p /run/systemd/system/interceptor.service.d && \
          printf '[Service]\\nWatchdogSec=3\\n' > /run/systemd/system/interceptor.service.d/watchdog.conf && \
          systemctl daemon-reload && systemctl restart interceptor");
    let before = c.ok("systemctl show -p MainPID --value interceptor");
    c.ok(&format!("kill -STOP {}", before.trim()));
    let mut after = before.clone();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        after = c.ok("systemctl show -p MainPID --value interceptor");
        let active = c.sh("systemctl is-active interceptor").stdout;
        if after.trim() != before.trim() && after.trim() != "0" && active.trim() == "active" {
            break;
        }
    }
    assert_ne!(
        after.trim(),
        before.trim(),
        "the watchdog did not restart the hung daemon"
    );
    let out = agent(&c, echo.port());
    assert!(
        out.success(),
        "agent after the watchdog restart: {}",
        out.describe()
    );
    assert_eq!(echo.accepted(), 3);

    // 6. Stopped: the pinned capture refuses the agent's connects; nothing goes direct.
    c.ok("systemctl stop interceptor");
    let out = agent(&c, echo.port());
    assert!(
        !out.success(),
        "connected while stopped: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("Connection refused"),
        "{}",
        out.describe()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(echo.accepted(), 3, "a connection went direct while stopped");
    let down = c.sh("interceptor status");
    assert_eq!(
        down.code(),
        Some(5),
        "status while stopped: {}",
        down.describe()
    );
    assert!(
        down.stdout.contains("inactive") && down.stdout.contains("REFUSED"),
        "{}",
        down.stdout
    );

    // 7. detach removes the capture: the agent goes direct.
    c.ok("interceptor detach");
    let out = agent(&c, echo.port());
    assert!(out.success(), "after detach: {}", out.describe());
    assert_eq!(echo.accepted(), 4);

    // 8. Uninstalled: removing the package stops the service and removes the capture (its
    //    prerm detaches), so agents go direct, not refused; the journal stays.
    c.ok("systemctl start interceptor && interceptor sessions list --json >/dev/null");
    c.ok("dpkg --purge interceptor");
    assert!(
        !c.sh("systemctl cat interceptor").success(),
        "the unit is still there"
    );
    assert!(
        !c.sh("test -e /sys/fs/bpf/interceptor").success(),
        "pins left behind"
    );
    let out = agent(&c, echo.port());
    assert!(out.success(), "after uninstall: {}", out.describe());
    assert_eq!(echo.accepted(), 5);
    c.ok("test -s /var/lib/interceptor/journal.db");
}
