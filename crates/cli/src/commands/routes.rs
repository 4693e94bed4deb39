//! Domains and routes: turning `host.domain` URLs into routes, mapping and unmapping them,
//! and the URL a user can open (the target's scheme and port on the app's host name).

use super::{Ctx, Scope};
use crate::api::Api;
use crate::cf::{Named, Resource, RouteEntity};
use anyhow::{anyhow, bail, Result};
use reqwest::Method;
use serde_json::json;

/// The shared domains, app domain first.
pub async fn shared_domains(api: &Api) -> Result<Vec<Resource<Named>>> {
    Ok(api.list::<Named>("/v2/shared_domains", &[]).await?)
}

/// Every domain apps can get URLs in: the shared ones first (so [`app_domain`] stays the
/// shared one), then the private domains the user can see.
pub async fn usable_domains(api: &Api) -> Result<Vec<Resource<Named>>> {
    let mut domains = shared_domains(api).await?;
    domains.extend(api.list::<Named>("/v2/private_domains", &[]).await?);
    Ok(domains)
}

/// The domain new apps get (the first shared one).
pub fn app_domain(domains: &[Resource<Named>]) -> Result<&Resource<Named>> {
    domains
        .first()
        .ok_or_else(|| anyhow!("the target has no shared domain, so apps cannot get a URL; ask the administrator to add one"))
}

