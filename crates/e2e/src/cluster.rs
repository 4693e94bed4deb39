//! A Strato cluster in a test: NATS and PostgreSQL, a core node, router nodes and DEA
//! nodes, each node a separate host in a network namespace on a test LAN (the core lives
//! in the root namespace, the LAN's gateway, where NATS and PostgreSQL listen too).
//!
//! Nodes run the real `stratod` with the cluster settings an operator gives them
//! (`STRATO_NATS_URL`, `STRATO_NODE_ADDRESS`, `STRATO_ROLES`, and the database on the
//! core). Tests kill a node (every process of its host and its containers, so its
//! instances really stop answering), cut it off the LAN and heal it. Everything is torn
//! down on drop, also when a test fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use strato_testkit::netns::{Host, Lan};
use strato_testkit::{NatsCluster, NatsServer, Postgres};

use crate::{bin, http_get_at};

/// What a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Controller, stager, health manager, router and logs, in the root namespace.
    Core,
    Router,
    Dea,
    /// A second controller, on the core's PostgreSQL.
    Controller,
}

impl NodeKind {
    fn roles(self) -> &'static str {
        match self {
            NodeKind::Core => "controller,stager,health_manager,router,logs",
            NodeKind::Router => "router",
            NodeKind::Dea => "dea",
            NodeKind::Controller => "controller",
        }
    }
}

/// One `stratod` of the cluster.
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    pub address: Ipv4Addr,
    pub http_port: u16,
    pub home: tempfile::TempDir,
    /// Its network namespace; `None` for the core (the root namespace).
    host: Option<Host>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Starts in the log before the last spawn.
    starts_before: usize,
}

impl Node {
    fn command(&self, program: &Path) -> Command {
        match &self.host {
            Some(host) => host.command(program),
            None => Command::new(program),
        }
    }

    /// How often this node's log says it started (the log is kept across restarts).
    fn starts_logged(&self) -> usize {
        std::fs::read_to_string(self.home.path().join("stratod.log"))
            .unwrap_or_default()
            .matches("stratod running")
            .count()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts_before = self.starts_logged();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.path().join("stratod.log"))?;
        let mut cmd = self.command(&bin("stratod"));
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("starting stratod")?);
        Ok(())
    }

    /// The last lines of this node's log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.home.path().join("stratod.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until the node's log says it runs its roles.
    fn wait_started(&mut self, wait: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if !self.running() {
                bail!("{} exited; its log:\n{}", self.name, self.log_tail());
            }
            if self.starts_logged() > self.starts_before {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} did not start within {wait:?}; its log:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// Stops stratod gracefully (SIGTERM), killing it after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        // nsenter execs stratod in place, so the child is stratod itself.
        if let Some(child) = self.child.take() {
            crate::stop_child(child, grace);
        }
    }

    /// Kills the node as a crash or power loss would: stratod and every process of its
    /// host (SIGKILL), and its app containers.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(host) = &self.host {
            host.kill_all();
        }
        self.remove_containers();
    }

    /// Starts the node again on its data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_started(Duration::from_secs(60))
    }

    /// Takes the node off the LAN (its processes keep running).
    pub fn cut(&self) -> anyhow::Result<()> {
        self.host
            .as_ref()
            .context("the core cannot be cut off")?
            .cut()
    }

    /// Puts the node back on the LAN.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.host
            .as_ref()
            .context("the core cannot be cut off")?
            .heal()
    }

    fn runc_root(&self) -> PathBuf {
        self.home.path().join("containers/runc")
    }

    /// Ids of the containers runc runs for this node.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root())
            .args(["list", "-q"])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Kills and deletes every container of this node, with its network namespace and
    /// network slot (what the DEA would do had it not died).
    fn remove_containers(&self) {
        for id in self.containers() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(["delete", "-f", &id])
                .output();
        }
        let bundles = self.home.path().join("containers/bundles");
        for entry in std::fs::read_dir(bundles).into_iter().flatten().flatten() {
            let slot = std::fs::read_to_string(entry.path().join("network-slot"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if let Some(slot) = slot {
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("strato-{slot}")])
                    .output();
                let _ = std::fs::remove_file(format!("/run/strato/net/slots/{slot}"));
            }
        }
    }

    /// Unmounts what the node left under its home (instance disk images).
    fn unmount_all(&self) {
        crate::unmount_under(self.home.path());
    }
}

