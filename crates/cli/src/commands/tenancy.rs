//! Users, organizations, spaces and roles: `add-user`/`register`, `delete-user`, `passwd`,
//! `users`, `admin grant|revoke|list`; `orgs`, `org`, `create-org`, `delete-org`,
//! `rename-org`, `switch-org`, `link-user-org`, `unlink-user-org`, `org-users`; `spaces`,
//! `space`, `create-space`, `delete-space`, `rename-space`, `switch-space`,
//! `link-user-space`, `unlink-user-space`, `space-users`.
//!
//! Organizations and spaces are named; names are looked up in what the user can see, so
//! "no such org" and "not yours" read the same to a stranger, as on the server.

use super::Ctx;
use crate::api::Api;
use crate::cf::{Named, Resource};
use crate::cli::{OrgRoleFlags, SpaceRoleFlags};
use crate::error::usage;
use crate::prompt;
use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// A user as `/v2/users` shows one.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
pub struct UserEntity {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub admin: bool,
}

const ORG_ROLES: [(&str, &str); 4] = [
    ("users", "user"),
    ("managers", "manager"),
    ("billing_managers", "billing manager"),
    ("auditors", "auditor"),
];
const SPACE_ROLES: [(&str, &str); 3] = [
    ("developers", "developer"),
    ("managers", "manager"),
    ("auditors", "auditor"),
];

// ---------------------------------------------------------------- lookups

async fn user_by_name(api: &Api, name: &str) -> Result<Resource<UserEntity>> {
    let users = api
        .list::<UserEntity>("/v2/users", &[("q", format!("username:{name}"))])
        .await?;
    users
        .into_iter()
        .find(|u| u.entity.username == name)
        .ok_or_else(|| anyhow!("there is no user named {name}; see `strato users`"))
}

/// The org called `name`, or the current one when `name` is `None`.
pub(super) async fn org_named(ctx: &Ctx, api: &Api, name: Option<&str>) -> Result<Resource<Named>> {
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let (target, session) = ctx.session()?;
            let (Some(guid), Some(name)) = (session.org_guid, session.org_name) else {
                return usage(format!(
                    "no organization selected on {}; name one or run `strato switch-org ORG`",
                    target.url
                ));
            };
            return Ok(Resource {
                metadata: crate::cf::Metadata {
                    guid,
                    ..Default::default()
                },
                entity: Named { name },
            });
        }
    };
    let orgs = api
        .list::<Named>("/v2/organizations", &[("q", format!("name:{name}"))])
        .await?;
    orgs.into_iter()
        .find(|o| o.entity.name == name)
        .ok_or_else(|| {
            anyhow!("no organization named {name:?} that you can see; see `strato orgs`")
        })
}

/// The space called `name` in `org`, or the current space when `name` is `None`.
async fn space_named(
    ctx: &Ctx,
    api: &Api,
    org: &Resource<Named>,
    name: Option<&str>,
) -> Result<Resource<Named>> {
    let Some(name) = name else {
        let (target, session) = ctx.session()?;
        let (Some(guid), Some(name)) = (session.space_guid, session.space_name) else {
            return usage(format!(
                "no space selected on {}; name one or run `strato switch-space SPACE`",
                target.url
            ));
        };
        return Ok(Resource {
            metadata: crate::cf::Metadata {
                guid,
                ..Default::default()
            },
            entity: Named { name },
        });
    };
    let spaces = api
        .list::<Named>(
            &format!("/v2/organizations/{}/spaces", org.metadata.guid),
            &[("q", format!("name:{name}"))],
        )
        .await?;
    spaces
        .into_iter()
        .find(|s| s.entity.name == name)
        .ok_or_else(|| {
            anyhow!(
                "no space named {name:?} in organization {} that you can see; see `strato spaces`",
                org.entity.name
            )
        })
}

/// Asks before deleting unless `-n`; `false` when the user said no.
pub(super) fn confirm_delete(ctx: &Ctx, what: &str, command: &str) -> Result<bool> {
    if ctx.no_prompt {
        return Ok(true);
    }
    if !prompt::interactive(false) {
        return usage(format!(
            "refusing to delete {what} without confirmation; run `strato {command} -n`"
        ));
    }
    let yes = prompt::confirm(&format!("Delete {what}?"))?;
    if !yes {
        println!("Not deleted");
    }
    Ok(yes)
}

