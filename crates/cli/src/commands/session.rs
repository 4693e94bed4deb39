//! Session commands: `target`, `targets`, `login`, `logout`, `info`.

use super::Ctx;
use crate::api::Api;
use crate::cf::{Info, Named, Resource};
use crate::cli::LoginArgs;
use crate::config::{env_pair, trim_url, Session, TargetSource};
use crate::error::usage;
use crate::prompt;
use crate::trust::Trust;
use anyhow::{anyhow, bail, Result};
use serde_json::json;

/// The URLs to try for what the user typed: as given, or https then http for a bare host.
pub fn candidate_urls(input: &str) -> Vec<String> {
    let url = trim_url(input);
    if url.contains("://") {
        vec![url]
    } else {
        vec![format!("https://{url}"), format!("http://{url}")]
    }
}

/// How `strato target URL` treats an HTTPS certificate this machine does not trust.
#[derive(Clone, Debug, Default)]
pub struct TlsChoice {
    /// Accept the server's certificate authority if its SHA-256 fingerprint is this.
    pub ca_fingerprint: Option<String>,
    /// Accept any certificate from this target from now on.
    pub skip_validation: bool,
}

/// `strato target [URL]`.
pub async fn target(ctx: &Ctx, url: Option<String>, tls: TlsChoice) -> Result<()> {
    match url {
        None => show_target(ctx),
        Some(url) => set_target(ctx, &url, &tls).await,
    }
}

fn show_target(ctx: &Ctx) -> Result<()> {
    let config = ctx.store.load()?;
    let target = ctx
        .resolve(&config)
        .ok_or_else(|| anyhow!("no target set; run `strato target URL`"))?;
    let session = config.targets.get(&target.url).cloned().unwrap_or_default();
    if ctx.out.json {
        return ctx.out.print_json(&json!({
            "target": target.url,
            "source": source_name(&target.source),
            "user": session.user.clone().filter(|_| session.logged_in()),
            "organization": session.org_name,
            "space": session.space_name,
        }));
    }
    match &target.source {
        TargetSource::Saved => println!("Target: {}", target.url),
        source => println!("Target: {} (from {source})", target.url),
    }
    print_session(&session);
    Ok(())
}

fn source_name(source: &TargetSource) -> String {
    match source {
        TargetSource::Flag => "option".to_string(),
        TargetSource::Env(var) => (*var).to_string(),
        TargetSource::Saved => "saved".to_string(),
    }
}

fn print_session(session: &Session) {
    match (&session.user, session.logged_in()) {
        (Some(user), true) => println!("User: {user}"),
        _ => println!("User: not logged in"),
    }
    if let Some(org) = &session.org_name {
        println!("Organization: {org}");
    }
    if let Some(space) = &session.space_name {
        println!("Space: {space}");
    }
}

async fn set_target(ctx: &Ctx, input: &str, tls: &TlsChoice) -> Result<()> {
    let config = ctx.store.load()?;
    let (url, info, trust) = probe(ctx, &config, input, tls).await?;
    ctx.store.update(|c| {
        c.target = Some(url.clone());
        let session = c.targets.entry(url.clone()).or_default();
        session.ca_pem = trust.ca_pem.clone();
        session.skip_ssl_validation = tls.skip_validation;
    })?;
    println!("Target set to {url}{}", describe_server(&info));
    let env_var = crate::config::TARGET_VARS.iter().find_map(|v| {
        std::env::var(v)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| (v, s))
    });
    if let Some((var, value)) = env_var {
        eprintln!(
            "note: {var} is set to {value}; it is used instead of the saved target while it is set"
        );
    }
    Ok(())
}

fn describe_server(info: &Info) -> String {
    let version = match &info.version {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => format!(" {s}"),
        other => format!(" {other}"),
    };
    if info.name.is_empty() {
        String::new()
    } else {
        format!(" ({}{version})", info.name)
    }
}