/// The whole cluster; dropped, it stops every node, then NATS, PostgreSQL and the LAN.
pub struct Cluster {
    pub core: Node,
    pub routers: Vec<Node>,
    pub deas: Vec<Node>,
    pub controllers: Vec<Node>,
    pub client_home: tempfile::TempDir,
    pub password: String,
    /// The test's NATS server, unless the core runs the cluster's own.
    nats: Option<TestNats>,
    /// `ADDRESS:PORT` of the core's own NATS server, once it runs one.
    pub core_bus: Option<String>,
    /// The test's PostgreSQL, unless the core runs the controller database itself.
    postgres: Option<Postgres>,
    lan: Lan,
}

/// The NATS the test runs for the cluster: one server, or a NATS cluster of three.
pub enum TestNats {
    One(NatsServer),
    Three(NatsCluster),
}

impl TestNats {
    /// What the nodes get as `STRATO_NATS_URL`.
    fn url(&self) -> String {
        match self {
            TestNats::One(server) => server.url(),
            TestNats::Three(cluster) => cluster.urls(),
        }
    }
}

impl Cluster {
    /// Starts NATS and PostgreSQL, the core, then `routers` router nodes and `deas` DEA
    /// nodes, and waits until every DEA advertised itself to the controller.
    pub fn start(routers: usize, deas: usize) -> anyhow::Result<Cluster> {
        let lan = Lan::new()?;
        let nats = TestNats::One(NatsServer::start_on(IpAddr::V4(lan.gateway()))?);
        Self::start_with(lan, nats, routers, deas)
    }

    /// Like [`Cluster::start`], on a NATS cluster of three servers (all on the core host,
    /// each its own process): see [`Cluster::kill_nats_server`].
    pub fn start_on_nats_cluster(routers: usize, deas: usize) -> anyhow::Result<Cluster> {
        let lan = Lan::new()?;
        let nats = TestNats::Three(NatsCluster::start_on(IpAddr::V4(lan.gateway()), 3)?);
        Self::start_with(lan, nats, routers, deas)
    }

    /// Kills server `i` of the NATS cluster of three.
    pub fn kill_nats_server(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.nats {
            Some(TestNats::Three(cluster)) => {
                cluster.kill(i);
                Ok(())
            }
            _ => bail!("this cluster runs on one NATS server"),
        }
    }

