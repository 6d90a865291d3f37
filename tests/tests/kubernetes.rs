//! The Kubernetes gateway (`protocol = "kubernetes"`) against a stand-in API server
//! (tests/fixtures/kube_standin.py: HTTPS on loopback, a bearer token or a client certificate,
//! discovery, pods, secrets, namespaces, deployments, exec, attach and port-forward over
//! WebSocket and over SPDY/3.1, plain or tunnelled in WebSocket) with real clients under
//! `interceptor exec`: kubectl with the kubeconfig `interceptor kubeconfig` writes, and the
//! official Python `kubernetes` client. Each request is read as the API server reads it,
//! judged, journaled and, when held, approved before the stand-in sees it; the login is the
//! gateway's, never the agent's; Secret data is masked; exec is held, then recorded.

use std::{
    fs,
    io::{Read, Write},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use interceptor_tests::*;

const TOKEN: &str = "k8s-t0ken-standin-9876";
const SECRET_VALUE: &str = "hunter2-s3cret-value";
/// Where the stand-in listens; agents dial [`DIALED`] on the same port.
const UPSTREAM_HOST: &str = "127.0.0.5";
const DIALED: &str = "127.0.0.4";
/// The subject CN of the client certificate the gateway logs in with in
/// [`Login::ClientCertificate`].
const CLIENT_CN: &str = "interceptor-gateway";
/// The settings that send kubectl back to SPDY (1.32 speaks WebSocket by default for both).
const EXEC_OVER_SPDY: &str = "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false";
const PORT_FORWARD_OVER_SPDY: &str = "KUBECTL_PORT_FORWARD_WEBSOCKETS=false";

struct Standin {
    _process: Spawned,
    port: u16,
    log: PathBuf,
}

impl Standin {
    /// A CA and a server certificate for [`UPSTREAM_HOST`] (openssl), then the stand-in; given
    /// `client_ca`, it also lets in a client certificate chained to that CA.
    fn start(
        dir: &std::path::Path,
        token_file: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> Standin {
        let script = format!(
            "set -e; cd {dir}; \
             openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -keyout ca.key -out upstream-ca.pem -days 2 -subj /CN=standin-ca 2>/dev/null; \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -keyout server.key -out server.csr -subj /CN=standin 2>/dev/null; \
             printf 'subjectAltName=IP:{UPSTREAM_HOST}\\nbasicConstraints=CA:FALSE\\n\
extendedKeyUsage=serverAuth\\n' > ext.cnf; \
             openssl x509 -req -in server.csr -CA upstream-ca.pem -CAkey ca.key \
               -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null",
            dir = dir.display()
        );
        let mut sh = Command::new("sh");
        sh.args(["-c", &script]);
        let out = run_command(sh, Duration::from_secs(30));
        assert!(out.success(), "openssl: {}", out.describe());
        let port = free_port();
        let log = dir.join("standin.jsonl");
        fs::write(&log, "").expect("stand-in log");
        let mut cmd = Command::new(venv_python());
        cmd.arg(workspace_root().join("tests/fixtures/kube_standin.py"))
            .args([UPSTREAM_HOST, &port.to_string()])
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .arg(token_file)
            .arg(&log)
            .args(client_ca)
            .current_dir("/");
        Standin {
            _process: spawn_ready(cmd, "kube-standin"),
            port,
            log,
        }
    }

    /// Every request the stand-in received.
    fn received(&self) -> Vec<Value> {
        json_lines(&self.log)
    }

    /// Every request whose path ends with `suffix` (`/exec`, `/portforward`).
    fn received_ending(&self, suffix: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r["path"].as_str().unwrap_or_default().ends_with(suffix))
            .collect()
    }

    fn received_with(&self, method: &str, path: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r["method"] == json!(method) && r["path"] == json!(path))
            .collect()
    }
}

struct Cluster {
    cfg: TempConfig,
    standin: Standin,
    /// The kubeconfig `interceptor kubeconfig` printed, readable by the agent.
    kubeconfig: PathBuf,
    /// kubectl's cache, writable by the agent.
    cache: PathBuf,
}

/// How the gateway logs in to the stand-in.
enum Login {
    /// [`TOKEN`], from a root-only file.
    Token,
    /// A client certificate ([`CLIENT_CN`]) and its key, chained to a CA the stand-in trusts;
    /// the stand-in still knows the token, the gateway does not send it.
    ClientCertificate,
}

