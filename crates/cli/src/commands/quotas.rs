//! Quotas: `quotas`, `quota create|update|delete` and `quota-org` (administrators change
//! them; everyone may list them), and the quota lines of `strato org`.
//!
//! Limits of `-1` mean unlimited and are shown as `unlimited`.

use super::Ctx;
use crate::api::Api;
use crate::cf::Resource;
use crate::cli::QuotaArgs;
use crate::error::usage;
use crate::output::megabytes;
use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A quota as `/v2/quota_definitions` shows one.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct QuotaEntity {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub memory_limit: i64,
    #[serde(default = "unlimited")]
    pub instance_memory_limit: i64,
    #[serde(default = "unlimited")]
    pub app_instance_limit: i64,
    #[serde(default)]
    pub total_services: i64,
    #[serde(default)]
    pub total_routes: i64,
    #[serde(default)]
    pub non_basic_services_allowed: bool,
}

fn unlimited() -> i64 {
    -1
}

/// A memory limit as `256M`, `2G` or `unlimited`.
fn mem_text(mb: i64) -> String {
    if mb < 0 {
        "unlimited".into()
    } else {
        megabytes(mb as u64)
    }
}

/// A count as `10` or `unlimited`.
fn count_text(n: i64) -> String {
    if n < 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

/// A size option: `unlimited`/`-1`, or a size such as `256`, `512M`, `2G`.
fn mem_limit(value: &str, option: &str) -> Result<i64> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("unlimited") || v == "-1" {
        return Ok(-1);
    }
    Ok(super::apps::mem_option(v, option)? as i64)
}

fn count_limit(value: i64, option: &str) -> Result<i64> {
    if value < -1 {
        return usage(format!(
            "{option}: give -1 (unlimited) or a number from 0, not {value}"
        ));
    }
    Ok(value)
}

/// The request body for the limits given on the command line.
fn limits_body(args: &QuotaArgs) -> Result<Map<String, Value>> {
    let mut body = Map::new();
    if let Some(m) = &args.mem {
        body.insert("memory_limit".into(), json!(mem_limit(m, "--mem")?));
    }
    if let Some(m) = &args.instance_mem {
        body.insert(
            "instance_memory_limit".into(),
            json!(mem_limit(m, "--instance-mem")?),
        );
    }
    for (key, value, option) in [
        ("total_services", args.services, "--services"),
        ("total_routes", args.routes, "--routes"),
        ("app_instance_limit", args.app_instances, "--app-instances"),
    ] {
        if let Some(n) = value {
            body.insert(key.into(), json!(count_limit(n, option)?));
        }
    }
    if args.allow_paid_services || args.no_paid_services {
        body.insert(
            "non_basic_services_allowed".into(),
            json!(args.allow_paid_services),
        );
    }
    Ok(body)
}

async fn quota_named(api: &Api, name: &str) -> Result<Resource<QuotaEntity>> {
    let quotas = api
        .list::<QuotaEntity>("/v2/quota_definitions", &[("q", format!("name:{name}"))])
        .await?;
    quotas
        .into_iter()
        .find(|q| q.entity.name == name)
        .ok_or_else(|| anyhow!("there is no quota named {name}; see `strato quotas`"))
}

/// `strato quotas`.
pub async fn list(ctx: &Ctx) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let quotas = api
        .list::<QuotaEntity>("/v2/quota_definitions", &[])
        .await?;
    if ctx.out.json {
        let list: Vec<Value> = quotas
            .iter()
            .map(|q| {
                let mut v = json!(q.entity);
                v["guid"] = json!(q.metadata.guid);
                v
            })
            .collect();
        return ctx.out.print_json(&list);
    }
    let rows: Vec<Vec<String>> = quotas.iter().map(|q| row(&q.entity)).collect();
    ctx.out.print_table(
        &[
            "Name",
            "Memory",
            "Per instance",
            "App instances",
            "Services",
            "Routes",
            "Paid plans",
        ],
        &rows,
        "No quotas; an administrator creates them with `strato quota create NAME`.",
    );
    Ok(())
}

fn row(q: &QuotaEntity) -> Vec<String> {
    vec![
        q.name.clone(),
        mem_text(q.memory_limit),
        mem_text(q.instance_memory_limit),
        count_text(q.app_instance_limit),
        count_text(q.total_services),
        count_text(q.total_routes),
        if q.non_basic_services_allowed {
            "allowed"
        } else {
            "no"
        }
        .into(),
    ]
}

/// `strato quota create NAME [limits]`.
pub async fn create(ctx: &Ctx, args: &QuotaArgs) -> Result<()> {
    let mut body = limits_body(args)?;
    body.insert("name".into(), json!(args.name));
    body.entry("non_basic_services_allowed")
        .or_insert(json!(false));
    let (api, _, _) = ctx.api()?;
    let q: Resource<QuotaEntity> = api
        .post("/v2/quota_definitions", &Value::Object(body))
        .await?;
    println!(
        "Created quota {}: {}; give it to an organization with `strato quota-org ORG {}`",
        q.entity.name,
        summary(&q.entity),
        q.entity.name
    );
    Ok(())
}

