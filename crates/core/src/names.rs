//! Validation of user-chosen names: apps, hosts, domains.

/// Why a name was refused, worded for the user.
pub fn check_app_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the app name is empty; give one, e.g. `strato push myapp`".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "the app name '{name}' is longer than 63 characters"
        ));
    }
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok || name.starts_with('-') || name.starts_with('.') {
        return Err(format!(
            "the app name '{name}' may contain only letters, digits, '-', '_' and '.', and must start with a letter or digit"
        ));
    }
    Ok(())
}

/// A host label for a route: DNS rules (letters, digits, '-'; 1–63 chars).
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 63 {
        return Err(format!("the host '{host}' must be 1 to 63 characters long"));
    }
    let ok = host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok || host.starts_with('-') || host.ends_with('-') {
        return Err(format!(
            "the host '{host}' may contain only letters, digits and '-', and may not start or end with '-'"
        ));
    }
    Ok(())
}

/// The default host for an app name: lowercased, with characters DNS refuses turned into '-'.
pub fn host_for_app(name: &str) -> String {
    let h: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    h.trim_matches('-').to_string()
}

/// A Debian package name (optionally `=version` or `:arch`), as `requirements: ubuntu:`
/// accepts it; never an option (no leading `-`).
pub fn debian_package_name(p: &str) -> bool {
    let name = p.split(['=', ':']).next().unwrap_or("");
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.:=~_".contains(c))
}

/// A URL's `user:password@` taken out: `((user, password), url without them)`.
pub fn split_credentials(url: &str) -> (Option<(String, String)>, String) {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            let userinfo = &url[scheme + 3..at];
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (
                Some((user.to_string(), password.to_string())),
                format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
            )
        }
        _ => (None, url.to_string()),
    }
}

/// A domain name: lower-case DNS labels, at least two of them.
pub fn check_domain(name: &str) -> Result<(), String> {
    let labels: Vec<&str> = name.split('.').collect();
    if name.len() > 253 || labels.len() < 2 {
        return Err(format!(
            "'{name}' is not a domain name: give at least two labels, e.g. example.com"
        ));
    }
    labels.iter().try_for_each(|l| check_host(l))
}

/// The servers of a NATS URL list (`STRATO_NATS_URL=nats://u:p@10.0.0.1:4222,nats://10.0.0.2:4222`,
/// a cluster of three written as three URLs): each URL without credentials, and the
/// credentials of the first that carries any (one user for the whole cluster).
pub fn nats_servers(list: &str) -> (Option<(String, String)>, Vec<String>) {
    let mut credentials = None;
    let mut urls = Vec::new();
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (found, url) = split_credentials(url);
        if credentials.is_none() {
            credentials = found;
        }
        urls.push(url);
    }
    (credentials, urls)
}

/// A URL with the password of its userinfo masked (`nats://node-1:***@10.0.0.1:4222`), so
/// credentials in a URL never reach a log or an error message.
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn app_names() {
        assert!(check_app_name("my-app_1.v2").is_ok());
        assert!(check_app_name("").is_err());
        assert!(check_app_name("bad name")
            .unwrap_err()
            .contains("may contain only"));
        assert!(check_app_name("-x").is_err());
    }
    #[test]
    fn hosts() {
        assert!(check_host("myapp").is_ok());
        assert!(check_host("my_app").is_err());
        assert_eq!(host_for_app("My_App.v2"), "my-app-v2");
    }

    #[test]
    fn debian_package_names_are_never_options() {
        for ok in [
            "libpq5",
            "python3-dev",
            "g++",
            "libc6:amd64",
            "curl=7.88.1-10+deb12u5",
        ] {
            assert!(debian_package_name(ok), "{ok}");
        }
        for bad in ["-y", "--allow-unauthenticated", "a", "Libpq", "pkg;rm", ""] {
            assert!(!debian_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn credentials_come_out_of_urls() {
        assert_eq!(
            nats_servers(" nats://u:p@10.0.0.1:4222, nats://10.0.0.2:4222,"),
            (
                Some(("u".to_string(), "p".to_string())),
                vec![
                    "nats://10.0.0.1:4222".to_string(),
                    "nats://10.0.0.2:4222".to_string()
                ]
            )
        );
        assert_eq!(
            split_credentials("nats://u:p@10.0.0.1:4222"),
            (
                Some(("u".to_string(), "p".to_string())),
                "nats://10.0.0.1:4222".to_string()
            )
        );
        assert_eq!(
            split_credentials("nats://10.0.0.1:4222"),
            (None, "nats://10.0.0.1:4222".to_string())
        );
    }

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            without_password("nats://node-1:s3cret@10.0.0.1:4222"),
            "nats://node-1:***@10.0.0.1:4222"
        );
        assert_eq!(
            without_password("nats://10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
    }
}
