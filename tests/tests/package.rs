//! The Debian package (`make deb`): built with cargo-deb from the binary `make build` made, then
//! read back with dpkg-deb. It must hold the binary, the unit (the same text `install` writes,
//! on /usr/bin), the slice drop-in, sysusers.d and tmpfiles.d entries, the default config as a
//! conffile, the policies, completions, the man page and the docs; systemd must accept the unit,
//! bash the completion script and groff the man page.
//!
//! Slow-ish (about 10 s: no compiling, but the binary is stripped and compressed into the
//! archive). It packages target/release/interceptor, which `make test` builds first; without
//! one (a bare `cargo test`) it packages target/debug/interceptor instead (cargo-deb warns that
//! dev builds are not for releases; the files checked are the same). The tools it needs come
//! from scripts/bootstrap.sh: without one it skips, and under `CI=true` it fails.

use std::{fs, path::Path, process::Command, time::Duration};

use interceptor_tests::{nspawn::build_package, *};

const TIMEOUT: Duration = Duration::from_secs(600);

/// Whether `program` runs; if not, a skip note (or, under CI, a failure).
fn have(program: &str, version_arg: &str) -> bool {
    let ok = Command::new(program)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let message = format!("{program} is not installed (scripts/bootstrap.sh installs it)");
        assert!(!in_ci(), "{message}");
        eprintln!("skipped: {message}");
    }
    ok
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(args).arg(deb);
    let out = run_command(cmd, Duration::from_secs(60));
    assert!(out.success(), "dpkg-deb {args:?}: {}", out.describe());
    out.stdout
}

