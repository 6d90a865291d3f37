//! A Kubernetes API request's path, method and query read into a [`KubeRequest`], the way the
//! API server's own `RequestInfoFactory` reads them (k8s.io/apiserver, `requestinfo.go`).
//!
//! Why this exists: policy, approvers and the journal must see the request the API server will
//! act on, not a guess. So the reading follows the server's rules step by step: `/api` and
//! `/apis` prefixes (anything else, and the discovery paths `/api`, `/api/v1`,
//! `/apis/GROUP/VERSION`, are non-resource requests), the legacy `watch`/`proxy` verb segment,
//! the method's verb, `namespaces/NS/…` (except the namespace's own `status` and `finalize`),
//! `resource/name/subresource`, then `get` without a name is `list` or `watch` (`watch=true`),
//! and `delete` without one `deletecollection`. A `fieldSelector` of `metadata.name=X` names
//! the object, as the server's reading does.
//!
//! Where the command model differs from the server (on purpose): the streaming subresources
//! (`exec`, `attach`, `portforward`, `proxy`) are verbs of their own, so a rule about `exec`
//! needs no subresource juggling; and a Namespace object is cluster-scoped (the server also
//! calls `/api/v1/namespaces/NS` "in namespace NS", which would let a rule about namespace NS
//! match the deletion of NS itself).

use crate::command::KubeRequest;

/// Why a request cannot be read as the API server would (answered 400, never forwarded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("unable to determine kind and namespace from the url {0:?}")]
    NoResource(String),
    /// (The text itself is not kept: a query may carry a value that must not be journaled.)
    #[error("the query is not valid percent-encoded UTF-8")]
    BadQuery,
    #[error("the method {0} is not one the API server reads a verb from")]
    BadMethod(String),
}

/// Segments after the version that are verbs of the old API (`/api/v1/watch/pods`).
const SPECIAL_VERBS: &[&str] = &["proxy", "watch"];
/// Subresources of a Namespace object itself (`/api/v1/namespaces/NS/status`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];
/// Subresources that are verbs in the command model.
const VERB_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// Reads a request. `path` is the normalised, decoded path (one reading, see
/// `http::request`); `query` the raw query string.
pub fn read(method: &str, path: &str, query: Option<&str>) -> Result<KubeRequest, Unreadable> {
    let params = parse_query(query)?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let non_resource = || KubeRequest {
        verb: method.to_ascii_lowercase(),
        path: Some(path.to_owned()),
        ..KubeRequest::default()
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return Ok(non_resource());
    }
    let mut rest = &parts[1..];
    let mut api_group = String::new();
    if parts[0] == "apis" {
        // `/apis/GROUP/VERSION` is discovery.
        if rest.len() < 3 {
            return Ok(non_resource());
        }
        api_group = rest[0].to_owned();
        rest = &rest[1..];
    }
    let api_version = rest[0].to_owned();
    rest = &rest[1..];
    let mut verb = if SPECIAL_VERBS.contains(&rest[0]) {
        if rest.len() < 2 {
            return Err(Unreadable::NoResource(path.to_owned()));
        }
        let verb = rest[0].to_owned();
        rest = &rest[1..];
        verb
    } else {
        match method.to_ascii_uppercase().as_str() {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => return Err(Unreadable::BadMethod(other.to_owned())),
        }
        .to_owned()
    };
    let mut namespace = None;
    if rest[0] == "namespaces" {
        if let Some(ns) = rest.get(1) {
            namespace = Some((*ns).to_owned());
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
    }
    let resource = rest.first().map(|r| (*r).to_owned());
    let mut name = rest.get(1).map(|n| (*n).to_owned());
    // `proxy` keeps everything after the name as the proxied path, not a subresource.
    let subresource = rest
        .get(2)
        .filter(|_| verb != "proxy")
        .map(|s| (*s).to_owned());
    if resource.as_deref() == Some("namespaces") {
        namespace = None;
    }
    if name.is_none() && verb == "get" {
        verb = if param("watch").is_some_and(truthy) {
            "watch"
        } else {
            "list"
        }
        .to_owned();
        name = param("fieldSelector").and_then(selected_name);
    }
    if name.is_none() && verb == "delete" {
        verb = "deletecollection".to_owned();
    }
    if let Some(sub) = subresource
        .as_deref()
        .filter(|s| VERB_SUBRESOURCES.contains(s))
    {
        verb = sub.to_owned();
    }
    let command = if subresource.as_deref() == Some("exec") {
        params
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect()
    } else {
        Vec::new()
    };
    Ok(KubeRequest {
        verb,
        api_group,
        api_version,
        resource,
        subresource,
        namespace,
        name,
        path: None,
        kind: None,
        command,
    })
}

/// `watch=true`, `watch=1`, `watch=True`: what Go's `strconv.ParseBool` takes as true.
fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// The name a field selector requires exactly (`metadata.name=web-1`, `==` too), when it is a
/// valid path segment.
fn selected_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let (field, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(f, _)| !f.ends_with('!'))?;
        let value = value.trim();
        (field.trim() == "metadata.name"
            && !value.is_empty()
            && value != "."
            && value != ".."
            && !value.contains(['/', '%']))
        .then(|| value.to_owned())
    })
}