/// The host name in a URL as users type it (`http://a.b:80/x` → `a.b`).
pub fn bare_host(url: &str) -> String {
    let rest = url.trim().split_once("://").map_or(url.trim(), |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host.split(':').next().unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Splits a URL into (host, domain) using the longest matching domain.
pub fn split_url<'a>(
    url: &str,
    domains: &'a [Resource<Named>],
) -> Result<(String, &'a Resource<Named>)> {
    let name = bare_host(url);
    if name.is_empty() {
        bail!("{url:?} is not a URL; write it like myapp.example.com");
    }
    let best = domains
        .iter()
        .filter(|d| {
            let d = d.entity.name.to_ascii_lowercase();
            name == d || name.ends_with(&format!(".{d}"))
        })
        .max_by_key(|d| d.entity.name.len());
    match best {
        Some(domain) => {
            let host = name[..name.len() - domain.entity.name.len()]
                .trim_end_matches('.')
                .to_string();
            Ok((host, domain))
        }
        None => {
            let known: Vec<_> = domains.iter().map(|d| d.entity.name.as_str()).collect();
            bail!(
                "{name} is not in a domain of this target (domains: {}); see `strato domains`",
                known.join(", ")
            )
        }
    }
}

/// `host.domain`, or the domain alone when the host is empty.
pub fn fqdn(host: &str, domain: &str) -> String {
    if host.is_empty() {
        domain.to_string()
    } else {
        format!("{host}.{domain}")
    }
}

/// The URL to open an app at: the target's scheme and explicit port on `host`.
pub fn public_url(target: &str, host: &str) -> String {
    match reqwest::Url::parse(target) {
        Ok(t) => match t.port() {
            Some(port) => format!("{}://{host}:{port}/", t.scheme()),
            None => format!("{}://{host}/", t.scheme()),
        },
        Err(_) => format!("http://{host}/"),
    }
}

/// The guid of route `host` in `domain`, creating it in this space when missing.
pub async fn ensure_route(scope: &Scope, host: &str, domain: &Resource<Named>) -> Result<String> {
    if let Some(route) = find_route(&scope.api, host, &domain.metadata.guid).await? {
        return Ok(route.metadata.guid);
    }
    let body =
        json!({"host": host, "domain_guid": domain.metadata.guid, "space_guid": scope.space_guid});
    match scope
        .api
        .post::<Resource<RouteEntity>>("/v2/routes", &body)
        .await
    {
        Ok(route) => Ok(route.metadata.guid),
        Err(e) if e.cf_code() == Some("CF-RouteHostTaken") => bail!(
            "the URL {} is taken by another space ({e}); choose another with --url",
            fqdn(host, &domain.entity.name)
        ),
        Err(e) => Err(e.into()),
    }
}

async fn find_route(
    api: &Api,
    host: &str,
    domain_guid: &str,
) -> Result<Option<Resource<RouteEntity>>> {
    let query = [
        ("q", format!("host:{host}")),
        ("q", format!("domain_guid:{domain_guid}")),
    ];
    let routes = api.list::<RouteEntity>("/v2/routes", &query).await?;
    Ok(routes
        .into_iter()
        .find(|r| r.entity.host == host && r.entity.domain_guid == domain_guid))
}

/// Maps `url` to the app; returns `host.domain`.
pub async fn map_url(
    scope: &Scope,
    app_guid: &str,
    url: &str,
    domains: &[Resource<Named>],
) -> Result<String> {
    let (host, domain) = split_url(url, domains)?;
    let route_guid = ensure_route(scope, &host, domain).await?;
    scope
        .api
        .request(
            Method::PUT,
            &format!("/v2/apps/{app_guid}/routes/{route_guid}"),
            None,
        )
        .await?;
    Ok(fqdn(&host, &domain.entity.name))
}

/// `strato map APP URL`.
pub async fn map_cmd(ctx: &Ctx, name: &str, url: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let domains = usable_domains(&scope.api).await?;
    let mapped = map_url(&scope, &app.metadata.guid, url, &domains).await?;
    println!("Mapped {} to {name}", public_url(&scope.target, &mapped));
    Ok(())
}

/// `strato unmap APP URL`.
pub async fn unmap_cmd(ctx: &Ctx, name: &str, url: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let domains = usable_domains(&scope.api).await?;
    let (host, domain) = split_url(url, &domains)?;
    let full = fqdn(&host, &domain.entity.name);
    let route = find_route(&scope.api, &host, &domain.metadata.guid)
        .await?
        .ok_or_else(|| anyhow!("{full} is not a route of this target; see `strato routes`"))?;
    scope
        .api
        .request(
            Method::DELETE,
            &format!(
                "/v2/apps/{}/routes/{}",
                app.metadata.guid, route.metadata.guid
            ),
            None,
        )
        .await?;
    println!("Unmapped {full} from {name}");
    Ok(())
}

/// `strato domains`.
pub async fn domains_cmd(ctx: &Ctx) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let shared = shared_domains(&api).await?;
    let private = api
        .list::<PrivateDomain>("/v2/private_domains", &[])
        .await?;
    if ctx.out.json {
        let mut all: Vec<serde_json::Value> = shared
            .iter()
            .map(|d| serde_json::json!({"name": d.entity.name, "type": "shared"}))
            .collect();
        all.extend(private.iter().map(|d| {
            serde_json::json!({"name": d.entity.name, "type": "private", "owning_organization_guid": d.entity.owning_organization_guid})
        }));
        return ctx.out.print_json(&all);
    }
    let mut rows: Vec<Vec<String>> = shared
        .iter()
        .map(|d| vec![d.entity.name.clone(), "shared".into()])
        .collect();
    rows.extend(
        private
            .iter()
            .map(|d| vec![d.entity.name.clone(), "private".into()]),
    );
    ctx.out
        .print_table(&["Domain", "Type"], &rows, "No domains.");
    Ok(())
}

#[derive(Clone, Debug, serde::Deserialize)]
struct PrivateDomain {
    name: String,
    #[serde(default)]
    owning_organization_guid: Option<String>,
}

