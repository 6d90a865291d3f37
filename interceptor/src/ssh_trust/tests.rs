use std::os::unix::fs::PermissionsExt as _;

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_are_created_once_with_private_files_0600_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = SshTrust::load_or_create(dir.path()).expect("create");
    let files = [
        CA_KEY_FILE,
        "ssh_ca_ed25519_key.pub",
        HOST_KEY_FILE,
        "ssh_host_ed25519_key.pub",
        "ssh_host_ed25519_key-cert.pub",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.path().join(f)).unwrap())
        .collect();
    assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.path().join(HOST_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.path().join("ssh_ca_ed25519_key.pub")), 0o644);
    assert_eq!(
        mode(&dir.path().join("ssh_host_ed25519_key-cert.pub")),
        0o644
    );

    let again = SshTrust::load_or_create(dir.path()).expect("load");
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.path().join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "a second load rewrites nothing");
    assert_eq!(first.ca, again.ca);
    assert_eq!(
        first.host_key.public_key(),
        again.host_key.public_key(),
        "the host key is kept"
    );
    assert_eq!(first.host_cert, again.host_cert, "the certificate is kept");
}

#[test]
fn the_host_certificate_is_a_ca_signed_host_certificate_for_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let trust = SshTrust::load_or_create(dir.path()).expect("create");
    let cert = &trust.host_cert;
    assert_eq!(cert.cert_type(), CertType::Host);
    assert!(
        cert.valid_principals().is_empty(),
        "no principals: any host name"
    );
    assert_eq!(cert.public_key(), trust.host_key.public_key().key_data());
    assert_eq!(cert.valid_before(), u64::MAX, "OpenSSH's forever");
    cert.validate([&trust.ca.fingerprint(HashAlg::Sha256)])
        .expect("signed by the CA and valid now");
    assert_eq!(trust.ca.algorithm(), Algorithm::Ed25519);
    assert_eq!(trust.host_key.algorithm(), Algorithm::Ed25519);
}

#[test]
fn a_new_ca_reissues_the_certificate_and_keeps_the_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = SshTrust::load_or_create(dir.path()).expect("create");
    // An operator rotates the CA by deleting it.
    std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
    let second = SshTrust::load_or_create(dir.path()).expect("rotate");
    assert_ne!(first.ca, second.ca);
    assert_eq!(first.host_key.public_key(), second.host_key.public_key());
    second
        .host_cert
        .validate([&second.ca.fingerprint(HashAlg::Sha256)])
        .expect("the certificate follows the new CA");
    let on_disk = std::fs::read_to_string(cert_path(dir.path())).unwrap();
    assert_eq!(
        Certificate::from_openssh(on_disk.trim()).unwrap(),
        second.host_cert
    );
    let public = SshPublicKeys::read_or_create(dir.path()).unwrap();
    assert_eq!(public.ca, second.ca, "the .pub follows the new key");
}

#[test]
fn a_damaged_key_is_an_error_and_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    SshTrust::load_or_create(dir.path()).expect("create");
    std::fs::write(dir.path().join(HOST_KEY_FILE), "not a key").unwrap();
    let error = SshTrust::load_or_create(dir.path())
        .err()
        .expect("a damaged key fails");
    assert!(matches!(error, SshTrustError::Invalid { .. }), "{error}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(HOST_KEY_FILE)).unwrap(),
        "not a key"
    );
}

#[test]
fn known_hosts_lines_name_the_ca_and_the_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let public = SshPublicKeys::read_or_create(dir.path()).expect("created on first need");
    let trust = SshTrust::load_or_create(dir.path()).unwrap();
    let ca = trust.ca.to_openssh().unwrap();
    let host = trust.host_key.public_key().to_openssh().unwrap();
    assert!(ca.starts_with("ssh-ed25519 AAAA") && ca.ends_with(" interceptor-ssh-ca"));

    let both = public.known_hosts("*", KnownHostsLines::Both).unwrap();
    assert_eq!(both, format!("@cert-authority * {ca}\n* {host}\n"));
    assert_eq!(
        public
            .known_hosts("db.local,[127.0.0.5]:2222", KnownHostsLines::HostKey)
            .unwrap(),
        format!("db.local,[127.0.0.5]:2222 {host}\n")
    );
    assert_eq!(
        public
            .known_hosts("*", KnownHostsLines::CertAuthority)
            .unwrap(),
        format!("@cert-authority * {ca}\n")
    );
    for bad in ["", "a b", "#x", "@revoked", "a\nb"] {
        assert!(
            matches!(
                public.known_hosts(bad, KnownHostsLines::Both),
                Err(SshTrustError::Pattern(_))
            ),
            "{bad:?}"
        );
    }
}
