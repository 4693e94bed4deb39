//! The node's local control API for `kato`: HTTP over a Unix socket that only root (the
//! socket's owner) can open. Status, role start/stop, node setup, config get/set, history,
//! stop.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use strato_core::Role;

use crate::node::Node;

type S = Arc<Node>;

fn err(status: StatusCode, msg: impl Into<String>) -> (StatusCode, Json<Value>) {
    (status, Json(json!({"error": msg.into()})))
}

/// Binds the socket and serves until the node stops; calls for other nodes go out over
/// the bus, and theirs for this node come in through [`crate::remote`].
pub async fn serve(node: Arc<Node>) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let path = node.layout.control_socket();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let api = api(node.clone());
    let remote = crate::remote::serve(node.clone(), api.clone(), node.shutdown.clone()).await?;
    let app = api.merge(
        Router::new()
            .route("/nodes/{target}/{*path}", axum::routing::any(forward))
            .with_state(node.clone()),
    );
    let local = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(vec![local, remote])
}

/// The control API's routes.
fn api(node: Arc<Node>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/stop", post(stop))
        .route("/roles/{role}/start", post(role_start))
        .route("/roles/{role}/stop", post(role_stop))
        .route("/roles/{role}/add", post(role_add))
        .route("/roles/{role}/remove", post(role_remove))
        .route("/roles/info", get(roles_info))
        .route("/node/zone", get(zone_get).put(zone_set))
        .route("/roles/start", post(roles_start))
        .route("/roles/stop", post(roles_stop))
        .route("/setup/micro", post(setup_micro))
        .route("/setup/firstuser", post(setup_firstuser))
        .route("/setup/core", post(setup_core))
        .route("/cluster/tokens", post(create_join_token))
        .route(
            "/cluster/nodes/{target}",
            axum::routing::delete(remove_node),
        )
        .route(
            "/op/regenerate-token-signing-secret",
            post(regenerate_token_secret),
        )
        .route(
            "/config/{*path}",
            get(config_get).put(config_set).delete(config_del),
        )
        .route("/history", get(history))
        .route("/cluster/components", get(cluster_components))
        .route("/tls/ca", get(tls_ca))
        .route("/tls/custom", get(tls_custom_list))
        .route(
            "/tls/custom/{domain}",
            axum::routing::put(tls_custom_install).delete(tls_custom_remove),
        )
        .route("/node/rename", post(rename))
        .route("/processes", get(processes))
        .route("/processes/{name}/restart", post(process_restart))
        .with_state(node)
}

/// `kato … -n NODE`: the call runs on that node (here, when it is this one).
async fn forward(
    State(node): State<S>,
    Path((target, path)): Path<(String, String)>,
    method: axum::http::Method,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), (StatusCode, Json<Value>)> {
    let id = target_node(&node, Some(&target)).await?;
    let path = match query {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    if !crate::remote::forwardable(&method, &path) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("`{method} {path}` is only run on the node itself: run kato there"),
        ));
    }
    let body = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(&body).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            )
        })?)
    };
    let call = crate::remote::RemoteCall {
        method: method.to_string(),
        path,
        body,
    };
    let answer = crate::remote::call(&node, &id, &call)
        .await
        .map_err(|e| err(StatusCode::BAD_GATEWAY, e))?;
    if id != node.identity.id {
        record(
            &node,
            &format!("{} {} on node {id}", call.method, call.path),
        );
    }
    Ok((crate::remote::status_of(&answer), Json(answer.body)))
}

#[derive(serde::Deserialize)]
struct RenameRequest {
    name: String,
}