// ---------------------------------------------------------------- users

/// `strato add-user NAME [--password P] [--email E]` (also `register`).
pub async fn add_user(
    ctx: &Ctx,
    name: &str,
    password: Option<String>,
    email: Option<String>,
) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let password = match password {
        Some(p) => p,
        None if prompt::interactive(ctx.no_prompt) => {
            let p = prompt::password("Password: ")?;
            if prompt::password("Again: ")? != p {
                bail!("the passwords differ; nothing was created");
            }
            p
        }
        None => return usage("no password given; pass --password PASSWORD"),
    };
    let emails: Vec<Value> = email.iter().map(|e| json!({"value": e})).collect();
    let _: Value = api
        .post(
            "/Users",
            &json!({"userName": name, "password": password, "emails": emails}),
        )
        .await?;
    println!("Created user {name}");
    Ok(())
}

/// `strato delete-user NAME`.
pub async fn delete_user(ctx: &Ctx, name: &str) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let user = user_by_name(&api, name).await?;
    if !confirm_delete(ctx, &format!("user {name}"), &format!("delete-user {name}"))? {
        return Ok(());
    }
    api.delete(&format!("/v2/users/{}", user.metadata.guid))
        .await?;
    println!("Deleted user {name} (their logins are revoked)");
    Ok(())
}

/// `strato passwd [--old P] [--new P]`: the signed-in user's own password.
pub async fn passwd(ctx: &Ctx, old: Option<String>, new: Option<String>) -> Result<()> {
    let (api, _, session) = ctx.api()?;
    let interactive = prompt::interactive(ctx.no_prompt);
    let old = match old {
        Some(p) => p,
        None if interactive => prompt::password("Current password: ")?,
        None => return usage("no current password given; pass --old PASSWORD"),
    };
    let new = match new {
        Some(p) => p,
        None if interactive => {
            let p = prompt::password("New password: ")?;
            if prompt::password("Again: ")? != p {
                bail!("the passwords differ; the password is unchanged");
            }
            p
        }
        None => return usage("no new password given; pass --new PASSWORD"),
    };
    let me: Value = api.get("/userinfo").await?;
    let guid = me["user_id"]
        .as_str()
        .ok_or_else(|| anyhow!("the server did not say who you are (GET /userinfo)"))?;
    let _: Value = api
        .put(
            &format!("/Users/{guid}/password"),
            &json!({"oldPassword": old, "password": new}),
        )
        .await?;
    println!(
        "Changed the password of {}; your other logins are ended",
        session.user.unwrap_or_default()
    );
    Ok(())
}

/// `strato users` (administrators).
pub async fn users(ctx: &Ctx) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let users = api.list::<UserEntity>("/v2/users", &[]).await?;
    print_users(ctx, &users)
}

fn print_users(ctx: &Ctx, users: &[Resource<UserEntity>]) -> Result<()> {
    if ctx.out.json {
        let list: Vec<Value> = users
            .iter()
            .map(|u| json!({"name": u.entity.username, "guid": u.metadata.guid, "admin": u.entity.admin}))
            .collect();
        return ctx.out.print_json(&list);
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.entity.username.clone(),
                if u.entity.admin { "yes" } else { "" }.to_string(),
                u.metadata.guid.clone(),
            ]
        })
        .collect();
    ctx.out
        .print_table(&["User", "Admin", "Guid"], &rows, "No users.");
    Ok(())
}

/// `strato admin grant|revoke USER`.
pub async fn admin_set(ctx: &Ctx, name: &str, admin: bool) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let user = user_by_name(&api, name).await?;
    let _: Value = api
        .put(
            &format!("/v2/users/{}", user.metadata.guid),
            &json!({"admin": admin}),
        )
        .await?;
    if admin {
        println!("{name} is now an administrator");
    } else {
        println!("{name} is no longer an administrator");
    }
    Ok(())
}

/// `strato admin list`.
pub async fn admin_list(ctx: &Ctx) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let mut users = api.list::<UserEntity>("/v2/users", &[]).await?;
    users.retain(|u| u.entity.admin);
    print_users(ctx, &users)
}

