//! The request headers a Kubernetes target changes or refuses: the agent's own credential,
//! impersonation, the encodings it accepts, and the stream protocols an exec may speak.
//!
//! Why this exists: the agent's identity upstream is the gateway's login and nothing else.
//! `Impersonate-*` would let a request act as another user (or group) with the gateway's
//! token, so it is refused whatever the policy says. Responses must be JSON for masking to read
//! them: protobuf is never asked for. And an exec is recorded frame by frame, which the
//! gateway can do for the stream protocols it reads only: the channel protocols over WebSocket
//! (`v4`/`v5.channel.k8s.io`), SPDY with the v4 channel protocol or port-forward's, and SPDY
//! tunnelled in a port-forward's WebSocket ([`super::spdy`]).

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

/// The WebSocket subprotocol of `kubectl port-forward` (1.31 and later): SPDY tunnelled in
/// the WebSocket's binary messages. Spelled as the API server compares it.
pub const TUNNELED_SPDY: &str = "SPDY/3.1+portforward.k8s.io";

/// The SPDY stream protocols the gateway reads (`X-Stream-Protocol-Version`): exec and attach
/// in the v4 channel protocol (whose error stream carries a `Status`), port-forward's one.
pub const SPDY_TERMINAL: &str = "v4.channel.k8s.io";
pub const SPDY_PORT_FORWARD: &str = "portforward.k8s.io";

/// The header naming a SPDY stream protocol, offered by the client and chosen by the server.
pub const STREAM_PROTOCOL: &str = "x-stream-protocol-version";

/// Narrows the agent's offer of stream protocols to those the gateway reads for this
/// stream; `false` when none is left (the stream is then refused). A WebSocket (`upgrade`
/// `websocket`) keeps the channel protocols (and, for a port-forward, SPDY tunnelled); SPDY
/// (`spdy/3.1`) keeps the v4 channel protocol, or port-forward's. The other kind's header
/// is dropped, so the server chooses from what the gateway reads and nothing else.
pub fn stream_protocols(headers: &mut HeaderMap, upgrade: &str, port_forward: bool) -> bool {
    let (name, other, known): (HeaderName, HeaderName, Vec<&str>) = match upgrade {
        "websocket" => {
            let mut known = CHANNEL_PROTOCOLS.to_vec();
            if port_forward {
                known.push(TUNNELED_SPDY);
            }
            (
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderName::from_static(STREAM_PROTOCOL),
                known,
            )
        }
        "spdy/3.1" => (
            HeaderName::from_static(STREAM_PROTOCOL),
            header::SEC_WEBSOCKET_PROTOCOL,
            vec![if port_forward {
                SPDY_PORT_FORWARD
            } else {
                SPDY_TERMINAL
            }],
        ),
        _ => return false,
    };
    // Offered names compare without case and are sent spelled as the server knows them.
    let offered: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| {
            known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(p.trim()))
                .copied()
        })
        .collect();
    headers.remove(&name);
    headers.remove(&other);
    if offered.is_empty() {
        return false;
    }
    if upgrade == "websocket" {
        // One header, in the agent's order of preference.
        let mut unique: Vec<&str> = Vec::new();
        for p in offered {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        // The names are the constants above, so this is always a valid value; were it not,
        // the stream is refused rather than offered something else.
        let Ok(value) = HeaderValue::from_str(&unique.join(", ")) else {
            return false;
        };
        headers.insert(name, value);
    } else {
        headers.insert(name, HeaderValue::from_static(offered[0]));
    }
    true
}

/// How the API server framed an approved stream, read from its 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A WebSocket in the v4 or v5 channel protocol.
    Channels,
    /// Plain SPDY/3.1.
    Spdy,
    /// SPDY/3.1 in a WebSocket's binary messages.
    TunneledSpdy,
}