/// A client CA (`client-ca.pem`), and a client certificate for [`CLIENT_CN`] it signed
/// (`client.pem`, its key `client.key` root-only), in `dir`.
fn client_certificate(dir: &std::path::Path) {
    let script = format!(
        "set -e; cd {dir}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
           -keyout client-ca.key -out client-ca.pem -days 2 -subj /CN=standin-client-ca \
           2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
           -keyout client.key -out client.csr -subj /CN={CLIENT_CN} 2>/dev/null; \
         printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client-ext.cnf; \
         openssl x509 -req -in client.csr -CA client-ca.pem -CAkey client-ca.key \
           -CAcreateserial -out client.pem -days 2 -extfile client-ext.cnf 2>/dev/null; \
         chmod 600 client.key client-ca.key",
        dir = dir.display()
    );
    let mut sh = Command::new("sh");
    sh.args(["-c", &script]);
    let out = run_command(sh, Duration::from_secs(30));
    assert!(out.success(), "openssl: {}", out.describe());
}

/// The default policy (reviews time out after 60 s), one kubernetes target for the stand-in
/// with the token from a root-only file, the upstream verified against the stand-in's CA.
fn setup() -> Cluster {
    setup_with(Login::Token)
}

/// [`setup`], the gateway logging in as `login` says.
fn setup_with(login: Login) -> Cluster {
    let cfg = TempConfig::new("");
    let token_file = write_secret(&cfg, "token", &format!("{TOKEN}\n"));
    let client_ca = match login {
        Login::Token => None,
        Login::ClientCertificate => {
            client_certificate(cfg.dir());
            Some(cfg.dir().join("client-ca.pem"))
        }
    };
    let standin = Standin::start(cfg.dir(), &token_file, client_ca.as_deref());
    let credentials = match login {
        Login::Token => format!("token_file = \"{}\"\n", token_file.display()),
        Login::ClientCertificate => format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            cfg.dir().join("client.pem").display(),
            cfg.dir().join("client.key").display()
        ),
    };
    let default =
        fs::read_to_string(workspace_root().join("policies/default.toml")).expect("default policy");
    let policy = cfg.dir().join("policy.toml");
    fs::write(
        &policy,
        default.replace("review_timeout_secs = 300", "review_timeout_secs = 60"),
    )
    .expect("policy");
    cfg.write(&format!(
        "{journal}\n[state]\ndir = \"{state}\"\n\n[approvals]\nsocket = \"{socket}\"\n\n\
         [[target]]\nname = \"cluster\"\nprotocol = \"kubernetes\"\n\
         intercept = [\"{DIALED}:{port}\"]\nupstream = \"{UPSTREAM_HOST}:{port}\"\n\
         policy = \"{policy}\"\n\n\
         [target.tls]\nmode = \"verify-full\"\nca_file = \"{ca}\"\n\n\
         [target.credentials]\n{credentials}",
        journal = cfg.journal_section(),
        state = state_dir(&cfg).display(),
        socket = cfg.dir().join("control.sock").display(),
        port = standin.port,
        policy = policy.display(),
        ca = cfg.dir().join("upstream-ca.pem").display(),
    ));
    let mut cmd = interceptor_cmd(Some(&cfg));
    cmd.args(["kubeconfig", "--target", "cluster"]);
    let out = run_command(cmd, Duration::from_secs(30));
    assert!(out.success(), "kubeconfig: {}", out.describe());
    let kubeconfig = cfg.dir().join("kubeconfig");
    fs::write(&kubeconfig, &out.stdout).expect("kubeconfig");
    let cache = cfg.dir().join("kube-cache");
    fs::create_dir_all(&cache).expect("cache");
    for (path, mode) in [(&kubeconfig, 0o644), (&cache, 0o777)] {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    }
    Cluster {
        cfg,
        standin,
        kubeconfig,
        cache,
    }
}

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            "kubectl".to_owned(),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--cache-dir={}", self.cache.display()),
            "--request-timeout=90s".to_owned(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    /// [`Cluster::kubectl`] with `setting` (`NAME=value`) in its environment.
    fn kubectl_with(&self, setting: &str, args: &[&str]) -> Vec<String> {
        let mut argv = vec!["env".to_owned(), setting.to_owned()];
        argv.extend(self.kubectl(args));
        argv
    }

    /// The official Python client, configured from the kubeconfig (`v1`, `apps`, `rbac`).
    fn python(&self, code: &str) -> Vec<String> {
        let prelude = "import json, sys\nfrom kubernetes import client, config, watch\n\
                       config.load_kube_config(config_file=sys.argv[1])\n\
                       v1 = client.CoreV1Api()\nrbac = client.RbacAuthorizationV1Api()\n";
        python_argv_with(
            &venv_python().display().to_string(),
            &format!("{prelude}{code}"),
            &[self.kubeconfig.display().to_string()],
        )
    }

    /// Every `kube_request` event of the journal, in order.
    fn kube_events(&self) -> Vec<Value> {
        self.events("kube_request")
    }

    /// Every event of `kind` in the journal, session by session.
    fn events(&self, kind: &str) -> Vec<Value> {
        journal_events(&self.cfg, kind)
    }
}

