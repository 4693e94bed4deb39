//! Who may do what: Cloud Foundry v2's role model in one place.
//!
//! Every handler asks [`Access`] (an extractor: the signed-in user plus their org and space
//! roles) before it reads or changes anything, with a typed question:
//! `access.require(Action::Develop, Scope::Space(&space))?`. The rules, after
//! cloud_controller_ng's access classes:
//!
//! - an administrator may do everything;
//! - an org is seen by anyone holding a role in it or in one of its spaces; org managers
//!   rename it, create its spaces and manage its members; only administrators create
//!   (unless the `user_org_creation` flag is on) and delete orgs;
//! - a space is seen by its developers, managers and auditors and by its org's managers;
//!   org managers and space managers rename it and manage its members; org managers
//!   create and delete spaces;
//! - only space developers change what runs in a space (apps, routes, service instances,
//!   bindings) and see what is secret there (credentials, environment, files, ssh);
//! - a thing that exists but is not visible is refused with 403 `CF-NotAuthorized`, as
//!   CF v2's `find_guid_and_validate_access` does; lists only show what is visible.

use std::collections::HashSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::{json, Value};
use strato_core::ApiError;
use strato_db::{Memberships, OrgRole, Space, SpaceRole};

use crate::auth::CurrentUser;
use crate::cf::{db_err, CfError, CfResult};
use crate::Shared;

/// What a user wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// See the thing (and the non-secret things in it).
    Read,
    /// Rename it.
    Update,
    /// Delete it (an org: administrators only; a space: org managers).
    Delete,
    /// Create spaces in an org.
    CreateSpace,
    /// Add and remove members and their roles.
    ManageRoles,
    /// Change apps, routes, services and bindings of a space; see credentials,
    /// environments and files; run commands in instances.
    Develop,
}

/// What the action is on.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// An organization, by guid.
    Org(&'a str),
    /// A space (its row, so its org is known).
    Space(&'a Space),
}

/// The signed-in user and every role they hold, loaded once per request.
#[derive(Clone, Debug)]
pub struct Access {
    pub user: CurrentUser,
    roles: Memberships,
}

impl Access {
    /// The roles of `user` (none are loaded for an administrator: they need none).
    pub async fn load(c: &Shared, user: CurrentUser) -> CfResult<Access> {
        let roles = if user.admin {
            Memberships::default()
        } else {
            c.db.memberships(&user.guid).await.map_err(db_err)?
        };
        Ok(Access { user, roles })
    }

    /// An access for `user` with the given roles (for tests of the rules).
    pub fn with_roles(user: CurrentUser, roles: Memberships) -> Access {
        Access { user, roles }
    }

    pub fn is_admin(&self) -> bool {
        self.user.admin
    }

    fn has_org_role(&self, org: &str, role: OrgRole) -> bool {
        self.roles.orgs.iter().any(|(o, r)| o == org && *r == role)
    }

    fn has_space_role(&self, space: &str, role: SpaceRole) -> bool {
        self.roles
            .spaces
            .iter()
            .any(|(s, _, r)| s == space && *r == role)
    }

    fn in_space(&self, space: &str) -> bool {
        self.roles.spaces.iter().any(|(s, _, _)| s == space)
    }

    /// True when the user may do `action` on `scope`.
    pub fn can(&self, action: Action, scope: Scope<'_>) -> bool {
        if self.is_admin() {
            return true;
        }
        match scope {
            Scope::Org(org) => {
                let manager = self.has_org_role(org, OrgRole::Manager);
                match action {
                    Action::Read => {
                        self.roles.orgs.iter().any(|(o, _)| o == org)
                            || self.roles.spaces.iter().any(|(_, o, _)| o == org)
                    }
                    Action::Update | Action::CreateSpace | Action::ManageRoles => manager,
                    Action::Delete | Action::Develop => false,
                }
            }
            Scope::Space(space) => {
                let org_manager = self.has_org_role(&space.organization_guid, OrgRole::Manager);
                let space_manager = self.has_space_role(&space.guid, SpaceRole::Manager);
                match action {
                    Action::Read => org_manager || self.in_space(&space.guid),
                    Action::Update | Action::ManageRoles => org_manager || space_manager,
                    Action::Delete | Action::CreateSpace => org_manager,
                    Action::Develop => self.has_space_role(&space.guid, SpaceRole::Developer),
                }
            }
        }
    }

    /// `Ok` when [`Access::can`], else 403 `CF-NotAuthorized` saying what is missing.
    pub fn require(&self, action: Action, scope: Scope<'_>) -> CfResult<()> {
        if self.can(action, scope) {
            return Ok(());
        }
        let mut e = ApiError::not_authorized();
        e.description
            .push_str(&format!(": {}", needed(action, scope)));
        Err(e.into())
    }

    /// `Ok` for administrators only.
    pub fn require_admin(&self) -> CfResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            let mut e = ApiError::not_authorized();
            e.description
                .push_str(": only an administrator can do this (`strato admin grant USER`)");
            Err(e.into())
        }
    }

    /// Loads the space by guid (404 when there is none) and requires `action` on it.
    pub async fn space(&self, c: &Shared, action: Action, space_guid: &str) -> CfResult<Space> {
        let s = crate::api::space(c, space_guid).await?;
        self.require(action, Scope::Space(&s))?;
        Ok(s)
    }

    /// The guids of the spaces this user sees; `None` means all (an administrator).
    pub async fn visible_spaces(&self, c: &Shared) -> CfResult<Option<HashSet<String>>> {
        if self.is_admin() {
            return Ok(None);
        }
        let mut out: HashSet<String> = self
            .roles
            .spaces
            .iter()
            .map(|(s, _, _)| s.clone())
            .collect();
        for (org, role) in &self.roles.orgs {
            if *role == OrgRole::Manager {
                let spaces =
                    c.db.list_spaces(&strato_db::Filter {
                        organization_guid: Some(org.clone()),
                        ..Default::default()
                    })
                    .await
                    .map_err(db_err)?;
                out.extend(spaces.into_iter().map(|s| s.guid));
            }
        }
        Ok(Some(out))
    }

    /// True when the user sees the secrets of space `space_guid` (a developer there).
    pub fn sees_secrets(&self, space_guid: &str) -> bool {
        self.is_admin() || self.has_space_role(space_guid, SpaceRole::Developer)
    }

    /// Hides `credentials` and `environment_json` of a resource JSON from anyone who is
    /// not a developer of `space_guid`.
    pub fn redact(&self, v: &mut Value, space_guid: &str) {
        if self.sees_secrets(space_guid) {
            return;
        }
        let hidden = json!({"redacted_message": "[PRIVATE DATA HIDDEN]"});
        let entity = if v.get("entity").is_some() {
            &mut v["entity"]
        } else {
            v
        };
        for key in ["credentials", "environment_json"] {
            if entity.get(key).is_some() {
                entity[key] = hidden.clone();
            }
        }
    }
}

