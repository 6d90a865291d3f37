use std::os::unix::fs::MetadataExt as _;

use super::*;

fn me() -> (u32, u32) {
    (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    )
}

fn env_of<'a>(trust: &'a RunTrust, var: &str) -> Option<&'a OsString> {
    trust
        .env
        .iter()
        .find(|(v, _)| *v == var)
        .map(|(_, value)| value)
}

/// Prepares run `run` with `<dir>/state` as the state directory and `<dir>/run` as the
/// runtime directory.
fn prepare(dir: &Path, tls: bool, ssh: bool, run: &str) -> RunTrust {
    let options = TrustOptions { tls, ssh };
    RunTrust::prepare(options, &dir.join("state"), &dir.join("run"), run, me()).expect("prepare")
}

#[test]
fn nothing_asked_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let trust = prepare(dir.path(), false, false, "run-1");
    assert!(trust.env.is_empty());
    assert!(!dir.path().join("run").exists());
    assert!(!dir.path().join("state").exists(), "no key created either");
}

#[test]
fn trust_tls_bundles_the_system_cas_and_the_local_ca_for_the_agent_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let trust = prepare(dir.path(), true, false, "run-1");
    let bundle = dir.path().join("run/trust/run-1/ca-bundle.pem");
    for var in TLS_VARIABLES {
        assert_eq!(
            env_of(&trust, var),
            Some(&bundle.clone().into_os_string()),
            "{var}"
        );
    }
    let meta = std::fs::metadata(&bundle).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o400);
    assert_eq!((meta.uid(), meta.gid()), me());
    let text = std::fs::read_to_string(&bundle).unwrap();
    let local_ca = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    assert!(text.ends_with(&local_ca), "the local CA is in the bundle");
    let in_bundle = pem::parse_many(&text).unwrap().len();
    let mut system = rustls_native_certs::load_native_certs().certs;
    system.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
    system.dedup();
    assert!(!system.is_empty(), "this host has a CA bundle");
    assert_eq!(
        in_bundle,
        system.len() + 1,
        "every system CA once, and ours"
    );

    drop(trust);
    assert!(
        !dir.path().join("run/trust/run-1").exists(),
        "removed when the run ends"
    );
}

#[test]
fn trust_ssh_writes_known_hosts_and_an_ssh_wrapper_that_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let trust = prepare(dir.path(), false, true, "run-2");
    let run_dir = dir.path().join("run/trust/run-2");
    let known_hosts = run_dir.join("known_hosts");
    assert_eq!(
        env_of(&trust, "INTERCEPTOR_KNOWN_HOSTS"),
        Some(&known_hosts.clone().into_os_string())
    );
    let keys = SshPublicKeys::read_or_create(&state).unwrap();
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        keys.known_hosts("*", KnownHostsLines::Both).unwrap()
    );
    assert_eq!(
        env_of(&trust, "INTERCEPTOR_SSH_HOST_KEY"),
        Some(&keys.host.to_openssh().unwrap().into())
    );
    assert_eq!(
        std::fs::metadata(&known_hosts).unwrap().mode() & 0o777,
        0o400
    );
    assert_eq!(std::fs::metadata(&run_dir).unwrap().mode() & 0o777, 0o711);

    // The wrapper, run as the command would find it, hands ssh the file.
    let wrapper = run_dir.join("bin/ssh");
    assert_eq!(
        trust.path_first.as_deref(),
        Some(run_dir.join("bin").as_path())
    );
    assert_eq!(std::fs::metadata(&wrapper).unwrap().mode() & 0o777, 0o500);
    let out = std::process::Command::new(&wrapper)
        .args(["-G", "127.0.0.5"])
        .output()
        .expect("the wrapper runs");
    assert!(out.status.success(), "{out:?}");
    let config = String::from_utf8_lossy(&out.stdout);
    let line = config
        .lines()
        .find(|l| l.starts_with("userknownhostsfile "))
        .expect("ssh -G names its known_hosts files");
    assert!(line.contains(&known_hosts.display().to_string()), "{line}");
    assert!(
        line.contains("/.ssh/known_hosts"),
        "the agent's own stays: {line}"
    );
}

#[test]
fn sh_quote_survives_quotes() {
    let quoted = sh_quote(std::ffi::OsStr::new("/run/it's here"));
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s {quoted}")])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"/run/it's here");
}