/// Finds the URL among the candidates whose `GET /v2/info` answers. An HTTPS target whose
/// certificate this machine does not trust gets a chance: its certificate authority is
/// shown and accepted when the user says so (or `--ca-fingerprint` matches it).
async fn probe(
    ctx: &Ctx,
    config: &crate::config::Config,
    input: &str,
    tls: &TlsChoice,
) -> Result<(String, Info, Trust)> {
    if input.trim().is_empty() {
        return usage("the target URL is empty; run `strato target https://api.example.com`");
    }
    let mut failures = Vec::new();
    for url in candidate_urls(input) {
        let mut trust = Trust::of(&config.targets.get(&url).cloned().unwrap_or_default());
        trust.skip |= tls.skip_validation;
        let error = match Api::with_trust(&url, trust.clone())?.info().await {
            Ok(info) => return Ok((url, info, trust)),
            Err(e) => e.to_string(),
        };
        if !(url.starts_with("https://") && crate::trust::is_untrusted_certificate(&error)) {
            failures.push(format!("{url}: {error}"));
            continue;
        }
        trust.ca_pem = Some(accept_authority(ctx, &url, tls).await?);
        match Api::with_trust(&url, trust.clone())?.info().await {
            Ok(info) => return Ok((url, info, trust)),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    bail!(
        "{input} does not answer as a Strato API (GET /v2/info):\n  {}",
        failures.join("\n  ")
    )
}

/// Shows the certificate authority `url` presents and returns it (PEM) once accepted.
async fn accept_authority(ctx: &Ctx, url: &str, tls: &TlsChoice) -> Result<String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow!("{url}: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow!("{url} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let chain = crate::trust::presented_chain(&host, port).await?;
    // The last certificate sent is the authority (a lone certificate is its own).
    let ca = chain.last().expect("presented_chain returns at least one");
    let fingerprint = crate::trust::fingerprint(ca);
    eprintln!(
        "The certificate of {host}:{port} is signed by an authority this machine does not trust.\n  \
         SHA-256 fingerprint: {fingerprint}\n\
         Compare it with `kato info` (CA SHA-256) on the server before you accept it."
    );
    let accepted = match &tls.ca_fingerprint {
        Some(expected) if crate::trust::same_fingerprint(expected, &fingerprint) => {
            eprintln!("It matches --ca-fingerprint: accepted.");
            true
        }
        Some(expected) => bail!(
            "the server's certificate authority is not the one you named (--ca-fingerprint {expected}); \
             someone may be intercepting the connection, or the server has a new authority: check `kato info` there"
        ),
        None if crate::prompt::interactive(ctx.no_prompt) => {
            crate::prompt::confirm("Trust this certificate authority for this target?")?
        }
        None => bail!(
            "refusing a certificate this machine does not trust; after checking the fingerprint \
             run `strato target {url} --ca-fingerprint {fingerprint}` (or --skip-ssl-validation \
             to not check certificates at all)"
        ),
    };
    if !accepted {
        bail!("not trusted; the target was not changed");
    }
    Ok(crate::trust::to_pem(ca))
}

/// `strato targets`.
pub fn targets(ctx: &Ctx) -> Result<()> {
    let config = ctx.store.load()?;
    let current = ctx.resolve(&config).map(|t| t.url);
    if ctx.out.json {
        let list: Vec<_> = config
            .targets
            .iter()
            .map(|(url, s)| json!({"target": url, "current": current.as_deref() == Some(url), "user": s.user, "logged_in": s.logged_in(), "organization": s.org_name, "space": s.space_name}))
            .collect();
        return ctx.out.print_json(&list);
    }
    let mut urls: Vec<&String> = config.targets.keys().collect();
    if let Some(c) = config
        .target
        .as_ref()
        .filter(|c| !config.targets.contains_key(*c))
    {
        urls.push(c);
    }
    let rows: Vec<Vec<String>> = urls
        .into_iter()
        .map(|url| {
            let s = config.targets.get(url).cloned().unwrap_or_default();
            let mark = if current.as_deref() == Some(url.as_str()) {
                "*"
            } else {
                ""
            };
            let user = if s.logged_in() {
                s.user.unwrap_or_default()
            } else {
                "(not logged in)".into()
            };
            vec![
                mark.into(),
                url.clone(),
                user,
                s.org_name.unwrap_or_default(),
                s.space_name.unwrap_or_default(),
            ]
        })
        .collect();
    ctx.out.print_table(
        &["", "Target", "User", "Org", "Space"],
        &rows,
        "No targets saved; run `strato target URL`.",
    );
    Ok(())
}

/// `strato login [USER] [--password P]`.
pub async fn login(ctx: &Ctx, args: LoginArgs) -> Result<()> {
    let target = ctx.target()?;
    let interactive = prompt::interactive(ctx.no_prompt);
    let user = match args.user.or(args.username).filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if interactive => prompt::ask("User: ")?,
        None => return usage("no user name given; run `strato login USER --password PASSWORD`"),
    };
    let password = match args.password {
        Some(p) => p,
        None if interactive => prompt::password("Password: ")?,
        None => {
            return usage(
                "no password given and no terminal to ask for one; pass --password PASSWORD",
            )
        }
    };
    let saved = config_session(ctx, &target.url)?;
    let api = Api::anonymous(&target.url, &saved)?;
    let tokens = api.password_grant(&user, &password).await?;
    let wanted_org = args.organization.or_else(|| env_pair("ORG"));
    let org = match wanted_org.filter(|o| !o.is_empty()) {
        Some(o) => pick(&api, "/v2/organizations", Some(o), "organization").await?,
        None => first_org_with_a_space(&api).await?,
    };
    let space = match &org {
        Some(o) => {
            pick(
                &api,
                &format!("/v2/organizations/{}/spaces", o.metadata.guid),
                args.space.or_else(|| env_pair("SPACE")),
                "space",
            )
            .await?
        }
        None => None,
    };
    let session = Session {
        access_token: Some(tokens.access_token),
        refresh_token: tokens.refresh_token,
        user: Some(user.clone()),
        org_guid: org.as_ref().map(|o| o.metadata.guid.clone()),
        org_name: org.as_ref().map(|o| o.entity.name.clone()),
        space_guid: space.as_ref().map(|s| s.metadata.guid.clone()),
        space_name: space.as_ref().map(|s| s.entity.name.clone()),
        ca_pem: saved.ca_pem.clone(),
        skip_ssl_validation: saved.skip_ssl_validation,
    };
    ctx.store.update(|c| {
        c.targets.insert(target.url.clone(), session.clone());
        if c.target.is_none() {
            c.target = Some(target.url.clone());
        }
    })?;
    println!("Logged in to {} as {user}", target.url);
    match (&session.org_name, &session.space_name) {
        (Some(o), Some(s)) => println!("Organization: {o}\nSpace: {s}"),
        (Some(o), None) => eprintln!(
            "warning: organization {o} has no space you can use; ask an admin to add you to one"
        ),
        _ => eprintln!("warning: you belong to no organization; ask an admin to add you to one"),
    }
    Ok(())
}

/// The user's first organization that has a space they can use (what a non-admin
/// belongs to decides where they land), else their first organization.
async fn first_org_with_a_space(api: &Api) -> Result<Option<Resource<Named>>> {
    let orgs = api.list::<Named>("/v2/organizations", &[]).await?;
    for org in &orgs {
        let spaces = api
            .list::<Named>(
                &format!("/v2/organizations/{}/spaces", org.metadata.guid),
                &[],
            )
            .await?;
        if !spaces.is_empty() {
            return Ok(Some(org.clone()));
        }
    }
    Ok(orgs.into_iter().next())
}

/// The resource named `wanted`, else the first one; `None` when the list is empty.
async fn pick(
    api: &Api,
    path: &str,
    wanted: Option<String>,
    kind: &str,
) -> Result<Option<Resource<Named>>> {
    let all = api.list::<Named>(path, &[]).await?;
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok(all.into_iter().next());
    };
    let names: Vec<String> = all.iter().map(|r| r.entity.name.clone()).collect();
    match all.into_iter().find(|r| r.entity.name == wanted) {
        Some(found) => Ok(Some(found)),
        None => bail!(
            "no {kind} named {wanted:?}; available: {}",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ),
    }
}

