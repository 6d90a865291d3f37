//! Static checks of the development VM (vagrant/): no VM, no root, no network.
//!
//! - `bash -n` on vagrant/provision.sh, plus shellcheck when it is installed;
//! - `ruby -c` on vagrant/Vagrantfile when Ruby is installed, and its basic structure always;
//! - provisioning runs the repository's bootstrap and `make demo`;
//! - neither file (nor vagrant/README.md) names an IPv4 address outside 127.0.0.0/8.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use interceptor_tests::*;

fn vagrant_file(name: &str) -> PathBuf {
    workspace_root().join("vagrant").join(name)
}

fn read(name: &str) -> String {
    let path = vagrant_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `program args…`; `None` when the program is not installed.
fn try_run(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("run {program}: {e}"),
    }
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every dotted-quad IPv4 address in `text` (four 1-3 digit numbers, each at most 255, joined by
/// dots), wherever it sits: in code, strings or comments. Longer dotted runs (a quad followed by more dotted numbers) are
/// scanned window by window, so an address cannot hide in a version-like string.
fn ipv4_addresses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for token in text.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() < 4 {
            continue;
        }
        for window in parts.windows(4) {
            let octet = |p: &&str| {
                !p.is_empty() && p.len() <= 3 && p.parse::<u16>().is_ok_and(|v| v <= 255)
            };
            if window.iter().all(octet) {
                found.push(window.join("."));
            }
        }
    }
    found
}

fn non_loopback_ipv4(text: &str) -> Vec<String> {
    ipv4_addresses(text)
        .into_iter()
        .filter(|a| !a.starts_with("127."))
        .collect()
}

#[test]
fn address_scanner_finds_addresses() {
    // Built at run time so this file itself names no address outside loopback.
    let private = ["10", "1", "2", "3"].join(".");
    let any = ["0", "0", "0", "0"].join(".");
    assert_eq!(
        non_loopback_ipv4(&format!("ip: \"{private}\"")),
        vec![private.clone()]
    );
    assert_eq!(non_loopback_ipv4(&format!("# bind {any}:80")), vec![any]);
    assert!(non_loopback_ipv4(&format!("v9.{private}")).contains(&private));
    assert!(non_loopback_ipv4("listen 127.0.0.2:5432 and 127.0.0.1").is_empty());
    assert_eq!(ipv4_addresses("127.0.0.2").len(), 1);
    assert!(ipv4_addresses("llvm 1:22.1.8-1~deb12u1, rust 1.85.0, memory 4096").is_empty());
    // An octet above 255 is not an address (built at run time, so no literal quad is written).
    assert!(ipv4_addresses(&["999", "1", "1", "1"].join(".")).is_empty());
}

#[test]
fn provision_script_parses_with_bash() {
    let path = vagrant_file("provision.sh");
    let out = try_run("bash", &["-n", path.to_str().unwrap()]).expect("bash is installed");
    assert!(
        out.status.success(),
        "bash -n {}: {}",
        path.display(),
        describe(&out)
    );
}

#[test]
fn provision_script_passes_shellcheck_when_installed() {
    let path = vagrant_file("provision.sh");
    // -x follows sourced files; nothing is sourced today, so this checks the script alone.
    let Some(out) = try_run("shellcheck", &["-x", "-s", "bash", path.to_str().unwrap()]) else {
        return; // shellcheck is optional: bash -n above is the required check
    };
    assert!(
        out.status.success(),
        "shellcheck {}: {}",
        path.display(),
        describe(&out)
    );
}

#[test]
fn provision_script_is_strict_and_runs_bootstrap_build_and_demo() {
    let text = read("provision.sh");
    assert!(
        text.starts_with("#!/usr/bin/env bash\n") || text.starts_with("#!/bin/bash\n"),
        "provision.sh starts with a bash shebang"
    );
    assert!(
        text.contains("set -euo pipefail"),
        "provision.sh uses set -euo pipefail"
    );
    for needle in [
        "scripts/bootstrap.sh",
        "make build",
        "make demo",
        "rust-src",
        "llvm-22",
        "cgroup2fs",
        "install --help",
        "vagrant ssh -c 'cd /work/interceptor && sudo make demo'",
    ] {
        assert!(text.contains(needle), "provision.sh mentions {needle:?}");
    }
    // The script it runs must exist and be the one the Makefile uses.
    assert!(workspace_root().join("scripts/bootstrap.sh").is_file());
    // As commands (whole lines, not comments), in order: bootstrap, build, demo.
    let line_of = |cmd: &str| {
        text.lines()
            .position(|l| l.trim() == cmd)
            .unwrap_or_else(|| panic!("provision.sh runs `{cmd}` as a command of its own"))
    };
    let (bootstrap, build, demo) = (
        line_of("scripts/bootstrap.sh"),
        line_of("make build"),
        line_of("make demo"),
    );
    assert!(
        bootstrap < build && build < demo,
        "provision.sh runs bootstrap, then make build, then make demo"
    );
}

#[test]
fn vagrantfile_parses_and_has_the_expected_structure() {
    let path = vagrant_file("Vagrantfile");
    if let Some(out) = try_run("ruby", &["-c", path.to_str().unwrap()]) {
        assert!(
            out.status.success(),
            "ruby -c {}: {}",
            path.display(),
            describe(&out)
        );
    }
    let text = read("Vagrantfile");
    for needle in [
        "Vagrant.configure(\"2\") do |config|",
        "config.vm.box = \"debian/bookworm64\"",
        "config.vm.provision \"shell\", path: \"provision.sh\"",
        "privileged: true",
        "\"/work/interceptor\"",
        "type: \"rsync\"",
        "\"target/\"",
        "\".venv/\"",
        "provider \"virtualbox\"",
        "provider \"libvirt\"",
        "INTERCEPTOR_VM_CPUS",
        "INTERCEPTOR_VM_MEMORY",
    ] {
        assert!(text.contains(needle), "Vagrantfile contains {needle:?}");
    }
    // Without Ruby, at least the blocks must balance: every `do` has its `end`.
    let code: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let opened = code
        .iter()
        .filter(|l| l.ends_with(" do") || l.contains(" do |"))
        .count();
    let closed = code.iter().filter(|l| **l == "end").count();
    assert_eq!(opened, closed, "Vagrantfile: every do block is closed");
    assert!(
        !text.contains("private_network") && !text.contains("public_network"),
        "the VM needs no extra network: everything runs on the guest's loopback"
    );
    assert!(
        vagrant_file("provision.sh").is_file(),
        "the provisioning script the Vagrantfile names exists next to it"
    );
}

#[test]
fn vagrant_files_name_only_loopback_addresses() {
    for name in ["Vagrantfile", "provision.sh", "README.md"] {
        let bad = non_loopback_ipv4(&read(name));
        assert!(
            bad.is_empty(),
            "vagrant/{name} names addresses outside 127.0.0.0/8: {bad:?}"
        );
    }
}