/// `kato node rename NAME`: the cloud's domain becomes NAME (the API at api.NAME, apps
/// at APP.NAME). The shared domain is renamed with its routes; every node's controller
/// and router restart on it; running instances register their new names.
async fn rename(
    State(node): State<S>,
    Json(req): Json<RenameRequest>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let name = req.name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name != "localhost" {
        strato_core::names::check_domain(&name).map_err(|m| err(StatusCode::BAD_REQUEST, m))?;
    }
    // The cluster's record, not this node's memory of it (it may not have caught up).
    let old = match node.kv.get(crate::node::DOMAIN_KEY).await {
        Ok(Some(v)) => v.value.as_str().map(str::to_string),
        _ => None,
    }
    .unwrap_or_else(|| node.domain());
    if name == old {
        return Ok(Json(json!({"domain": name, "changed": false})));
    }
    let db = node
        .controller_db()
        .await
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    let taken = || {
        err(
            StatusCode::CONFLICT,
            format!("the domain {name} exists already (an organization's own?); delete it first or choose another name"),
        )
    };
    // The shared domain renamed, or (deleted by hand) made anew.
    let created = match db.rename_domain(&old, &name).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(db.create_shared_domain(&name).await.map_err(|_| taken())?),
        Err(strato_db::DbError::Conflict { .. }) => return Err(taken()),
        Err(e) => return Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    // Every node follows cluster/domain (this one too); a failed write undoes it all.
    let endpoint = node.kv.get("cluster/endpoint").await.ok().flatten();
    let recorded = async {
        node.kv
            .set("cluster/endpoint", Value::String(format!("api.{name}")))
            .await?;
        node.kv
            .set(crate::node::DOMAIN_KEY, Value::String(name.clone()))
            .await
    };
    if let Err(e) = recorded.await {
        match &created {
            Some(d) => {
                let _ = db.delete_domain(&d.guid).await;
            }
            None => {
                let _ = db.rename_domain(&name, &old).await;
            }
        }
        let _ = match endpoint {
            Some(v) => node.kv.set("cluster/endpoint", v.value).await.map(|_| ()),
            None => node.kv.del("cluster/endpoint").await.map(|_| ()),
        };
        return Err(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot record the new domain in the config store ({e}); nothing changed"),
        ));
    }
    record(&node, &format!("node rename {name} (was {old})"));
    Ok(Json(json!({"domain": name, "was": old, "changed": true})))
}

/// `kato process list`: stratod, each role it hosts (by its Stackato process name) and
/// the NATS server of a core node.
async fn processes(State(node): State<S>) -> Json<Value> {
    let mut out = vec![json!({
        "name": "stratod",
        "role": null,
        "state": "running",
        "pid": std::process::id(),
        "since": node.started_at,
        "restarts": 0,
    })];
    for st in node.supervisor.status() {
        let component = st
            .role
            .parse::<Role>()
            .map(|r| r.component())
            .unwrap_or("?");
        out.push(json!({
            "name": component,
            "role": st.role,
            "state": st.state,
            "pid": std::process::id(),
            "since": st.since,
            "restarts": st.restarts,
            "last_error": st.last_error,
        }));
    }
    if let Some(server) = &node.bus_server {
        let mut server = server.lock().unwrap_or_else(|p| p.into_inner());
        out.push(json!({
            "name": "nats_server",
            "role": null,
            "state": if server.running() { "running" } else { "stopped" },
            "pid": server.pid(),
            "since": node.started_at,
            "restarts": 0,
        }));
    }
    Json(json!({"node": node.identity.id, "processes": out}))
}

/// `kato process restart NAME`: a role by its process name (`router2g`) or role name.
async fn process_restart(
    State(node): State<S>,
    Path(name): Path<String>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let role = Role::all()
        .find(|r| r.component() == name || r.name() == name)
        .filter(|r| !matches!(r, Role::Base | Role::Primary))
        .ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                format!("no process '{name}' on this node; see `kato process list`"),
            )
        })?;
    let role = crate::node::hosting_role(role);
    if !node.supervisor.stop(role, Duration::from_secs(30)).await {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "{name} is not running on this node; start it with `kato start {}`",
                role.name()
            ),
        ));
    }
    let f = node.factory(role).ok_or_else(|| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name} cannot be started on this node"),
        )
    })?;
    node.supervisor.start(role, f);
    record(&node, &format!("process restart {name}"));
    Ok(Json(json!({"restarted": role.component()})))
}