/// `kubectl get pods -n default -o json` as the agent, through the gateway: the stand-in's
/// pod comes back.
fn kubectl_lists_web_1(c: &Cluster) {
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.kubectl(&["get", "pods", "-n", "default", "-o", "json"]),
    );
    assert!(
        out.success(),
        "{}\n{}",
        out.describe(),
        pretty_rows(&c.standin.received())
    );
    let pods: Value = serde_json::from_str(&out.stdout).expect("kubectl's JSON");
    assert_eq!(
        pods["items"][0]["metadata"]["name"],
        json!("web-1"),
        "{pods}"
    );
}

#[test]
fn kubectl_and_the_python_client_read_with_the_gateways_token() {
    require_root!();
    let c = setup();
    kubectl_lists_web_1(&c);
    // The Python client sends a token of its own making: it is dropped.
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.python(
            "c = client.Configuration.get_default_copy()\n\
             c.api_key = {'authorization': 'Bearer agent-made-this-up'}\n\
             api = client.CoreV1Api(client.ApiClient(c))\n\
             pods = api.list_namespaced_pod('default')\n\
             print(json.dumps([p.metadata.name for p in pods.items]))\n",
        ),
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), r#"["web-1"]"#, "{}", out.describe());
    let got = c.standin.received();
    assert!(!got.is_empty());
    for r in &got {
        assert_eq!(
            r["headers"]["authorization"],
            json!(format!("Bearer {TOKEN}")),
            "{r}"
        );
        let accept = r["headers"]["accept"].as_str().unwrap_or_default();
        assert!(!accept.contains("protobuf"), "{r}");
    }
    let statements: Vec<String> = c
        .kube_events()
        .iter()
        .filter_map(|e| e["statement"].as_str().map(str::to_owned))
        .collect();
    assert!(
        statements.iter().any(|s| s == "list pods -n default"),
        "{statements:?}"
    );
}

#[test]
fn secret_values_are_masked_in_get_list_and_watch() {
    require_root!();
    let c = setup();
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.python(
            "import base64\n\
             one = v1.read_namespaced_secret('db', 'default')\n\
             many = v1.list_namespaced_secret('default')\n\
             watched = [e['object'].data for e in watch.Watch().stream(\
                 v1.list_namespaced_secret, 'default', timeout_seconds=30)]\n\
             dec = lambda d: {k: base64.b64decode(v).decode() for k, v in d.items()}\n\
             print(json.dumps({'get': dec(one.data), 'list': dec(many.items[0].data),\
                 'watch': [dec(d) for d in watched],\
                 'annotations': one.metadata.annotations}))\n",
        ),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(!out.stdout.contains(SECRET_VALUE), "{}", out.stdout);
    let seen: Value = serde_json::from_str(out.stdout.trim()).expect("client JSON");
    assert_eq!(seen["get"]["password"], json!("[REDACTED]"), "{seen}");
    assert_eq!(seen["list"]["password"], json!("[REDACTED]"), "{seen}");
    assert_eq!(seen["watch"][0]["password"], json!("[REDACTED]"), "{seen}");
    // kubectl too, through its own Accept headers.
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.kubectl(&["get", "secret", "db", "-n", "default", "-o", "json"]),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(!out.stdout.contains(SECRET_VALUE), "{}", out.stdout);
    let secret: Value = serde_json::from_str(&out.stdout).expect("kubectl's JSON");
    assert_eq!(
        secret["data"]["password"],
        json!("W1JFREFDVEVEXQ=="),
        "{secret}"
    );
    // The watch was judged as one.
    let events = c.kube_events();
    assert!(
        events
            .iter()
            .any(|e| e["statement"] == json!("watch secrets -n default")),
        "{events:#?}"
    );
}