#[test]
fn make_deb_builds_a_package_with_everything_the_service_needs() {
    if !(have("cargo-deb", "--version") && have("dpkg-deb", "--version")) {
        return;
    }
    let deb = build_package(TIMEOUT);

    let contents = dpkg_deb(&["-c"], &deb);
    let listed: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for path in [
        "./usr/bin/interceptor",
        "./usr/lib/systemd/system/interceptor.service",
        "./usr/lib/systemd/system/autogen.slice.d/interceptor.conf",
        "./usr/lib/sysusers.d/interceptor.conf",
        "./usr/lib/tmpfiles.d/interceptor.conf",
        "./etc/interceptor/config.toml",
        "./usr/share/interceptor/policies/default.toml",
        "./usr/share/interceptor/policies/examples/journal-only.toml",
        "./usr/share/bash-completion/completions/interceptor",
        "./usr/share/zsh/vendor-completions/_interceptor",
        "./usr/share/fish/vendor_completions.d/interceptor.fish",
        "./usr/share/man/man8/interceptor.8.gz",
        // The pages interceptor(8) names under SUBCOMMANDS.
        "./usr/share/man/man8/interceptor-status.8.gz",
        "./usr/share/man/man8/interceptor-approvals-approve.8.gz",
        "./usr/share/doc/interceptor/README.md",
        "./usr/share/doc/interceptor/docs/operations.md",
        "./usr/share/doc/interceptor/copyright",
    ] {
        assert!(
            listed.contains(&path),
            "{path} not in the package:\n{contents}"
        );
    }

    let info = dpkg_deb(&["-I"], &deb);
    for field in [" Package: interceptor", " Section: net"] {
        assert!(info.lines().any(|l| l == field), "{field}:\n{info}");
    }
    let depends = info
        .lines()
        .find(|l| l.starts_with(" Depends:"))
        .unwrap_or_else(|| panic!("no Depends:\n{info}"));
    assert!(depends.contains("systemd"), "{depends}");
    // Maintainer scripts: accounts and directories, daemon-reload; conffiles: the config.
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(info.contains(&format!(" {script}")), "no {script}:\n{info}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(&deb).arg(&root);
    let out = run_command(cmd, Duration::from_secs(60));
    assert!(out.success(), "dpkg-deb -x: {}", out.describe());
    let control = tmp.path().join("control");
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-e").arg(&deb).arg(&control);
    let out = run_command(cmd, Duration::from_secs(60));
    assert!(out.success(), "dpkg-deb -e: {}", out.describe());
    let postinst = fs::read_to_string(control.join("postinst")).unwrap();
    for step in [
        "systemd-sysusers interceptor.conf",
        "systemd-tmpfiles --create interceptor.conf",
        "systemctl daemon-reload",
    ] {
        assert!(postinst.contains(step), "postinst lacks {step}");
    }
    let commands: Vec<&str> = postinst
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !commands
            .iter()
            .any(|l| l.contains("enable") || l.contains("systemctl start")),
        "postinst must not enable or start the service:\n{postinst}"
    );
    assert_eq!(
        fs::read_to_string(control.join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/interceptor/config.toml"
    );

    // One source of truth: the packaged files are the ones `install` writes.
    let source = workspace_root().join("interceptor/packaging");
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let unit = read(&root.join("usr/lib/systemd/system/interceptor.service"));
    assert_eq!(
        unit,
        read(&source.join("interceptor.service"))
            .replace("/usr/local/bin/interceptor", "/usr/bin/interceptor")
    );
    assert!(unit
        .lines()
        .any(|l| l.starts_with("ExecStart=/usr/bin/interceptor ")));
    assert_eq!(
        read(&root.join("etc/interceptor/config.toml")),
        read(&source.join("config.toml"))
    );
    assert_eq!(
        read(&root.join("usr/lib/systemd/system/autogen.slice.d/interceptor.conf")),
        read(&source.join("autogen.slice.conf"))
    );
    let bin = root.join("usr/bin/interceptor");

    // The unit, as systemd reads it.
    if have("systemd-analyze", "--version") {
        let file = tmp.path().join("interceptor.service");
        // Verify checks that ExecStart= is executable: point it at the packaged binary.
        fs::write(
            &file,
            unit.replace("/usr/bin/interceptor", bin.to_str().unwrap()),
        )
        .unwrap();
        // Verify also runs `man` for Documentation=man:interceptor(8): the packaged page.
        let mut cmd = Command::new("systemd-analyze");
        cmd.arg("verify")
            .arg(&file)
            .env("MANPATH", root.join("usr/share/man"));
        let out = run_command(cmd, Duration::from_secs(60));
        let problems: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.contains(".target not found"))
            .collect();
        assert!(
            out.success() && problems.is_empty(),
            "systemd-analyze verify: {}",
            out.describe()
        );
        // The slice with the packaged drop-in (from /usr/lib/systemd/system below the root).
        let mut cmd = Command::new("systemd-analyze");
        cmd.arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("--man=no")
            .arg("autogen.slice");
        let out = run_command(cmd, Duration::from_secs(60));
        assert!(
            out.success() && !out.stderr.contains("interceptor.conf"),
            "systemd-analyze verify autogen.slice: {}",
            out.describe()
        );
    }

    // Completions: bash parses the script; zsh's and fish's name the command.
    let bash = root.join("usr/share/bash-completion/completions/interceptor");
    let mut cmd = Command::new("bash");
    cmd.arg("-n").arg(&bash);
    let out = run_command(cmd, Duration::from_secs(30));
    assert!(out.success(), "bash -n: {}", out.describe());
    assert!(read(&bash).contains("complete -F _interceptor"));
    assert!(
        read(&root.join("usr/share/zsh/vendor-completions/_interceptor"))
            .starts_with("#compdef interceptor")
    );
    assert!(
        read(&root.join("usr/share/fish/vendor_completions.d/interceptor.fish"))
            .contains("complete -c interceptor")
    );

    // The man page renders without a warning and names the subcommands.
    if have("groff", "--version") {
        let page = root.join("usr/share/man/man8/interceptor.8.gz");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("gzip -dc \"$1\" | groff -man -Tutf8 -ww -P-cbou")
            .arg("sh")
            .arg(&page);
        let out = run_command(cmd, Duration::from_secs(30));
        assert!(out.success(), "groff: {}", out.describe());
        assert!(out.stderr.trim().is_empty(), "groff: {}", out.describe());
        for word in ["interceptor", "SUBCOMMANDS", "install", "completions"] {
            assert!(out.stdout.contains(word), "man page lacks {word}");
        }
    }
}