/// `strato quota update NAME [limits]`.
pub async fn update(ctx: &Ctx, args: &QuotaArgs) -> Result<()> {
    let body = limits_body(args)?;
    if body.is_empty() {
        return usage("nothing to change; give --mem, --instance-mem, --services, --routes, --app-instances or --allow-paid-services/--no-paid-services");
    }
    let (api, _, _) = ctx.api()?;
    let q = quota_named(&api, &args.name).await?;
    let q: Resource<QuotaEntity> = api
        .put(
            &format!("/v2/quota_definitions/{}", q.metadata.guid),
            &Value::Object(body),
        )
        .await?;
    println!("Updated quota {}: {}", q.entity.name, summary(&q.entity));
    Ok(())
}

/// `strato quota delete NAME`.
pub async fn delete(ctx: &Ctx, name: &str) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let q = quota_named(&api, name).await?;
    if !super::tenancy::confirm_delete(
        ctx,
        &format!("quota {name}"),
        &format!("quota delete {name}"),
    )? {
        return Ok(());
    }
    api.delete(&format!("/v2/quota_definitions/{}", q.metadata.guid))
        .await?;
    println!("Deleted quota {name}");
    Ok(())
}

/// `strato quota-org ORG QUOTA`.
pub async fn assign_org(ctx: &Ctx, org: &str, quota: &str) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let o = super::tenancy::org_named(ctx, &api, Some(org)).await?;
    let q = quota_named(&api, quota).await?;
    let _: Value = api
        .put(
            &format!("/v2/organizations/{}", o.metadata.guid),
            &json!({"quota_definition_guid": q.metadata.guid}),
        )
        .await?;
    println!(
        "Organization {org} now has quota {quota}: {}",
        summary(&q.entity)
    );
    Ok(())
}

/// One line: `memory 256M (per instance unlimited), app instances unlimited, ...`.
fn summary(q: &QuotaEntity) -> String {
    format!(
        "memory {} (per instance {}), app instances {}, services {}, routes {}, paid plans {}",
        mem_text(q.memory_limit),
        mem_text(q.instance_memory_limit),
        count_text(q.app_instance_limit),
        count_text(q.total_services),
        count_text(q.total_routes),
        if q.non_basic_services_allowed {
            "allowed"
        } else {
            "not allowed"
        }
    )
}

/// The org's quota (if it has one and the server knows quotas) and its memory use in MB.
pub async fn org_quota(
    api: &Api,
    org_guid: &str,
) -> Result<(Option<Resource<QuotaEntity>>, Option<i64>)> {
    let org: Value = api.get(&format!("/v2/organizations/{org_guid}")).await?;
    let quota = match org["entity"]["quota_definition_guid"].as_str() {
        Some(guid) => Some(api.get(&format!("/v2/quota_definitions/{guid}")).await?),
        None => None,
    };
    let usage: Value = api
        .get(&format!("/v2/organizations/{org_guid}/memory_usage"))
        .await?;
    Ok((quota, usage["memory_usage_in_mb"].as_i64()))
}

/// The quota lines of `strato org`.
pub fn print_org_quota(quota: Option<&Resource<QuotaEntity>>, memory_used: Option<i64>) {
    match quota {
        Some(q) => println!("Quota: {} ({})", q.entity.name, summary(&q.entity)),
        None => println!("Quota: none"),
    }
    if let Some(used) = memory_used {
        let limit = quota.map_or(-1, |q| q.entity.memory_limit);
        println!("Memory usage: {} of {}", mem_text(used), mem_text(limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_the_command_line() {
        let args = QuotaArgs {
            name: "small".into(),
            mem: Some("2G".into()),
            instance_mem: Some("unlimited".into()),
            services: Some(5),
            app_instances: Some(-1),
            no_paid_services: true,
            ..Default::default()
        };
        let body = limits_body(&args).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"memory_limit": 2048, "instance_memory_limit": -1, "total_services": 5,
                   "app_instance_limit": -1, "non_basic_services_allowed": false})
        );
        let bad = QuotaArgs {
            routes: Some(-2),
            ..Default::default()
        };
        assert!(limits_body(&bad)
            .unwrap_err()
            .to_string()
            .contains("--routes"));
        assert!(limits_body(&QuotaArgs::default()).unwrap().is_empty());
    }

    #[test]
    fn limits_read_as_text() {
        assert_eq!(mem_text(-1), "unlimited");
        assert_eq!(mem_text(10240), "10G");
        assert_eq!(count_text(1000), "1000");
        let q = QuotaEntity {
            name: "d".into(),
            memory_limit: 256,
            instance_memory_limit: -1,
            app_instance_limit: 3,
            total_services: 100,
            total_routes: 1000,
            non_basic_services_allowed: true,
        };
        assert_eq!(row(&q)[1..4], ["256M", "unlimited", "3"]);
        assert!(summary(&q).contains("memory 256M (per instance unlimited), app instances 3"));
    }
}
