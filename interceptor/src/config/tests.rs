use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn empty_file_gives_embedded_defaults() {
    let config = parse("").expect("empty config");
    assert_eq!(
        config.journal.path,
        PathBuf::from("/var/lib/interceptor/journal.db")
    );
    assert_eq!(config.capture.udp, UdpPolicy::DnsOnly);
    assert_eq!(
        config.capture.pin_dir,
        PathBuf::from("/sys/fs/bpf/interceptor")
    );
    assert_eq!(Config::default().capture.pin_dir, config.capture.pin_dir);
    assert!(config.targets.is_empty());
}

#[test]
fn syntax_error_names_line_and_column() {
    let err = parse("[journal]\npath = \"/tmp/j.db\"\nbogus = = 1\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml:3:"), "{text}");
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let err = parse("[proxy]\nport = 1\nprot = 2\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml:3:"), "{text}");
    assert!(text.contains("prot"), "{text}");
}

#[test]
fn targets_parse_and_match() {
    let config = parse(
        "[[target]]\nname = \"db\"\nintercept = [\"127.0.0.2:5432\", \"*:6379\"]\nupstream = \"127.0.0.1:5433\"\n",
    )
    .expect("config");
    let targets = config.targets().expect("targets");
    assert_eq!(targets[0].upstream, Some("127.0.0.1:5433".parse().unwrap()));
    assert!(targets[0].intercept[0].matches("127.0.0.2:5432".parse().unwrap()));
    assert!(targets[0].intercept[0].matches("[::ffff:127.0.0.2]:5432".parse().unwrap()));
    assert!(!targets[0].intercept[0].matches("127.0.0.3:5432".parse().unwrap()));
    assert!(targets[0].intercept[1].matches("[::1]:6379".parse().unwrap()));
}

#[test]
fn bad_intercept_pattern_is_rejected() {
    let err = parse("[[target]]\nname = \"db\"\nintercept = [\"localhost\"]\n").unwrap_err();
    assert!(err.to_string().contains("localhost"), "{err}");
}

#[test]
fn duplicate_target_names_are_rejected() {
    let err = parse("[[target]]\nname = \"a\"\n[[target]]\nname = \"a\"\n").unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn a_bad_intercept_names_its_line() {
    let err = parse("[journal]\npath = \"/tmp/j\"\n[[target]]\nname = \"db\"\nintercept = [\"not-an-address\"]\n")
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml:5: "), "{text}");
    assert!(text.contains("not-an-address"), "{text}");
}

#[test]
fn a_target_routes_unix_socket_paths_to_its_upstream() {
    let config = parse(
        "[[target]]\nname = \"pg\"\nprotocol = \"postgres\"\n\
         intercept = [\"127.0.0.2:5432\", \"unix:/var/run/postgresql/.s.PGSQL.5432\"]\n\
         upstream = \"127.0.0.1:5432\"\n",
    )
    .expect("valid");
    let targets = config.targets().expect("targets");
    assert_eq!(
        targets[0].unix_routes,
        ["/var/run/postgresql/.s.PGSQL.5432"]
    );
    assert_eq!(
        targets[0].intercept.len(),
        1,
        "the TCP pattern stays a pattern"
    );
}

#[test]
fn unix_routes_are_checked_with_their_line() {
    let route = |intercept: &str, upstream: &str| {
        parse(&format!(
            "[[target]]\nname = \"pg\"\nintercept = [\"{intercept}\"]\n{upstream}"
        ))
        .expect_err(intercept)
        .to_string()
    };
    // Without an upstream there is nowhere to connect: the agent dialed a file.
    let text = route("unix:/run/pg/.s.PGSQL.5432", "");
    assert!(text.starts_with("test.toml:3: "), "{text}");
    assert!(text.contains("needs an upstream"), "{text}");
    let up = "upstream = \"127.0.0.1:5432\"\n";
    assert!(route("unix:@pg", up).contains("abstract"), "abstract names");
    assert!(
        route("unix:run/pg.sock", up).contains("absolute"),
        "relative"
    );
    let long = format!("unix:/{}", "x".repeat(200));
    assert!(route(&long, up).contains("longer"), "too long");
    // One path, one target.
    let err = parse(
        "[[target]]\nname = \"a\"\nintercept = [\"unix:/run/x.sock\"]\nupstream = \"127.0.0.1:1\"\n\
         [[target]]\nname = \"b\"\nintercept = [\"unix:/run/x.sock\"]\nupstream = \"127.0.0.1:2\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("another target"), "{err}");
    // `capture.intercept` is for TCP destinations.
    let err = parse("[capture]\nintercept = [\"unix:/run/x.sock\"]\n").unwrap_err();
    assert!(err.to_string().contains("[[target]]"), "{err}");
}

#[test]
fn capture_unix_entries_are_checked_with_their_line() {
    let config = parse(
        "[capture.unix]\ndefault = \"deny\"\nallow = [\"/run/user/1000/bus\"]\ndeny = [\"redis*\"]\n",
    )
    .expect("valid");
    assert!(config.capture.unix.rules().is_ok());
    let err = parse("[capture.unix]\ndeny = [\"/run/a.sock\", \"sub/dir.sock\"]\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml:2: "), "{text}");
    assert!(text.contains("capture.unix.deny"), "{text}");
    let err = parse("[capture.unix]\nmode = \"strict\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn unknown_protocol_is_rejected_with_its_line() {
    let err = parse("[[target]]\nname = \"db\"\nprotocol = \"mysqlx\"\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml:3:"), "{text}");
    assert!(text.contains("mysqlx"), "{text}");
}

#[test]
fn a_missing_password_file_is_refused_at_start_up() {
    let config = parse(
        "[[target]]\nname = \"db\"\nprotocol = \"postgres\"\n[target.credentials]\nuser = \"app\"\npassword_file = \"/nonexistent/secret\"\n",
    )
    .expect("parses: secrets are only read by exec and run");
    let err = config.check_secrets().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("credentials"), "{text}");
    assert!(text.contains("/nonexistent/secret"), "{text}");
    assert!(text.starts_with("test.toml:6: "), "{text}");
}

