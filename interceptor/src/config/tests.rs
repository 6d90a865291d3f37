use super::*;
use crate::{
    capture::UdpPolicy,
    target::{Credentials, KubernetesCredentials},
};

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
    let login = creds.database().expect("a database login");
    assert_eq!(login.user, "app");
    assert_eq!(login.password.read().unwrap(), "s3cret");
    // The Debug form (used in logs) names the source, never the secret.
    assert!(!format!("{creds:?}").contains("s3cret"));

    let err = parse(&format!(
        "[[target]]\nname = \"db\"\nprotocol = \"postgres\"\n[target.credentials]\nuser = \"app\"\npassword_file = \"{}\"\npassword_env = \"X\"\n",
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
    assert_eq!(config.limits, crate::limits::LimitsConfig::default());
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
        crate::target::DEFAULT_MAX_MESSAGE_BYTES
    );
    let config = parse("[[target]]\nname = \"api\"\nprotocol = \"http\"\n").expect("default");
    assert_eq!(
        config.targets().expect("targets")[0].max_message_bytes,
        crate::target::DEFAULT_HTTP_MAX_MESSAGE_BYTES
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
fn worker_threads_default_to_one_and_are_bounded() {
    assert_eq!(parse("").expect("default").proxy.worker_threads, 1);
    let config = parse("[proxy]\nworker_threads = 0\n").expect("one per CPU");
    assert_eq!(config.proxy.worker_threads, 0);
    let err = parse("[proxy]\nworker_threads = 1000\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("worker_threads = 1000 is out of range: give 0 to 256"),
        "{err}"
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
        crate::limits::LimitsConfig {
            max_sessions: Some(crate::limits::DEFAULT_MAX_SESSIONS),
            ..Default::default()
        }
    );
}

#[test]
fn an_unknown_protocol_is_an_error_not_plain_tcp() {
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

/// One target of `protocol` with `credentials` (TOML lines), parsed.
fn target_with(protocol: &str, credentials: &str) -> Result<Config, ConfigError> {
    parse(&format!(
        "[[target]]\nname = \"t\"\nprotocol = \"{protocol}\"\nupstream = \"127.0.0.1:1\"\n\
         [target.credentials]\n{credentials}"
    ))
}

/// The error a target of `protocol` with these credentials gives.
fn credentials_error(protocol: &str, credentials: &str) -> String {
    target_with(protocol, credentials).unwrap_err().to_string()
}

#[test]
fn only_mysql_credentials_take_a_server_public_key_file() {
    let err = credentials_error(
        "postgres",
        "user = \"app\"\npassword_env = \"PW\"\nserver_public_key_file = \"/k.pem\"\n",
    );
    assert!(
        err.contains("\"server_public_key_file\" belongs to another protocol"),
        "{err}"
    );
    // (The password comes from PATH, a variable every test process has.)
    let config = target_with(
        "mysql",
        "user = \"app\"\npassword_env = \"PATH\"\nserver_public_key_file = \"/k.pem\"\n",
    )
    .expect("mysql credentials");
    let creds = config.targets().unwrap()[0].credentials.clone().unwrap();
    let login = creds.database().expect("database login");
    assert_eq!(
        login.server_public_key.as_deref(),
        Some(std::path::Path::new("/k.pem"))
    );
    // Start-up reads it: a missing file, or one that holds no RSA public key, stops it.
    let err = config.check_secrets().unwrap_err().to_string();
    assert!(err.contains("server_public_key_file: /k.pem"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("key.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let config = target_with(
        "mysql",
        &format!(
            "user = \"app\"\npassword_env = \"PATH\"\nserver_public_key_file = \"{}\"\n",
            bad.display()
        ),
    )
    .unwrap();
    let err = config.check_secrets().unwrap_err().to_string();
    assert!(err.contains("server_public_key_file"), "{err}");
    assert!(err.contains("unusable"), "{err}");
}

#[test]
fn database_credentials_take_a_user_and_one_password_source() {
    for protocol in ["postgres", "mysql"] {
        let err = credentials_error(protocol, "password_env = \"PW\"\n");
        assert!(err.contains("user is required"), "{err}");
        let err = credentials_error(protocol, "user = \"app\"\n");
        assert!(err.contains("one of password_file"), "{err}");
        let err = credentials_error(
            protocol,
            "user = \"app\"\npassword_env = \"PW\"\npassword_credential = \"pw\"\n",
        );
        assert!(err.contains("only one of password_file"), "{err}");
    }
    let config = target_with(
        "postgres",
        "user = \"app\"\npassword_env = \"PW\"\ndatabase = \"d\"\n",
    )
    .expect("postgres credentials");
    let creds = config.targets().unwrap()[0].credentials.clone().unwrap();
    let login = creds.database().expect("database login");
    assert_eq!(login.password, SecretSource::Env("PW".to_owned()));
    assert_eq!(login.database.as_deref(), Some("d"));
    // MySQL takes the same credentials, and needs them: the gateway always logs in itself.
    let config =
        target_with("mysql", "user = \"app\"\npassword_env = \"PW\"\n").expect("mysql credentials");
    let creds = config.targets().unwrap()[0].credentials.clone().unwrap();
    assert_eq!(creds.database().expect("database login").user, "app");
    let err =
        parse("[[target]]\nname = \"db\"\nprotocol = \"mysql\"\nupstream = \"127.0.0.1:3306\"\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("a mysql target needs [target.credentials]"),
        "{err}"
    );
}

#[test]
fn http_credentials_take_a_header_and_one_value_source() {
    for protocol in ["http", "https"] {
        let err = credentials_error(protocol, "value_env = \"TOKEN\"\n");
        assert!(err.contains("header is required"), "{err}");
        let err = credentials_error(protocol, "header = \"Authorization\"\n");
        assert!(
            err.contains("one of value_file, value_env or value_credential"),
            "{err}"
        );
        let err = credentials_error(
            protocol,
            "header = \"Authorization\"\nvalue_env = \"T\"\nvalue_file = \"/t\"\n",
        );
        assert!(err.contains("only one of value_file"), "{err}");
        let config = target_with(protocol, "header = \"Authorization\"\nvalue_env = \"T\"\n")
            .expect("http credentials");
        assert_eq!(
            config.targets().expect("targets")[0].credentials,
            Some(Credentials::Http {
                header: "Authorization".to_owned(),
                value: SecretSource::Env("T".to_owned()),
            })
        );
    }
}

#[test]
fn kubernetes_credentials_are_a_token_or_a_client_certificate() {
    let err = credentials_error("kubernetes", "token_file = \"/t\"\ntoken_env = \"T\"\n");
    assert!(err.contains("only one of token_file"), "{err}");
    let err = credentials_error("kubernetes", "client_cert_file = \"/c\"\n");
    assert!(err.contains("go together"), "{err}");
    let err = credentials_error(
        "kubernetes",
        "token_env = \"T\"\nclient_cert_file = \"/c\"\nclient_key_file = \"/k\"\n",
    );
    assert!(err.contains("not both"), "{err}");
    let err = credentials_error("kubernetes", "");
    assert!(err.contains("needs a token"), "{err}");
    for good in [
        "token_env = \"T\"\n",
        "client_cert_file = \"/c\"\nclient_key_file = \"/k\"\n",
    ] {
        let config = target_with("kubernetes", good).expect("kubernetes credentials");
        let target = &config.targets().expect("a kubernetes target")[0];
        assert!(
            matches!(target.credentials, Some(Credentials::Kubernetes(_))),
            "{:?}",
            target.credentials
        );
    }
    // What it validates to, through the validation itself.
    let token = CredentialsConfig {
        token_env: Some("T".to_owned()),
        ..CredentialsConfig::default()
    };
    assert_eq!(
        token.validate(Protocol::Kubernetes),
        Ok(Credentials::Kubernetes(KubernetesCredentials::Token(
            SecretSource::Env("T".to_owned())
        )))
    );
}

#[test]
fn ssh_credentials_take_a_user_a_key_and_known_hosts() {
    let err = credentials_error("ssh", "user = \"git\"\nknown_hosts = \"/k\"\n");
    assert!(err.contains("one of key_file or key_credential"), "{err}");
    let err = credentials_error("ssh", "user = \"git\"\nkey_file = \"/id\"\n");
    assert!(err.contains("known_hosts is required"), "{err}");
    let err = credentials_error(
        "ssh",
        "user = \"git\"\nkey_file = \"/id\"\nkey_credential = \"id\"\nknown_hosts = \"/k\"\n",
    );
    assert!(
        err.contains("only one of key_file, key_credential"),
        "{err}"
    );
    let ok = CredentialsConfig {
        user: Some("git".to_owned()),
        key_file: Some("/id".into()),
        known_hosts: Some("/k".into()),
        ..CredentialsConfig::default()
    };
    let Ok(Credentials::Ssh {
        user, known_hosts, ..
    }) = ok.validate(Protocol::Ssh)
    else {
        panic!("ssh credentials");
    };
    assert_eq!((user.as_str(), known_hosts), ("git", PathBuf::from("/k")));
    // SSH is built: a target with its credentials loads.
    let config = target_with(
        "ssh",
        "user = \"git\"\nkey_file = \"/id\"\nknown_hosts = \"/k\"\n",
    )
    .expect("an ssh target");
    let targets = config.targets().expect("ssh targets");
    assert_eq!(targets[0].protocol, Protocol::Ssh);
    assert!(matches!(
        targets[0].credentials,
        Some(Credentials::Ssh { .. })
    ));
}

#[test]
fn a_field_of_another_protocol_is_an_error_on_its_line() {
    let err = credentials_error(
        "postgres",
        "user = \"app\"\npassword_env = \"PW\"\nheader = \"Authorization\"\n",
    );
    assert!(err.starts_with("test.toml:8:"), "{err}");
    assert!(
        err.contains("\"header\" belongs to another protocol"),
        "{err}"
    );
    assert!(
        err.contains("a postgres target takes user, password_file"),
        "{err}"
    );
    let err = credentials_error("ssh", "user = \"git\"\ntoken_env = \"T\"\n");
    assert!(err.starts_with("test.toml:7:"), "{err}");
    assert!(err.contains("\"token_env\""), "{err}");
    let err = credentials_error("tcp", "user = \"app\"\n");
    assert!(err.contains("a tcp target takes no credentials"), "{err}");
    // A key unknown to every protocol is a parse error with line and column.
    let err = credentials_error("postgres", "user = \"app\"\npasswd = \"x\"\n");
    assert!(err.starts_with("test.toml:7:1:"), "{err}");
}

#[test]
fn every_protocol_has_a_name() {
    for protocol in Protocol::ALL {
        assert_eq!(
            Protocol::try_from(protocol.as_str().to_owned()),
            Ok(protocol)
        );
    }
}

#[test]
fn every_secret_is_read_at_start_up_and_known_hosts_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    std::fs::write(&key, "private\n").unwrap();
    let known = dir.path().join("known_hosts");
    let ssh = CredentialsConfig {
        user: Some("git".to_owned()),
        key_file: Some(key.clone()),
        known_hosts: Some(known.clone()),
        ..CredentialsConfig::default()
    }
    .validate(Protocol::Ssh)
    .expect("ssh credentials");
    assert_eq!(ssh.secrets()[0].1.read().unwrap(), "private");
    assert!(!format!("{ssh:?}").contains("private"));
    // Postgres through check_secrets: a missing value names its field.
    let config = target_with(
        "postgres",
        "user = \"app\"\npassword_env = \"INTERCEPTOR_TEST_UNSET\"\n",
    )
    .expect("config");
    let err = config.check_secrets().unwrap_err().to_string();
    assert!(
        err.contains("credentials: password: environment variable"),
        "{err}"
    );
}