fn record(node: &Node, action: &str) {
    use std::io::Write;
    let line = json!({"time": strato_core::now_rfc3339(), "action": action}).to_string();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.layout.root.join("run/history.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
}

async fn status(State(node): State<S>) -> Json<Value> {
    let configured = crate::node::configured_roles(node.kv.as_ref(), &node.identity.id)
        .await
        .unwrap_or_default();
    let statuses = node.supervisor.status();
    let mut roles = Vec::new();
    for r in configured.iter().filter(|r| **r != Role::Base) {
        let host = crate::node::hosting_role(*r);
        let st = statuses.iter().find(|s| s.role == host.name());
        roles.push(json!({
            "role": r.name(),
            "state": st.map(|s| s.state.clone()).unwrap_or_else(|| "stopped".into()),
            "restarts": st.map(|s| s.restarts).unwrap_or(0),
            "last_error": st.and_then(|s| s.last_error.clone()),
            "since": st.map(|s| s.since.clone()).unwrap_or_else(|| node.started_at.clone()),
        }));
    }
    Json(json!({
        "node_id": node.identity.id,
        "pid": std::process::id(),
        "version": strato_core::VERSION,
        "started_at": node.started_at,
        "home": node.layout.root,
        "domain": node.domain(),
        "http_port": node.opts.http_port,
        "https_port": node.opts.https_port,
        "ca_fingerprint": node.authority().ok().map(|a| a.fingerprint()),
        "api_url": format!("http://127.0.0.1:{}", node.opts.http_port),
        "bus": if node.opts.nats_url.is_some() { "nats" } else { "in-process" },
        "cluster": {
            "membership": if node.bus_server.is_some() { "core" } else if node.opts.clustered() { "member" } else { "micro cloud" },
            "nats": node.opts.nats_url.as_deref().map(strato_core::names::without_password),
            "address": node.opts.cluster_address().filter(|_| node.opts.clustered()),
        },
        "container_driver": node.driver.name(),
        "isolated": node.driver.isolated(),
        "roles": roles,
    }))
}

/// Every component of the cluster (or of this micro cloud), through the bus.
async fn cluster_components(
    State(node): State<S>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let mut found = discover(&node, Duration::from_millis(700)).await?;
    found.extend(silent_nodes(&node, &found).await);
    Ok(Json(json!({ "components": found })))
}

/// The roles of the cluster's nodes that did not answer discovery (down, cut off), from
/// the config store, as "not answering": an operator sees a dead node, not no node.
async fn silent_nodes(node: &S, answered: &[Value]) -> Vec<Value> {
    let Ok(leaves) = node.kv.list("node").await else {
        return Vec::new();
    };
    let mut silent: std::collections::BTreeMap<String, (String, Vec<String>)> = Default::default();
    for (path, v) in leaves {
        let parts: Vec<&str> = path.split('/').collect();
        let [_, id, rest @ ..] = parts.as_slice() else {
            continue;
        };
        if answered.iter().any(|c| c["node"] == *id) {
            continue;
        }
        let entry = silent.entry(id.to_string()).or_default();
        match rest {
            ["address"] => entry.0 = v.value.as_str().unwrap_or_default().to_string(),
            ["roles", role] if v.value == Value::Bool(true) && *role != "base" => {
                entry.1.push(role.to_string())
            }
            _ => {}
        }
    }
    silent
        .into_iter()
        .filter(|(_, (_, roles))| !roles.is_empty())
        .flat_map(|(id, (host, roles))| {
            roles.into_iter().map(move |role| {
                json!({
                    "node": id, "host": host, "role": role, "state": "not answering",
                    "restarts": 0, "since": "",
                })
            })
        })
        .collect()
}

/// The cluster's components that answer within `wait`.
async fn discover(node: &S, wait: Duration) -> Result<Vec<Value>, (StatusCode, Json<Value>)> {
    crate::discovery::discover(&node.bus, wait)
        .await
        .map_err(|e| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot ask the cluster: {e}"),
            )
        })
}

