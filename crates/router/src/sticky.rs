//! Sticky sessions, as Cloud Foundry's router has them: when an app sets a `JSESSIONID`
//! cookie, the router sets `__VCAP_ID__` beside it (same path, expiry and flags) naming the
//! instance that answered, and sends later requests carrying that cookie to the same
//! instance for as long as it is there. When it is gone (or refuses connections) the
//! request goes to another instance like any other, and the router pins the session to
//! that one instead.
//!
//! Both request paths (the relay and hyper) use these functions on raw header values.

/// The cookie an app sets to ask for a sticky session.
const SESSION_COOKIE: &[u8] = b"JSESSIONID";
/// The cookie the router sets to name the instance.
const INSTANCE_COOKIE: &[u8] = b"__VCAP_ID__";

/// What a request's cookies say about its session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    /// The instance `__VCAP_ID__` names.
    pub(crate) instance: Option<Box<[u8]>>,
    /// The client has a `JSESSIONID`.
    pub(crate) started: bool,
}

impl Session {
    /// Adds what one `Cookie` header value says (HTTP/2 may split cookies over several).
    pub(crate) fn read(&mut self, cookie: &[u8]) {
        for pair in cookie.split(|&b| b == b';') {
            let Some((name, value)) = split_pair(pair) else {
                continue;
            };
            if name == SESSION_COOKIE {
                self.started = true;
            } else if name == INSTANCE_COOKIE && !value.is_empty() && self.instance.is_none() {
                self.instance = Some(Box::from(value));
            }
        }
    }

    pub(crate) fn instance(&self) -> Option<&[u8]> {
        self.instance.as_deref()
    }

    /// The `Set-Cookie` values to add to a response from `instance` that sets the cookies
    /// in `set_cookies`: a `__VCAP_ID__` twin of a `JSESSIONID` being set (with its
    /// attributes, so it expires or is deleted with it); or, for a client with a session
    /// that landed on another instance than its cookie names, one pinning it there. None
    /// when the app sets `__VCAP_ID__` itself.
    pub(crate) fn pins(&self, set_cookies: &[&[u8]], instance: &str) -> Vec<Vec<u8>> {
        if !is_cookie_value(instance)
            || set_cookies
                .iter()
                .any(|c| split_pair(c).is_some_and(|(name, _)| name == INSTANCE_COOKIE))
        {
            return Vec::new();
        }
        let twins: Vec<Vec<u8>> = set_cookies
            .iter()
            .filter_map(|cookie| twin(cookie, instance))
            .collect();
        let moved = self.started && self.instance() != Some(instance.as_bytes());
        if twins.is_empty() && moved {
            return vec![instance_cookie(instance, b"Path=/; HttpOnly")];
        }
        twins
    }
}

/// `name=value` of a cookie pair (or of a `Set-Cookie` value's first part), trimmed.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let pair = pair.split(|&b| b == b';').next()?.trim_ascii();
    let at = pair.iter().position(|&b| b == b'=')?;
    Some((pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()))
}

/// For a `Set-Cookie` value that sets the session cookie, its `__VCAP_ID__` twin.
fn twin(set_cookie: &[u8], instance: &str) -> Option<Vec<u8>> {
    let (name, _) = split_pair(set_cookie)?;
    if name != SESSION_COOKIE {
        return None;
    }
    let attributes = set_cookie
        .iter()
        .position(|&b| b == b';')
        .map_or(&b""[..], |at| set_cookie[at + 1..].trim_ascii());
    Some(instance_cookie(instance, attributes))
}

fn instance_cookie(instance: &str, attributes: &[u8]) -> Vec<u8> {
    let mut value = INSTANCE_COOKIE.to_vec();
    value.push(b'=');
    value.extend_from_slice(instance.as_bytes());
    if !attributes.is_empty() {
        value.extend_from_slice(b"; ");
        value.extend_from_slice(attributes);
    }
    value
}

/// Whether `id` can be a cookie's value as it is (RFC 6265 cookie-octets), so an instance
/// id from the bus can never add attributes or headers to a response.
pub(crate) fn is_cookie_value(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(cookies: &[&str]) -> Session {
        let mut session = Session::default();
        for cookie in cookies {
            session.read(cookie.as_bytes());
        }
        session
    }

    fn pins(session: &Session, set_cookies: &[&str], instance: &str) -> Vec<String> {
        let set_cookies: Vec<&[u8]> = set_cookies.iter().map(|c| c.as_bytes()).collect();
        session
            .pins(&set_cookies, instance)
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn a_session_is_read_from_all_cookie_headers() {
        let s = session(&["JSESSIONID=abc; __VCAP_ID__=inst-1; x=y"]);
        assert_eq!((s.instance(), s.started), (Some(&b"inst-1"[..]), true));
        let s = session(&["a=b", "__VCAP_ID__=inst-2"]);
        assert_eq!((s.instance(), s.started), (Some(&b"inst-2"[..]), false));
        for none in ["__VCAP_ID__=; a", "my__VCAP_ID__=x", "garbage"] {
            assert_eq!(session(&[none]).instance(), None, "{none}");
        }
    }

    #[test]
    fn the_session_cookie_gets_a_twin_with_its_attributes() {
        let fresh = Session::default();
        assert_eq!(
            pins(
                &fresh,
                &["JSESSIONID=abc; Path=/; HttpOnly", "other=1"],
                "i1"
            ),
            ["__VCAP_ID__=i1; Path=/; HttpOnly"]
        );
        assert_eq!(pins(&fresh, &["JSESSIONID=abc"], "i1"), ["__VCAP_ID__=i1"]);
        assert!(pins(&fresh, &["other=abc; Path=/"], "i1").is_empty());
        // The app sets the instance cookie itself: nothing is added.
        assert!(pins(&fresh, &["JSESSIONID=abc", "__VCAP_ID__=mine"], "i1").is_empty());
    }

    #[test]
    fn a_session_that_moved_is_pinned_to_its_new_instance() {
        let moved = session(&["JSESSIONID=abc; __VCAP_ID__=gone"]);
        assert_eq!(
            pins(&moved, &[], "i2"),
            ["__VCAP_ID__=i2; Path=/; HttpOnly"]
        );
        let lost = session(&["JSESSIONID=abc"]);
        assert_eq!(pins(&lost, &[], "i2"), ["__VCAP_ID__=i2; Path=/; HttpOnly"]);
        let stayed = session(&["JSESSIONID=abc; __VCAP_ID__=i2"]);
        assert!(pins(&stayed, &[], "i2").is_empty());
        let no_session = session(&["__VCAP_ID__=gone"]);
        assert!(pins(&no_session, &[], "i2").is_empty());
    }

    #[test]
    fn only_plain_ids_are_cookie_values() {
        assert!(is_cookie_value("c0ffee-1"));
        assert!(is_cookie_value("127.0.0.1:8080"));
        for bad in [
            "",
            "a b",
            "x;Domain=evil",
            "x\r\nLocation: //evil",
            "a,b",
            "\"q\"",
        ] {
            assert!(!is_cookie_value(bad), "{bad:?}");
        }
    }
}
