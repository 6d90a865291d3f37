use super::*;

fn kube(verb: &str, group: &str, resource: &str, sub: Option<&str>) -> KubeRequest {
    KubeRequest {
        verb: verb.to_owned(),
        api_group: group.to_owned(),
        api_version: "v1".to_owned(),
        resource: Some(resource.to_owned()),
        subresource: sub.map(str::to_owned),
        namespace: Some("default".to_owned()),
        name: Some("web-1".to_owned()),
        path: None,
        ..KubeRequest::default()
    }
}

#[test]
fn every_family_has_one_canonical_text_action_and_objects() {
    let http = HttpRequest {
        method: "DELETE".to_owned(),
        scheme: "https".to_owned(),
        host: "127.0.0.2:8443".to_owned(),
        path: "/v1/items/7".to_owned(),
        query: Some("force=true".to_owned()),
        upgrade: None,
    };
    let op = Operation::Http(&http);
    assert_eq!(op.family(), Family::Http);
    assert_eq!(
        op.canonical(),
        "DELETE https://127.0.0.2:8443/v1/items/7?force=true"
    );
    assert_eq!(op.action().as_deref(), Some("DELETE"));
    assert_eq!(op.objects(), ["127.0.0.2:8443/v1/items/7"]);
    assert_eq!(op.detail().map(|(k, _)| k), Some("http"));
    let ws = HttpRequest {
        method: "GET".to_owned(),
        query: None,
        path: "/ws".to_owned(),
        upgrade: Some("websocket".to_owned()),
        ..http.clone()
    };
    assert_eq!(
        Operation::Http(&ws).canonical(),
        "GET https://127.0.0.2:8443/ws [upgrade websocket]"
    );

    let call = McpCall {
        method: "tools/call".to_owned(),
        tool: Some("delete_customer".to_owned()),
        uri: None,
        arguments: Some(serde_json::json!({"id": 1})),
        request_id: Some(serde_json::json!(7)),
        annotations: Default::default(),
    };
    let op = Operation::Mcp(&call);
    assert_eq!(op.canonical(), r#"tools/call delete_customer {"id":1}"#);
    assert_eq!(op.objects(), ["delete_customer"]);

    let k = kube("delete", "", "pods", None);
    let op = Operation::Kubernetes(&k);
    assert_eq!(op.canonical(), "delete pods/web-1 -n default");
    assert_eq!(op.objects(), ["/v1/pods", "default/web-1"]);
    assert_eq!(k.resource_name(), "pods");
    let k = kube("update", "apps", "deployments", Some("scale"));
    assert_eq!(
        Operation::Kubernetes(&k).canonical(),
        "update deployments.apps/web-1/scale -n default"
    );
    assert_eq!(k.resource_name(), "deployments.apps/scale");
    assert_eq!(k.objects(), ["apps/v1/deployments/scale", "default/web-1"]);

    let ssh = SshRequest {
        channel: SshChannel::Exec,
        command: Some("rm -rf /srv".to_owned()),
        line: Some(CommandLine {
            programs: vec!["rm".to_owned()],
            ..CommandLine::default()
        }),
        subsystem: None,
        forward: None,
    };
    let op = Operation::Ssh(&ssh);
    assert_eq!(op.canonical(), "rm -rf /srv");
    assert_eq!(op.action().as_deref(), Some("exec"));
    assert_eq!(op.objects(), ["rm"]);
    let forward = SshRequest {
        channel: SshChannel::Forward,
        command: None,
        line: None,
        subsystem: None,
        forward: Some("127.0.0.1:5432".to_owned()),
    };
    assert_eq!(
        Operation::Ssh(&forward).canonical(),
        "forward 127.0.0.1:5432"
    );

    let sql = Operation::Sql { text: "SELECT 1" };
    assert_eq!(sql.canonical(), "SELECT 1");
    assert_eq!(sql.action(), None, "SQL's action is the policy's analysis");
    assert!(sql.detail().is_none());
    let connect = Operation::Connect {
        destination: "127.0.0.1:6379",
    };
    assert_eq!(connect.family(), Family::Connect);
    assert_eq!(connect.objects(), ["127.0.0.1:6379"]);
}

#[test]
fn non_resource_kubernetes_requests_name_their_path() {
    let k = KubeRequest {
        verb: "get".to_owned(),
        api_group: String::new(),
        api_version: String::new(),
        resource: None,
        subresource: None,
        namespace: None,
        name: None,
        path: Some("/healthz".to_owned()),
        ..KubeRequest::default()
    };
    assert_eq!(Operation::Kubernetes(&k).canonical(), "get /healthz");
    assert_eq!(k.resource_name(), "/healthz");
    assert_eq!(k.objects(), ["/healthz"]);
}

#[test]
fn secret_looking_query_values_are_redacted_for_the_journal() {
    let r = HttpRequest {
        method: "GET".to_owned(),
        scheme: "https".to_owned(),
        host: "127.0.0.2".to_owned(),
        path: "/v1/items".to_owned(),
        query: Some(
            "limit=10&api_key=abc&X-Amz-Signature=f00&access_token=t&tokens_used=5&apiKey=k&q=&sig=s"
                .to_owned(),
        ),
        upgrade: None,
    };
    assert_eq!(
        r.redacted().query.as_deref(),
        Some("limit=10&api_key=[REDACTED]&X-Amz-Signature=[REDACTED]&access_token=[REDACTED]&tokens_used=5&apiKey=[REDACTED]&q=&sig=[REDACTED]")
    );
    assert_eq!(r.redacted().path, r.path);
    let (_, detail) = Operation::Http(&r).detail().expect("http detail");
    assert!(!detail.to_string().contains("abc"), "{detail}");
}
