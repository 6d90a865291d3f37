//! The Kubernetes API (`protocol = "kubernetes"`): the HTTPS gateway, with each request read
//! as the API server reads it, so that policy judges `delete pods/web-1 -n default` rather
//! than a URL.
//!
//! Why this exists apart from `http`: what makes a Kubernetes request dangerous is in the
//! API's own terms (verb, group, resource, namespace, the object in the body), and the
//! gateway's duties differ: the login is a bearer token or a client certificate, impersonation
//! must never pass, responses must be JSON so Secrets can be masked, and exec streams are
//! recorded frame by frame. The HTTP gateway (`http::relay`) serves the connection and calls
//! in here where a Kubernetes target differs; this module knows nothing of the relay.
//!
//! - [`request`]: path, method and query into a [`KubeRequest`], as `requestinfo.go` does.
//! - [`object`]: the body's kind, and its namespace checked against the URL's.
//! - [`headers`]: impersonation, `Accept` forced to JSON, the stream protocols offered and
//!   the one the API server chose.
//! - [`exec`]: an approved exec/attach/port-forward WebSocket stream, relayed frame by frame
//!   (exec and attach masked as whole streams and recorded, port-forward counted).
//! - [`spdy`]: the same streams over SPDY/3.1, plain or tunnelled in a WebSocket.
//! - [`kubeconfig`]: the agent's kubeconfig (no credentials in it).

pub mod exec;
pub mod headers;
pub mod kubeconfig;
pub mod object;
pub mod request;
pub mod spdy;

use hyper::{
    header::{self, HeaderMap, HeaderValue},
    Method,
};

use crate::{
    command::KubeRequest,
    target::{Credentials, KubernetesCredentials, Target},
    tls::{ClientIdentity, TlsError},
};

/// Why a request is refused before it is judged (never forwarded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "impersonation ({0}) is refused: requests act as the gateway's login, never as another \
         user"
    )]
    Impersonation(String),
    #[error(transparent)]
    Unreadable(#[from] request::Unreadable),
    #[error(transparent)]
    Object(#[from] object::BadObject),
    #[error(
        "only exec, attach and port-forward streams are relayed (and recorded): over \
         WebSocket with the v4 or v5 channel protocols, over SPDY/3.1 with the v4 channel \
         protocol or port-forward's, or SPDY tunnelled in a port-forward's WebSocket; other \
         upgrades are refused"
    )]
    Stream,
}

impl Refused {
    /// The journal note's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Impersonation(_) => "impersonation",
            Refused::Unreadable(_) => "unreadable",
            Refused::Object(_) => "object",
            Refused::Stream => "stream",
        }
    }
}