#[test]
fn a_pod_delete_is_held_denied_never_sent_and_approved_runs_once() {
    require_root!();
    let c = setup();
    let path = "/api/v1/namespaces/default/pods/web-1";
    let delete = c.kubectl(&["delete", "pod", "web-1", "-n", "default", "--wait=false"]);
    let agent = Spawned::spawn(exec_cmd(&c.cfg, Some("nobody"), &delete), "agent", false);
    let held = first_pending(&c.cfg, Duration::from_secs(30));
    assert_eq!(held["statement"], json!("delete pods/web-1 -n default"));
    assert_eq!(held["rule"], json!("kube-changes-need-review"));
    let id = held["id"].as_str().expect("id").to_owned();
    assert!(approvals_cli(&c.cfg, &["deny", &id, "--reason", "not today"]).success());
    let out = agent.wait(Duration::from_secs(60));
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stderr.contains("not today"), "{}", out.describe());
    assert!(c.standin.received_with("DELETE", path).is_empty());

    let agent = Spawned::spawn(exec_cmd(&c.cfg, Some("nobody"), &delete), "agent", false);
    let held = wait_pending_other_than(&c.cfg, &held["run_id"]);
    assert!(approvals_cli(&c.cfg, &["approve", held["id"].as_str().expect("id")]).success());
    let out = agent.wait(Duration::from_secs(60));
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("deleted"), "{}", out.describe());
    assert_eq!(c.standin.received_with("DELETE", path).len(), 1);
}

/// The first pending approval of another run (`interceptor exec`) than `seen`.
fn wait_pending_other_than(cfg: &TempConfig, seen: &Value) -> Value {
    pending_where(cfg, Duration::from_secs(30), |a| a["run_id"] != *seen)
}

#[test]
fn namespace_deletes_rbac_changes_and_impersonation_are_refused() {
    require_root!();
    let c = setup();
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.kubectl(&["delete", "namespace", "prod", "--wait=false"]),
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("kube-no-cluster-deletes") || out.stderr.contains("Forbidden"),
        "{}",
        out.describe()
    );
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.python(
            "body = client.V1ClusterRoleBinding(metadata=client.V1ObjectMeta(name='agent-admin'),\
                 role_ref=client.V1RoleRef(api_group='rbac.authorization.k8s.io', kind='ClusterRole',\
                     name='cluster-admin'),\
                 subjects=[client.RbacV1Subject(kind='User', name='agent',\
                     api_group='rbac.authorization.k8s.io')])\n\
             try:\n    rbac.create_cluster_role_binding(body)\n    print('created')\n\
             except client.ApiException as e:\n    print(json.dumps({'status': e.status, 'body': json.loads(e.body)}))\n",
        ),
    );
    assert!(out.success(), "{}", out.describe());
    let refused: Value = serde_json::from_str(out.stdout.trim()).expect("client JSON");
    assert_eq!(refused["status"], json!(403), "{refused}");
    assert_eq!(
        refused["body"]["rule"],
        json!("kube-no-rbac-changes"),
        "{refused}"
    );
    // Impersonation: refused by the gateway whatever the policy says.
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.kubectl(&["get", "pods", "-n", "default", "--as=admin"]),
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stderr.contains("impersonat"), "{}", out.describe());
    // A body naming another namespace than its URL.
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.python(
            "try:\n    v1.create_namespaced_pod('default', {'apiVersion': 'v1', 'kind': 'Pod',\
                 'metadata': {'name': 'x', 'namespace': 'prod'}})\n    print('created')\n\
             except client.ApiException as e:\n    print(e.status)\n",
        ),
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "400", "{}", out.describe());
    let got = c.standin.received();
    assert!(
        got.iter()
            .all(|r| r["method"] == json!("GET") && r["headers"].get("impersonate-user").is_none()),
        "only reads reached the stand-in: {got:#?}"
    );
    assert!(
        !got.iter()
            .any(|r| r["path"] == json!("/api/v1/namespaces/default/pods")
                && r["query"].as_object().is_none_or(|q| q.is_empty())
                && r["method"] == json!("GET")
                && r["headers"].get("impersonate-user").is_some()),
        "{got:#?}"
    );
}

#[test]
fn exec_is_held_then_recorded_and_replayable() {
    require_root!();
    let c = setup();
    exec_is_held_then_masked(&c, None);
    assert_exec_recorded_and_replayable(&c);
    assert_journal_lacks_split_values(&c);
}

/// `kubectl exec web-1 -- sh -c 'echo hi'` (with `setting` in its environment): held before
/// the stand-in sees it, approved, then its output masked on its way to the agent (the
/// default policy's detectors), each stream as a whole: the stand-in cut both values across
/// two frames.
fn exec_is_held_then_masked(c: &Cluster, setting: Option<&str>) {
    let args = [
        "exec", "web-1", "-n", "default", "--", "sh", "-c", "echo hi",
    ];
    let exec = match setting {
        Some(setting) => c.kubectl_with(setting, &args),
        None => c.kubectl(&args),
    };
    let agent = Spawned::spawn(exec_cmd(&c.cfg, Some("nobody"), &exec), "agent", false);
    let held = first_pending(&c.cfg, Duration::from_secs(30));
    assert_eq!(
        held["statement"],
        json!("exec pods/web-1 -n default -- sh -c 'echo hi'")
    );
    assert_eq!(held["rule"], json!("kube-exec-needs-review"));
    assert!(c.standin.received_ending("/exec").is_empty());
    assert!(approvals_cli(&c.cfg, &["approve", held["id"].as_str().expect("id")]).success());
    assert_stream_output_masked(&agent.wait(Duration::from_secs(60)), "ran: sh -c echo hi\n");
}