// ---------------------------------------------------------------- organizations

/// `strato orgs`.
pub async fn orgs(ctx: &Ctx) -> Result<()> {
    let (api, _, session) = ctx.api()?;
    let orgs = api.list::<Named>("/v2/organizations", &[]).await?;
    let current = session.org_guid.unwrap_or_default();
    if ctx.out.json {
        let list: Vec<Value> = orgs
            .iter()
            .map(|o| json!({"name": o.entity.name, "guid": o.metadata.guid, "current": o.metadata.guid == current}))
            .collect();
        return ctx.out.print_json(&list);
    }
    let rows: Vec<Vec<String>> = orgs
        .iter()
        .map(|o| {
            let mark = if o.metadata.guid == current { "*" } else { "" };
            vec![mark.into(), o.entity.name.clone()]
        })
        .collect();
    ctx.out.print_table(
        &["", "Organization"],
        &rows,
        "You belong to no organization; ask an administrator to add you (`strato link-user-org`).",
    );
    Ok(())
}

/// `strato org [NAME]`: its spaces, members, quota and memory usage.
pub async fn org_show(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let org = org_named(ctx, &api, name).await?;
    let spaces = api
        .list::<Named>(
            &format!("/v2/organizations/{}/spaces", org.metadata.guid),
            &[],
        )
        .await?;
    let members = members(&api, "organizations", &org.metadata.guid, &ORG_ROLES).await?;
    let space_names: Vec<String> = spaces.iter().map(|s| s.entity.name.clone()).collect();
    let (quota, memory_used) = super::quotas::org_quota(&api, &org.metadata.guid).await?;
    if ctx.out.json {
        return ctx.out.print_json(&json!({
            "name": org.entity.name, "guid": org.metadata.guid, "spaces": space_names,
            "members": members_json(&members),
            "quota": quota.as_ref().map(|q| &q.entity),
            "memory_usage_mb": memory_used,
        }));
    }
    println!("Organization: {}", org.entity.name);
    println!("Guid: {}", org.metadata.guid);
    println!("Spaces: {}", list_or_none(&space_names));
    println!("Members: {}", members.len());
    super::quotas::print_org_quota(quota.as_ref(), memory_used);
    Ok(())
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// `strato create-org NAME`.
pub async fn create_org(ctx: &Ctx, name: &str) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let _: Value = api
        .post("/v2/organizations", &json!({"name": name}))
        .await?;
    println!(
        "Created organization {name}; add a space with `strato create-space SPACE --org {name}`"
    );
    Ok(())
}

/// `strato delete-org NAME [--recursive]`.
pub async fn delete_org(ctx: &Ctx, name: &str, recursive: bool) -> Result<()> {
    let (api, target, session) = ctx.api()?;
    let org = org_named(ctx, &api, Some(name)).await?;
    if !confirm_delete(
        ctx,
        &format!(
            "organization {name}{}",
            if recursive {
                " and everything in it"
            } else {
                ""
            }
        ),
        &format!("delete-org {name}"),
    )? {
        return Ok(());
    }
    let query = if recursive { "?recursive=true" } else { "" };
    api.delete(&format!("/v2/organizations/{}{query}", org.metadata.guid))
        .await?;
    if session.org_guid.as_deref() == Some(org.metadata.guid.as_str()) {
        ctx.store.update(|c| {
            if let Some(s) = c.targets.get_mut(&target.url) {
                s.org_guid = None;
                s.org_name = None;
                s.space_guid = None;
                s.space_name = None;
            }
        })?;
    }
    println!("Deleted organization {name}");
    Ok(())
}

/// `strato rename-org OLD NEW`.
pub async fn rename_org(ctx: &Ctx, old: &str, new: &str) -> Result<()> {
    let (api, target, _) = ctx.api()?;
    let org = org_named(ctx, &api, Some(old)).await?;
    let _: Value = api
        .put(
            &format!("/v2/organizations/{}", org.metadata.guid),
            &json!({"name": new}),
        )
        .await?;
    ctx.store.update(|c| {
        if let Some(s) = c.targets.get_mut(&target.url) {
            if s.org_guid.as_deref() == Some(org.metadata.guid.as_str()) {
                s.org_name = Some(new.to_string());
            }
        }
    })?;
    println!("Renamed organization {old} to {new}");
    Ok(())
}

