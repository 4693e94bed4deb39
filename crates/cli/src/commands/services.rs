//! Services: the marketplace, service instances of the current space, binding them to apps
//! (Stackato's argument order: `bind-service SERVICE [APP]`), user-provided services.

use super::{Ctx, Scope};
use crate::cf::{Named, Resource};
use crate::error::usage;
use crate::prompt;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ServiceEntity {
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub service_plans: Vec<Resource<PlanEntity>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PlanEntity {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub service_guid: String,
    #[serde(default)]
    pub service: Option<Resource<ServiceEntity>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct BindingEntity {
    #[serde(default)]
    pub app_guid: String,
    #[serde(default)]
    pub service_instance_guid: String,
    #[serde(default)]
    pub credentials: Value,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct InstanceEntity {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub service_plan: Option<Resource<PlanEntity>>,
    #[serde(default)]
    pub service_bindings: Vec<Resource<BindingEntity>>,
    #[serde(default)]
    pub credentials: Value,
}

impl InstanceEntity {
    /// `mysql`, or `user-provided`.
    pub(super) fn label(&self) -> String {
        match &self.service_plan {
            Some(p) => p
                .entity
                .service
                .as_ref()
                .map(|s| s.entity.label.clone())
                .unwrap_or_default(),
            None => "user-provided".to_string(),
        }
    }

    fn plan(&self) -> String {
        self.service_plan
            .as_ref()
            .map(|p| p.entity.name.clone())
            .unwrap_or_default()
    }
}

/// The offered services with their plans.
async fn catalog(scope: &Scope) -> Result<Vec<Resource<ServiceEntity>>> {
    let query = [("inline-relations-depth", "1".to_string())];
    Ok(scope
        .api
        .list::<ServiceEntity>("/v2/services", &query)
        .await?)
}

/// The service instances of the current space, with plan, service and bindings.
pub(super) async fn space_instances(scope: &Scope) -> Result<Vec<Resource<InstanceEntity>>> {
    let query = [("inline-relations-depth", "1".to_string())];
    Ok(scope
        .api
        .list::<InstanceEntity>(
            &format!("/v2/spaces/{}/service_instances", scope.space_guid),
            &query,
        )
        .await?)
}

/// The instance called `name` in this space, or an error naming what exists.
pub(super) async fn require_instance(
    scope: &Scope,
    name: &str,
) -> Result<Resource<InstanceEntity>> {
    let all = space_instances(scope).await?;
    let names: Vec<String> = all.iter().map(|s| s.entity.name.clone()).collect();
    all.into_iter().find(|s| s.entity.name == name).ok_or_else(|| {
        if names.is_empty() {
            anyhow!("no service named {name:?} in this space (there are none; create one with `strato create-service TYPE {name}`)")
        } else {
            anyhow!(
                "no service named {name:?} in this space; services here: {}",
                names.join(", ")
            )
        }
    })
}

/// App names by guid for the current space.
async fn app_names(scope: &Scope) -> Result<std::collections::HashMap<String, String>> {
    let apps = scope
        .api
        .list::<Named>(&format!("/v2/spaces/{}/apps", scope.space_guid), &[])
        .await?;
    Ok(apps
        .into_iter()
        .map(|a| (a.metadata.guid, a.entity.name))
        .collect())
}

/// `strato marketplace`.
pub async fn marketplace(ctx: &Ctx) -> Result<()> {
    let scope = ctx.scope()?;
    let services = catalog(&scope).await?;
    if ctx.out.json {
        return ctx.out.print_json(&services);
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .filter(|s| s.entity.active)
        .map(|s| {
            let plans: Vec<String> = s
                .entity
                .service_plans
                .iter()
                .map(|p| format!("{} ({})", p.entity.name, p.entity.description))
                .collect();
            vec![
                s.entity.label.clone(),
                plans.join(", "),
                s.entity.description.clone(),
            ]
        })
        .collect();
    ctx.out.print_table(
        &["service", "plans", "description"],
        &rows,
        "No services are offered yet (the service roles may still be starting; an operator can add them with `kato role add`).",
    );
    Ok(())
}

/// `strato services`.
pub async fn list(ctx: &Ctx) -> Result<()> {
    let scope = ctx.scope()?;
    let instances = space_instances(&scope).await?;
    if ctx.out.json {
        return ctx.out.print_json(&instances);
    }
    let names = app_names(&scope).await?;
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|s| {
            let apps: Vec<String> = s
                .entity
                .service_bindings
                .iter()
                .filter_map(|b| names.get(&b.entity.app_guid).cloned())
                .collect();
            vec![
                s.entity.name.clone(),
                s.entity.label(),
                s.entity.plan(),
                apps.join(", "),
            ]
        })
        .collect();
    ctx.out.print_table(
        &["name", "service", "plan", "bound apps"],
        &rows,
        "No services in this space; see `strato marketplace` and `strato create-service`.",
    );
    Ok(())
}

/// `strato service NAME`.
pub async fn show(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let si = require_instance(&scope, name).await?;
    if ctx.out.json {
        return ctx.out.print_json(&si);
    }
    let names = app_names(&scope).await?;
    let apps: Vec<String> = si
        .entity
        .service_bindings
        .iter()
        .filter_map(|b| names.get(&b.entity.app_guid).cloned())
        .collect();
    println!("name:       {}", si.entity.name);
    println!("service:    {}", si.entity.label());
    if !si.entity.plan().is_empty() {
        println!("plan:       {}", si.entity.plan());
    }
    println!("guid:       {}", si.metadata.guid);
    println!(
        "bound apps: {}",
        if apps.is_empty() {
            "none".to_string()
        } else {
            apps.join(", ")
        }
    );
    // The credentials an app sees (without the password; `--json` shows everything).
    let creds = si
        .entity
        .service_bindings
        .first()
        .map(|b| b.entity.credentials.clone())
        .unwrap_or_else(|| si.entity.credentials.clone());
    if let Some(o) = creds.as_object().filter(|o| !o.is_empty()) {
        println!("credentials:");
        for (k, v) in o {
            let shown = if k == "password" || k == "uri" {
                "********".to_string()
            } else {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            };
            println!("  {k}: {shown}");
        }
    }
    Ok(())
}

/// A default service name: `TYPE-xxxxx`, as Stackato made them.
fn generated_name(label: &str) -> String {
    use rand::Rng;
    let suffix: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(5)
        .map(|c| (c as char).to_ascii_lowercase())
        .collect();
    format!("{label}-{suffix}")
}

/// Creates `name` of type `label` (plan `plan` or the first) in the current space; returns
/// its guid. Used by `create-service` and by `push` for `services:` in stackato.yml.
pub async fn create(scope: &Scope, label: &str, name: &str, plan: Option<&str>) -> Result<String> {
    let services = catalog(scope).await?;
    let service = services
        .iter()
        .find(|s| s.entity.label == label && s.entity.active)
        .ok_or_else(|| {
            let known: Vec<&str> = services
                .iter()
                .filter(|s| s.entity.active)
                .map(|s| s.entity.label.as_str())
                .collect();
            if known.is_empty() {
                anyhow!("no service type {label:?} here: this target offers no services yet; see `strato marketplace`")
            } else {
                anyhow!(
                    "no service type {label:?} here; types offered: {} (see `strato marketplace`)",
                    known.join(", ")
                )
            }
        })?;
    let plans = &service.entity.service_plans;
    let chosen = match plan {
        Some(p) => plans.iter().find(|x| x.entity.name == p).ok_or_else(|| {
            let known: Vec<&str> = plans.iter().map(|x| x.entity.name.as_str()).collect();
            anyhow!("{label} has no plan {p:?}; plans: {}", known.join(", "))
        })?,
        None => plans
            .first()
            .ok_or_else(|| anyhow!("{label} offers no plan; ask the administrator"))?,
    };
    let body = json!({"name": name, "service_plan_guid": chosen.metadata.guid, "space_guid": scope.space_guid});
    let created: Resource<InstanceEntity> = scope.api.post("/v2/service_instances", &body).await?;
    Ok(created.metadata.guid)
}

/// `strato create-service TYPE [NAME] [APP]`.
pub async fn create_cmd(
    ctx: &Ctx,
    label: &str,
    name: Option<&str>,
    app: Option<&str>,
    plan: Option<&str>,
) -> Result<()> {
    let scope = ctx.scope()?;
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| generated_name(label));
    // Check the app first so a typo does not leave a service behind.
    let app_res = match app {
        Some(a) => Some(scope.require_app(a).await?),
        None => None,
    };
    eprint!("Creating service {name} ({label})... ");
    let guid = match create(&scope, label, &name, plan).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("failed");
            return Err(e);
        }
    };
    eprintln!("OK");
    if let Some(a) = app_res {
        bind(&scope, &guid, &a.metadata.guid).await?;
        println!("Bound {name} to {}", a.entity.name);
        restart_tip(&a.entity.name, &a.entity.state);
    }
    if ctx.out.json {
        ctx.out.print_json(&json!({"name": name, "guid": guid}))?;
    }
    Ok(())
}