/// The exec's output (`ran: sh -c …`) was recorded as `terminal` events, masked, and
/// `interceptor sessions replay` plays it back.
fn assert_exec_recorded_and_replayable(c: &Cluster) {
    let session = sessions(&c.cfg)
        .into_iter()
        .find(|s| {
            events_of_kind(
                &session_show(&c.cfg, s["id"].as_i64().unwrap_or(0)),
                "terminal",
            )
            .iter()
            .any(|_| true)
        })
        .expect("a session with a terminal");
    let id = session["id"].as_i64().expect("id");
    let terminal = events_of_kind(&session_show(&c.cfg, id), "terminal");
    assert!(
        terminal.iter().any(|e| e["detail"]["data"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ran: sh -c")),
        "{terminal:#?}"
    );
    let mut cmd = interceptor_cmd(Some(&c.cfg));
    cmd.args(["sessions", "replay", &id.to_string(), "--speed", "0"]);
    let replay = run_command(cmd, Duration::from_secs(30));
    assert!(replay.success(), "{}", replay.describe());
    assert!(
        replay.stdout.contains("ran: sh -c echo"),
        "{}",
        replay.stdout
    );
    assert!(
        !replay.stdout.contains("ada.lovelace@"),
        "{}",
        replay.stdout
    );
}

/// kubectl exec forced to SPDY (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`: a POST upgraded to
/// SPDY/3.1, streams opened by the client): held like the WebSocket exec, then its stdout and
/// stderr streams masked as wholes, recorded and replayable.
#[test]
fn kubectl_exec_over_spdy_is_held_then_masked_and_recorded() {
    require_root!();
    let c = setup();
    // The stand-in cut both values across two SPDY DATA frames of their stream.
    exec_is_held_then_masked(&c, Some(EXEC_OVER_SPDY));
    let execs = c.standin.received_ending("/exec");
    assert_eq!(execs.len(), 1, "{execs:#?}");
    assert_spdy_upgrade(&execs[0], "v4.channel.k8s.io");
    assert_exec_recorded_and_replayable(&c);
    // The exit code, read from the error stream's Status.
    let tag = result_tag(&c, "exec pods/web-1 -n default -- sh -c 'echo hi'");
    assert!(tag.contains("exit 0"), "{tag}");
    assert_journal_lacks_split_values(&c);
}

/// `request` (as the stand-in logged it) was kubectl's SPDY upgrade, a POST offering
/// `protocol`.
fn assert_spdy_upgrade(request: &Value, protocol: &str) {
    assert_eq!(request["method"], json!("POST"), "{request}");
    let header = |name: &str| {
        request["headers"][name]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        header("upgrade").eq_ignore_ascii_case("SPDY/3.1"),
        "{request}"
    );
    assert!(
        header("x-stream-protocol-version")
            .split(',')
            .any(|p| p.trim() == protocol),
        "{request}"
    );
}

/// Halves of the values the stand-in's exec and attach write cut across two WebSocket frames
/// (kube_standin.py): the first half of each, and the whole.
const SPLIT_VALUES: &[&str] = &[
    "ada.lovelace",
    "lovelace@example",
    "4111 1111",
    "1111 1111 1111",
];

/// A kubectl exec or attach that ended well: its output starts with `first`, and the values
/// the stand-in split across frames are masked on stdout and stderr.
fn assert_stream_output_masked(out: &Output, first: &str) {
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.starts_with(first), "{}", out.describe());
    assert!(out.stdout.contains("contact: "), "{}", out.describe());
    assert!(out.stderr.contains("card "), "{}", out.describe());
    assert_split_values_masked(&out.stdout, &out.stderr);
}

/// Neither the e-mail address (stdout) nor the card number (stderr) reached the agent whole,
/// nor any part a frame of its own carried.
fn assert_split_values_masked(stdout: &str, stderr: &str) {
    for value in SPLIT_VALUES {
        assert!(!stdout.contains(value), "{value} in stdout: {stdout}");
        assert!(!stderr.contains(value), "{value} in stderr: {stderr}");
    }
}

/// No file under the test's directory (the journal's log and index among them) holds any of
/// the split values.
fn assert_journal_lacks_split_values(c: &Cluster) {
    fn files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    files(c.cfg.dir(), &mut all);
    for path in all {
        let bytes = fs::read(&path).unwrap_or_default();
        for value in SPLIT_VALUES {
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{value} in {}",
                path.display()
            );
        }
    }
    for s in sessions(&c.cfg) {
        let raw = session_show_raw(&c.cfg, s["id"].as_i64().expect("id"));
        for value in SPLIT_VALUES {
            assert!(!raw.contains(value), "{value} in the journal: {raw}");
        }
    }
}

