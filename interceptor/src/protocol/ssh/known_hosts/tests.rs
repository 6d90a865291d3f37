use super::*;

const A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINsHl0iXo9hTSQBD5xWuUAzpctnSCCr2XQLQlWyP6pGJ";
const B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIGEEfs/0IXw7pKSWzpstEvzLqo44BPep6Ywl1V+UdAZA";
/// `[127.0.0.5]:2222` hashed by `ssh-keygen -H`, holding key A.
const HASHED: &str =
    "|1|OlorfQCP9RSJvlB3cuoRHeVnfbI=|KuY6nGhgFhrKad1ZRtjRIOMRZIg= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINsHl0iXo9hTSQBD5xWuUAzpctnSCCr2XQLQlWyP6pGJ";

fn key(b64: &str) -> PublicKey {
    russh::keys::parse_public_key_base64(b64).expect("key")
}

fn file(text: &str) -> KnownHosts {
    KnownHosts::parse(text).expect("parses")
}

#[test]
fn plain_hashed_and_port_names() {
    let kh = file(&format!(
        "# a comment\n\n127.0.0.7 ssh-ed25519 {A}\n{HASHED}\n[127.0.0.8]:2200\tssh-ed25519 {B} tab separated\n"
    ));
    assert_eq!(
        kh.check_key("127.0.0.7", &key(A)),
        Verdict::Trusted { line: 3 }
    );
    assert_eq!(
        kh.check_key("[127.0.0.5]:2222", &key(A)),
        Verdict::Trusted { line: 4 }
    );
    assert_eq!(
        kh.check_key("[127.0.0.8]:2200", &key(B)),
        Verdict::Trusted { line: 5 }
    );
    // Named, but with another key: changed. Not named: unknown.
    assert_eq!(
        kh.check_key("127.0.0.7", &key(B)),
        Verdict::Changed { line: 3 }
    );
    assert_eq!(
        kh.check_key("[127.0.0.5]:2222", &key(B)),
        Verdict::Changed { line: 4 }
    );
    assert_eq!(kh.check_key("127.0.0.9", &key(A)), Verdict::Unknown);
    // A port makes another name.
    assert_eq!(kh.check_key("[127.0.0.7]:2222", &key(A)), Verdict::Unknown);
}

#[test]
fn patterns_wildcards_negations_and_case() {
    let kh = file(&format!(
        "127.0.0.*,!127.0.0.13 ssh-ed25519 {A}\nDB?.Internal ssh-ed25519 {B}\n[127.0.1.*]:* ssh-ed25519 {B}\n"
    ));
    assert_eq!(
        kh.check_key("127.0.0.42", &key(A)),
        Verdict::Trusted { line: 1 }
    );
    assert_eq!(kh.check_key("127.0.0.13", &key(A)), Verdict::Unknown);
    assert_eq!(
        kh.check_key("db1.internal", &key(B)),
        Verdict::Trusted { line: 2 }
    );
    assert_eq!(kh.check_key("db12.internal", &key(B)), Verdict::Unknown);
    assert_eq!(
        kh.check_key("[127.0.1.3]:2222", &key(B)),
        Verdict::Trusted { line: 3 }
    );
    assert!(glob("a*b*c", "aXXbYYc") && glob("*", "") && !glob("a?", "a"));
    assert!(glob("*.internal", "x.y.internal") && !glob("*.internal", "internal"));
}

#[test]
fn revoked_keys_are_refused_everywhere_and_unreadable_revocations_fail_closed() {
    let kh = file(&format!(
        "127.0.0.7 ssh-ed25519 {A}\n@revoked 127.0.0.99 ssh-ed25519 {A}\n@cert-authority * ssh-ed25519 {B}\n"
    ));
    assert_eq!(
        kh.check_key("127.0.0.7", &key(A)),
        Verdict::Revoked { line: 2 }
    );
    assert!(kh.has_authority_for("[127.0.0.5]:2222"));
    // A CA key is not a host key.
    assert_eq!(
        kh.check_key("127.0.0.7", &key(B)),
        Verdict::Changed { line: 1 }
    );
    assert_eq!(
        KnownHosts::parse("@revoked * ssh-ed25519 not-base64\n").map(|_| ()),
        Err((1, "the key: ".to_owned() + &parse_error("not-base64")))
    );
    // Other unreadable lines are skipped, as ssh skips them.
    let kh = file(&format!(
        "127.0.0.7 ssh-ed25519 garbage\n127.0.0.7 ssh-ed25519 {A}\n@unknown-marker x y z\n"
    ));
    assert_eq!(
        kh.check_key("127.0.0.7", &key(A)),
        Verdict::Trusted { line: 2 }
    );
}

fn parse_error(b64: &str) -> String {
    russh::keys::parse_public_key_base64(b64)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}
