//! Which names the certificates here may carry: DNS names checked label by label, the
//! `*.parent` wildcard form of operator-installed certificates, and how a certificate's
//! names cover a host. One place, so installing, listing and serving agree.

use std::net::IpAddr;

/// The longest DNS name (RFC 1035), without a trailing dot.
const MAX_NAME_LEN: usize = 253;
/// The longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// Why a name was refused, worded to complete "… is not usable: <reason>".
pub(crate) type Refusal = String;

/// Checks a host name the way it is put in an issued certificate: lower-case letters,
/// digits, `-` (and `_`, which some app names carry) in dot-separated labels; no wildcard.
pub(crate) fn check_host(name: &str) -> Result<(), Refusal> {
    check_dns_name(name, true)
}

/// Checks the domain an operator installs a certificate for: a lower-case DNS name, or
/// `*.` followed by one with at least two labels (clients reject `*.localhost`-style
/// wildcards directly under a one-label domain, so installing one would only mislead).
pub(crate) fn check_domain(domain: &str) -> Result<(), Refusal> {
    match domain.strip_prefix("*.") {
        Some(parent) => {
            check_dns_name(parent, false)?;
            if !parent.contains('.') {
                return Err(format!(
                    "a wildcard needs at least two labels after '*.' (clients reject '*.{parent}')"
                ));
            }
            Ok(())
        }
        None => check_dns_name(domain, false),
    }
}

fn check_dns_name(name: &str, allow_underscore: bool) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} characters"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("an IP address is not a domain name".into());
    }
    for label in name.split('.') {
        check_label(label, allow_underscore)?;
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label is all digits".into());
    }
    Ok(())
}

fn check_label(label: &str, allow_underscore: bool) -> Result<(), Refusal> {
    if label.is_empty() {
        return Err(
            "it has an empty label (two dots in a row, or a leading or trailing dot)".into(),
        );
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "the label '{label}' is longer than {MAX_LABEL_LEN} characters"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("the label '{label}' starts or ends with '-'"));
    }
    let allowed = |b: u8| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (allow_underscore && b == b'_')
    };
    match label.bytes().find(|&b| !allowed(b)) {
        None => Ok(()),
        Some(b) if b.is_ascii_uppercase() => Err("use lower-case letters".into()),
        Some(_) => Err(format!(
            "the label '{label}' has a character other than a-z, 0-9 and '-'"
        )),
    }
}

/// `*.parent` for `label.parent`: the one wildcard that may cover `host`.
pub(crate) fn wildcard_over(host: &str) -> Option<String> {
    let (label, parent) = host.split_once('.')?;
    (!label.is_empty() && !label.contains('*') && parent.contains('.'))
        .then(|| format!("*.{parent}"))
}

/// Whether a certificate name (exact, or a `*.parent` wildcard standing for one label)
/// covers `domain`. A wildcard domain is covered only by the same wildcard.
pub(crate) fn covers(cert_name: &str, domain: &str) -> bool {
    let cert_name = cert_name.trim_end_matches('.').to_ascii_lowercase();
    if cert_name == domain {
        return true;
    }
    cert_name.starts_with("*.") && wildcard_over(domain).is_some_and(|w| w == cert_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lower_case_labels_or_a_wildcard_over_two_labels() {
        for ok in [
            "example.com",
            "a-b.example.com",
            "localhost",
            "*.example.com",
            "x1.io",
        ] {
            assert_eq!(check_domain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Example.com",
            "../etc/passwd",
            "a/b.com",
            "a..b",
            ".a.com",
            "a.com.",
            "-a.com",
            "*.localhost",
            "*.*.example.com",
            "a.*.example.com",
            "*example.com",
            "a_b.example.com",
            "127.0.0.1",
            "1.2.3.4.5",
        ] {
            assert!(check_domain(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn hosts_never_carry_a_wildcard() {
        assert!(check_host("*.example.com").is_err());
        assert_eq!(check_host("my_app.example.test"), Ok(()));
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        assert!(covers("*.example.com", "shop.example.com"));
        assert!(covers("*.EXAMPLE.com", "shop.example.com"));
        assert!(!covers("*.example.com", "a.shop.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("shop.example.com", "*.example.com"));
        assert!(covers("shop.example.com", "shop.example.com"));
        assert!(!covers("*.com", "example.com"));
    }
}