/// Approves the first pending request and returns it.
fn approve_first(c: &Cluster) -> Value {
    let held = first_pending(&c.cfg, Duration::from_secs(30));
    assert!(approvals_cli(&c.cfg, &["approve", held["id"].as_str().expect("id")]).success());
    held
}

#[test]
fn python_exec_and_attach_are_held_then_masked_as_whole_streams() {
    require_root!();
    let c = setup();
    let code = "from kubernetes.stream import stream\n\
                ws = stream(getattr(v1, sys.argv[2]), 'web-1', 'default', \
                  stdin=False, stdout=True, stderr=True, tty=False, \
                  _preload_content=False, **json.loads(sys.argv[3]))\n\
                ws.run_forever(timeout=30)\n\
                print(json.dumps({'out': ws.read_stdout(), 'err': ws.read_stderr(), \
                  'code': ws.returncode}))\n";
    for (call, kwargs, statement, first) in [
        (
            "connect_get_namespaced_pod_exec",
            r#"{"command": ["sh", "-c", "env"]}"#,
            "exec pods/web-1 -n default -- sh -c env",
            "ran: sh -c env\n",
        ),
        (
            "connect_get_namespaced_pod_attach",
            "{}",
            "attach pods/web-1 -n default",
            "attached to web-1\n",
        ),
    ] {
        let mut argv = c.python(code);
        argv.extend([call.to_owned(), kwargs.to_owned()]);
        let agent = Spawned::spawn(exec_cmd(&c.cfg, Some("nobody"), &argv), "agent", false);
        let held = approve_first(&c);
        assert_eq!(held["statement"], json!(statement));
        assert_eq!(held["rule"], json!("kube-exec-needs-review"));
        let out = agent.wait(Duration::from_secs(60));
        assert!(out.success(), "{}", out.describe());
        let got: Value = serde_json::from_str(out.stdout.trim()).expect("the client's output");
        let (stdout, stderr) = (
            got["out"].as_str().unwrap_or_default(),
            got["err"].as_str().unwrap_or_default(),
        );
        assert!(stdout.starts_with(first), "{got}");
        assert!(stdout.contains("contact: "), "{got}");
        assert!(stderr.starts_with("card "), "{got}");
        assert_eq!(got["code"], json!(0), "{got}");
        assert_split_values_masked(stdout, stderr);
    }
    let terminal = c.events("terminal");
    assert!(
        terminal.iter().any(|e| e["detail"]["data"]
            .as_str()
            .unwrap_or_default()
            .starts_with("attached to web-1")),
        "{terminal:#?}"
    );
    assert_journal_lacks_split_values(&c);
}