/// `strato create-user-provided-service NAME [CREDENTIALS]`: credentials as a JSON
/// object, or `-p 'host, port, password'` to be asked for each.
pub async fn create_user_provided(
    ctx: &Ctx,
    name: &str,
    credentials: Option<&str>,
    params: Option<&str>,
) -> Result<()> {
    let creds = match (credentials, params) {
        (Some(_), Some(_)) => return usage("give credentials as JSON or -p, not both"),
        (Some(text), None) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return usage(
                    "credentials must be a JSON object, e.g. '{\"uri\":\"postgres://...\"}'",
                )
            }
            Err(e) => {
                return usage(format!(
                "credentials are not valid JSON ({e}); write e.g. '{{\"uri\":\"postgres://...\"}}'"
            ))
            }
        },
        (None, Some(list)) => {
            if !prompt::interactive(ctx.no_prompt) {
                return usage(
                    "-p asks for each value on a terminal; pass the credentials as JSON instead",
                );
            }
            let mut o = Map::new();
            for key in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                let value = if key.contains("password") {
                    prompt::password(&format!("{key}: "))?
                } else {
                    prompt::ask(&format!("{key}: "))?
                };
                o.insert(key.to_string(), Value::String(value));
            }
            o
        }
        (None, None) => Map::new(),
    };
    let scope = ctx.scope()?;
    let body = json!({"name": name, "space_guid": scope.space_guid, "credentials": creds});
    let _: Value = scope
        .api
        .post("/v2/user_provided_service_instances", &body)
        .await?;
    println!("Created user-provided service {name}");
    Ok(())
}