/// `strato create-domain NAME` (also `map-domain`): a private domain of the current (or
/// `--org`) organization, so apps there can have URLs in it.
pub async fn create_domain_cmd(ctx: &Ctx, name: &str, org: Option<&str>) -> Result<()> {
    let (api, _, session) = ctx.api()?;
    let org_guid = match org {
        Some(o) => {
            let found = api
                .list::<Named>("/v2/organizations", &[("q", format!("name:{o}"))])
                .await?;
            found
                .first()
                .map(|r| r.metadata.guid.clone())
                .ok_or_else(|| anyhow!("no organization named {o:?}; see `strato orgs`"))?
        }
        None => session.org_guid.clone().ok_or_else(|| {
            anyhow!("no current organization; pass --org ORG or `strato switch-org`")
        })?,
    };
    api.post::<serde_json::Value>(
        "/v2/private_domains",
        &serde_json::json!({"name": name, "owning_organization_guid": org_guid}),
    )
    .await?;
    println!("Created domain {name}; map app URLs in it with `strato map APP HOST.{name}`");
    Ok(())
}

/// `strato delete-domain NAME` (also `unmap-domain`).
pub async fn delete_domain_cmd(ctx: &Ctx, name: &str) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let found = api
        .list::<Named>(
            "/v2/private_domains",
            &[("q", format!("name:{}", name.to_ascii_lowercase()))],
        )
        .await?;
    let Some(d) = found.first() else {
        bail!("no private domain named {name:?}; see `strato domains`");
    };
    api.delete(&format!("/v2/private_domains/{}", d.metadata.guid))
        .await?;
    println!("Deleted domain {name}");
    Ok(())
}

/// `strato routes`: the routes of the current space.
pub async fn routes_cmd(ctx: &Ctx) -> Result<()> {
    let scope = ctx.scope()?;
    let domains = usable_domains(&scope.api).await?;
    let routes: Vec<_> = scope
        .api
        .list::<RouteEntity>("/v2/routes", &[])
        .await?
        .into_iter()
        .filter(|r| {
            r.entity
                .space_guid
                .as_deref()
                .is_none_or(|s| s == scope.space_guid)
        })
        .collect();
    if ctx.out.json {
        return ctx.out.print_json(&routes);
    }
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let domain = domains
                .iter()
                .find(|d| d.metadata.guid == r.entity.domain_guid)
                .map_or_else(|| r.entity.domain_guid.clone(), |d| d.entity.name.clone());
            vec![
                r.entity.host.clone(),
                domain.clone(),
                fqdn(&r.entity.host, &domain),
            ]
        })
        .collect();
    ctx.out
        .print_table(&["Host", "Domain", "URL"], &rows, "No routes.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cf::Metadata;

    fn domain(guid: &str, name: &str) -> Resource<Named> {
        Resource {
            metadata: Metadata {
                guid: guid.into(),
                ..Default::default()
            },
            entity: Named { name: name.into() },
        }
    }

    #[test]
    fn urls_split_on_the_longest_domain() {
        let domains = vec![
            domain("d1", "example.com"),
            domain("d2", "apps.example.com"),
        ];
        let (host, d) = split_url("https://Shop.apps.example.com:8080/x", &domains).unwrap();
        assert_eq!((host.as_str(), d.metadata.guid.as_str()), ("shop", "d2"));
        let (host, d) = split_url("a.b.example.com", &domains).unwrap();
        assert_eq!((host.as_str(), d.metadata.guid.as_str()), ("a.b", "d1"));
        let (host, _) = split_url("example.com", &domains).unwrap();
        assert_eq!(host, "");
        let err = split_url("shop.other.org", &domains)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("example.com") && err.contains("strato domains"),
            "{err}"
        );
        assert!(split_url("notexample.com", &domains).is_err());
    }

    #[test]
    fn public_urls_use_the_targets_scheme_and_port() {
        assert_eq!(
            public_url("http://127.0.0.1:8080", "myapp.localhost"),
            "http://myapp.localhost:8080/"
        );
        assert_eq!(
            public_url("https://api.example.com", "myapp.example.com"),
            "https://myapp.example.com/"
        );
        assert_eq!(
            public_url("http://api.example.com:80", "a.example.com"),
            "http://a.example.com/"
        );
    }
}