/// Which role `action` on `scope` needs, for the error message.
fn needed(action: Action, scope: Scope<'_>) -> String {
    let what = match scope {
        Scope::Org(_) => "organization",
        Scope::Space(_) => "space",
    };
    let role = match (action, scope) {
        (Action::Read, Scope::Org(_)) => "a role in the organization",
        (Action::Read, Scope::Space(_)) => "a role in the space or managing its organization",
        (Action::Update | Action::ManageRoles, Scope::Space(_)) => {
            "managing the space or its organization"
        }
        (Action::Delete, Scope::Org(_)) => "an administrator",
        (Action::Develop, _) => "being a developer of the space (`strato link-user-space`)",
        _ => "managing the organization",
    };
    format!("this needs {role} ({what})")
}

impl FromRequestParts<Shared> for Access {
    type Rejection = CfError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        Access::load(state, user).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(admin: bool) -> CurrentUser {
        CurrentUser {
            guid: "u".into(),
            username: "u".into(),
            admin,
            session: "s".into(),
            origin: None,
        }
    }

    fn space(guid: &str, org: &str) -> Space {
        Space {
            guid: guid.into(),
            name: guid.into(),
            organization_guid: org.into(),
            space_quota_definition_guid: None,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn roles_follow_cloud_foundry() {
        let s1 = space("s1", "o1");
        let s2 = space("s2", "o1");
        let other = space("x", "o2");
        let dev = Access::with_roles(
            user(false),
            Memberships {
                orgs: vec![("o1".into(), OrgRole::User)],
                spaces: vec![("s1".into(), "o1".into(), SpaceRole::Developer)],
            },
        );
        assert!(dev.can(Action::Develop, Scope::Space(&s1)));
        assert!(!dev.can(Action::Develop, Scope::Space(&s2)));
        assert!(!dev.can(Action::Read, Scope::Space(&other)));
        assert!(dev.can(Action::Read, Scope::Org("o1")));
        assert!(!dev.can(Action::ManageRoles, Scope::Space(&s1)));
        assert!(dev.sees_secrets("s1") && !dev.sees_secrets("s2"));

        let manager = Access::with_roles(
            user(false),
            Memberships {
                orgs: vec![("o1".into(), OrgRole::Manager)],
                spaces: vec![],
            },
        );
        assert!(manager.can(Action::Read, Scope::Space(&s2)));
        assert!(manager.can(Action::Delete, Scope::Space(&s2)));
        assert!(!manager.can(Action::Develop, Scope::Space(&s2)));
        assert!(!manager.can(Action::Delete, Scope::Org("o1")));
        assert!(!manager.can(Action::Read, Scope::Org("o2")));

        let admin = Access::with_roles(user(true), Memberships::default());
        assert!(admin.can(Action::Delete, Scope::Org("o2")));
        let err = dev.require(Action::Develop, Scope::Space(&s2)).unwrap_err();
        assert_eq!(err.0.status, 403);
        assert!(
            err.0.description.contains("developer"),
            "{}",
            err.0.description
        );
    }

    #[test]
    fn secrets_are_hidden_from_non_developers() {
        let auditor = Access::with_roles(
            user(false),
            Memberships {
                orgs: vec![],
                spaces: vec![("s1".into(), "o1".into(), SpaceRole::Auditor)],
            },
        );
        let mut v = json!({"entity": {"credentials": {"password": "p"}, "name": "db"}});
        auditor.redact(&mut v, "s1");
        assert_eq!(
            v["entity"]["credentials"]["redacted_message"],
            "[PRIVATE DATA HIDDEN]"
        );
        assert_eq!(v["entity"]["name"], "db");
    }
}
