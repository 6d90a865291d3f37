//! The object a create, update or patch carries: its kind, and whether its namespace is the
//! one its URL names.
//!
//! Why this exists: the API server files an object under the URL's namespace and refuses a
//! body naming another, but a gateway that judged the URL alone would approve `create pods -n
//! dev` for a body that says `prod` and leave the outcome to the server's checks. Refusing the
//! mismatch here keeps what is judged and what is sent one thing. A body the gateway cannot
//! read (protobuf, YAML that is not JSON) is refused too: fail closed.

use serde_json::Value;

/// Why a request's body is refused (answered 400, never forwarded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadObject {
    #[error(
        "the body names namespace {body:?} but the request is for namespace {url:?}: \
         the gateway judges one of them only, so it refuses both"
    )]
    OtherNamespace { url: String, body: String },
    #[error(
        "the body is {0}, which the gateway cannot read: send JSON (kubectl does, \
         unless told --server-side with YAML that is not JSON)"
    )]
    Unreadable(String),
}

/// What the body says about the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Described {
    pub kind: Option<String>,
    pub namespace: Option<String>,
}

/// Reads the body of a create, update or patch (`verb`), for a request in `url_namespace`.
/// Other verbs' bodies (a delete's options) are not objects: nothing is read.
pub fn read(
    verb: &str,
    url_namespace: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Described, BadObject> {
    if !matches!(verb, "create" | "update" | "patch") || body.is_empty() {
        return Ok(Described::default());
    }
    let doc: Value = serde_json::from_slice(body).map_err(|_| {
        BadObject::Unreadable(
            content_type
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "without a content type".to_owned()),
        )
    })?;
    // A JSON patch (RFC 6902) is a list of operations: the kind cannot change through it, and
    // a namespace it writes is refused as a mismatch would be.
    if let Value::Array(ops) = &doc {
        if let Some(ns) = ops.iter().find_map(|op| {
            let path = op.get("path")?.as_str()?;
            (path == "/metadata/namespace").then(|| {
                op.get("value")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            })
        }) {
            return check(url_namespace, Some(ns), None);
        }
        return Ok(Described::default());
    }
    let kind = doc.get("kind").and_then(Value::as_str).map(str::to_owned);
    let namespace = doc
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .map(str::to_owned);
    check(url_namespace, namespace, kind)
}

fn check(
    url: Option<&str>,
    body: Option<String>,
    kind: Option<String>,
) -> Result<Described, BadObject> {
    if let (Some(url), Some(body)) = (url, body.as_deref()) {
        if url != body {
            return Err(BadObject::OtherNamespace {
                url: url.to_owned(),
                body: body.to_owned(),
            });
        }
    }
    Ok(Described {
        kind,
        namespace: body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_read_and_another_namespace_refused() {
        let pod = br#"{"kind":"Pod","metadata":{"name":"x","namespace":"default"}}"#;
        let d = read("create", Some("default"), None, pod).expect("same namespace");
        assert_eq!(d.kind.as_deref(), Some("Pod"));
        assert!(matches!(
            read("create", Some("dev"), None, pod),
            Err(BadObject::OtherNamespace { .. })
        ));
        // No namespace in the body: the URL's applies.
        let d = read("update", Some("dev"), None, br#"{"kind":"Pod"}"#).expect("url's");
        assert_eq!(d.namespace, None);
        // A JSON patch that moves the object.
        let patch = br#"[{"op":"replace","path":"/metadata/namespace","value":"prod"}]"#;
        assert!(read("patch", Some("dev"), None, patch).is_err());
        // Deletes carry options, not objects; protobuf is refused.
        assert!(read("delete", Some("dev"), None, b"\x6b\x38\x73\x00").is_ok());
        assert!(matches!(
            read(
                "create",
                Some("dev"),
                Some("application/vnd.kubernetes.protobuf"),
                b"k8s\0"
            ),
            Err(BadObject::Unreadable(_))
        ));
    }
}
