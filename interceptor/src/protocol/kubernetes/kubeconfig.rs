//! `interceptor kubeconfig --target NAME`: the kubeconfig an agent uses to reach a Kubernetes
//! target through the gateway.
//!
//! Why this exists: kubectl and the client libraries need a server address and a CA to trust,
//! and nothing else, since the gateway logs in for them. Writing it by hand invites copying
//! the real cluster's kubeconfig, token and all, into the agent's reach. This one names the
//! address the agent dials (the one the gateway intercepts), trusts the local CA (which signs
//! the certificate the gateway shows for that address), and holds no user credential. Its user
//! has a name and nothing else: with no way to identify a user at all, kubectl stops to
//! prompt for a username and password. With the name, client-go sends it as Basic auth with an
//! empty password, which the gateway drops as it drops any credential an agent sends.
//!
//! JSON strings are valid YAML scalars, so the values are written JSON-quoted: no YAML library
//! and no escaping of our own.

use std::net::SocketAddr;

use base64::Engine as _;

use crate::target::{DestPattern, Protocol, Target};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    #[error("no target named {0:?} in the configuration")]
    NoTarget(String),
    #[error("target {0:?} is not a kubernetes target (protocol {1})")]
    NotKubernetes(String, &'static str),
    #[error(
        "target {0:?} names no address an agent dials: give its intercept an \"ip:port\", or an \
         upstream"
    )]
    NoAddress(String),
}

/// The address an agent dials for `target`: its first exact intercept, else its upstream
/// (which a `*:port` intercept catches as the agent dials it).
pub fn dialed(target: &Target) -> Option<SocketAddr> {
    target
        .intercept
        .iter()
        .find_map(|p| match p {
            DestPattern::Exact(addr) => Some(*addr),
            DestPattern::AnyAddress(_) => None,
        })
        .or(target.upstream)
}

/// The kubeconfig for `name`, trusting `ca_pem` (the local CA's certificate).
pub fn render(targets: &[Target], name: &str, ca_pem: &str) -> Result<String, KubeconfigError> {
    let target = targets
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| KubeconfigError::NoTarget(name.to_owned()))?;
    if target.protocol != Protocol::Kubernetes {
        return Err(KubeconfigError::NotKubernetes(
            name.to_owned(),
            target.protocol.as_str(),
        ));
    }
    let addr = dialed(target).ok_or_else(|| KubeconfigError::NoAddress(name.to_owned()))?;
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let server = format!("https://{addr}");
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let context = format!("interceptor-{name}");
    Ok(format!(
        "# Written by `interceptor kubeconfig --target {name}`: the gateway logs in to the\n\
         # cluster for the agent, so this file holds no credential.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {ctx}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: {ctx}\n  user:\n    username: {ctx}\n\
         contexts:\n\
         - name: {ctx}\n  context:\n    cluster: {ctx}\n    user: {ctx}\n    namespace: \"default\"\n\
         current-context: {ctx}\n",
        ctx = q(&context),
        server = q(&server),
        ca = q(&ca),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(protocol: Protocol, intercept: Vec<DestPattern>) -> Target {
        Target {
            name: "cluster".to_owned(),
            protocol,
            intercept,
            unix_routes: Vec::new(),
            upstream: "127.0.0.5:6443".parse().ok(),
            max_message_bytes: 1 << 20,
            credentials: None,
            tls: Default::default(),
            local_password: None,
        }
    }

    #[test]
    fn it_names_the_dialed_address_and_the_ca_and_no_credential() {
        let t = target(
            Protocol::Kubernetes,
            vec![DestPattern::Exact("127.0.0.4:6443".parse().expect("addr"))],
        );
        let text = render(&[t], "cluster", "-----BEGIN CERTIFICATE-----\n").expect("render");
        assert!(
            text.contains("server: \"https://127.0.0.4:6443\""),
            "{text}"
        );
        assert!(
            text.contains("certificate-authority-data: \"LS0tLS1CRUdJTi"),
            "{text}"
        );
        assert!(text.contains("username: \"interceptor-cluster\""), "{text}");
        for credential in [
            "token",
            "client-certificate",
            "client-key",
            "password",
            "exec:",
        ] {
            assert!(!text.contains(credential), "{credential} in {text}");
        }
        // A `*:port` intercept: the agent dials the upstream itself.
        let t = target(Protocol::Kubernetes, vec![DestPattern::AnyAddress(6443)]);
        assert_eq!(dialed(&t), "127.0.0.5:6443".parse().ok());
        let t = target(Protocol::Https, Vec::new());
        assert!(matches!(
            render(&[t], "cluster", ""),
            Err(KubeconfigError::NotKubernetes(..))
        ));
        assert!(matches!(
            render(&[], "x", ""),
            Err(KubeconfigError::NoTarget(_))
        ));
    }
}