#[test]
fn secrets_come_from_exactly_one_source_and_lose_trailing_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let config = parse(&format!(
        "[[target]]\nname = \"db\"\nprotocol = \"postgres\"\n[target.credentials]\nuser = \"app\"\npassword_file = \"{}\"\n",
        secret.display()
    ))
    .expect("config");
    let creds = config.targets().unwrap()[0].credentials.clone().unwrap();
    assert_eq!(creds.password.read().unwrap(), "s3cret");
    // The Debug form (used in logs) names the source, never the secret.
    assert!(!format!("{creds:?}").contains("s3cret"));

    let err = parse(&format!(
        "[[target]]\nname = \"db\"\n[target.credentials]\nuser = \"app\"\npassword_file = \"{}\"\npassword_env = \"X\"\n",
        secret.display()
    ))
    .unwrap_err();
    assert!(err.to_string().contains("only one"), "{err}");
}

#[test]
fn embedded_defaults_understand_postgres_on_5432() {
    let targets = Config::embedded().targets().expect("targets");
    assert_eq!(targets[0].protocol, Protocol::Postgres);
    assert!(targets[0].intercept[0].matches("127.0.0.9:5432".parse().unwrap()));
    assert!(targets[0].credentials.is_none());
}

#[test]
fn two_targets_may_not_claim_one_destination() {
    let err = parse(
        "[[target]]\nname = \"a\"\nintercept = [\"*:5432\"]\n\
         [[target]]\nname = \"b\"\nintercept = [\"127.0.0.2:5432\", \"*:5432\"]\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"a\" and \"b\" both intercept *:5432"),
        "{text}"
    );
    let err = parse(
        "[[target]]\nname = \"a\"\nintercept = [\"127.0.0.2:5432\"]\n\
         [[target]]\nname = \"b\"\nintercept = [\"[::ffff:127.0.0.2]:5432\"]\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("127.0.0.2:5432"), "{err}");
}

#[test]
fn the_most_specific_target_wins_whatever_the_order() {
    // The installed catch-all first, a target for one address added after it.
    let config = parse(
        "[[target]]\nname = \"catch-all\"\nintercept = [\"*:5432\"]\n\
         [[target]]\nname = \"orders\"\nintercept = [\"127.0.0.2:5432\"]\n\
         [[target]]\nname = \"billing\"\nintercept = [\"127.0.0.9:6000\"]\nupstream = \"127.0.0.4:5432\"\n",
    )
    .expect("config");
    let targets = config.targets().expect("targets");
    let route = |dst: &str| {
        crate::gateway::route_in(&targets, dst.parse().expect("address")).map(|t| t.name.clone())
    };
    assert_eq!(route("127.0.0.2:5432").as_deref(), Some("orders"));
    assert_eq!(route("[::ffff:127.0.0.2]:5432").as_deref(), Some("orders"));
    // A target's real address is that target, ahead of any catch-all.
    assert_eq!(route("127.0.0.4:5432").as_deref(), Some("billing"));
    assert_eq!(route("127.0.0.7:5432").as_deref(), Some("catch-all"));
    assert_eq!(route("127.0.0.7:5433"), None);
}
