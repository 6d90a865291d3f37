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

#[test]
fn limits_have_defaults_and_refuse_what_would_refuse_everything() {
    let config = parse("").expect("defaults");
    assert_eq!(
        config.limits,
        crate::gateway::limits::LimitsConfig::default()
    );
    let config = parse(
        "[limits]\nstartup_timeout_secs = 2\nidle_timeout_secs = 30\nmax_sessions = 100\n\
         max_sessions_per_uid = 5\nmax_sessions_per_run = 7\n",
    )
    .expect("valid limits");
    assert_eq!(config.limits.startup_timeout_secs, 2);
    assert_eq!(config.limits.max_sessions, Some(100));
    assert_eq!(config.limits.max_sessions_per_run, 7);

    // Each zero is named with its file, line and column, and what it would do.
    for (key, line, column) in [
        ("startup_timeout_secs", 3, 24),
        ("idle_timeout_secs", 3, 21),
        ("max_sessions", 3, 16),
        ("max_sessions_per_uid", 3, 24),
        ("max_sessions_per_run", 3, 24),
    ] {
        let err = parse(&format!("[journal]\n[limits]\n{key} = 0\n")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "test.toml:{line}:{column}: {key} = 0 is out of range"
            )),
            "{text}"
        );
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    }
    let err = parse("[limits]\nidle_timeout_secs = 99999999\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("give 1 to 604800 (0 closes every session at once"),
        "{err}"
    );
    let err = parse("[limits]\nmax_sessions = 5000000\n").unwrap_err();
    assert!(err.to_string().starts_with("test.toml:2:16: "), "{err}");
    let err = parse("[limits]\nmax_session = 5\n").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn max_message_bytes_must_hold_a_start_up_packet() {
    let target = |value: &str| {
        parse(&format!(
            "[[target]]\nname = \"db\"\nprotocol = \"postgres\"\nmax_message_bytes = {value}\n"
        ))
    };
    for value in ["0", "9999"] {
        let err = target(value).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "test.toml:4:21: max_message_bytes = {value} is out of range: give at least \
                 10000"
            )),
            "{text}"
        );
    }
    let config = target("10000").expect("the smallest accepted");
    assert_eq!(
        config.targets().expect("targets")[0].max_message_bytes,
        10_000
    );
    let config = parse("[[target]]\nname = \"db\"\n").expect("default");
    assert_eq!(
        config.targets().expect("targets")[0].max_message_bytes,
        DEFAULT_MAX_MESSAGE_BYTES
    );
}

#[test]
fn a_zero_connect_timeout_is_refused_with_its_position() {
    let err = parse("[proxy]\nconnect_timeout_secs = 0\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("test.toml:2:24: connect_timeout_secs = 0 is out of range: give 1 to 300"),
        "{text}"
    );
}

#[test]
fn the_packaged_config_shows_the_limits_defaults() {
    // Uncommented, the `[limits]` block of the packaged config is exactly the defaults.
    let block: String = crate::install::DEFAULT_CONFIG
        .lines()
        .skip_while(|l| !l.starts_with("# [limits]"))
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    assert!(block.starts_with("[limits]"), "{block}");
    let config = parse(&block).expect("the commented block parses");
    assert_eq!(
        config.limits,
        crate::gateway::limits::LimitsConfig {
            max_sessions: Some(crate::gateway::limits::DEFAULT_MAX_SESSIONS),
            ..Default::default()
        }
    );
}

#[test]
fn a_protocol_not_built_yet_is_an_error_not_plain_tcp() {
    let err = parse(
        "[[target]]\nname = \"db\"\nprotocol = \"mysql\"\nintercept = [\"127.0.0.1:3306\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("test.toml:3:"), "{err}");
    assert!(err.contains("\"mysql\" is not built yet"), "{err}");
    let err = parse("[[target]]\nname = \"db\"\nprotocol = \"gopher\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown protocol \"gopher\""), "{err}");
    let ok = parse(
        "[[target]]\nname = \"db\"\nprotocol = \"postgres\"\nintercept = [\"127.0.0.1:5432\"]\n",
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn a_review_timeout_of_zero_is_refused_with_its_position() {
    let err = parse("[approvals]\ntimeout_secs = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:2:"), "{err}");
    assert!(parse("[approvals]\ntimeout_secs = 300\n").is_ok());
}