    fn start_with(
        lan: Lan,
        nats: TestNats,
        routers: usize,
        deas: usize,
    ) -> anyhow::Result<Cluster> {
        let gateway = lan.gateway();
        let postgres = Postgres::start_on(IpAddr::V4(gateway))?;
        let mut cluster = Self::with_core(lan, Some(postgres), Some(nats))?;
        cluster.core.spawn()?;
        cluster.wait_api(Duration::from_secs(90))?;
        for i in 0..routers {
            let node = cluster.add_node(&format!("router{i}"), NodeKind::Router)?;
            cluster.routers.push(node);
        }
        for i in 0..deas {
            let node = cluster.add_node(&format!("dea{i}"), NodeKind::Dea)?;
            cluster.deas.push(node);
        }
        for node in cluster.routers.iter_mut().chain(cluster.deas.iter_mut()) {
            node.wait_started(Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    /// Starts one more DEA node whose `node.json` is a copy of `like`'s (as a copied
    /// `STRATO_HOME` would have); returns its log if it refuses to run.
    pub fn add_dea_with_the_id_of(&mut self, like: usize) -> Result<(), String> {
        let name = format!("dea{}", self.deas.len());
        let identity = self.deas[like].home.path().join("node.json");
        let host = self.lan.add_host(&name).map_err(|e| e.to_string())?;
        let address = host.address();
        let mut node = Self::node(
            &name,
            NodeKind::Dea,
            Some(host),
            address,
            self.nats.as_ref().map(TestNats::url),
            &self.password,
            None,
        )
        .map_err(|e| e.to_string())?;
        std::fs::copy(&identity, node.home.path().join("node.json")).map_err(|e| e.to_string())?;
        node.spawn().map_err(|e| e.to_string())?;
        let started = node.wait_started(Duration::from_secs(30));
        let log = node.log_tail();
        self.deas.push(node);
        match started {
            Ok(()) => Ok(()),
            Err(_) => Err(log),
        }
    }

    /// The cluster's parts and its core node (not started yet); the core uses `nats`
    /// when given, else it will run the cluster's own NATS server.
    fn with_core(
        lan: Lan,
        postgres: Option<Postgres>,
        nats: Option<TestNats>,
    ) -> anyhow::Result<Cluster> {
        let password = format!("pw-{}", std::process::id());
        let core = Self::node(
            "core",
            NodeKind::Core,
            None,
            lan.gateway(),
            nats.as_ref().map(TestNats::url),
            &password,
            postgres.as_ref().map(Postgres::url),
        )?;
        Ok(Cluster {
            core,
            routers: Vec::new(),
            deas: Vec::new(),
            controllers: Vec::new(),
            client_home: tempfile::Builder::new()
                .prefix("strato-client-")
                .tempdir()?,
            password,
            nats,
            core_bus: None,
            postgres,
            lan,
        })
    }

    /// A cluster as an operator builds one: the core runs the cluster's own NATS server
    /// (`kato node setup core`), and each DEA joins with a token (`kato node attach`)
    /// before its first start.
    pub fn start_self_hosted(deas: usize) -> anyhow::Result<Cluster> {
        Self::self_hosted(deas, true, |_| Ok(()))
    }

    /// Like [`Cluster::start_self_hosted`], running `before` on the core while it is
    /// still a single node (before `kato node setup core`).
    pub fn start_self_hosted_after(
        deas: usize,
        before: impl FnOnce(&Cluster) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        Self::self_hosted(deas, true, before)
    }

    /// Like [`Cluster::start_self_hosted`], with no PostgreSQL from the test: `kato node
    /// setup core` makes the core run the controller database itself.
    pub fn start_self_hosted_with_its_own_database(deas: usize) -> anyhow::Result<Cluster> {
        Self::self_hosted(deas, false, |_| Ok(()))
    }

    fn self_hosted(
        deas: usize,
        test_postgres: bool,
        before: impl FnOnce(&Cluster) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        let lan = Lan::new()?;
        let gateway = lan.gateway();
        let postgres = if test_postgres {
            Some(Postgres::start_on(IpAddr::V4(gateway))?)
        } else {
            None
        };
        let mut cluster = Self::with_core(lan, postgres, None)?;
        cluster.core.spawn()?;
        cluster.wait_api(Duration::from_secs(90))?;
        before(&cluster)?;
        let port = strato_testkit::free_port();
        let out = cluster.kato(&[
            "node",
            "setup",
            "core",
            &gateway.to_string(),
            "--port",
            &port.to_string(),
            "--no-restart",
        ]);
        anyhow::ensure!(
            out.status.success(),
            "setup core: {}",
            crate::output_text(&out)
        );
        cluster.core.stop(Duration::from_secs(30));
        cluster.core.restart()?;
        cluster.wait_api(Duration::from_secs(90))?;
        cluster.core_bus = Some(format!("{gateway}:{port}"));
        if deas > 0 {
            let token = cluster.join_token(deas)?;
            for i in 0..deas {
                let name = format!("dea{i}");
                cluster.attach_dea(&name, &token)?;
            }
        }
        Ok(cluster)
    }

    /// A join token from the core, good for `uses` nodes.
    pub fn join_token(&self, uses: usize) -> anyhow::Result<String> {
        let out = self.kato(&["node", "token", "--uses", &uses.to_string(), "--json"]);
        anyhow::ensure!(
            out.status.success(),
            "node token: {}",
            crate::output_text(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["token"].as_str().context("no token")?.to_string())
    }

    /// Makes a host, runs `kato node attach` there with `token` and, when it succeeds,
    /// starts the node as a DEA. Returns the attach's output either way.
    pub fn attach_dea(&mut self, name: &str, token: &str) -> anyhow::Result<Output> {
        self.attach(name, token, NodeKind::Dea)
    }

    /// Like [`Cluster::attach_dea`], for a node of `kind` (its roles go to `-e`); it is
    /// given nothing but the core's address and the token.
    pub fn attach(&mut self, name: &str, token: &str, kind: NodeKind) -> anyhow::Result<Output> {
        let host = self.lan.add_host(name)?;
        let address = host.address();
        let mut node = Self::node(name, kind, Some(host), address, None, &self.password, None)?;
        let core = self
            .core_bus
            .clone()
            .context("the core runs no NATS server")?;
        let out = node
            .command(&bin("kato"))
            .env("STRATO_HOME", node.home.path())
            .args([
                "node",
                "attach",
                &core,
                "--token",
                token,
                "-e",
                kind.roles(),
            ])
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            node.spawn()?;
            node.wait_started(Duration::from_secs(60))?;
        }
        match kind {
            NodeKind::Controller => self.controllers.push(node),
            NodeKind::Router => self.routers.push(node),
            _ => self.deas.push(node),
        }
        Ok(out)
    }

    /// Starts one more node running only a controller, on the core's database, and waits
    /// until it started.
    pub fn add_controller(&mut self, name: &str) -> anyhow::Result<()> {
        let host = self.lan.add_host(name)?;
        let address = host.address();
        let mut node = Self::node(
            name,
            NodeKind::Controller,
            Some(host),
            address,
            self.nats.as_ref().map(TestNats::url),
            &self.password,
            Some(
                self.postgres
                    .as_ref()
                    .context("the core runs the controller database: attach the node instead")?
                    .url_at(IpAddr::V4(self.lan.gateway())),
            ),
        )?;
        node.spawn()?;
        node.wait_started(Duration::from_secs(60))?;
        self.controllers.push(node);
        Ok(())
    }

    /// `kato` against `node`'s stratod.
    pub fn kato_on(&self, node: &Node, args: &[&str]) -> Output {
        crate::kato_at(node.home.path(), args)
    }

    /// The address a client reaches `node`'s router at.
    pub fn router_url(&self, node: &Node) -> String {
        format!("http://{}:{}", node.address, node.http_port)
    }

    fn add_node(&mut self, name: &str, kind: NodeKind) -> anyhow::Result<Node> {
        let host = self.lan.add_host(name)?;
        let address = host.address();
        let mut node = Self::node(
            name,
            kind,
            Some(host),
            address,
            self.nats.as_ref().map(TestNats::url),
            &self.password,
            None,
        )?;
        node.spawn()?;
        Ok(node)
    }

    fn node(
        name: &str,
        kind: NodeKind,
        host: Option<Host>,
        address: Ipv4Addr,
        nats_url: Option<String>,
        password: &str,
        database_url: Option<String>,
    ) -> anyhow::Result<Node> {
        let home = tempfile::Builder::new()
            .prefix(&format!("strato-{name}-"))
            .tempdir()?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711))?;
        let http_port = strato_testkit::free_port();
        let mut env = vec![
            ("STRATO_HOME", home.path().to_string_lossy().to_string()),
            ("STRATO_HTTP_PORT", http_port.to_string()),
            ("STRATO_HTTPS_PORT", "0".to_string()),
            ("STRATO_HTTP_ADDR", "0.0.0.0".to_string()),
            ("STRATO_NODE_ADDRESS", address.to_string()),
            ("STRATO_ROLES", kind.roles().to_string()),
            ("STRATO_ADMIN_PASSWORD", password.to_string()),
            ("STRATO_LOG", "info,sqlx=warn".to_string()),
        ];
        if let Some(url) = database_url {
            env.push(("STRATO_DATABASE_URL", url));
        }
        if let Some(url) = nats_url {
            env.push(("STRATO_NATS_URL", url));
        }
        Ok(Node {
            name: name.to_string(),
            kind,
            address,
            http_port,
            home,
            host,
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            child: None,
            starts_before: 0,
        })
    }

    /// Waits until the API answers through the core's router.
    pub fn wait_api(&mut self, wait: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if !self.core.running() {
                bail!("the core exited; its log:\n{}", self.core.log_tail());
            }
            if self.get_via(&self.core, "127.0.0.1", "/v2/info").0 == 200 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the API did not answer within {wait:?}; core log:\n{}",
            self.core.log_tail()
        )
    }