async fn stop(State(node): State<S>) -> StatusCode {
    record(&node, "stop");
    node.shutdown.cancel();
    StatusCode::ACCEPTED
}

fn parse_role(name: &str) -> Result<Role, (StatusCode, Json<Value>)> {
    name.parse::<Role>()
        .map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn role_start(
    State(node): State<S>,
    Path(name): Path<String>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let role = parse_role(&name)?;
    let _ = node
        .kv
        .del(&crate::node::held_key(&node.identity.id, role))
        .await;
    let mut started = Vec::new();
    for r in role.expand() {
        if let Some(f) = node.factory(r) {
            node.supervisor.start(r, f);
            started.push(r.name());
        }
    }
    record(&node, &format!("start {name}"));
    Ok(Json(json!({"started": started})))
}

async fn role_stop(
    State(node): State<S>,
    Path(name): Path<String>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let role = parse_role(&name)?;
    let mut stopped = Vec::new();
    for r in role.expand() {
        if node.supervisor.stop(r, Duration::from_secs(30)).await {
            stopped.push(r.name());
        }
    }
    record(&node, &format!("stop {name}"));
    Ok(Json(json!({"stopped": stopped})))
}

#[derive(serde::Deserialize)]
struct SetupCoreRequest {
    address: Option<std::net::IpAddr>,
    port: Option<u16>,
}

/// `kato node setup core [ADDRESS]`: this node runs the cluster's NATS server from its
/// next start (kato restarts it).
async fn setup_core(
    State(node): State<S>,
    Json(req): Json<SetupCoreRequest>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let address = req
        .address
        .or(node.opts.node_address)
        .or_else(strato_services::address::default_route_address)
        .ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "this host has no default route: give the address other nodes reach it at, `kato node setup core ADDRESS`",
            )
        })?;
    if address.is_loopback() || address.is_unspecified() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("{address} cannot be reached from other nodes: give this node's LAN address"),
        ));
    }
    // Without an operator's database the core runs one: only on a fresh node, since the
    // controller starts over on it (an export and import carries apps across).
    let database_url = match &node.opts.database_url {
        Some(_) => None,
        None => {
            refuse_a_core_over_apps(&node).await?;
            let url = crate::core_db::provision(&node.layout, address)
                .await
                .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
            Some(url)
        }
    };
    let settings = crate::bus_server::CoreSettings {
        address,
        port: req.port.unwrap_or(4222),
        database_url,
    };
    crate::bus_server::BusServer::set_up(&node.layout.bus_server(), &settings)
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    record(
        &node,
        &format!("node setup core {address}:{}", settings.port),
    );
    Ok(Json(
        json!({"address": address, "port": settings.port, "restart": true}),
    ))
}

/// A core made from a node that runs apps would leave them behind in its SQLite
/// database: refused, naming them.
async fn refuse_a_core_over_apps(node: &S) -> Result<(), (StatusCode, Json<Value>)> {
    let Some(db) = node.db.get() else {
        return Ok(());
    };
    let apps = db
        .list_apps(&Default::default())
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if apps.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    Err(err(
        StatusCode::CONFLICT,
        format!(
            "this node runs apps ({}): a core without STRATO_DATABASE_URL starts with a new controller database; delete them first, or give the core a PostgreSQL with STRATO_DATABASE_URL",
            names.join(", ")
        ),
    ))
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    uses: Option<u32>,
    hours: Option<u64>,
}

