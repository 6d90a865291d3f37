//! The request headers a Kubernetes target changes or refuses: the agent's own credential,
//! impersonation, the encodings it accepts, and the stream protocols an exec may speak.
//!
//! Why this exists: the agent's identity upstream is the gateway's login and nothing else.
//! `Impersonate-*` would let a request act as another user (or group) with the gateway's
//! token, so it is refused whatever the policy says. Responses must be JSON for masking to read
//! them: protobuf is never asked for. And an exec is recorded frame by frame, which the
//! gateway can do for the channel protocols it reads (`v4`/`v5.channel.k8s.io`) only.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The WebSocket subprotocols of exec, attach and port-forward streams the gateway reads:
/// binary frames whose first byte is the channel.
pub const CHANNEL_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The first `Impersonate-*` header (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`), if any.
pub fn impersonation(headers: &HeaderMap) -> Option<&str> {
    headers
        .keys()
        .map(HeaderName::as_str)
        .find(|name| name.starts_with("impersonate-"))
}

/// Keeps the JSON media ranges of `Accept` (Tables, watch streams included) and drops the
/// rest (protobuf, CBOR, YAML, `*/*`): the API server then answers JSON, which masking reads.
/// Nothing left: `application/json`.
pub fn force_json(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|range| {
            let essence = range.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
        })
        .map(str::to_owned)
        .collect();
    let value = if kept.is_empty() {
        "application/json".to_owned()
    } else {
        kept.join(", ")
    };
    headers.remove(header::ACCEPT);
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(header::ACCEPT, value);
    } else {
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    }
}

/// Narrows the agent's WebSocket subprotocol offer to the channel protocols the gateway
/// records; `false` when none of them was offered (the stream is then refused).
pub fn channel_protocols(headers: &mut HeaderMap) -> bool {
    let name = header::SEC_WEBSOCKET_PROTOCOL;
    let offered: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| CHANNEL_PROTOCOLS.contains(&p.as_str()))
        .collect();
    headers.remove(&name);
    if offered.is_empty() {
        return false;
    }
    match HeaderValue::from_str(&offered.join(", ")) {
        Ok(value) => {
            headers.insert(name, value);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    #[test]
    fn impersonation_is_found_whatever_its_case() {
        assert_eq!(
            impersonation(&map(&[("Impersonate-User", "admin")])),
            Some("impersonate-user")
        );
        assert_eq!(
            impersonation(&map(&[("impersonate-extra-scopes", "x")])),
            Some("impersonate-extra-scopes")
        );
        assert_eq!(impersonation(&map(&[("accept", "*/*")])), None);
    }

    #[test]
    fn protobuf_is_never_asked_for() {
        let mut h = map(&[(
            "accept",
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1;g=meta.k8s.io, */*",
        )]);
        force_json(&mut h);
        assert_eq!(
            h[header::ACCEPT],
            "application/json;as=Table;v=v1;g=meta.k8s.io"
        );
        let mut h = map(&[("accept", "application/vnd.kubernetes.protobuf")]);
        force_json(&mut h);
        assert_eq!(h[header::ACCEPT], "application/json");
        let mut h = HeaderMap::new();
        force_json(&mut h);
        assert_eq!(h[header::ACCEPT], "application/json");
    }

    #[test]
    fn only_channel_protocols_are_offered_upstream() {
        let mut h = map(&[(
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io, base64.channel.k8s.io",
        )]);
        assert!(channel_protocols(&mut h));
        assert_eq!(
            h[header::SEC_WEBSOCKET_PROTOCOL],
            "v5.channel.k8s.io, v4.channel.k8s.io"
        );
        let mut h = map(&[("sec-websocket-protocol", "base64.channel.k8s.io")]);
        assert!(!channel_protocols(&mut h));
        assert!(!channel_protocols(&mut HeaderMap::new()));
    }
}