    /// The API, as a client targets it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.core.http_port)
    }

    /// `GET path` with `Host: host` through the router of `node`.
    pub fn get_via(&self, node: &Node, host: &str, path: &str) -> (u16, String) {
        let ip = match node.kind {
            NodeKind::Core => Ipv4Addr::LOCALHOST,
            _ => node.address,
        };
        http_get_at(SocketAddr::from((ip, node.http_port)), host, path)
    }

    /// Runs `strato` as this test's user.
    pub fn strato(&self, dir: &Path, args: &[&str]) -> Output {
        crate::strato_as(self.client_home.path(), dir, args)
    }

    /// `strato` that must succeed; returns stdout.
    pub fn strato_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.strato(dir, args);
        assert!(
            out.status.success(),
            "strato {args:?} failed: {}\nnode logs:\n{}",
            crate::output_text(&out),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kato` against the core node.
    pub fn kato(&self, args: &[&str]) -> Output {
        crate::kato_at(self.core.home.path(), args)
    }

    /// Targets the core and logs in as admin.
    pub fn login(&self) {
        let here = self.client_home.path();
        self.strato_ok(here, &["target", &self.url()]);
        self.strato_ok(here, &["login", "admin", "--password", &self.password]);
    }

    /// Every node's log tail, for assertion messages.
    pub fn logs(&self) -> String {
        std::iter::once(&self.core)
            .chain(&self.routers)
            .chain(&self.deas)
            .chain(&self.controllers)
            .map(|n| format!("---- {}:\n{}\n", n.name, n.log_tail()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self
            .deas
            .iter_mut()
            .chain(self.routers.iter_mut())
            .chain(self.controllers.iter_mut())
        {
            node.stop(Duration::from_secs(20));
            node.kill();
            node.unmount_all();
        }
        self.core.stop(Duration::from_secs(20));
        self.core.kill();
        self.core.unmount_all();
    }
}