/// `kato node token`: a join token (shown once).
async fn create_join_token(
    State(node): State<S>,
    Json(req): Json<TokenRequest>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let Some(server) = &node.bus_server else {
        return Err(err(StatusCode::CONFLICT, "this node is not the core: make join tokens on the node where `kato node setup core` ran"));
    };
    let ttl = req
        .hours
        .map(|h| Duration::from_secs(h.clamp(1, 24 * 365) * 3600))
        .unwrap_or(crate::cluster_join::DEFAULT_TTL);
    let uses = req.uses.unwrap_or(1).clamp(1, 10_000);
    let secret = crate::cluster_join::create_token(node.kv.as_ref(), uses, ttl)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The token also names the cluster CA, so the joining node can check it talks to
    // this core before it sends the secret.
    let ca = node
        .authority()
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let token = format!(
        "{secret}.{}",
        strato_tls::normalize_fingerprint(&ca.fingerprint())
    );
    let endpoint = server
        .lock()
        .map(|s| s.endpoint())
        .unwrap_or_else(|p| p.into_inner().endpoint());
    record(&node, "node token");
    Ok(Json(json!({
        "token": token, "uses": uses, "hours": ttl.as_secs() / 3600, "core": endpoint,
    })))
}

/// `kato node remove NODE`: revokes its NATS credentials (its connection is dropped) and
/// forgets its roles.
async fn remove_node(
    State(node): State<S>,
    Path(target): Path<String>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let Some(server) = &node.bus_server else {
        return Err(err(
            StatusCode::CONFLICT,
            "this node is not the core: remove nodes on the node where `kato node setup core` ran",
        ));
    };
    // A node that is down does not answer discovery: then the target must be its id.
    let id = match target_node(&node, Some(&target)).await {
        Ok(id) => id,
        Err(_) => target.clone(),
    };
    if id == node.identity.id {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "the core cannot remove itself",
        ));
    }
    let revoked = crate::bus_server::remove_node(server, &id)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    if !revoked {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no node '{target}' has joined this cluster; see `kato node list`"),
        ));
    }
    let _ = node.kv.del(&format!("node/{id}")).await;
    record(&node, &format!("node remove {id}"));
    Ok(Json(json!({"removed": id})))
}

#[derive(serde::Deserialize, Default)]
struct RoleTarget {
    /// A node id or address (default: this node).
    node: Option<String>,
    /// Remove even the cluster's last DEA while apps run.
    #[serde(default)]
    force: bool,
    /// Assign the role but start it only with the next `kato start` (`role add -s`).
    #[serde(default)]
    no_start: bool,
    /// Only check that the removal would be done (`role add --only` asks first).
    #[serde(default)]
    dry_run: bool,
}