#[test]
fn python_port_forward_is_held_then_round_trips_through_the_echo_and_counts_bytes() {
    require_root!();
    let c = setup();
    let code = r#"from kubernetes.stream import portforward
pf = portforward(v1.connect_get_namespaced_pod_portforward, 'web-1', 'default', ports='8080')
s = pf.socket(8080)
s.settimeout(30)
s.sendall(b'ping through the gateway\n')
got = b''
while not got.endswith(b'\n'):
    chunk = s.recv(1024)
    if not chunk:
        break
    got += chunk
s.close()
print(got.decode().strip())
"#;
    // Denied: the stand-in never sees the port-forward.
    let agent = Spawned::spawn(
        exec_cmd(&c.cfg, Some("nobody"), &c.python(code)),
        "agent",
        false,
    );
    let held = first_pending(&c.cfg, Duration::from_secs(30));
    assert_eq!(
        held["statement"],
        json!("portforward pods/web-1 -n default")
    );
    assert_eq!(held["rule"], json!("kube-exec-needs-review"));
    let id = held["id"].as_str().expect("id");
    assert!(approvals_cli(&c.cfg, &["deny", id, "--reason", "not now"]).success());
    let out = agent.wait(Duration::from_secs(60));
    assert!(!out.stdout.contains("ping through"), "{}", out.describe());
    let forwarded = |c: &Cluster| {
        c.standin
            .received()
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("/portforward")
            })
            .count()
    };
    assert_eq!(forwarded(&c), 0);
    // Approved: the bytes go to the echo and back.
    let agent = Spawned::spawn(
        exec_cmd(&c.cfg, Some("nobody"), &c.python(code)),
        "agent",
        false,
    );
    let held = wait_pending_other_than(&c.cfg, &held["run_id"]);
    assert!(approvals_cli(&c.cfg, &["approve", held["id"].as_str().expect("id")]).success());
    let out = agent.wait(Duration::from_secs(60));
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stdout.trim(),
        "ping through the gateway",
        "{}",
        out.describe()
    );
    assert_eq!(forwarded(&c), 1);
    let echoed: Vec<Value> = c
        .standin
        .received()
        .into_iter()
        .filter(|r| r["method"] == json!("PORTFORWARD"))
        .collect();
    assert_eq!(echoed.len(), 1, "{echoed:#?}");
    assert_eq!(echoed[0]["port"], json!(8080));
    assert_eq!(echoed[0]["data"], json!("ping through the gateway\n"));
    // The request's result: the stream's byte counts (25 data bytes each way, plus the two
    // 2-byte port frames down), recorded once the stream ended.
    let tag = eventually(Duration::from_secs(20), "no port-forward result", || {
        let events = c.kube_events();
        events
            .iter()
            .filter_map(|e| e["result"]["tag"].as_str().map(str::to_owned))
            .find(|t| t.contains("frames up"))
            .ok_or_else(|| format!("{events:#?}"))
    });
    assert!(tag.contains("(25 data bytes), "), "{tag}");
    assert!(tag.contains("(29 data bytes)"), "{tag}");
}

#[test]
fn the_agent_sees_no_credential_in_its_kubeconfig_environment_or_journal() {
    require_root!();
    let c = setup();
    let kubeconfig = fs::read_to_string(&c.kubeconfig).expect("kubeconfig");
    assert!(
        kubeconfig.contains(&format!("https://{DIALED}:{}", c.standin.port)),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("certificate-authority-data"),
        "{kubeconfig}"
    );
    for credential in [
        TOKEN,
        "token",
        "client-key",
        "client-certificate",
        "password",
    ] {
        assert!(
            !kubeconfig.contains(credential),
            "{credential}: {kubeconfig}"
        );
    }
    let token_file = c.cfg.dir().join("token");
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &[
            "sh".to_owned(),
            "-c".to_owned(),
            format!("env; cat {} 2>&1", token_file.display()),
        ],
    );
    assert!(!out.stdout.contains(TOKEN), "{}", out.describe());
    let out = run_exec(
        &c.cfg,
        Some("nobody"),
        &c.kubectl(&["get", "--raw", "/version"]),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("v1.32.0-standin"), "{}", out.describe());
    for s in sessions(&c.cfg) {
        let raw = session_show_raw(&c.cfg, s["id"].as_i64().expect("id"));
        assert!(!raw.contains(TOKEN), "the token is in the journal");
    }
    let journal = fs::read(c.cfg.dir().join("journal.db")).unwrap_or_default();
    assert!(
        !journal.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the token is in the journal's file"
    );
}

/// kubectl 1.32's own port-forward: SPDY/3.1 tunnelled in a WebSocket
/// (`SPDY/3.1+portforward.k8s.io`), its default.
#[test]
fn kubectl_port_forward_over_tunneled_spdy_is_held_then_echoes_and_counts() {
    require_root!();
    let c = setup();
    kubectl_port_forward_round_trip(&c, None, "ping through the tunnel\n");
    let upgrades = c.standin.received_ending("/portforward");
    assert_eq!(upgrades.len(), 1, "{upgrades:#?}");
    let request = &upgrades[0];
    assert_eq!(request["method"], json!("GET"), "{request}");
    assert!(
        request["headers"]["upgrade"]
            .as_str()
            .unwrap_or_default()
            .eq_ignore_ascii_case("websocket"),
        "{request}"
    );
    assert!(
        request["headers"]["sec-websocket-protocol"]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .any(|p| p.trim() == "SPDY/3.1+portforward.k8s.io"),
        "{request}"
    );
}

/// kubectl port-forward forced to plain SPDY/3.1 (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).
#[test]
fn kubectl_port_forward_over_plain_spdy_is_held_then_echoes_and_counts() {
    require_root!();
    let c = setup();
    kubectl_port_forward_round_trip(&c, Some(PORT_FORWARD_OVER_SPDY), "ping over plain spdy\n");
    let upgrades = c.standin.received_ending("/portforward");
    assert_eq!(upgrades.len(), 1, "{upgrades:#?}");
    assert_spdy_upgrade(&upgrades[0], "portforward.k8s.io");
}