/// The query's `key=value` pairs, percent-decoded (`+` is a space, as Go's `url.ParseQuery`
/// reads it). Undecodable text is refused rather than read another way than the server would.
fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, Unreadable> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(text: &str) -> Result<String, Unreadable> {
    let bad = || Unreadable::BadQuery;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(bad)?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(method: &str, path: &str, query: Option<&str>) -> String {
        read(method, path, query).expect("readable").canonical()
    }

    #[test]
    fn verbs_come_from_the_method_the_name_and_watch() {
        assert_eq!(
            canonical("GET", "/api/v1/namespaces/default/pods", None),
            "list pods -n default"
        );
        assert_eq!(
            canonical("GET", "/api/v1/namespaces/default/pods", Some("watch=true")),
            "watch pods -n default"
        );
        assert_eq!(
            canonical("GET", "/api/v1/watch/namespaces/default/pods", None),
            "watch pods -n default"
        );
        assert_eq!(
            canonical("GET", "/api/v1/pods", Some("watch=1")),
            "watch pods"
        );
        assert_eq!(
            canonical("GET", "/api/v1/namespaces/default/pods/web-1", None),
            "get pods/web-1 -n default"
        );
        assert_eq!(
            canonical("DELETE", "/api/v1/namespaces/default/pods/web-1", None),
            "delete pods/web-1 -n default"
        );
        assert_eq!(
            canonical("DELETE", "/api/v1/namespaces/default/pods", None),
            "deletecollection pods -n default"
        );
        assert_eq!(
            canonical("POST", "/apis/apps/v1/namespaces/prod/deployments", None),
            "create deployments.apps -n prod"
        );
        assert_eq!(
            canonical(
                "PUT",
                "/apis/apps/v1/namespaces/prod/deployments/web/scale",
                None
            ),
            "update deployments.apps/web/scale -n prod"
        );
        assert_eq!(
            canonical(
                "PATCH",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/x",
                None
            ),
            "patch clusterrolebindings.rbac.authorization.k8s.io/x"
        );
        // kubectl get pod NAME -w watches with a field selector naming it.
        let k = read(
            "GET",
            "/api/v1/namespaces/default/pods",
            Some("fieldSelector=metadata.name%3Dweb-1&watch=true"),
        )
        .expect("watch one");
        assert_eq!(
            (k.verb.as_str(), k.name.as_deref()),
            ("watch", Some("web-1"))
        );
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource_requests() {
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/version",
            "/healthz",
            "/openapi/v2",
        ] {
            let k = read("GET", path, None).expect("readable");
            assert_eq!(k.resource, None, "{path}");
            assert_eq!(k.canonical(), format!("get {path}"));
        }
        assert_eq!(canonical("POST", "/livez", None), "post /livez");
    }

    #[test]
    fn namespaces_are_cluster_scoped_objects_with_their_own_subresources() {
        let k = read("DELETE", "/api/v1/namespaces/prod", None).expect("ns");
        assert_eq!(k.canonical(), "delete namespaces/prod");
        assert_eq!(k.namespace, None);
        assert_eq!(
            canonical("PUT", "/api/v1/namespaces/prod/finalize", None),
            "update namespaces/prod/finalize"
        );
        assert_eq!(
            canonical("GET", "/api/v1/namespaces", None),
            "list namespaces"
        );
        assert_eq!(
            canonical("DELETE", "/api/v1/nodes/n1", None),
            "delete nodes/n1"
        );
    }

    #[test]
    fn streaming_subresources_are_verbs_and_exec_names_its_command() {
        let k = read(
            "GET",
            "/api/v1/namespaces/default/pods/web-1/exec",
            Some("command=sh&command=-c&command=echo+%27hi%27+%3E%2Ftmp%2Fx&container=app&stdout=true"),
        )
        .expect("exec");
        assert_eq!(k.verb, "exec");
        assert_eq!(k.subresource.as_deref(), Some("exec"));
        assert_eq!(
            k.canonical(),
            r#"exec pods/web-1 -n default -- sh -c 'echo '\''hi'\'' >/tmp/x'"#
        );
        assert_eq!(k.resource_name(), "pods/exec");
        assert_eq!(
            canonical("POST", "/api/v1/namespaces/d/pods/web-1/attach", None),
            "attach pods/web-1 -n d"
        );
        assert_eq!(
            canonical("GET", "/api/v1/namespaces/d/pods/web-1/portforward", None),
            "portforward pods/web-1 -n d"
        );
        assert_eq!(
            canonical("GET", "/api/v1/namespaces/d/pods/web-1/log", None),
            "get pods/web-1/log -n d"
        );
        // The old proxy verb: what follows the name is the proxied path.
        let k = read("GET", "/api/v1/proxy/namespaces/d/services/web/x/y", None).expect("proxy");
        assert_eq!((k.verb.as_str(), k.subresource), ("proxy", None));
        assert_eq!(
            canonical("GET", "/api/v1/namespaces/d/services/web/proxy/x", None),
            "proxy services/web -n d"
        );
    }

    #[test]
    fn what_the_server_would_not_read_is_refused() {
        assert!(read("GET", "/api/v1/watch", None).is_err());
        assert!(read("TRACE", "/api/v1/pods", None).is_err());
        assert!(read("GET", "/api/v1/pods", Some("watch=%zz")).is_err());
        assert!(read("GET", "/api/v1/pods", Some("a=%ff")).is_err());
    }
}