/// Reads one request: `path` is the gateway's one reading of it, `upgrade` the protocol it
/// asks to switch to. Narrows an exec's WebSocket offer to the channel protocols in `headers`.
pub fn describe(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &mut HeaderMap,
    body: &[u8],
    upgrade: Option<&str>,
) -> Result<KubeRequest, Refused> {
    if let Some(name) = headers::impersonation(headers) {
        return Err(Refused::Impersonation(name.to_owned()));
    }
    let mut kube = request::read(method.as_str(), path, query)?;
    if let Some(protocol) = upgrade {
        let streams = matches!(kube.verb.as_str(), "exec" | "attach" | "portforward");
        let port_forward = kube.verb == "portforward";
        if !streams || !headers::stream_protocols(headers, protocol, port_forward) {
            return Err(Refused::Stream);
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let described = object::read(&kube.verb, kube.namespace.as_deref(), content_type, body)?;
    kube.kind = described.kind;
    Ok(kube)
}

/// Relays an approved exec, attach or port-forward stream in the framing the API server
/// switched to, until either side closes.
pub async fn relay_stream<H: crate::command::Hooks>(
    framing: headers::Framing,
    agent: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    early: Vec<u8>,
    upstream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    recorder: &exec::Recorder<'_, H>,
) -> Result<exec::Summary, exec::StreamError> {
    match framing {
        headers::Framing::Channels => exec::relay(agent, early, upstream, recorder).await,
        headers::Framing::Spdy => Ok(spdy::relay(agent, early, upstream, recorder).await?),
        headers::Framing::TunneledSpdy => {
            Ok(spdy::relay_tunneled(agent, early, upstream, recorder).await?)
        }
    }
}

/// The `Authorization` value for a token login, read now (so a rotated token is used at
/// once); `Ok(None)` for a client-certificate login, which is in the TLS handshake instead.
pub fn authorization(target: &Target) -> Result<Option<HeaderValue>, String> {
    match &target.credentials {
        Some(Credentials::Kubernetes(KubernetesCredentials::Token(token))) => {
            let token = token.read()?;
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| "the token is not a valid header value".to_owned())?;
            value.set_sensitive(true);
            Ok(Some(value))
        }
        _ => Ok(None),
    }
}

/// The client certificate a target logs in with, read from its files.
pub fn client_identity(target: &Target) -> Result<Option<ClientIdentity>, TlsError> {
    let Some(Credentials::Kubernetes(KubernetesCredentials::ClientCertificate { cert, key })) =
        &target.credentials
    else {
        return Ok(None);
    };
    let read = |what: &str, source: &crate::secret::SecretSource| {
        source
            .read()
            .map_err(|e| TlsError::Upstream(format!("target {:?}: {what}: {e}", target.name)))
    };
    ClientIdentity::from_pem(
        &read("client_cert_file", cert)?,
        &read("client_key_file", key)?,
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn impersonation_other_streams_and_other_namespaces_are_refused_before_judging() {
        let exec = "/api/v1/namespaces/default/pods/web-1/exec";
        let mut h = headers(&[("impersonate-group", "system:masters")]);
        assert!(matches!(
            describe(&Method::GET, "/api/v1/pods", None, &mut h, b"", None),
            Err(Refused::Impersonation(_))
        ));
        // SPDY without a version the gateway reads, or a WebSocket without a channel
        // protocol, or an upgrade that is no stream.
        let mut h = headers(&[("x-stream-protocol-version", "v3.channel.k8s.io")]);
        assert_eq!(
            describe(&Method::POST, exec, None, &mut h, b"", Some("spdy/3.1")),
            Err(Refused::Stream)
        );
        let mut h = headers(&[("x-stream-protocol-version", "v4.channel.k8s.io")]);
        assert!(describe(&Method::POST, exec, None, &mut h, b"", Some("spdy/3.1")).is_ok());
        let mut h = headers(&[("sec-websocket-protocol", "base64.channel.k8s.io")]);
        assert_eq!(
            describe(&Method::GET, exec, None, &mut h, b"", Some("websocket")),
            Err(Refused::Stream)
        );
        let mut h = headers(&[("sec-websocket-protocol", "v4.channel.k8s.io")]);
        assert_eq!(
            describe(
                &Method::GET,
                "/api/v1/pods",
                None,
                &mut h,
                b"",
                Some("websocket")
            ),
            Err(Refused::Stream)
        );
        let mut h = headers(&[("sec-websocket-protocol", "v4.channel.k8s.io")]);
        let k = describe(
            &Method::GET,
            exec,
            Some("command=ls"),
            &mut h,
            b"",
            Some("websocket"),
        )
        .expect("an exec stream");
        assert_eq!(k.canonical(), "exec pods/web-1 -n default -- ls");
        let mut h = headers(&[("content-type", "application/json")]);
        let body = br#"{"kind":"Pod","metadata":{"namespace":"prod"}}"#;
        let path = "/api/v1/namespaces/default/pods";
        assert!(matches!(
            describe(&Method::POST, path, None, &mut h, body, None),
            Err(Refused::Object(_))
        ));
        let body = br#"{"kind":"Pod","metadata":{"name":"x"}}"#;
        let k = describe(&Method::POST, path, None, &mut h, body, None).expect("create");
        assert_eq!(k.kind.as_deref(), Some("Pod"));
    }

    #[test]
    fn a_client_certificate_login_is_read_from_its_files_and_a_token_is_a_bearer_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["gateway".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .expect("cert");
        let (cert_path, key_path) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        let mut target = Target {
            name: "cluster".to_owned(),
            protocol: crate::target::Protocol::Kubernetes,
            intercept: Vec::new(),
            unix_routes: Vec::new(),
            upstream: None,
            max_message_bytes: 1 << 20,
            credentials: Some(Credentials::Kubernetes(
                KubernetesCredentials::ClientCertificate {
                    cert: crate::secret::SecretSource::File(cert_path.clone()),
                    key: crate::secret::SecretSource::File(key_path),
                },
            )),
            tls: Default::default(),
            local_password: None,
        };
        let identity = client_identity(&target)
            .expect("readable")
            .expect("a login");
        assert_eq!(identity.chain.len(), 1);
        assert_eq!(authorization(&target), Ok(None));
        // A certificate file that holds no certificate is a start-up error naming the target.
        let bad = Credentials::Kubernetes(KubernetesCredentials::ClientCertificate {
            cert: crate::secret::SecretSource::File(dir.path().join("gw.key")),
            key: crate::secret::SecretSource::File(cert_path),
        });
        target.credentials = Some(bad);
        assert!(client_identity(&target).is_err());
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").expect("write token");
        target.credentials = Some(Credentials::Kubernetes(KubernetesCredentials::Token(
            crate::secret::SecretSource::File(token),
        )));
        let value = authorization(&target).expect("readable").expect("a header");
        assert_eq!(value, "Bearer t0ken");
        assert!(value.is_sensitive());
    }
}