/// `kubectl port-forward pods/web-1 :8080` (with `setting` in its environment) under
/// `interceptor exec`: held, approved; then `payload` sent from here to its local port comes
/// back from the stand-in's echo, which logged it for port 8080; once kubectl is stopped, the
/// request's result is in the journal.
fn kubectl_port_forward_round_trip(c: &Cluster, setting: Option<&str>, payload: &str) {
    let local = free_port();
    let args = [
        "port-forward",
        "pods/web-1",
        "-n",
        "default",
        "--address",
        "127.0.0.1",
        &format!("{local}:8080"),
    ];
    let argv = match setting {
        Some(setting) => c.kubectl_with(setting, &args),
        None => c.kubectl(&args),
    };
    let mut agent = Spawned::spawn(exec_cmd(&c.cfg, Some("nobody"), &argv), "agent", false);
    let held = approve_first(c);
    assert_eq!(
        held["statement"],
        json!("portforward pods/web-1 -n default")
    );
    assert_eq!(held["rule"], json!("kube-exec-needs-review"));
    let listening = agent.wait_line(false, Duration::from_secs(60), |l| {
        l.contains(&format!("Forwarding from 127.0.0.1:{local}"))
    });
    assert!(
        listening.is_some(),
        "kubectl is not forwarding: {}\n{}",
        agent.stdout_so_far(),
        agent.stderr_so_far()
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).expect("kubectl's port");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    conn.write_all(payload.as_bytes()).expect("send");
    let mut echoed = Vec::new();
    let mut chunk = [0u8; 1024];
    while echoed.len() < payload.len() {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => echoed.extend_from_slice(&chunk[..n]),
        }
    }
    drop(conn);
    assert_eq!(
        String::from_utf8_lossy(&echoed),
        payload,
        "{}",
        agent.stderr_so_far()
    );
    let forwarded: String = c
        .standin
        .received()
        .iter()
        .filter(|r| r["method"] == json!("PORTFORWARD") && r["port"] == json!(8080))
        .map(|r| r["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(forwarded, payload);
    // Stopped (interceptor exec hands the signal to kubectl): the stream ends and its
    // result, what the relay counted, is journaled.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait(Duration::from_secs(30));
    let tag = result_tag(c, "portforward pods/web-1 -n default");
    // Over SPDY the URL names no port: the result names the ports the streams asked for.
    assert!(
        tag.contains("ports 8080"),
        "{tag}: {:#?}",
        c.kube_events().last()
    );
}

/// The result tag of the stream request journaled as `statement`, once it is written (the
/// stream's end writes it).
fn result_tag(c: &Cluster, statement: &str) -> String {
    eventually(
        Duration::from_secs(20),
        &format!("no result for {statement}"),
        || {
            let events = c.kube_events();
            events
                .iter()
                .filter(|e| e["statement"] == json!(statement))
                .find_map(|e| e["result"]["tag"].as_str().map(str::to_owned))
                .ok_or_else(|| format!("{events:#?}"))
        },
    )
}

/// The gateway logs in with a client certificate instead of a token: the stand-in lets the
/// request in for the certificate, and no `Authorization` header reaches it (the Basic auth
/// kubectl makes from the kubeconfig's bare username is dropped, and there is no token).
#[test]
fn a_client_certificate_login_reaches_the_server_without_a_token() {
    require_root!();
    let c = setup_with(Login::ClientCertificate);
    kubectl_lists_web_1(&c);
    let got = c.standin.received();
    assert!(!got.is_empty());
    for r in &got {
        assert_eq!(r["auth"], json!("client-cert"), "{r}");
        assert_eq!(r["client_cn"], json!(CLIENT_CN), "{r}");
        assert!(r["headers"].get("authorization").is_none(), "{r}");
    }
}

/// kubectl attach (WebSocket, v5 channel protocol): held, then the output arrives with the
/// values the stand-in split across frames masked.
#[test]
fn kubectl_attach_is_held_then_masked_as_whole_streams() {
    require_root!();
    let c = setup();
    let attach = c.kubectl(&["attach", "web-1", "-n", "default"]);
    let agent = Spawned::spawn(exec_cmd(&c.cfg, Some("nobody"), &attach), "agent", false);
    let held = approve_first(&c);
    assert_eq!(held["statement"], json!("attach pods/web-1 -n default"));
    assert_stream_output_masked(&agent.wait(Duration::from_secs(60)), "attached to web-1\n");
    assert_journal_lacks_split_values(&c);
}
