//! Sticky sessions, as Cloud Foundry's router has them: when an app sets a `JSESSIONID`
//! cookie, the router sets `__VCAP_ID__` beside it (same path, expiry and flags) naming the
//! instance that answered, and sends later requests carrying that cookie to the same
//! instance for as long as it is there. When it is gone (or refuses connections) the
//! request goes to another instance like any other, whose answer starts a new session.
//!
//! Both request paths (the relay and hyper) use these two functions on raw header values.

/// The cookie an app sets to ask for a sticky session.
pub(crate) const SESSION_COOKIE: &[u8] = b"JSESSIONID";
/// The cookie the router sets to name the instance.
pub(crate) const INSTANCE_COOKIE: &[u8] = b"__VCAP_ID__";

/// The instance a `Cookie` header value names in `__VCAP_ID__`, if it does.
pub(crate) fn instance_in(cookie: &[u8]) -> Option<&[u8]> {
    cookie.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        let value = value[1..].trim_ascii();
        (name.trim_ascii() == INSTANCE_COOKIE && !value.is_empty()).then_some(value)
    })
}

/// For a `Set-Cookie` value that sets the session cookie, the `Set-Cookie` value pinning
/// the client to `instance`, with the session cookie's attributes (so it expires, or is
/// deleted, with it).
pub(crate) fn instance_cookie(set_cookie: &[u8], instance: &str) -> Option<Vec<u8>> {
    let (pair, attributes) = match set_cookie.iter().position(|&b| b == b';') {
        Some(at) => (&set_cookie[..at], Some(&set_cookie[at + 1..])),
        None => (set_cookie, None),
    };
    let name = &pair[..pair.iter().position(|&b| b == b'=')?];
    if name.trim_ascii() != SESSION_COOKIE {
        return None;
    }
    let mut value = INSTANCE_COOKIE.to_vec();
    value.push(b'=');
    value.extend_from_slice(instance.as_bytes());
    if let Some(attributes) = attributes.map(<[u8]>::trim_ascii).filter(|a| !a.is_empty()) {
        value.extend_from_slice(b"; ");
        value.extend_from_slice(attributes);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_cookie_is_found_among_others() {
        assert_eq!(
            instance_in(b"JSESSIONID=abc; __VCAP_ID__=inst-1; x=y"),
            Some(&b"inst-1"[..])
        );
        assert_eq!(instance_in(b"__VCAP_ID__=inst-2"), Some(&b"inst-2"[..]));
        assert_eq!(instance_in(b"JSESSIONID=abc"), None);
        assert_eq!(instance_in(b"__VCAP_ID__=; a"), None);
        assert_eq!(instance_in(b"my__VCAP_ID__=x"), None);
    }

    #[test]
    fn the_session_cookie_gets_a_twin_with_its_attributes() {
        assert_eq!(
            instance_cookie(b"JSESSIONID=abc; Path=/; HttpOnly", "inst-1").as_deref(),
            Some(&b"__VCAP_ID__=inst-1; Path=/; HttpOnly"[..])
        );
        assert_eq!(
            instance_cookie(b"JSESSIONID=abc", "i").as_deref(),
            Some(&b"__VCAP_ID__=i"[..])
        );
        assert_eq!(instance_cookie(b"other=abc; Path=/", "i"), None);
        assert_eq!(instance_cookie(b"garbage", "i"), None);
    }
}
