//! Turns a [`ContainerSpec`] into an OCI runtime `config.json` (with `oci-spec`).
//!
//! Kept apart from the runc plumbing so the security-relevant choices are in one place:
//! read-only root, no capabilities, no new privileges, tini as PID 1, new pid/ipc/uts/mount
//! namespaces, the host network or a network namespace of its own (see `network`), memory
//! and pids cgroup limits, `RLIMIT_NOFILE`.

use std::path::Path;

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};

use crate::{ContainerError, ContainerSpec, Mount};

/// The init every container runs as PID 1: forwards signals to the app's process group
/// (`-g`) and reaps zombies.
pub const INIT: &[&str] = &["/usr/bin/tini", "-g", "--"];

/// The app's environment, with tini told to keep its warnings to itself (a signal that
/// reaches it after the app exited is no news for the app's log); its fatal errors still
/// show. An app that sets `TINI_VERBOSITY` keeps its own.
fn process_env(env: &[String]) -> Vec<String> {
    let mut out = env.to_vec();
    if !env.iter().any(|e| e.starts_with("TINI_VERBOSITY=")) {
        out.push("TINI_VERBOSITY=0".to_string());
    }
    out
}

/// The cgroup path of a container (relative to each hierarchy's mount point).
pub fn cgroup_path(id: &str) -> String {
    format!("/strato/{id}")
}

fn invalid(e: impl std::fmt::Display) -> ContainerError {
    ContainerError::InvalidSpec(e.to_string())
}

/// Builds the OCI config for `spec`; `rootfs` is the prepared root dir, `stack_mounts` the
/// stack's bind mounts (before the spec's own mounts, so those can shadow them).
/// `netns` is the network namespace to join (an isolated container); `None` keeps the
/// host network.
pub fn oci_config(
    spec: &ContainerSpec,
    rootfs: &Path,
    stack_mounts: &[Mount],
    netns: Option<&Path>,
) -> Result<Spec, ContainerError> {
    check(spec)?;
    let mut config = Spec::default();
    config.set_hostname(Some(spec.hostname.clone()));
    config.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .map_err(invalid)?,
    ));
    config.set_process(Some(process(spec)?));
    let mut mounts = config.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(strings(&["nosuid", "nodev", "mode=1777"]))
            .build()
            .map_err(invalid)?,
    );
    mounts.push(
        MountBuilder::default()
            .destination("/var/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(strings(&["nosuid", "nodev", "mode=1777"]))
            .build()
            .map_err(invalid)?,
    );
    for m in stack_mounts.iter().chain(&spec.mounts) {
        mounts.push(bind_mount(m)?);
    }
    config.set_mounts(Some(mounts));
    config.set_linux(Some(linux(spec, netns)?));
    Ok(config)
}

fn check(spec: &ContainerSpec) -> Result<(), ContainerError> {
    crate::validate_id(&spec.id)?;
    if spec.argv.is_empty() {
        return Err(invalid("argv is empty: give the command to run"));
    }
    if !spec.cwd.starts_with('/') {
        return Err(invalid(format!("cwd '{}' must be absolute", spec.cwd)));
    }
    for m in &spec.mounts {
        if !m.destination.starts_with('/') || m.destination.split('/').any(|p| p == "..") {
            return Err(invalid(format!(
                "mount destination '{}' must be an absolute path without '..'",
                m.destination
            )));
        }
    }
    Ok(())
}

fn process(spec: &ContainerSpec) -> Result<oci_spec::runtime::Process, ContainerError> {
    let args: Vec<String> = INIT
        .iter()
        .map(|s| s.to_string())
        .chain(spec.argv.iter().cloned())
        .collect();
    let no_caps = Capabilities::new();
    ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(spec.uid)
                .gid(spec.gid)
                .additional_gids(vec![spec.gid])
                .build()
                .map_err(invalid)?,
        )
        .args(args)
        .env(process_env(&spec.env))
        .cwd(&spec.cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(no_caps.clone())
                .effective(no_caps.clone())
                .inheritable(no_caps.clone())
                .permitted(no_caps.clone())
                .ambient(no_caps)
                .build()
                .map_err(invalid)?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(spec.nofile)
            .hard(spec.nofile)
            .build()
            .map_err(invalid)?])
        .no_new_privileges(true)
        .build()
        .map_err(invalid)
}

fn bind_mount(m: &Mount) -> Result<oci_spec::runtime::Mount, ContainerError> {
    let mode = if m.read_only { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(&m.destination)
        .typ("bind")
        .source(&m.source)
        .options(strings(&["rbind", mode, "nosuid", "nodev"]))
        .build()
        .map_err(invalid)
}

fn linux(
    spec: &ContainerSpec,
    netns: Option<&Path>,
) -> Result<oci_spec::runtime::Linux, ContainerError> {
    let mut namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()
    .map_err(invalid)?;
    if let Some(path) = netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()
                .map_err(invalid)?,
        );
    }
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(invalid)?]);
    if let Some(limit) = spec.memory_limit_bytes {
        let limit = i64::try_from(limit).map_err(invalid)?;
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .map_err(invalid)?,
        );
    }
    if let Some(limit) = spec.pids_limit {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(invalid)?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(invalid)?)
        .cgroups_path(cgroup_path(&spec.id))
        .build()
        .map_err(invalid)?;
    let defaults = oci_spec::runtime::Linux::default();
    linux.set_masked_paths(defaults.masked_paths().clone());
    linux.set_readonly_paths(defaults.readonly_paths().clone());
    Ok(linux)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_runs_tini_unprivileged_on_a_read_only_root() {
        let mut spec = ContainerSpec::new("c1", vec!["sleep".into(), "1".into()], 1000, 1000);
        spec.memory_limit_bytes = Some(64 << 20);
        let config = oci_config(&spec, Path::new("/b/rootfs"), &[], None).unwrap();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["process"]["args"][0], "/usr/bin/tini");
        assert_eq!(json["process"]["args"][3], "sleep");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(
            json["process"]["capabilities"]["bounding"],
            serde_json::json!([])
        );
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        let namespaces: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!namespaces.contains(&"network"), "host network expected");
        assert!(namespaces.contains(&"pid"));
    }

    #[test]
    fn relative_mount_destinations_are_refused() {
        let mut spec = ContainerSpec::new("c1", vec!["true".into()], 1000, 1000);
        spec.mounts.push(Mount {
            source: "/x".into(),
            destination: "../etc".into(),
            read_only: false,
        });
        assert!(oci_config(&spec, Path::new("/r"), &[], None).is_err());
    }
}