/// The node id `target` names: this node, a node id, or a node's address (asked over the
/// bus).
async fn target_node(node: &S, target: Option<&str>) -> Result<String, (StatusCode, Json<Value>)> {
    let Some(target) = target.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(node.identity.id.clone());
    };
    // A node busy starting may answer late: a second, longer round before giving up.
    let mut ids = std::collections::BTreeSet::new();
    for wait in [700, 2000] {
        let found = discover(node, Duration::from_millis(wait)).await?;
        ids = found
            .iter()
            .filter(|c| {
                c["node"] == target
                    || c["host"] == target
                    || c["node"].as_str().is_some_and(|n| n.starts_with(target))
            })
            .filter_map(|c| c["node"].as_str().map(String::from))
            .collect();
        if !ids.is_empty() {
            break;
        }
    }
    match ids.len() {
        1 => Ok(ids.into_iter().next().unwrap_or_default()),
        0 => Err(err(
            StatusCode::NOT_FOUND,
            format!("no node of the cluster is '{target}'; see `kato node list`"),
        )),
        _ => Err(err(
            StatusCode::CONFLICT,
            format!(
                "'{target}' names several nodes ({}); give a node id",
                ids.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// `kato role add ROLE [-n NODE]`: recorded in the config store; the node starts it.
async fn role_add(
    State(node): State<S>,
    Path(name): Path<String>,
    axum::extract::Query(t): axum::extract::Query<RoleTarget>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let role = parse_role(&name)?;
    let id = target_node(&node, t.node.as_deref()).await?;
    // The hold goes first: the node applies the role as soon as it is written. Without
    // -s an earlier hold goes, so the role starts.
    let held = async {
        if t.no_start {
            node.kv
                .set(&crate::node::held_key(&id, role), Value::Bool(true))
                .await?;
        } else {
            for r in std::iter::once(role).chain(role.expand()) {
                node.kv.del(&crate::node::held_key(&id, r)).await?;
            }
        }
        Ok::<(), strato_kv::KvError>(())
    };
    held.await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    node.kv
        .set(
            &format!("node/{id}/roles/{}", role.name()),
            Value::Bool(true),
        )
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    record(&node, &format!("role add {} -n {id}", role.name()));
    Ok(Json(
        json!({"node": id, "added": role.name(), "started": !t.no_start}),
    ))
}

/// `kato role remove ROLE [-n NODE] [--force]`.
async fn role_remove(
    State(node): State<S>,
    Path(name): Path<String>,
    axum::extract::Query(t): axum::extract::Query<RoleTarget>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let role = parse_role(&name)?;
    if role == Role::Base {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "the base role is the node agent itself: it cannot be removed (use `kato node remove`)",
        ));
    }
    let id = target_node(&node, t.node.as_deref()).await?;
    if role.expand().contains(&Role::Dea) && !t.force {
        refuse_removing_the_last_dea(&node, &id).await?;
    }
    // A part of `primary` (controller, health manager, router) goes on its own: the
    // node keeps primary's other parts as roles of their own.
    let key = |r: Role| format!("node/{id}/roles/{}", r.name());
    let has = |v: Option<strato_kv::Versioned>| v.is_some_and(|v| v.value == Value::Bool(true));
    let kv_err = |e: strato_kv::KvError| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let split_primary = role != Role::Primary
        && Role::Primary.expand().contains(&role)
        && has(node.kv.get(&key(Role::Primary)).await.map_err(kv_err)?);
    let mut present = split_primary;
    for r in std::iter::once(role).chain(role.expand()) {
        present |= has(node.kv.get(&key(r)).await.map_err(kv_err)?);
    }
    if !present {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!(
                "node {id} does not have the role {}; see `kato role info`",
                role.name()
            ),
        ));
    }
    if t.dry_run {
        return Ok(Json(
            json!({"node": id, "removed": [], "would_remove": role.name()}),
        ));
    }
    if split_primary {
        for part in Role::Primary.expand().into_iter().filter(|p| *p != role) {
            node.kv
                .set(&key(part), Value::Bool(true))
                .await
                .map_err(kv_err)?;
        }
        node.kv.del(&key(Role::Primary)).await.map_err(kv_err)?;
    }
    let mut removed = Vec::new();
    if split_primary {
        removed.push(Role::Primary.name());
    }
    for r in std::iter::once(role).chain(role.expand()) {
        let gone = node
            .kv
            .del(&format!("node/{id}/roles/{}", r.name()))
            .await
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if gone && !removed.contains(&r.name()) {
            removed.push(r.name());
        }
    }
    if removed.is_empty() {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!(
                "node {id} does not have the role {}; see `kato role info`",
                role.name()
            ),
        ));
    }
    let _ = node.kv.del(&crate::node::held_key(&id, role)).await;
    record(&node, &format!("role remove {} -n {id}", role.name()));
    Ok(Json(json!({"node": id, "removed": removed})))
}

/// Taking away the only DEA stops every app: refused while apps are started, naming them
/// (where this node can see the controller database).
async fn refuse_removing_the_last_dea(node: &S, id: &str) -> Result<(), (StatusCode, Json<Value>)> {
    let found = crate::discovery::discover(&node.bus, Duration::from_millis(700))
        .await
        .unwrap_or_default();
    let other_deas = found
        .iter()
        .any(|c| c["role"] == "dea" && c["node"] != id && c["state"] == "running");
    if other_deas {
        return Ok(());
    }
    let Some(db) = node.db.get() else {
        return Ok(());
    };
    let apps = db
        .list_apps(&strato_db::Filter::default())
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let started: Vec<String> = apps
        .into_iter()
        .filter(|a| a.state == "STARTED")
        .map(|a| a.name)
        .collect();
    if started.is_empty() {
        return Ok(());
    }
    Err(err(
        StatusCode::CONFLICT,
        format!(
            "this is the cluster's last DEA and these apps run on it: {}; add a DEA first, stop them, or pass --force",
            started.join(", ")
        ),
    ))
}