/// `strato switch-org NAME`: the org, and its first space, become current.
pub async fn switch_org(ctx: &Ctx, name: &str) -> Result<()> {
    let (api, target, _) = ctx.api()?;
    let org = org_named(ctx, &api, Some(name)).await?;
    let space = api
        .list::<Named>(
            &format!("/v2/organizations/{}/spaces", org.metadata.guid),
            &[],
        )
        .await?
        .into_iter()
        .next();
    ctx.store.update(|c| {
        if let Some(s) = c.targets.get_mut(&target.url) {
            s.org_guid = Some(org.metadata.guid.clone());
            s.org_name = Some(org.entity.name.clone());
            s.space_guid = space.as_ref().map(|s| s.metadata.guid.clone());
            s.space_name = space.as_ref().map(|s| s.entity.name.clone());
        }
    })?;
    match &space {
        Some(s) => println!("Organization: {name}\nSpace: {}", s.entity.name),
        None => println!(
            "Organization: {name}\nno space there that you can use; `strato create-space` or ask a manager"
        ),
    }
    Ok(())
}

/// `strato link-user-org USER [ORG] [--manager] [--auditor] [--billing]`.
pub async fn link_user_org(
    ctx: &Ctx,
    user: &str,
    org: Option<&str>,
    flags: &OrgRoleFlags,
    link: bool,
) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let mut roles = Vec::new();
    if flags.manager {
        roles.push(("managers", "manager"));
    }
    if flags.auditor {
        roles.push(("auditors", "auditor"));
    }
    if flags.billing {
        roles.push(("billing_managers", "billing manager"));
    }
    let base = format!("/v2/organizations/{}", org.metadata.guid);
    if link {
        let _: Value = api
            .put(&format!("{base}/users"), &json!({"username": user}))
            .await?;
        for (segment, _) in &roles {
            let _: Value = api
                .put(&format!("{base}/{segment}"), &json!({"username": user}))
                .await?;
        }
        let what: Vec<&str> = roles.iter().map(|(_, n)| *n).collect();
        println!(
            "Added {user} to organization {}{}",
            org.entity.name,
            if what.is_empty() {
                String::new()
            } else {
                format!(" as {}", what.join(", "))
            }
        );
    } else {
        let guid = member_guid(&api, &base, user).await?;
        if roles.is_empty() {
            roles.push(("users", "member"));
        }
        for (segment, _) in &roles {
            api.delete(&format!("{base}/{segment}/{guid}")).await?;
        }
        let what: Vec<&str> = roles.iter().map(|(_, n)| *n).collect();
        println!(
            "Removed {user} from organization {} ({})",
            org.entity.name,
            what.join(", ")
        );
    }
    Ok(())
}

/// The guid of the member `user` of an org (from its member list: managers need not be
/// able to list all users).
async fn member_guid(api: &Api, org_base: &str, user: &str) -> Result<String> {
    api.list::<UserEntity>(&format!("{org_base}/users"), &[])
        .await?
        .into_iter()
        .find(|u| u.entity.username == user)
        .map(|u| u.metadata.guid)
        .ok_or_else(|| anyhow!("{user} is not a member of this organization"))
}

/// Every member of an org or space with their roles, in first-seen order.
async fn members(
    api: &Api,
    kind: &str,
    guid: &str,
    roles: &[(&str, &str)],
) -> Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (segment, label) in roles {
        let users = api
            .list::<UserEntity>(&format!("/v2/{kind}/{guid}/{segment}"), &[])
            .await?;
        for u in users {
            match out.iter_mut().find(|(n, _)| *n == u.entity.username) {
                Some((_, r)) => r.push(label.to_string()),
                None => out.push((u.entity.username, vec![label.to_string()])),
            }
        }
    }
    Ok(out)
}

fn members_json(members: &[(String, Vec<String>)]) -> Vec<Value> {
    members
        .iter()
        .map(|(n, r)| json!({"user": n, "roles": r}))
        .collect()
}