/// What is saved for `url` (trust included), or nothing.
fn config_session(ctx: &Ctx, url: &str) -> Result<Session> {
    Ok(ctx
        .store
        .load()?
        .targets
        .get(url)
        .cloned()
        .unwrap_or_default())
}

/// `strato logout`.
pub async fn logout(ctx: &Ctx) -> Result<()> {
    let target = ctx.target()?;
    let session = ctx.saved_session(&target)?;
    // End the session on the server too, so the tokens stop working everywhere at once
    // (a copy of ~/.strato is no longer a way in). Best effort: the local tokens go anyway.
    if let Some(sid) = session.access_token.as_deref().and_then(session_id) {
        match Api::with_session(&target.url, &session, ctx.store.clone()) {
            Ok(api) => {
                if let Err(e) = api.delete(&format!("/oauth/token/revoke/{sid}")).await {
                    if !matches!(e, crate::api::ClientError::SessionExpired(_)) {
                        eprintln!("warning: could not end the session on {} ({e}); the tokens saved here are removed anyway", target.url);
                    }
                }
            }
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    ctx.store.update(|c| {
        if let Some(s) = c.targets.get_mut(&target.url) {
            s.access_token = None;
            s.refresh_token = None;
        }
    })?;
    println!("Logged out of {}", target.url);
    Ok(())
}

/// The `sid` claim of a JWT (read, not verified: the server checks it).
fn session_id(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["sid"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `strato info`.
pub async fn info(ctx: &Ctx) -> Result<()> {
    let target = ctx.target()?;
    let session = ctx.saved_session(&target)?;
    let info = Api::anonymous(&target.url, &session)?.info().await?;
    let user = session.user.clone().filter(|_| session.logged_in());
    if ctx.out.json {
        return ctx.out.print_json(&json!({
            "target": target.url,
            "source": source_name(&target.source),
            "name": info.name,
            "version": info.version,
            "description": info.description,
            "api_version": info.api_version,
            "user": user,
            "organization": session.org_name,
            "space": session.space_name,
        }));
    }
    match &target.source {
        TargetSource::Saved => println!("Target: {}", target.url),
        source => println!("Target: {} (from {source})", target.url),
    }
    println!(
        "Server: {}",
        describe_server(&info)
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
    );
    if !info.description.is_empty() {
        println!("Description: {}", info.description);
    }
    if !info.api_version.is_empty() {
        println!("API version: {}", info.api_version);
    }
    print_session(&session);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_hosts_try_https_then_http() {
        assert_eq!(
            candidate_urls("api.example.com/"),
            vec!["https://api.example.com", "http://api.example.com"]
        );
        assert_eq!(
            candidate_urls("http://127.0.0.1:8080/"),
            vec!["http://127.0.0.1:8080"]
        );
    }
}