/// `kato node availabilityzone [-n NODE]`.
async fn zone_get(
    State(node): State<S>,
    axum::extract::Query(t): axum::extract::Query<RoleTarget>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let id = target_node(&node, t.node.as_deref()).await?;
    let zone = node
        .kv
        .get(&crate::node::zone_key(&id))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .and_then(|v| v.value.as_str().map(String::from))
        .unwrap_or_else(|| "default".to_string());
    Ok(Json(json!({"node": id, "zone": zone})))
}

#[derive(serde::Deserialize)]
struct ZoneRequest {
    zone: String,
}

/// `kato node availabilityzone ZONE [-n NODE]`: the node's DEA advertises it from now on.
async fn zone_set(
    State(node): State<S>,
    axum::extract::Query(t): axum::extract::Query<RoleTarget>,
    Json(req): Json<ZoneRequest>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let zone = req.zone.trim();
    let valid = !zone.is_empty()
        && zone.len() <= 63
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("'{zone}' is not a zone name: use up to 63 letters, digits, '-', '_' or '.'"),
        ));
    }
    let id = target_node(&node, t.node.as_deref()).await?;
    node.kv
        .set(&crate::node::zone_key(&id), Value::String(zone.to_string()))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    record(&node, &format!("node availabilityzone {zone} -n {id}"));
    Ok(Json(json!({"node": id, "zone": zone})))
}

/// `kato role info [-n NODE]`: the roles the config store holds for a node.
async fn roles_info(
    State(node): State<S>,
    axum::extract::Query(t): axum::extract::Query<RoleTarget>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let id = target_node(&node, t.node.as_deref()).await?;
    let roles = crate::node::stored_roles(node.kv.as_ref(), &id)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({
        "node": id,
        "roles": roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "available": Role::all().map(|r| r.name()).collect::<Vec<_>>(),
    })))
}

async fn roles_start(State(node): State<S>) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    crate::node::release_holds(node.kv.as_ref(), &node.identity.id)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let roles = node
        .start_roles()
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    record(&node, "start");
    Ok(Json(
        json!({"started": roles.iter().map(|r| r.name()).collect::<Vec<_>>()}),
    ))
}

async fn roles_stop(State(node): State<S>) -> Json<Value> {
    let running = node.supervisor.running();
    node.supervisor.stop_all(Duration::from_secs(30)).await;
    record(&node, "stop roles");
    Json(json!({"stopped": running.iter().map(|r| r.name()).collect::<Vec<_>>()}))
}

async fn regenerate_token_secret(
    State(node): State<S>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let db = node
        .controller_db()
        .await
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    let path = node.layout.token_secret_file();
    strato_controller::bootstrap::regenerate_token_secret(&db, &path)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    // Every node follows this key and restarts its controller on the new secret.
    node.kv
        .set(
            crate::node::SECRET_GENERATION_KEY,
            Value::String(strato_core::new_guid()),
        )
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let restarting = node.supervisor.running().contains(&Role::Controller);
    record(&node, "op regenerate token-signing-secret");
    Ok(Json(json!({"restarted_controller": restarting})))
}

#[derive(serde::Deserialize)]
struct FirstUserRequest {
    username: String,
    password: String,
    org: String,
}

async fn setup_firstuser(
    State(node): State<S>,
    Json(req): Json<FirstUserRequest>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let Some(db) = node.db.get() else {
        return Err(err(
            StatusCode::CONFLICT,
            "this node runs no controller: run `kato node setup firstuser` on the core node"
                .to_string(),
        ));
    };
    let made = strato_controller::bootstrap::first_user(db, &req.username, &req.password, &req.org)
        .await
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    record(
        &node,
        &format!("node setup firstuser {} {}", req.username, req.org),
    );
    Ok(Json(json!({
        "user": req.username, "org": req.org, "created_org": made.created_org,
        "space": "default", "user_guid": made.user_guid,
    })))
}