fn print_members(ctx: &Ctx, members: &[(String, Vec<String>)]) -> Result<()> {
    if ctx.out.json {
        return ctx.out.print_json(&members_json(members));
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|(n, r)| vec![n.clone(), r.join(", ")])
        .collect();
    ctx.out
        .print_table(&["User", "Roles"], &rows, "No members.");
    Ok(())
}

/// `strato org-users [ORG]`.
pub async fn org_users(ctx: &Ctx, org: Option<&str>) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let m = members(&api, "organizations", &org.metadata.guid, &ORG_ROLES).await?;
    print_members(ctx, &m)
}

// ---------------------------------------------------------------- spaces

/// `strato spaces [--org ORG]`.
pub async fn spaces(ctx: &Ctx, org: Option<&str>) -> Result<()> {
    let (api, _, session) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let spaces = api
        .list::<Named>(
            &format!("/v2/organizations/{}/spaces", org.metadata.guid),
            &[],
        )
        .await?;
    let current = session.space_guid.unwrap_or_default();
    if ctx.out.json {
        let list: Vec<Value> = spaces
            .iter()
            .map(|s| json!({"name": s.entity.name, "guid": s.metadata.guid, "organization": org.entity.name, "current": s.metadata.guid == current}))
            .collect();
        return ctx.out.print_json(&list);
    }
    let rows: Vec<Vec<String>> = spaces
        .iter()
        .map(|s| {
            let mark = if s.metadata.guid == current { "*" } else { "" };
            vec![mark.into(), s.entity.name.clone()]
        })
        .collect();
    ctx.out.print_table(
        &["", "Space"],
        &rows,
        &format!("No space in {} that you can see.", org.entity.name),
    );
    Ok(())
}

/// `strato space [NAME] [--org ORG]`.
pub async fn space_show(ctx: &Ctx, name: Option<&str>, org: Option<&str>) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let space = space_named(ctx, &api, &org, name).await?;
    let apps = api
        .list::<Named>(&format!("/v2/spaces/{}/apps", space.metadata.guid), &[])
        .await?;
    let members = members(&api, "spaces", &space.metadata.guid, &SPACE_ROLES).await?;
    let app_names: Vec<String> = apps.iter().map(|a| a.entity.name.clone()).collect();
    if ctx.out.json {
        return ctx.out.print_json(&json!({
            "name": space.entity.name, "guid": space.metadata.guid, "organization": org.entity.name,
            "apps": app_names, "members": members_json(&members),
        }));
    }
    println!("Space: {}", space.entity.name);
    println!("Organization: {}", org.entity.name);
    println!("Guid: {}", space.metadata.guid);
    println!("Apps: {}", list_or_none(&app_names));
    println!("Members: {}", members.len());
    Ok(())
}

/// `strato create-space NAME [--org ORG]`.
pub async fn create_space(ctx: &Ctx, name: &str, org: Option<&str>) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let _: Value = api
        .post(
            "/v2/spaces",
            &json!({"name": name, "organization_guid": org.metadata.guid}),
        )
        .await?;
    println!(
        "Created space {name} in organization {}; use it with `strato switch-space {name}`",
        org.entity.name
    );
    Ok(())
}

/// `strato delete-space NAME [--org ORG] [--recursive]`.
pub async fn delete_space(ctx: &Ctx, name: &str, org: Option<&str>, recursive: bool) -> Result<()> {
    let (api, target, session) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let space = space_named(ctx, &api, &org, Some(name)).await?;
    if !confirm_delete(
        ctx,
        &format!(
            "space {name}{}",
            if recursive {
                " and everything in it"
            } else {
                ""
            }
        ),
        &format!("delete-space {name}"),
    )? {
        return Ok(());
    }
    let query = if recursive { "?recursive=true" } else { "" };
    api.delete(&format!("/v2/spaces/{}{query}", space.metadata.guid))
        .await?;
    if session.space_guid.as_deref() == Some(space.metadata.guid.as_str()) {
        ctx.store.update(|c| {
            if let Some(s) = c.targets.get_mut(&target.url) {
                s.space_guid = None;
                s.space_name = None;
            }
        })?;
    }
    println!("Deleted space {name}");
    Ok(())
}

