use super::*;

fn kube_of(text: &str) -> KubeRequest {
    match Asked::parse(Family::Kubernetes, text) {
        Ok(Asked::Kubernetes(k)) => k,
        other => panic!("{text:?}: {other:?}"),
    }
}

#[test]
fn http_request_lines_are_read_like_urls() {
    let Ok(Asked::Http(r)) = Asked::parse(
        Family::Http,
        "delete HTTPS://127.0.0.2:443/v1/items/7?force=true",
    ) else {
        panic!("an HTTP request line");
    };
    assert_eq!(r.method, "DELETE");
    assert_eq!(r.scheme, "https");
    assert_eq!(r.host, "127.0.0.2", "the scheme's default port is dropped");
    assert_eq!(r.path, "/v1/items/7");
    assert_eq!(r.query.as_deref(), Some("force=true"));
    let Ok(Asked::Http(r)) = Asked::parse(Family::Http, "GET http://localhost:8080") else {
        panic!("no path");
    };
    assert_eq!((r.host.as_str(), r.path.as_str()), ("localhost:8080", "/"));
    for bad in [
        "DELETE",
        "DELETE /v1",
        "GET ftp://127.0.0.1/x",
        "G3T http://127.0.0.1/",
    ] {
        assert!(Asked::parse(Family::Http, bad).is_err(), "{bad}");
    }
}

#[test]
fn mcp_calls_name_their_tool_and_arguments() {
    let Ok(Asked::Mcp(c)) = Asked::parse(Family::Mcp, r#"tools/call delete_customer {"id": 1}"#)
    else {
        panic!("a tool call");
    };
    assert_eq!(c.tool.as_deref(), Some("delete_customer"));
    assert_eq!(c.arguments, Some(serde_json::json!({"id": 1})));
    let Ok(Asked::Mcp(c)) = Asked::parse(Family::Mcp, "resources/read file:///srv/x") else {
        panic!("a resource read");
    };
    assert_eq!(c.uri.as_deref(), Some("file:///srv/x"));
    assert!(Asked::parse(Family::Mcp, "tools/call").is_err());
    assert!(
        Asked::parse(Family::Mcp, "tools/call [][].x").is_err(),
        "not a tool name"
    );
    assert!(Asked::parse(Family::Mcp, "tools/call delete customer").is_err());
    assert!(Asked::parse(Family::Mcp, "tools/call x {not json").is_err());
    let Ok(Asked::Mcp(c)) = Asked::parse(
        Family::Mcp,
        r#"tools/call [readOnlyHint, openWorldHint=false] search {"q": "x"}"#,
    ) else {
        panic!("a tool call with hints");
    };
    assert_eq!(c.tool.as_deref(), Some("search"));
    assert_eq!(c.annotations.read_only, Some(true));
    assert_eq!(c.annotations.open_world, Some(false));
    assert_eq!(c.annotations.destructive, None);
    assert_eq!(c.canonical(), r#"tools/call search {"q":"x"}"#);
    assert!(Asked::parse(Family::Mcp, "tools/call [readOnlyHint search").is_err());
    assert!(Asked::parse(Family::Mcp, "tools/call [readOnly] search").is_err());
    assert!(Asked::parse(Family::Mcp, "tools/call [readOnlyHint=yes] search").is_err());
}

#[test]
fn kubectl_notation_becomes_the_request_the_api_server_sees() {
    let k = kube_of("delete pods/web-1 -n prod");
    assert_eq!(
        (k.verb.as_str(), k.resource.as_deref(), k.name.as_deref()),
        ("delete", Some("pods"), Some("web-1"))
    );
    assert_eq!(k.namespace.as_deref(), Some("prod"));
    assert_eq!(k.api_version, "v1");
    let k = kube_of("get pods");
    assert_eq!(k.verb, "list", "get without a name lists");
    assert_eq!(k.namespace.as_deref(), Some("default"));
    assert_eq!(kube_of("get pods -A").namespace, None);
    assert_eq!(kube_of("delete pods").verb, "deletecollection");
    let k = kube_of("get deployments.apps web --subresource=scale -n default");
    assert_eq!(
        (
            k.api_group.as_str(),
            k.subresource.as_deref(),
            k.name.as_deref()
        ),
        ("apps", Some("scale"), Some("web"))
    );
    let k = kube_of("exec pods/web-1");
    assert_eq!(
        (k.verb.as_str(), k.subresource.as_deref()),
        ("exec", Some("exec"))
    );
    assert_eq!(
        kube_of("get nodes").namespace,
        None,
        "nodes are cluster-scoped"
    );
    let k = kube_of("get /healthz");
    assert_eq!((k.resource, k.path.as_deref()), (None, Some("/healthz")));
    for bad in [
        "",
        "delete",
        "delete pods/a/b/c",
        "get pods -n",
        "get pods --force",
    ] {
        assert!(Asked::parse(Family::Kubernetes, bad).is_err(), "{bad}");
    }
}

#[test]
fn ssh_text_is_a_command_line_or_a_named_channel() {
    let Ok(Asked::Ssh(s)) = Asked::parse(Family::Ssh, "rm -rf /srv") else {
        panic!("a command");
    };
    assert_eq!(s.channel, SshChannel::Exec);
    assert_eq!(s.line.map(|l| l.programs), Some(vec!["rm".to_owned()]));
    let Ok(Asked::Ssh(s)) = Asked::parse(Family::Ssh, "@shell") else {
        panic!("a shell");
    };
    assert_eq!(s.channel, SshChannel::Shell);
    let Ok(Asked::Ssh(s)) = Asked::parse(Family::Ssh, "@subsystem sftp") else {
        panic!("a subsystem");
    };
    assert_eq!(s.subsystem.as_deref(), Some("sftp"));
    let Ok(Asked::Ssh(s)) = Asked::parse(Family::Ssh, "@forward 127.0.0.1:5432") else {
        panic!("a forward");
    };
    assert_eq!(s.forward.as_deref(), Some("127.0.0.1:5432"));
}
