//! The role matrix: every endpoint of the API × every role × the user's own org and
//! another org → the status Cloud Foundry v2 gives, over real HTTP (SQLite, a TCP port).
//!
//! The endpoints come from [`api::route_table`], the same table the router is built from,
//! so a new endpoint without a row here fails [`every_endpoint_has_a_row`]. The statuses are
//! written out by hand below. Columns, in order:
//!
//! | ADM   | OM          | OA          | OU                 | SM            | SD              | SA            | STR      |
//! |-------|-------------|-------------|--------------------|---------------|-----------------|---------------|----------|
//! | admin | org manager | org auditor | org user (member)  | space manager | space developer | space auditor | stranger |
//!
//! "own" is a request about things in the org (and space) where the user holds the role;
//! "other" about things in an org where they hold none. Existing things one may not see
//! get 403 `CF-NotAuthorized` as in CF v2 (`find_guid_and_validate_access`); lists are
//! filtered instead (checked in the tests after the matrix). A status other than 403 means
//! the check let the request through to the handler, which then answers as it does for an
//! administrator (e.g. 400 for an instance of a stopped app: no DEA runs here).

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};
use strato_controller::{api, auth, Shared};

mod common;
use common::Served;
use strato_db::{
    package_state, App, CatalogEntry, Db, NewOAuthClient, OrgRole, QuotaLimits, SpaceRole,
};

