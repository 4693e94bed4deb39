//! Host names as the router compares them: the Host header and registered URIs both go
//! through [`normalize`], so `Foo.Example.com.:8080` and `foo.example.com` are one route.

use std::borrow::Cow;
use std::net::IpAddr;

/// Strips a port and a trailing dot and lowercases; borrows when nothing needs changing.
/// IPv6 literals lose their brackets (`[::1]:80` → `::1`).
pub fn normalize(raw: &str) -> Cow<'_, str> {
    let host = strip_port(raw.trim());
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The host of a registered URI: drops a scheme, a path and a port (`http://a.b/x` → `a.b`).
pub fn route_host(uri: &str) -> Cow<'_, str> {
    let uri = uri.trim();
    let uri = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let uri = uri.split(['/', '?']).next().unwrap_or(uri);
    normalize(uri)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Whether a normalized host names the router's own machine rather than an app: an IP
/// literal or bare `localhost`.
pub fn is_local_name(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_port_dot_and_case() {
        assert_eq!(normalize("Foo.Example.COM:8080"), "foo.example.com");
        assert_eq!(normalize("foo.example.com."), "foo.example.com");
        assert_eq!(normalize("foo.example.com.:81"), "foo.example.com");
        assert_eq!(normalize("[::1]:8080"), "::1");
        assert_eq!(normalize("::1"), "::1");
        assert_eq!(normalize("localhost:"), "localhost");
    }

    #[test]
    fn borrows_when_already_normal() {
        assert!(matches!(normalize("a.b:1"), Cow::Borrowed("a.b")));
    }

    #[test]
    fn route_host_drops_scheme_and_path() {
        assert_eq!(route_host("http://App.Example.com/x?y"), "app.example.com");
        assert_eq!(route_host("app.example.com"), "app.example.com");
    }

    #[test]
    fn local_names() {
        assert!(is_local_name("127.0.0.1"));
        assert!(is_local_name("::1"));
        assert!(is_local_name("localhost"));
        assert!(!is_local_name("foo.localhost"));
        assert!(!is_local_name("api.example.com"));
    }
}
