//! What one HTTP request is, read once: the [`HttpRequest`] policy judges, and the exact
//! method, authority and path the gateway forwards in its place.
//!
//! Why this exists: a gate that judges one reading of a URL and forwards another is no gate.
//! The path is percent-decoded exactly once, checked, and re-encoded; what policy matched is
//! what the upstream receives. Where two readings are possible (an encoded `/` or `\`, dot
//! segments, `..;` that some servers treat as `..`, a `%` that still decodes after decoding,
//! an authority that disagrees with the `Host` header), the request is refused (400) rather
//! than guessed at.

use hyper::{
    header::HOST,
    http::{request::Parts, uri::Authority},
    Method,
};

use crate::command::HttpRequest;

/// Why a request cannot be read one way only (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguous {
    #[error("no Host header or authority")]
    NoHost,
    #[error("the Host header and the request's authority disagree")]
    HostMismatch,
    #[error("more than one Host header")]
    ManyHosts,
    #[error("invalid host: {0}")]
    BadHost(String),
    #[error("invalid path: {0}")]
    BadPath(&'static str),
    #[error("invalid method")]
    BadMethod,
}

/// A request as judged and as forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub request: HttpRequest,
    /// The method as forwarded (upper case).
    pub method: Method,
    /// `path?query` as forwarded: the normalised path, re-encoded.
    pub path_and_query: String,
}

/// Reads the request head. `scheme` is `http` or `https` (the agent's leg).
pub fn describe(parts: &Parts, scheme: &str) -> Result<Described, Ambiguous> {
    let upper = parts.method.as_str().to_ascii_uppercase();
    let method = Method::from_bytes(upper.as_bytes()).map_err(|_| Ambiguous::BadMethod)?;
    let host = host(parts, scheme)?;
    let raw_path = parts.uri.path();
    let (path, forwarded) = if raw_path == "*" && method == Method::OPTIONS {
        ("*".to_owned(), "*".to_owned())
    } else {
        let path = normalise_path(raw_path)?;
        let forwarded = encode_path(&path);
        (path, forwarded)
    };
    let query = parts
        .uri
        .query()
        .filter(|q| !q.is_empty())
        .map(str::to_owned);
    let path_and_query = match &query {
        Some(q) => format!("{forwarded}?{q}"),
        None => forwarded,
    };
    Ok(Described {
        request: HttpRequest {
            method: upper,
            scheme: scheme.to_owned(),
            host,
            path,
            query,
            upgrade: None,
        },
        method,
        path_and_query,
    })
}

/// The authority, from the URI (absolute form, HTTP/2's `:authority`) or the `Host` header;
/// both present must agree. Lower case, without userinfo, the port only when not the default.
fn host(parts: &Parts, scheme: &str) -> Result<String, Ambiguous> {
    let mut headers = parts.headers.get_all(HOST).iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err(Ambiguous::ManyHosts);
    }
    let from_header = header
        .map(|v| {
            let text = v
                .to_str()
                .map_err(|_| Ambiguous::BadHost("not ASCII".to_owned()))?;
            let authority: Authority = text
                .parse()
                .map_err(|_| Ambiguous::BadHost(format!("{text:?}")))?;
            normalise_authority(&authority, scheme)
        })
        .transpose()?;
    let from_uri = parts
        .uri
        .authority()
        .map(|a| normalise_authority(a, scheme))
        .transpose()?;
    match (from_uri, from_header) {
        (Some(u), Some(h)) if u != h => Err(Ambiguous::HostMismatch),
        (Some(u), _) => Ok(u),
        (None, Some(h)) => Ok(h),
        (None, None) => Err(Ambiguous::NoHost),
    }
}

fn normalise_authority(authority: &Authority, scheme: &str) -> Result<String, Ambiguous> {
    if authority.as_str().contains('@') {
        return Err(Ambiguous::BadHost("userinfo in the authority".to_owned()));
    }
    let host = authority.host().to_ascii_lowercase();
    if !one_reading(&host) {
        return Err(Ambiguous::BadHost(format!("{host:?}")));
    }
    let default = if scheme == "https" { 443 } else { 80 };
    Ok(match authority.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host,
    })
}

/// Whether a host (lower case, without port) reads one way only: an IPv6 literal in
/// brackets, a canonical IPv4 address, or a name of letters, digits, `-`, `_` and `.`.
/// Brackets or a colon anywhere else are refused (the `http` crate's authority parser lets
/// `127.0.0.4[t` through). A name made only of numbers is an IPv4 address to a resolver, and
/// `inet_aton` reads `0177.0.0.4` as 127.0.0.4 (octal, where a decimal reader sees 177),
/// `0x7f.1` and `2130706433` as 127.0.0.1: such a host is taken only in its canonical
/// dotted-decimal form.
fn one_reading(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return false;
    }
    let number = |label: &str| {
        let digits = label.strip_prefix("0x").unwrap_or(label);
        label.bytes().all(|b| b.is_ascii_hexdigit() || b == b'x')
            && (label.starts_with("0x") || label.bytes().all(|b| b.is_ascii_digit()))
            && digits.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if host.trim_end_matches('.').split('.').all(number) {
        return host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.to_string() == host);
    }
    true
}