/// `strato rename-space OLD NEW [--org ORG]`.
pub async fn rename_space(ctx: &Ctx, old: &str, new: &str, org: Option<&str>) -> Result<()> {
    let (api, target, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let space = space_named(ctx, &api, &org, Some(old)).await?;
    let _: Value = api
        .put(
            &format!("/v2/spaces/{}", space.metadata.guid),
            &json!({"name": new}),
        )
        .await?;
    ctx.store.update(|c| {
        if let Some(s) = c.targets.get_mut(&target.url) {
            if s.space_guid.as_deref() == Some(space.metadata.guid.as_str()) {
                s.space_name = Some(new.to_string());
            }
        }
    })?;
    println!("Renamed space {old} to {new}");
    Ok(())
}

/// `strato switch-space NAME [--org ORG]`.
pub async fn switch_space(ctx: &Ctx, name: &str, org: Option<&str>) -> Result<()> {
    let (api, target, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let space = space_named(ctx, &api, &org, Some(name)).await?;
    ctx.store.update(|c| {
        if let Some(s) = c.targets.get_mut(&target.url) {
            s.org_guid = Some(org.metadata.guid.clone());
            s.org_name = Some(org.entity.name.clone());
            s.space_guid = Some(space.metadata.guid.clone());
            s.space_name = Some(space.entity.name.clone());
        }
    })?;
    println!("Organization: {}\nSpace: {name}", org.entity.name);
    Ok(())
}

/// `strato link-user-space USER [SPACE] [--org ORG] [--manager] [--auditor] [--developer]`
/// (developer when no role is named). Linking first makes the user a member of the org
/// when you may do that.
pub async fn link_user_space(
    ctx: &Ctx,
    user: &str,
    space: Option<&str>,
    org: Option<&str>,
    flags: &SpaceRoleFlags,
    link: bool,
) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let space = space_named(ctx, &api, &org, space).await?;
    let mut roles = Vec::new();
    if flags.manager {
        roles.push(("managers", "manager"));
    }
    if flags.auditor {
        roles.push(("auditors", "auditor"));
    }
    if flags.developer || roles.is_empty() {
        roles.push(("developers", "developer"));
    }
    let base = format!("/v2/spaces/{}", space.metadata.guid);
    let what: Vec<&str> = roles.iter().map(|(_, n)| *n).collect();
    if link {
        // Space roles need org membership; org managers and admins can grant it here.
        let org_users = format!("/v2/organizations/{}/users", org.metadata.guid);
        if let Err(e) = api
            .put::<Value>(&org_users, &json!({"username": user}))
            .await
        {
            if e.status() != Some(403) {
                return Err(e.into());
            }
        }
        for (segment, _) in &roles {
            let _: Value = api
                .put(&format!("{base}/{segment}"), &json!({"username": user}))
                .await?;
        }
        println!(
            "Added {user} to space {} as {}",
            space.entity.name,
            what.join(", ")
        );
    } else {
        let mut guid = None;
        for (segment, _) in &roles {
            let users = api
                .list::<UserEntity>(&format!("{base}/{segment}"), &[])
                .await?;
            if let Some(u) = users.into_iter().find(|u| u.entity.username == user) {
                guid = Some(u.metadata.guid.clone());
                api.delete(&format!("{base}/{segment}/{}", u.metadata.guid))
                    .await?;
            }
        }
        if guid.is_none() {
            bail!(
                "{user} has none of these roles in space {}: {}",
                space.entity.name,
                what.join(", ")
            );
        }
        println!(
            "Removed {user} from space {} ({})",
            space.entity.name,
            what.join(", ")
        );
    }
    Ok(())
}

/// `strato space-users [SPACE] [--org ORG]`.
pub async fn space_users(ctx: &Ctx, space: Option<&str>, org: Option<&str>) -> Result<()> {
    let (api, _, _) = ctx.api()?;
    let org = org_named(ctx, &api, org).await?;
    let space = space_named(ctx, &api, &org, space).await?;
    let m = members(&api, "spaces", &space.metadata.guid, &SPACE_ROLES).await?;
    print_members(ctx, &m)
}