/// (method, path as in the route table, own statuses, other-org statuses)
const MATRIX: &[(&str, &str, &str, &str)] = &[
    // ---- public and any signed-in user
    (
        "GET",
        "/",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/info",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/oauth/token",
        "400 400 400 400 400 400 400 400",
        "400 400 400 400 400 400 400 400",
    ),
    (
        "GET",
        "/userinfo",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "DELETE",
        "/oauth/token/revoke/{session}",
        "204 403 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    // ---- OAuth clients (UAA: administrators only)
    (
        "POST",
        "/oauth/clients",
        "201 403 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/oauth/clients",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/oauth/clients/{client_id}",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/resource_match",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/events",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/config/feature_flags",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/config/feature_flags/{guid}",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "PUT",
        "/v2/config/feature_flags/{guid}",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    // ---- users (not org-scoped: "other" is a user of the other org)
    (
        "GET",
        "/v2/users",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/users/{guid}",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/users/{guid}",
        "201 403 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/users/{guid}",
        "204 403 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/users/{guid}/organizations",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/users/{guid}/spaces",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "POST",
        "/Users",
        "201 403 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/Users/{guid}/password",
        "200 403 403 403 403 403 403 403",
        "200 403 403 403 403 403 403 403",
    ),
    // ---- organizations
    (
        "GET",
        "/v2/organizations",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/organizations",
        "201 403 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/organizations/{guid}",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/organizations/{guid}",
        "204 403 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/organizations/{guid}/spaces",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/organizations/{guid}/users",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/users",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/users/{user_guid}",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/organizations/{guid}/users/{user_guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/organizations/{guid}/managers",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/managers",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/managers/{user_guid}",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/organizations/{guid}/managers/{user_guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/organizations/{guid}/billing_managers",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/billing_managers",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/billing_managers/{user_guid}",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/organizations/{guid}/billing_managers/{user_guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/organizations/{guid}/auditors",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/auditors",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/organizations/{guid}/auditors/{user_guid}",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/organizations/{guid}/auditors/{user_guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    // ---- spaces
    (
        "GET",
        "/v2/spaces",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/spaces",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/spaces/{guid}",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/spaces/{guid}",
        "201 201 403 403 201 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/spaces/{guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/spaces/{guid}/summary",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/spaces/{guid}/apps",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/spaces/{guid}/service_instances",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/spaces/{guid}/developers",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/spaces/{guid}/developers",
        "201 201 403 403 201 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/spaces/{guid}/developers/{user_guid}",
        "201 201 403 403 201 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/spaces/{guid}/developers/{user_guid}",
        "204 204 403 403 204 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/spaces/{guid}/managers",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/spaces/{guid}/managers",
        "201 201 403 403 201 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/spaces/{guid}/managers/{user_guid}",
        "201 201 403 403 201 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/spaces/{guid}/managers/{user_guid}",
        "204 204 403 403 204 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/spaces/{guid}/auditors",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/spaces/{guid}/auditors",
        "201 201 403 403 201 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/spaces/{guid}/auditors/{user_guid}",
        "201 201 403 403 201 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/spaces/{guid}/auditors/{user_guid}",
        "204 204 403 403 204 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    // ---- domains: shared, readable by every signed-in user
    (
        "GET",
        "/v2/shared_domains",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/shared_domains/{guid}",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/domains",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/private_domains",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/private_domains",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/private_domains/{guid}",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/private_domains/{guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    // ---- routes
    (
        "GET",
        "/v2/routes",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/routes",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/routes/{guid}",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/routes/{guid}",
        "204 403 403 403 403 204 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/routes/{guid}/apps",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    // ---- apps (no DEA runs here: instance requests of the stopped app answer 400)
    (
        "GET",
        "/v2/apps",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/apps",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/apps/{guid}",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/apps/{guid}",
        "204 403 403 403 403 204 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/summary",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/routes",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/apps/{guid}/routes/{route}",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/apps/{guid}/routes/{route}",
        "204 403 403 403 403 204 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/apps/{guid}/bits",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "POST",
        "/v2/apps/{guid}/restage",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/instances",
        "400 400 403 403 400 400 400 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/stats",
        "400 400 403 403 400 400 400 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/staging_log/{task}",
        "404 404 403 403 404 404 404 403",
        "404 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/releases",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "POST",
        "/v2/apps/{guid}/rollback",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "POST",
        "/v2/apps/{guid}/restart",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/crashes",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/stackato_logs",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/stackato_drains",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "POST",
        "/v2/apps/{guid}/stackato_drains",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/apps/{guid}/stackato_drains/{name}",
        "204 403 403 403 403 204 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/service_bindings",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/instances/{index}/ssh",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/instances/{index}/files",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/apps/{guid}/instances/{index}/files/{*path}",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    // ---- service catalog: every signed-in user
    (
        "GET",
        "/v2/services",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/services/{guid}",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/services/{guid}/service_plans",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/service_plans",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "GET",
        "/v2/service_plans/{guid}",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    // ---- service instances (the broker here is unreachable: provisioning answers 502;
    //      the instance is user-provided: export/import answer 400, a tunnel 400)
    (
        "GET",
        "/v2/service_instances",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/service_instances",
        "502 403 403 403 403 502 403 403",
        "502 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/service_instances/{guid}",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/service_instances/{guid}",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/service_instances/{guid}",
        "204 403 403 403 403 204 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/service_instances/{guid}/service_bindings",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/service_instances/{guid}/export",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/service_instances/{guid}/import",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/service_instances/{guid}/tunnel",
        "400 403 403 403 403 400 403 403",
        "400 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/user_provided_service_instances",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/user_provided_service_instances",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/user_provided_service_instances/{guid}",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/user_provided_service_instances/{guid}",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/user_provided_service_instances/{guid}",
        "204 403 403 403 403 204 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    // ---- bindings
    (
        "GET",
        "/v2/service_bindings",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/service_bindings",
        "201 403 403 403 403 201 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/service_bindings/{guid}",
        "200 200 403 403 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/service_bindings/{guid}",
        "204 403 403 403 403 204 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    // ---- quotas: org quotas are read by all and changed by administrators; space quotas
    // belong to an org and are managed by its managers
    (
        "GET",
        "/v2/quota_definitions",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/quota_definitions",
        "201 403 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/quota_definitions/{guid}",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "PUT",
        "/v2/quota_definitions/{guid}",
        "201 403 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/quota_definitions/{guid}",
        "204 403 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/organizations/{guid}/memory_usage",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/space_quota_definitions",
        "200 200 200 200 200 200 200 200",
        "200 200 200 200 200 200 200 200",
    ),
    (
        "POST",
        "/v2/space_quota_definitions",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "GET",
        "/v2/space_quota_definitions/{guid}",
        "200 200 200 200 200 200 200 403",
        "200 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/space_quota_definitions/{guid}",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/space_quota_definitions/{guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/space_quota_definitions/{guid}/spaces/{space_guid}",
        "201 201 403 403 403 403 403 403",
        "201 403 403 403 403 403 403 403",
    ),
    (
        "DELETE",
        "/v2/space_quota_definitions/{guid}/spaces/{space_guid}",
        "204 204 403 403 403 403 403 403",
        "204 403 403 403 403 403 403 403",
    ),
    // ---- blobs for other nodes: a signed URL, never a bearer token (no signer on this
    // controller either: a micro cloud shares its blob files)
    (
        "GET",
        "/v2/blobs/{kind}/{sha}",
        "403 403 403 403 403 403 403 403",
        "403 403 403 403 403 403 403 403",
    ),
    (
        "PUT",
        "/v2/blobs/{kind}/{sha}",
        "403 403 403 403 403 403 403 403",
        "403 403 403 403 403 403 403 403",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Admin,
    OrgManager,
    OrgAuditor,
    OrgUser,
    SpaceManager,
    SpaceDeveloper,
    SpaceAuditor,
    Stranger,
}

const ROLES: [Role; 8] = [
    Role::Admin,
    Role::OrgManager,
    Role::OrgAuditor,
    Role::OrgUser,
    Role::SpaceManager,
    Role::SpaceDeveloper,
    Role::SpaceAuditor,
    Role::Stranger,
];

/// Gives `user` the role `role` in `org` / `space`.
async fn grant(db: &Db, role: Role, user: &str, org: &str, space: &str) {
    let (org_roles, space_role): (&[OrgRole], Option<SpaceRole>) = match role {
        Role::Admin | Role::Stranger => (&[], None),
        Role::OrgManager => (&[OrgRole::User, OrgRole::Manager], None),
        Role::OrgAuditor => (&[OrgRole::User, OrgRole::Auditor], None),
        Role::OrgUser => (&[OrgRole::User], None),
        Role::SpaceManager => (&[OrgRole::User], Some(SpaceRole::Manager)),
        Role::SpaceDeveloper => (&[OrgRole::User], Some(SpaceRole::Developer)),
        Role::SpaceAuditor => (&[OrgRole::User], Some(SpaceRole::Auditor)),
    };
    for r in org_roles {
        db.add_org_role(org, user, *r).await.unwrap();
    }
    if let Some(r) = space_role {
        db.add_space_role(space, user, r).await.unwrap();
    }
}

/// An org with one of everything, made straight in the database.
struct World {
    org: String,
    space: String,
    app: String,
    route: String,
    /// A user-provided instance bound to `app`.
    bound: String,
    /// A user-provided instance bound to nothing.
    instance: String,
    binding: String,
    /// Another user, a member of `org`, with a live session.
    user: String,
    username: String,
    session: String,
    /// An org quota no org uses.
    quota: String,
    /// A space quota of `org`.
    space_quota: String,
    /// The id of a registered OAuth client.
    client: String,
    /// A private domain of `org` with no routes.
    private_domain: String,
}

struct Fixture {
    base: String,
    http: reqwest::Client,
    c: Shared,
    domain: String,
    service: String,
    plan: String,
    tokens: HashMap<Role, String>,
    /// The user guid of each role.
    guids: HashMap<Role, String>,
    seq: std::sync::atomic::AtomicUsize,
    served: Served,
}

impl Fixture {
    async fn start() -> Fixture {
        let served = Served::start(|_| {}).await;
        let (base, c) = (served.base.clone(), served.c.clone());
        let db = &c.db;
        let domain = db.list_domains(&Default::default()).await.unwrap()[0]
            .guid
            .clone();
        // A catalog whose broker does not answer.
        let broker = db
            .upsert_broker("mysql", "http://127.0.0.1:1", "u", "p")
            .await
            .unwrap();
        db.sync_catalog(
            &broker.guid,
            &[CatalogEntry {
                label: "mysql".into(),
                unique_id: "strato-mysql".into(),
                description: "MySQL".into(),
                bindable: true,
                tags: vec![],
                plans: vec![(
                    "free".into(),
                    "strato-mysql-free".into(),
                    "free".into(),
                    true,
                )],
            }],
        )
        .await
        .unwrap();
        let service = db.list_services(&Default::default()).await.unwrap()[0]
            .guid
            .clone();
        let plan = db.list_service_plans(&Default::default()).await.unwrap()[0]
            .guid
            .clone();
        let http = served.http.clone();
        let mut tokens = HashMap::new();
        let mut guids = HashMap::new();
        let hash = auth::hash_password("pw").unwrap();
        for role in ROLES {
            let name = format!("{role:?}").to_lowercase();
            let (name, password) = if role == Role::Admin {
                ("admin".to_string(), "s3cret")
            } else {
                db.create_user(&name, &hash, false).await.unwrap();
                (name, "pw")
            };
            let guid = db.user_by_name(&name).await.unwrap().unwrap().guid;
            tokens.insert(role, served.access_token(&name, password).await);
            guids.insert(role, guid);
        }
        Fixture {
            base,
            http,
            c,
            domain,
            service,
            plan,
            tokens,
            guids,
            seq: Default::default(),
            served,
        }
    }

    fn unique(&self, prefix: &str) -> String {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}{n}")
    }

    /// A fresh org with one of everything; with `member`, that role is granted in it.
    async fn world(&self, member: Option<Role>) -> World {
        let db = &self.c.db;
        let org = db.create_org(&self.unique("org")).await.unwrap();
        let space = db.create_space(&org.guid, "space").await.unwrap();
        if let Some(role) = member {
            grant(db, role, &self.guids[&role], &org.guid, &space.guid).await;
        }
        let now = strato_core::now_rfc3339();
        let app = App {
            guid: strato_core::new_guid(),
            name: "web".into(),
            space_guid: space.guid.clone(),
            instances: 1,
            memory: 64,
            disk_quota: 256,
            state: "STOPPED".into(),
            command: None,
            buildpack: None,
            detected_buildpack: None,
            detected_start_command: None,
            environment_json: r#"{"SECRET":"s"}"#.into(),
            health_check_timeout: None,
            health_check_type: "port".into(),
            health_check_http_endpoint: None,
            package_hash: None,
            package_state: package_state::PENDING.into(),
            staging_task_id: None,
            staging_error: None,
            droplet_hash: None,
            version: "v1".into(),
            created_at: now.clone(),
            updated_at: now,
        };
        db.insert_app(&app).await.unwrap();
        let route = db
            .create_route(&self.unique("host"), &self.domain, &space.guid)
            .await
            .unwrap();
        db.map_route(&app.guid, &route.guid).await.unwrap();
        let bound = Db::new_service_instance("bound", &space.guid, None, r#"{"password":"p"}"#);
        db.insert_service_instance(&bound).await.unwrap();
        let instance = Db::new_service_instance("free", &space.guid, None, r#"{"password":"p"}"#);
        db.insert_service_instance(&instance).await.unwrap();
        let binding = strato_core::new_guid();
        db.insert_service_binding(&app.guid, &bound.guid, &binding, r#"{"password":"p"}"#)
            .await
            .unwrap();
        let username = self.unique("member");
        let user = db.create_user(&username, "x", false).await.unwrap();
        db.add_org_role(&org.guid, &user.guid, OrgRole::User)
            .await
            .unwrap();
        let session = strato_core::new_guid();
        db.create_session(&session, &user.guid, "").await.unwrap();
        let limits = QuotaLimits::cf_default();
        let quota = db
            .create_quota(&self.unique("quota"), &limits)
            .await
            .unwrap();
        let space_quota = db
            .create_space_quota(&org.guid, &self.unique("sq"), &limits)
            .await
            .unwrap();
        let client = db
            .create_oauth_client(&NewOAuthClient {
                client_id: self.unique("client"),
                secret_hash: "x".into(),
                authorized_grant_types: vec!["client_credentials".into()],
                authorities: vec!["cloud_controller.admin".into()],
                created_by: self.guids[&Role::Admin].clone(),
            })
            .await
            .unwrap();
        db.add_drain(&app.guid, "drain", "tcp://127.0.0.1:9", false)
            .await
            .unwrap();
        let private_domain = db
            .create_private_domain(&format!("{}.example.test", self.unique("pd")), &org.guid)
            .await
            .unwrap();
        World {
            private_domain: private_domain.guid,
            client: client.client_id,
            org: org.guid,
            space: space.guid,
            app: app.guid,
            route: route.guid,
            bound: bound.guid,
            instance: instance.guid,
            binding,
            user: user.guid,
            username,
            session,
            quota: quota.guid,
            space_quota: space_quota.guid,
        }
    }

    /// The concrete path for a route-table path in `w`.
    fn path(&self, template: &str, w: &World) -> String {
        let first = if template.starts_with("/v2/organizations/") {
            &w.org
        } else if template.starts_with("/v2/spaces/") {
            &w.space
        } else if template.starts_with("/v2/apps/") {
            &w.app
        } else if template.starts_with("/v2/routes/") {
            &w.route
        } else if template == "/v2/service_instances/{guid}/service_bindings" {
            &w.bound
        } else if template.starts_with("/v2/service_instances/")
            || template.starts_with("/v2/user_provided_service_instances/")
        {
            &w.instance
        } else if template.starts_with("/v2/service_bindings/") {
            &w.binding
        } else if template.starts_with("/v2/users/") || template.starts_with("/Users/") {
            &w.user
        } else if template.starts_with("/v2/private_domains/") {
            &w.private_domain
        } else if template.starts_with("/v2/shared_domains/") {
            &self.domain
        } else if template.starts_with("/v2/services/") {
            &self.service
        } else if template.starts_with("/v2/service_plans/") {
            &self.plan
        } else if template.starts_with("/v2/quota_definitions/") {
            &w.quota
        } else if template.starts_with("/v2/space_quota_definitions/") {
            &w.space_quota
        } else {
            "user_org_creation"
        };
        let mut p = template
            .replace("{guid}", first)
            .replace("{user_guid}", &w.user)
            .replace("{space_guid}", &w.space)
            .replace("{route}", &w.route)
            .replace("{task}", "no-such-task")
            .replace("{index}", "0")
            .replace("{*path}", "app/index.html")
            .replace("{session}", &w.session)
            .replace("{client_id}", &w.client)
            .replace("{name}", "drain")
            .replace("{kind}", "droplet")
            .replace(
                "{sha}",
                "0000000000000000000000000000000000000000000000000000000000000000",
            );
        if template == "/v2/organizations/{guid}" || template == "/v2/spaces/{guid}" {
            p.push_str("?recursive=true");
        }
        p
    }

    /// The request body for a row, if it needs one.
    fn body(&self, method: &str, template: &str, w: &World) -> Option<Value> {
        let name = self.unique("n");
        Some(match (method, template) {
            ("POST", "/v2/routes") => {
                json!({"host": name, "domain_guid": self.domain, "space_guid": w.space})
            }
            ("POST", "/v2/apps") => json!({"name": name, "space_guid": w.space}),
            ("POST", "/v2/apps/{guid}/stackato_drains") => {
                json!({"name": name, "uri": "tcp://127.0.0.1:9"})
            }
            ("POST", "/v2/private_domains") => {
                json!({"name": format!("{name}.example.test"), "owning_organization_guid": w.org})
            }
            ("PUT", "/v2/apps/{guid}") => json!({"instances": 1}),
            ("PUT", "/v2/resource_match") => json!([]),
            ("POST", "/v2/service_instances") => {
                json!({"name": name, "service_plan_guid": self.plan, "space_guid": w.space})
            }
            ("PUT", "/v2/service_instances/{guid}") => json!({"name": name}),
            ("POST", "/v2/user_provided_service_instances") => {
                json!({"name": name, "space_guid": w.space, "credentials": {}})
            }
            ("PUT", "/v2/user_provided_service_instances/{guid}") => {
                json!({"credentials": {"a": "b"}})
            }
            ("POST", "/v2/service_bindings") => {
                json!({"app_guid": w.app, "service_instance_guid": w.instance})
            }
            ("POST", "/Users") => json!({"userName": name, "password": "pw"}),
            ("POST", "/oauth/clients") => json!({
                "client_id": name, "client_secret": "s",
                "authorities": ["cloud_controller.admin"],
            }),
            ("PUT", "/Users/{guid}/password") => json!({"password": "new"}),
            ("PUT", "/v2/users/{guid}") => json!({"admin": false}),
            ("POST", "/v2/organizations") => json!({"name": name}),
            ("PUT", "/v2/organizations/{guid}") | ("PUT", "/v2/spaces/{guid}") => {
                json!({"name": name})
            }
            ("POST", "/v2/spaces") => json!({"name": name, "organization_guid": w.org}),
            ("PUT", "/v2/config/feature_flags/{guid}") => json!({"enabled": false}),
            ("POST", "/v2/quota_definitions") => json!({"name": name, "memory_limit": 1024}),
            ("PUT", "/v2/quota_definitions/{guid}") => json!({"memory_limit": 2048}),
            ("POST", "/v2/space_quota_definitions") => {
                json!({"name": name, "organization_guid": w.org, "memory_limit": 512})
            }
            ("PUT", "/v2/space_quota_definitions/{guid}") => json!({"memory_limit": 256}),
            ("PUT", t) if t.ends_with("s") && !t.ends_with("}") => json!({"username": w.username}),
            _ => return None,
        })
    }

    async fn call(&self, role: Role, method: &str, template: &str, w: &World) -> u16 {
        let url = format!("{}{}", self.base, self.path(template, w));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, url)
            .header("authorization", format!("bearer {}", self.tokens[&role]));
        if template.ends_with("/ssh") || template.ends_with("/tunnel") {
            req = req
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        if template == "/oauth/token" {
            req = req
                .basic_auth("cf", Some(""))
                .form(&[("grant_type", "nope")]);
        } else if template == "/v2/apps/{guid}/bits" {
            req = req.multipart(reqwest::multipart::Form::new().text("resources", "[]"));
        } else if template == "/v2/service_instances/{guid}/import" {
            req = req.body("dump");
        } else if let Some(b) = self.body(method, template, w) {
            req = req.json(&b);
        }
        req.send().await.unwrap().status().as_u16()
    }
}

fn statuses(row: &str) -> Vec<u16> {
    let v: Vec<u16> = row.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(v.len(), ROLES.len(), "a row has one status per role: {row}");
    v
}

#[test]
fn every_endpoint_has_a_row() {
    let routes: BTreeSet<(String, String)> = api::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let rows: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, _, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(rows.len(), MATRIX.len(), "no row twice");
    let missing: Vec<_> = routes.difference(&rows).collect();
    let stale: Vec<_> = rows.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "endpoints without a row in the role matrix: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for endpoints that do not exist: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let f = Fixture::start().await;
    // Worlds for reads, made once: one where every role holds its role, one where none does.
    let own = f.world(None).await;
    for role in ROLES {
        grant(&f.c.db, role, &f.guids[&role], &own.org, &own.space).await;
    }
    let other = f.world(None).await;
    let mut failures = Vec::new();
    for (method, path, own_row, other_row) in MATRIX {
        for (scope, row) in [("own", own_row), ("other", other_row)] {
            for (role, want) in ROLES.iter().zip(statuses(row)) {
                let fresh;
                let w = if *method == "GET" {
                    if scope == "own" {
                        &own
                    } else {
                        &other
                    }
                } else {
                    // Changes get a world of their own, so each starts from the same state.
                    fresh = f.world((scope == "own").then_some(*role)).await;
                    &fresh
                };
                let got = f.call(*role, method, path, w).await;
                if got != want {
                    failures.push(format!(
                        "{method} {path} as {role:?} ({scope}): want {want}, got {got}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

impl Fixture {
    async fn send(
        &self,
        role: Role,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send_with(&self.tokens[&role], method, path, body)
            .await
    }

    async fn send_with(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("bearer {token}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn guids(list: &Value) -> Vec<String> {
    list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["guid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_only_what_the_user_sees_and_secrets_only_to_developers() {
    let f = Fixture::start().await;
    let own = f.world(None).await;
    for role in ROLES {
        grant(&f.c.db, role, &f.guids[&role], &own.org, &own.space).await;
    }
    let other = f.world(None).await;
    use reqwest::Method as M;
    let (_, apps) = f.send(Role::SpaceDeveloper, M::GET, "/v2/apps", None).await;
    assert_eq!(
        guids(&apps),
        vec![own.app.clone()],
        "a developer lists the apps of their space only"
    );
    let (_, apps) = f.send(Role::Admin, M::GET, "/v2/apps", None).await;
    assert!(guids(&apps).contains(&other.app));
    let (_, apps) = f.send(Role::Stranger, M::GET, "/v2/apps", None).await;
    assert!(guids(&apps).is_empty());
    let (_, orgs) = f
        .send(Role::OrgAuditor, M::GET, "/v2/organizations", None)
        .await;
    assert_eq!(guids(&orgs), vec![own.org.clone()]);
    let (_, spaces) = f.send(Role::OrgAuditor, M::GET, "/v2/spaces", None).await;
    assert!(
        guids(&spaces).is_empty(),
        "an org auditor does not see spaces"
    );
    let (_, spaces) = f.send(Role::OrgManager, M::GET, "/v2/spaces", None).await;
    assert_eq!(guids(&spaces), vec![own.space.clone()]);
    for path in [
        "/v2/routes",
        "/v2/service_instances",
        "/v2/service_bindings",
        "/v2/user_provided_service_instances",
    ] {
        let (_, v) = f.send(Role::SpaceAuditor, M::GET, path, None).await;
        assert!(
            !guids(&v).is_empty() && !v.to_string().contains(&other.space),
            "{path}: {v}"
        );
    }

    // Credentials and environments: developers see them, auditors get them redacted.
    let path = format!("/v2/service_bindings/{}", own.binding);
    let (_, dev) = f.send(Role::SpaceDeveloper, M::GET, &path, None).await;
    assert_eq!(dev["entity"]["credentials"]["password"], "p");
    let (_, aud) = f.send(Role::SpaceAuditor, M::GET, &path, None).await;
    assert!(!aud.to_string().contains("\"p\""), "{aud}");
    assert_eq!(
        aud["entity"]["credentials"]["redacted_message"],
        "[PRIVATE DATA HIDDEN]"
    );
    let (_, aud) = f
        .send(
            Role::OrgManager,
            M::GET,
            &format!("/v2/apps/{}", own.app),
            None,
        )
        .await;
    assert!(!aud.to_string().contains("SECRET"), "{aud}");
    let (_, aud) = f
        .send(
            Role::SpaceManager,
            M::GET,
            "/v2/service_instances?inline-relations-depth=1",
            None,
        )
        .await;
    assert!(!aud.to_string().contains("\"p\""), "{aud}");
    let (_, dev) = f
        .send(
            Role::SpaceDeveloper,
            M::GET,
            &format!("/v2/apps/{}", own.app),
            None,
        )
        .await;
    assert_eq!(dev["entity"]["environment_json"]["SECRET"], "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_passwords_memberships_and_org_deletion() {
    let f = Fixture::start().await;
    use reqwest::Method as M;
    // The admin creates bob; bob logs in twice and changes his password from one login.
    let (s, bob) = f.send(Role::Admin, M::POST, "/Users", Some(json!({"userName": "bob", "password": "one", "emails": [{"value": "bob@example.com"}]}))).await;
    assert_eq!(s, 201, "{bob}");
    let bob_guid = bob["id"].as_str().unwrap().to_string();
    let (s, _) = f
        .send(
            Role::Admin,
            M::POST,
            "/Users",
            Some(json!({"userName": "bob", "password": "x"})),
        )
        .await;
    assert_eq!(s, 409, "a taken name is refused");
    let first = f.served.access_token("bob", "one").await;
    let second = f.served.access_token("bob", "one").await;
    let pw = format!("/Users/{bob_guid}/password");
    let (s, v) = f
        .send_with(
            &first,
            M::PUT,
            &pw,
            Some(json!({"oldPassword": "wrong", "password": "two"})),
        )
        .await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = f
        .send_with(
            &first,
            M::PUT,
            &pw,
            Some(json!({"oldPassword": "one", "password": "two"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        f.send_with(&second, M::GET, "/v2/apps", None).await.0,
        401,
        "the other login is revoked"
    );
    assert_eq!(
        f.send_with(&first, M::GET, "/v2/apps", None).await.0,
        200,
        "the login that changed it stays"
    );
    f.served.access_token("bob", "two").await;

    // Bob may not create orgs until the flag is on; then he manages his.
    let (s, _) = f
        .send_with(
            &first,
            M::POST,
            "/v2/organizations",
            Some(json!({"name": "bobs"})),
        )
        .await;
    assert_eq!(s, 403);
    let flag = "/v2/config/feature_flags/user_org_creation";
    assert_eq!(
        f.send(Role::Admin, M::PUT, flag, Some(json!({"enabled": true})))
            .await
            .0,
        200
    );
    let (s, org) = f
        .send_with(
            &first,
            M::POST,
            "/v2/organizations",
            Some(json!({"name": "bobs"})),
        )
        .await;
    assert_eq!(s, 201, "{org}");
    let org_guid = org["metadata"]["guid"].as_str().unwrap().to_string();
    let (s, space) = f
        .send_with(
            &first,
            M::POST,
            "/v2/spaces",
            Some(json!({"name": "dev", "organization_guid": org_guid})),
        )
        .await;
    assert_eq!(s, 201, "{space}");
    let space_guid = space["metadata"]["guid"].as_str().unwrap().to_string();

    // A space role needs org membership first.
    let (s, v) = f
        .send_with(
            &first,
            M::PUT,
            &format!("/v2/spaces/{space_guid}/developers"),
            Some(json!({"username": "orguser"})),
        )
        .await;
    assert_eq!(
        (s, v["error_code"].as_str()),
        (400, Some("CF-InvalidRelation")),
        "{v}"
    );
    assert_eq!(
        f.send_with(
            &first,
            M::PUT,
            &format!("/v2/organizations/{org_guid}/users"),
            Some(json!({"username": "orguser"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        f.send_with(
            &first,
            M::PUT,
            &format!("/v2/spaces/{space_guid}/developers"),
            Some(json!({"username": "orguser"}))
        )
        .await
        .0,
        201
    );
    let (_, devs) = f
        .send_with(
            &first,
            M::GET,
            &format!("/v2/spaces/{space_guid}/developers"),
            None,
        )
        .await;
    assert_eq!(devs["resources"][0]["entity"]["username"], "orguser");
    let (_, mine) = f
        .send(
            Role::OrgUser,
            M::GET,
            &format!("/v2/users/{}/spaces", f.guids[&Role::OrgUser]),
            None,
        )
        .await;
    assert_eq!(guids(&mine), vec![space_guid.clone()]);

    // An org with a space is deleted only recursively (by an administrator).
    let app = f
        .send(
            Role::OrgUser,
            M::POST,
            "/v2/apps",
            Some(json!({"name": "web", "space_guid": space_guid})),
        )
        .await;
    assert_eq!(app.0, 201, "{}", app.1);
    let (s, v) = f
        .send(
            Role::Admin,
            M::DELETE,
            &format!("/v2/organizations/{org_guid}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error_code"].as_str()),
        (400, Some("CF-AssociationNotEmpty")),
        "{v}"
    );
    assert_eq!(
        f.send(
            Role::Admin,
            M::DELETE,
            &format!("/v2/organizations/{org_guid}?recursive=true"),
            None
        )
        .await
        .0,
        204
    );
    assert!(f
        .c
        .db
        .app_by_guid(app.1["metadata"]["guid"].as_str().unwrap())
        .await
        .unwrap()
        .is_none());

    // Deleting bob revokes his logins at once.
    assert_eq!(
        f.send(
            Role::Admin,
            M::DELETE,
            &format!("/v2/users/{bob_guid}"),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(f.send_with(&first, M::GET, "/v2/apps", None).await.0, 401);
    // Admins cannot delete themselves.
    assert_eq!(
        f.send(
            Role::Admin,
            M::DELETE,
            &format!("/v2/users/{}", f.guids[&Role::Admin]),
            None
        )
        .await
        .0,
        400
    );
}