/// `strato delete-service NAME... [--force]`.
pub async fn delete_cmd(ctx: &Ctx, names: &[String], force: bool) -> Result<()> {
    let scope = ctx.scope()?;
    for name in names {
        let si = require_instance(&scope, name).await?;
        if !ctx.no_prompt {
            if !prompt::interactive(false) {
                return usage(format!(
                    "refusing to delete {name} without confirmation; run `strato delete-service {name} -n`"
                ));
            }
            if !prompt::confirm(&format!("Delete service {name} and all its data?"))? {
                println!("Not deleted");
                continue;
            }
        }
        let path = if force {
            format!("/v2/service_instances/{}?recursive=true", si.metadata.guid)
        } else {
            format!("/v2/service_instances/{}", si.metadata.guid)
        };
        match scope.api.delete(&path).await {
            Ok(()) => println!("Deleted service {name}"),
            Err(e) if e.cf_code() == Some("CF-AssociationNotEmpty") => {
                bail!("{e}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `strato rename-service OLD NEW`.
pub async fn rename_cmd(ctx: &Ctx, old: &str, new: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let si = require_instance(&scope, old).await?;
    let path = if si.entity.kind == "user_provided_service_instance" {
        format!("/v2/user_provided_service_instances/{}", si.metadata.guid)
    } else {
        format!("/v2/service_instances/{}", si.metadata.guid)
    };
    let _: Value = scope.api.put(&path, &json!({"name": new})).await?;
    println!("Renamed service {old} to {new}");
    Ok(())
}

/// Binds instance `si_guid` to app `app_guid`.
pub async fn bind(scope: &Scope, si_guid: &str, app_guid: &str) -> Result<()> {
    let body = json!({"app_guid": app_guid, "service_instance_guid": si_guid});
    let _: Value = scope.api.post("/v2/service_bindings", &body).await?;
    Ok(())
}

fn restart_tip(app: &str, state: &str) {
    if state == "STARTED" {
        eprintln!("TIP: use 'strato restart {app}' so the app sees the change in its environment");
    }
}

/// The app a service command applies to: the argument, or `name:` from the manifest here.
fn app_or_manifest(app: Option<&str>) -> Result<String> {
    if let Some(a) = app {
        return Ok(a.to_string());
    }
    let dir = std::env::current_dir()?;
    match crate::manifest::app_name_in(&dir) {
        Some(name) => Ok(name),
        None => usage("name the app (`strato bind-service SERVICE APP`); there is no stackato.yml or manifest.yml with a name here"),
    }
}

/// `strato bind-service SERVICE [APP]`.
pub async fn bind_cmd(ctx: &Ctx, service: &str, app: Option<&str>) -> Result<()> {
    let app = app_or_manifest(app)?;
    let scope = ctx.scope()?;
    let a = scope.require_app(&app).await?;
    let si = require_instance(&scope, service).await?;
    match bind(&scope, &si.metadata.guid, &a.metadata.guid).await {
        Ok(()) => {}
        Err(e) => {
            if let Some(c) = e.downcast_ref::<crate::api::ClientError>() {
                if c.cf_code() == Some("CF-ServiceBindingAppServiceTaken") {
                    println!("{service} is already bound to {app}");
                    return Ok(());
                }
            }
            return Err(e);
        }
    }
    println!("Bound {service} to {app}");
    restart_tip(&app, &a.entity.state);
    Ok(())
}

/// `strato unbind-service SERVICE [APP]`.
pub async fn unbind_cmd(ctx: &Ctx, service: &str, app: Option<&str>) -> Result<()> {
    let app = app_or_manifest(app)?;
    let scope = ctx.scope()?;
    let a = scope.require_app(&app).await?;
    let si = require_instance(&scope, service).await?;
    let binding = si
        .entity
        .service_bindings
        .iter()
        .find(|b| b.entity.app_guid == a.metadata.guid)
        .ok_or_else(|| anyhow!("{service} is not bound to {app}"))?;
    scope
        .api
        .delete(&format!("/v2/service_bindings/{}", binding.metadata.guid))
        .await?;
    println!("Unbound {service} from {app}");
    restart_tip(&app, &a.entity.state);
    Ok(())
}

/// Creates what `services:` in stackato.yml names and is missing, and binds all of it to
/// the app (push). Returns whether anything was newly bound.
pub async fn ensure_bound(
    scope: &Scope,
    app_guid: &str,
    wanted: &[(String, String)],
) -> Result<bool> {
    if wanted.is_empty() {
        return Ok(false);
    }
    let mut existing = space_instances(scope).await?;
    let mut changed = false;
    for (name, label) in wanted {
        let si = match existing.iter().find(|s| &s.entity.name == name) {
            Some(si) => {
                let have = si.entity.label();
                if !label.is_empty() && &have != label {
                    bail!("stackato.yml wants {name} to be a {label} service, but {name} exists as {have}; rename one of them");
                }
                si.clone()
            }
            None if label.is_empty() => {
                bail!("the manifest binds service {name}, which does not exist in this space; create it with `strato create-service TYPE {name}`")
            }
            None => {
                eprintln!("Creating service {name} ({label})");
                create(scope, label, name, None).await?;
                existing = space_instances(scope).await?;
                existing
                    .iter()
                    .find(|s| &s.entity.name == name)
                    .cloned()
                    .ok_or_else(|| anyhow!("service {name} vanished right after it was created"))?
            }
        };
        if si
            .entity
            .service_bindings
            .iter()
            .all(|b| b.entity.app_guid != app_guid)
        {
            eprintln!("Binding {name}");
            bind(scope, &si.metadata.guid, app_guid).await?;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_start_with_the_type() {
        let n = generated_name("mysql");
        assert!(n.starts_with("mysql-"));
        assert_eq!(n.len(), "mysql-".len() + 5);
    }
}
