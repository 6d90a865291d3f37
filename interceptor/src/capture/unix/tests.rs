use super::*;
use interceptor_common::basename_hash;

fn config(toml_text: &str) -> UnixCaptureConfig {
    toml::from_str(toml_text).expect("config")
}

fn path(text: &str) -> UnixPath {
    match parse_entry(text) {
        Ok(Entry::Path(p)) => p,
        _ => panic!("{text:?} is not a path entry"),
    }
}

#[test]
fn the_default_denies_database_and_runtime_sockets_by_file_name() {
    let rules = UnixCaptureConfig::default().rules().expect("rules");
    assert_eq!(rules.default_verdict, UNIX_ALLOW);
    assert!(rules.paths.is_empty());
    assert_eq!(rules.basenames.len(), BUILTIN_DENIED_BASENAMES.len());
    let pg = BasenameKey {
        hash: basename_hash(b".s.PGSQL."),
        len: 9,
        prefix: 1,
    };
    assert!(rules.basenames.contains(&pg));
    let docker = BasenameKey {
        hash: basename_hash(b"docker.sock"),
        len: 11,
        prefix: 0,
    };
    assert!(rules.basenames.contains(&docker));
    // The two prefix patterns have two lengths.
    let mut lens: Vec<u32> = rules
        .prefix_lens
        .iter()
        .copied()
        .filter(|&l| l != 0)
        .collect();
    lens.sort_unstable();
    assert_eq!(lens, [8, 9]);
}

#[test]
fn entries_are_paths_abstract_names_or_file_names() {
    let p = path("/run/postgresql/.s.PGSQL.5432");
    assert_eq!(p.len, 29);
    assert_eq!(&p.path[..29], b"/run/postgresql/.s.PGSQL.5432");
    assert!(p.path[29..].iter().all(|&b| b == 0));
    assert_eq!(display_path(&p), "/run/postgresql/.s.PGSQL.5432");

    let a = path("@containerd-shim/x.sock");
    assert_eq!(a.len, 23);
    assert_eq!(a.path[0], 0);
    assert_eq!(display_path(&a), "@containerd-shim/x.sock");

    for bad in [
        "relative/path.sock",
        "*",
        "a*b",
        "",
        "so?ck",
        &format!("/{}", "x".repeat(108)),
    ] {
        assert!(parse_entry(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn allow_wins_over_deny_and_takes_only_single_sockets() {
    let rules = config(
        r#"
        default = "deny"
        builtin_deny = false
        deny = ["/run/a.sock", "redis*"]
        allow = ["/run/a.sock", "@bus"]
        "#,
    )
    .rules()
    .expect("rules");
    assert_eq!(rules.default_verdict, UNIX_DENY);
    assert_eq!(
        rules.paths,
        [
            (path("/run/a.sock"), UNIX_ALLOW),
            (path("@bus"), UNIX_ALLOW)
        ]
    );
    assert_eq!(rules.basenames.len(), 1);
    assert_eq!(rules.prefix_lens[0], 5);

    let err = config(r#"allow = ["docker.sock"]"#).rules().unwrap_err();
    assert!(err.contains("capture.unix.allow"), "{err}");
}

#[test]
fn too_many_prefix_lengths_are_refused() {
    let deny: Vec<String> = (1..=9).map(|n| format!("\"{}*\"", "p".repeat(n))).collect();
    let err = config(&format!(
        "builtin_deny = false\ndeny = [{}]",
        deny.join(", ")
    ))
    .rules()
    .unwrap_err();
    assert!(err.contains("at most 8 different lengths"), "{err}");
}

#[test]
fn kfunc_slots_become_kfunc_calls_and_nothing_else_changes() {
    let call = |imm: i32| bpf_insn {
        code: BPF_JMP | BPF_CALL,
        imm,
        ..unsafe { std::mem::zeroed() }
    };
    let mut insns = [call(kfunc_slots::CAST_TO_KERN_CTX as i32), call(1)];
    patch_kfunc_calls(&mut insns, &[(kfunc_slots::CAST_TO_KERN_CTX, 4242)]).expect("patch");
    assert_eq!(insns[0].src_reg(), BPF_PSEUDO_KFUNC_CALL);
    assert_eq!(insns[0].imm, 4242);
    assert_eq!(insns[1].src_reg(), 0);
    assert_eq!(insns[1].imm, 1);
}