/// The framing the API server chose, from its 101: what it names must be one of what the
/// gateway offered for this stream (`None` otherwise: the switch is not relayed).
pub fn switched(upgrade: &str, answer: &HeaderMap, port_forward: bool) -> Option<Framing> {
    let one = |name: &str| {
        let mut values = answer.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().map(str::trim),
            _ => None,
        }
    };
    match upgrade {
        "websocket" => {
            let chosen = one(header::SEC_WEBSOCKET_PROTOCOL.as_str())?;
            if CHANNEL_PROTOCOLS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(chosen))
            {
                Some(Framing::Channels)
            } else if port_forward && chosen.eq_ignore_ascii_case(TUNNELED_SPDY) {
                Some(Framing::TunneledSpdy)
            } else {
                None
            }
        }
        "spdy/3.1" => {
            let chosen = one(STREAM_PROTOCOL)?;
            let wanted = if port_forward {
                SPDY_PORT_FORWARD
            } else {
                SPDY_TERMINAL
            };
            chosen.eq_ignore_ascii_case(wanted).then_some(Framing::Spdy)
        }
        _ => None,
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
        assert!(stream_protocols(&mut h, "websocket", false));
        assert_eq!(
            h[header::SEC_WEBSOCKET_PROTOCOL],
            "v5.channel.k8s.io, v4.channel.k8s.io"
        );
        let mut h = map(&[("sec-websocket-protocol", "base64.channel.k8s.io")]);
        assert!(!stream_protocols(&mut h, "websocket", false));
        assert!(!stream_protocols(&mut HeaderMap::new(), "websocket", false));
        // SPDY tunnelled in the WebSocket: port-forward only, spelled as the server knows it.
        let tunneled = [("sec-websocket-protocol", "spdy/3.1+portforward.k8s.io")];
        assert!(!stream_protocols(&mut map(&tunneled), "websocket", false));
        let mut h = map(&tunneled);
        assert!(stream_protocols(&mut h, "websocket", true));
        assert_eq!(h[header::SEC_WEBSOCKET_PROTOCOL], TUNNELED_SPDY);
        // Plain SPDY: one version, the one the gateway reads; the WebSocket offer is dropped.
        let mut h = map(&[
            ("x-stream-protocol-version", "v5.channel.k8s.io"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
            ("sec-websocket-protocol", "v4.channel.k8s.io"),
        ]);
        assert!(stream_protocols(&mut h, "spdy/3.1", false));
        let versions: Vec<_> = h.get_all(STREAM_PROTOCOL).iter().collect();
        assert_eq!(versions, ["v4.channel.k8s.io"]);
        assert!(h.get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
        let mut h = map(&[("x-stream-protocol-version", "v3.channel.k8s.io")]);
        assert!(!stream_protocols(&mut h, "spdy/3.1", false));
        let mut h = map(&[("x-stream-protocol-version", "portforward.k8s.io")]);
        assert!(stream_protocols(&mut h, "spdy/3.1", true));
        assert!(!stream_protocols(&mut h, "h2c", true));
    }

    #[test]
    fn the_servers_choice_must_be_one_the_gateway_offered() {
        let ws = |p: &str| map(&[("sec-websocket-protocol", p)]);
        assert_eq!(
            switched("websocket", &ws("v5.channel.k8s.io"), false),
            Some(Framing::Channels)
        );
        assert_eq!(
            switched("websocket", &ws("SPDY/3.1+portforward.k8s.io"), true),
            Some(Framing::TunneledSpdy)
        );
        assert_eq!(
            switched("websocket", &ws("SPDY/3.1+portforward.k8s.io"), false),
            None
        );
        assert_eq!(
            switched("websocket", &ws("base64.channel.k8s.io"), false),
            None
        );
        assert_eq!(switched("websocket", &HeaderMap::new(), false), None);
        let spdy = |p: &str| map(&[("x-stream-protocol-version", p)]);
        assert_eq!(
            switched("spdy/3.1", &spdy("v4.channel.k8s.io"), false),
            Some(Framing::Spdy)
        );
        assert_eq!(
            switched("spdy/3.1", &spdy("v3.channel.k8s.io"), false),
            None
        );
        assert_eq!(
            switched("spdy/3.1", &spdy("portforward.k8s.io"), true),
            Some(Framing::Spdy)
        );
        assert_eq!(
            switched("spdy/3.1", &spdy("portforward.k8s.io"), false),
            None
        );
    }
}