/// Decodes the path once and checks that it has one reading; folds `//`.
pub fn normalise_path(raw: &str) -> Result<String, Ambiguous> {
    if !raw.starts_with('/') {
        return Err(Ambiguous::BadPath("not absolute"));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Ambiguous::BadPath("a % that is not an escape"))?;
            match hex {
                b'/' => return Err(Ambiguous::BadPath("an encoded slash")),
                b'\\' => return Err(Ambiguous::BadPath("an encoded backslash")),
                _ => decoded.push(hex),
            }
            i += 3;
        } else {
            if b == b'\\' {
                return Err(Ambiguous::BadPath("a backslash"));
            }
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.iter().any(|b| b.is_ascii_control()) {
        return Err(Ambiguous::BadPath("a control character"));
    }
    let text = String::from_utf8(decoded).map_err(|_| Ambiguous::BadPath("not UTF-8"))?;
    // A `%XX` left after one decoding was encoded twice: a server that decodes again would
    // read another path than the one judged.
    let tb = text.as_bytes();
    if tb
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err(Ambiguous::BadPath("encoded twice"));
    }
    let segments: Vec<&str> = text[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut path = String::with_capacity(text.len());
    for (n, segment) in segments.iter().enumerate() {
        // `..;x` is `..` to servlet containers.
        let bare = segment.split(';').next().unwrap_or_default();
        if bare == "." || bare == ".." {
            return Err(Ambiguous::BadPath("a dot segment"));
        }
        if segment.is_empty() && n != last {
            continue;
        }
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The decoded path as it goes on the wire: every byte outside RFC 3986's `pchar` and `/` is
/// percent-encoded.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, host: Option<&str>) -> Parts {
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            builder = builder.header(HOST, h);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn a_request_reads_as_its_canonical_text() {
        let d = describe(
            &parts("delete", "/api/customers/1?force=1", Some("API.Local:443")),
            "https",
        )
        .expect("describe");
        assert_eq!(
            d.request.canonical(),
            "DELETE https://api.local/api/customers/1?force=1"
        );
        assert_eq!(d.method, Method::DELETE);
        assert_eq!(d.path_and_query, "/api/customers/1?force=1");
        let d = describe(&parts("GET", "/x", Some("127.0.0.3:8080")), "http").expect("port");
        assert_eq!(d.request.canonical(), "GET http://127.0.0.3:8080/x");
    }

    #[test]
    fn the_path_is_decoded_once_and_forwarded_as_judged() {
        assert_eq!(
            normalise_path("/a//b/%7Euser/").as_deref(),
            Ok("/a/b/~user/")
        );
        assert_eq!(normalise_path("/caf%C3%A9").as_deref(), Ok("/café"));
        assert_eq!(encode_path("/café x"), "/caf%C3%A9%20x");
        assert_eq!(normalise_path("/100%25").as_deref(), Ok("/100%"));
        assert_eq!(encode_path("/100%"), "/100%25");
        assert_eq!(normalise_path("//").as_deref(), Ok("/"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a/../admin",
            "/a/%2e%2e/admin",
            "/a/./b",
            "/a/..;/admin",
            "/a/%252e%252e/admin",
            "/a%00b",
            "/a%zz",
            "/a%",
            "/%ff",
        ] {
            assert!(normalise_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_must_agree_and_exist() {
        let p = parts("GET", "http://127.0.0.3/x", Some("127.0.0.4"));
        assert_eq!(describe(&p, "http"), Err(Ambiguous::HostMismatch));
        let p = parts("GET", "/x", None);
        assert_eq!(describe(&p, "http"), Err(Ambiguous::NoHost));
        let p = parts("GET", "http://127.0.0.3:80/x", Some("127.0.0.3"));
        assert_eq!(
            describe(&p, "http").map(|d| d.request.host).as_deref(),
            Ok("127.0.0.3")
        );
        let p = parts("GET", "/x", Some("user@127.0.0.3"));
        assert!(describe(&p, "http").is_err());
    }

    #[test]
    fn a_host_that_reads_two_ways_is_refused() {
        for host in [
            "127.0.0.4[t:]", // brackets inside a name (a fuzz finding)
            "0177.0.0.1",    // octal to inet_aton
            "0x7f.1",
            "0xdead", // one 32-bit number to inet_aton
            "2130706433",
            "127.1",
            "[::1",
            "[127.0.0.1]",
        ] {
            let p = parts("GET", "/x", Some(host));
            assert!(
                matches!(describe(&p, "http"), Err(Ambiguous::BadHost(_))),
                "{host}"
            );
        }
        for (host, read) in [
            ("127.0.0.3:8080", "127.0.0.3:8080"),
            ("[::1]:8443", "[::1]:8443"),
            ("LocalHost", "localhost"),
            ("db-1.internal_zone", "db-1.internal_zone"),
            ("deadbeef.0x1z", "deadbeef.0x1z"), // a name: not every label is a number
        ] {
            let p = parts("GET", "/x", Some(host));
            assert_eq!(
                describe(&p, "http").map(|d| d.request.host).as_deref(),
                Ok(read),
                "{host}"
            );
        }
    }
}