async fn setup_micro(State(node): State<S>) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    crate::node::set_roles(node.kv.as_ref(), &node.identity.id, &Role::micro())
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let roles = node
        .start_roles()
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    record(&node, "node setup micro");
    Ok(Json(
        json!({"roles": roles.iter().map(|r| r.name()).collect::<Vec<_>>()}),
    ))
}

async fn config_get(
    State(node): State<S>,
    Path(path): Path<String>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    match node.kv.get(&path).await {
        Ok(Some(v)) => Ok(Json(json!({"value": v.value, "revision": v.revision}))),
        Ok(None) => Err(err(StatusCode::NOT_FOUND, format!("no value at '{path}'"))),
        Err(e) => Err(err(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

async fn config_set(
    State(node): State<S>,
    Path(path): Path<String>,
    Json(value): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    crate::settings::check(&path, &value).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    let rev = node
        .kv
        .set(&path, value)
        .await
        .map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    record(&node, &format!("config set {path}"));
    Ok(Json(json!({"revision": rev})))
}

async fn config_del(
    State(node): State<S>,
    Path(path): Path<String>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let existed = node
        .kv
        .del(&path)
        .await
        .map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    record(&node, &format!("config del {path}"));
    Ok(Json(json!({"deleted": existed})))
}

async fn history(State(node): State<S>) -> Json<Value> {
    let text =
        std::fs::read_to_string(node.layout.root.join("run/history.jsonl")).unwrap_or_default();
    let mut lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    lines.reverse();
    Json(Value::Array(lines))
}

type Refusal = (StatusCode, Json<Value>);

fn tls_refusal(e: strato_tls::TlsError) -> Refusal {
    let status = match e {
        strato_tls::TlsError::NotFound { .. } => StatusCode::NOT_FOUND,
        strato_tls::TlsError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    err(status, e.to_string())
}

/// The node's CA: what clients are asked to trust.
async fn tls_ca(State(node): State<S>) -> Result<Json<Value>, Refusal> {
    let ca = node
        .authority()
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    Ok(Json(json!({
        "fingerprint": ca.fingerprint(),
        "pem": ca.ca_pem(),
        "path": node.layout.tls_ca().join(strato_tls::CA_CERT_FILE),
    })))
}

fn cert_json(c: &strato_tls::CustomCertInfo) -> Value {
    json!({
        "domain": c.domain,
        "subject": c.subject,
        "issuer": c.issuer,
        "names": c.names,
        "not_after": c.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "fingerprint": c.fingerprint,
    })
}

async fn tls_custom_list(State(node): State<S>) -> Result<Json<Value>, Refusal> {
    let list = node.custom_certs().list().map_err(tls_refusal)?;
    Ok(Json(Value::Array(list.iter().map(cert_json).collect())))
}

#[derive(serde::Deserialize)]
struct CertUpload {
    cert: String,
    key: String,
}

async fn tls_custom_install(
    State(node): State<S>,
    Path(domain): Path<String>,
    Json(body): Json<CertUpload>,
) -> Result<Json<Value>, Refusal> {
    let info = node
        .custom_certs()
        .install(&domain, &body.cert, &body.key)
        .map_err(tls_refusal)?;
    record(&node, &format!("custom_ssl_cert install {domain}"));
    Ok(Json(cert_json(&info)))
}

async fn tls_custom_remove(
    State(node): State<S>,
    Path(domain): Path<String>,
) -> Result<StatusCode, Refusal> {
    node.custom_certs().remove(&domain).map_err(tls_refusal)?;
    record(&node, &format!("custom_ssl_cert remove {domain}"));
    Ok(StatusCode::NO_CONTENT)
}
