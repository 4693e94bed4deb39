//! The environment an app instance sees (REFERENCE §4): `PORT`, `VCAP_APPLICATION`,
//! `VCAP_SERVICES`, `STACKATO_*`, `MEMORY_LIMIT`, plus the user's and the host's variables.
//!
//! Precedence, lowest first: the base `PATH`, the DEA's `extra_env` (host CA/proxy
//! settings), the platform variables, the request's `env` (user and services). The
//! variables the platform depends on (`PORT`, `VCAP_APP_PORT`, `VCAP_APP_HOST`,
//! `VCAP_APPLICATION`, `HOME`) cannot be overridden.

use serde_json::json;
use strato_core::messages::StartRequest;

/// Where the instance's dir is mounted in the container, and the app inside it.
pub const APP_ROOT: &str = "/home/stackato";
pub const APP_HOME: &str = strato_container::APP_HOME;
const BASE_PATH: &str = "/home/stackato/app/bin:/usr/local/bin:/usr/bin:/bin:/home/stackato/bin";
const PROTECTED: &[&str] = &[
    "PORT",
    "VCAP_APP_PORT",
    "VCAP_APP_HOST",
    "VCAP_APPLICATION",
    "HOME",
];

/// Builds the `KEY=VALUE` list for one instance.
pub fn instance_env(
    req: &StartRequest,
    instance_id: &str,
    port: u16,
    extra_env: &[String],
) -> Vec<String> {
    let mut env = EnvList::default();
    env.set("PATH", BASE_PATH);
    env.set("LANG", "C.UTF-8");
    for kv in extra_env {
        env.set_pair(kv);
    }
    let platform = platform_vars(req, instance_id, port);
    for (k, v) in &platform {
        env.set(k, v);
    }
    for kv in &req.env {
        if let Some((k, _)) = kv.split_once('=') {
            if !PROTECTED.contains(&k) {
                env.set_pair(kv);
            }
        }
    }
    env.into_vec()
}

fn platform_vars(req: &StartRequest, instance_id: &str, port: u16) -> Vec<(String, String)> {
    let services = if req.services.is_null() {
        json!({})
    } else {
        req.services.clone()
    };
    let vcap_application = json!({
        "application_id": req.droplet,
        "application_name": req.name,
        "application_uris": req.uris,
        "uris": req.uris,
        "name": req.name,
        "space_id": req.space_id,
        "space_name": req.space_name,
        "instance_id": instance_id,
        "instance_index": req.index,
        "application_version": req.version,
        "version": req.version,
        "host": "0.0.0.0",
        "port": port,
        "limits": {"mem": req.limits.mem, "disk": req.limits.disk, "fds": req.limits.fds},
    });
    [
        ("PORT", port.to_string()),
        ("VCAP_APP_PORT", port.to_string()),
        ("VCAP_APP_HOST", "0.0.0.0".to_string()),
        ("HOME", APP_HOME.to_string()),
        ("STACKATO_APP_ROOT", APP_ROOT.to_string()),
        ("STACKATO_APP_NAME", req.name.clone()),
        (
            "STACKATO_APP_NAME_UPCASE",
            req.name.to_uppercase().replace('-', "_"),
        ),
        ("MEMORY_LIMIT", format!("{}m", req.limits.mem)),
        ("VCAP_APPLICATION", vcap_application.to_string()),
        ("VCAP_SERVICES", services.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// An ordered environment where a later `set` replaces an earlier value in place.
#[derive(Default)]
struct EnvList {
    vars: Vec<(String, String)>,
}

impl EnvList {
    fn set(&mut self, key: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.vars.push((key.to_string(), value.to_string())),
        }
    }

    fn set_pair(&mut self, kv: &str) {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                self.set(k, v);
            }
        }
    }

    fn into_vec(self) -> Vec<String> {
        self.vars
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use strato_core::messages::{HealthCheck, Limits};

    pub(crate) fn start_request() -> StartRequest {
        StartRequest {
            droplet: "app-guid".into(),
            name: "my-app".into(),
            version: "v1".into(),
            index: 2,
            droplet_sha256: "0".repeat(64),
            droplet_uri: "file:///nonexistent".into(),
            uris: vec!["my-app.example.com".into()],
            limits: Limits {
                mem: 256,
                disk: 1024,
                fds: 1000,
            },
            env: vec!["FOO=bar".into(), "PORT=1".into()],
            start_command: None,
            health_check: HealthCheck {
                timeout: 10,
                http_path: None,
                process_only: false,
            },
            space_id: "space-guid".into(),
            space_name: "dev".into(),
            services: serde_json::Value::Null,
            volumes: vec![],
        }
    }

    fn get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
        env.iter()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    #[test]
    fn platform_variables_follow_reference_4() {
        let env = instance_env(
            &start_request(),
            "inst-1",
            61001,
            &["http_proxy=http://p:3128".into()],
        );
        assert_eq!(
            get(&env, "PORT"),
            Some("61001"),
            "the user cannot override PORT"
        );
        assert_eq!(get(&env, "VCAP_APP_HOST"), Some("0.0.0.0"));
        assert_eq!(get(&env, "STACKATO_APP_NAME_UPCASE"), Some("MY_APP"));
        assert_eq!(get(&env, "MEMORY_LIMIT"), Some("256m"));
        assert_eq!(get(&env, "FOO"), Some("bar"));
        assert_eq!(get(&env, "http_proxy"), Some("http://p:3128"));
        assert_eq!(get(&env, "VCAP_SERVICES"), Some("{}"));
        let app: serde_json::Value =
            serde_json::from_str(get(&env, "VCAP_APPLICATION").unwrap()).unwrap();
        assert_eq!(app["application_name"], "my-app");
        assert_eq!(app["instance_index"], 2);
        assert_eq!(app["instance_id"], "inst-1");
        assert_eq!(app["limits"]["mem"], 256);
        assert_eq!(app["uris"][0], "my-app.example.com");
        assert_eq!(env.iter().filter(|kv| kv.starts_with("PORT=")).count(), 1);
    }
}
