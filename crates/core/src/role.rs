//! The role table: which roles exist, and the config component each one reads.
//!
//! DESIGN "Decisions": one table maps role names to their Stackato config components; an
//! unknown role is an error that lists the known ones.

use std::fmt;
use std::str::FromStr;

/// A long-running part of the platform that `stratod` can host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Base,
    Primary,
    Controller,
    Stager,
    Dea,
    Router,
    HealthManager,
    Logs,
    Postgresql,
    Mysql,
    Redis,
    Filesystem,
}

/// `(role, name, config component)` for every role.
const TABLE: &[(Role, &str, &str)] = &[
    (Role::Base, "base", "cluster"),
    (Role::Primary, "primary", "cluster"),
    (Role::Controller, "controller", "cloud_controller_ng"),
    (Role::Stager, "stager", "stager"),
    (Role::Dea, "dea", "dea_ng"),
    (Role::Router, "router", "router2g"),
    (Role::HealthManager, "health_manager", "health_manager"),
    (Role::Logs, "logs", "logyard"),
    (Role::Postgresql, "postgresql", "postgresql_node"),
    (Role::Mysql, "mysql", "mysql_node"),
    (Role::Redis, "redis", "redis_node"),
    (Role::Filesystem, "filesystem", "filesystem_node"),
];

impl Role {
    /// Every role, in table order.
    pub fn all() -> impl Iterator<Item = Role> {
        TABLE.iter().map(|(r, _, _)| *r)
    }

    /// The role's canonical name (`health_manager`, `dea`, ...).
    pub fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(r, _, _)| *r == self)
            .map(|e| e.1)
            .unwrap_or("?")
    }

    /// The config component this role reads (`dea` → `dea_ng`).
    pub fn component(self) -> &'static str {
        TABLE
            .iter()
            .find(|(r, _, _)| *r == self)
            .map(|e| e.2)
            .unwrap_or("?")
    }

    /// The roles a role stands for: `primary` is controller + health manager + router.
    pub fn expand(self) -> Vec<Role> {
        match self {
            Role::Primary => vec![Role::Controller, Role::HealthManager, Role::Router],
            r => vec![r],
        }
    }

    /// The micro cloud's role set: everything one machine needs to push and run apps.
    pub fn micro() -> Vec<Role> {
        vec![
            Role::Base,
            Role::Controller,
            Role::Stager,
            Role::Dea,
            Role::Router,
            Role::HealthManager,
            Role::Logs,
            Role::Postgresql,
            Role::Mysql,
            Role::Redis,
            Role::Filesystem,
        ]
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not in the table.
#[derive(Debug, thiserror::Error)]
#[error("unknown role '{0}'; known roles: {known}", known = known_roles())]
pub struct UnknownRole(pub String);

fn known_roles() -> String {
    TABLE.iter().map(|e| e.1).collect::<Vec<_>>().join(", ")
}

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        TABLE
            .iter()
            .find(|(_, n, _)| *n == key)
            .map(|e| e.0)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_map_to_components() {
        for r in Role::all() {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert_eq!(Role::Dea.component(), "dea_ng");
        assert_eq!(Role::Router.component(), "router2g");
        assert_eq!(
            "health-manager".parse::<Role>().unwrap(),
            Role::HealthManager
        );
    }

    #[test]
    fn unknown_role_lists_the_known_ones() {
        let err = "deaa".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("unknown role 'deaa'"), "{err}");
        assert!(err.contains("dea, router"), "{err}");
    }

    #[test]
    fn primary_expands_to_core_roles() {
        assert_eq!(
            Role::Primary.expand(),
            vec![Role::Controller, Role::HealthManager, Role::Router]
        );
    }
}
