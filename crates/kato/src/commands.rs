//! kato's commands (REFERENCE §1), each a small function over the control API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::control::Control;

#[derive(Parser, Debug)]
#[command(
    name = "kato",
    version,
    about = "Operate a Strato node: roles, status, config"
)]
pub struct Cli {
    /// The node's data directory (default: STRATO_HOME, /var/lib/strato as root).
    #[arg(long, global = true, env = "STRATO_HOME")]
    home: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Print YAML.
    #[arg(long, global = true, conflicts_with = "json")]
    yaml: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start stratod (as a daemon, if it is not running) or the given roles; with
    /// `-n NODE`, that node's roles.
    Start {
        roles: Vec<String>,
        /// Another node of the cluster (id, id prefix or address).
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
    /// Stop the given roles, or stratod and every role; with `-n NODE`, that node's
    /// roles (its stratod keeps running, so `kato start -n NODE` brings them back).
    Stop {
        roles: Vec<String>,
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
    /// Stop then start.
    Restart {
        roles: Vec<String>,
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
    /// Each role on this node, running or not; `--all`: every node of the cluster.
    Status {
        #[arg(short, long)]
        all: bool,
        #[arg(short = 'n', long, conflicts_with = "all")]
        node: Option<String>,
    },
    /// Node id, roles, versions.
    Info {
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
    /// What kato did on this node, newest first.
    History {
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
    /// The processes of a node: stratod, the roles it hosts (by their Stackato process
    /// names: cloud_controller_ng, dea_ng, router2g, ...), the core's nats_server.
    Process {
        #[command(subcommand)]
        cmd: ProcessCmd,
    },
    /// Strato's version.
    Version,
    /// Node set-up.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Read and change the config store: `kato config get COMPONENT KEY-PATH`.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The roles of a node, in the cluster's config store: added or removed live.
    Role {
        #[command(subcommand)]
        cmd: RoleCmd,
    },
    /// Operations: `regenerate token-signing-secret`, `max_client_upload [MB]`,
    /// `custom_ssl_cert install|remove|list`.
    Op {
        #[command(subcommand)]
        cmd: OpCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ProcessCmd {
    /// Each process and its state; `-c`: every node of the cluster.
    List {
        #[arg(short = 'c', long)]
        cluster: bool,
        #[arg(short = 'n', long, conflicts_with = "cluster")]
        node: Option<String>,
    },
    /// Waits until the named processes (default: all) run; exits 1 when they do not
    /// within `--block` seconds.
    Ready {
        processes: Vec<String>,
        /// How long to wait, in seconds (0: just check).
        #[arg(short = 'b', long, default_value_t = 0)]
        block: u64,
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
    /// Restarts the named processes.
    Restart {
        processes: Vec<String>,
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum OpCmd {
    /// `token-signing-secret`: a new secret; every issued token stops working.
    Regenerate { what: String },
    /// Show or set the largest app upload the API accepts, in MB.
    #[command(name = "max_client_upload", visible_alias = "max-client-upload")]
    MaxClientUpload { mb: Option<u64> },
    /// Per-domain certificates the router presents by SNI instead of the CA's.
    #[command(name = "custom_ssl_cert", visible_alias = "custom-ssl-cert")]
    CustomSslCert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
}

#[derive(Subcommand, Debug)]
enum CertCmd {
    /// `install DOMAIN CERT-FILE KEY-FILE`: PEM files; the chain may follow the
    /// certificate. DOMAIN may be a wildcard (`*.example.com`, quoted).
    Install {
        domain: String,
        cert: PathBuf,
        key: PathBuf,
    },
    /// `remove DOMAIN`.
    Remove { domain: String },
    /// The installed certificates.
    List,
}

#[derive(Subcommand, Debug)]
enum RoleCmd {
    /// Give a node roles; its stratod starts them at once.
    Add {
        roles: Vec<String>,
        /// The node (id, id prefix or address; default: this one).
        #[arg(short = 'n', long)]
        node: Option<String>,
        /// Every role.
        #[arg(long, conflicts_with_all = ["roles", "all_but"])]
        all: bool,
        /// Every role but these (comma-separated).
        #[arg(long, value_delimiter = ',', conflicts_with = "roles")]
        all_but: Vec<String>,
        /// These roles and no others: the node's other roles are removed.
        #[arg(long)]
        only: bool,
        /// Assign them, but start them only with the next `kato start`.
        #[arg(short = 's', long)]
        no_start: bool,
    },
    /// Take roles from a node; its stratod stops them at once.
    Remove {
        roles: Vec<String>,
        #[arg(short = 'n', long)]
        node: Option<String>,
        /// Remove the cluster's last DEA even while apps run.
        #[arg(short, long)]
        force: bool,
        /// Every role.
        #[arg(long, conflicts_with_all = ["roles", "all_but"])]
        all: bool,
        /// Every role but these (comma-separated).
        #[arg(long, value_delimiter = ',', conflicts_with = "roles")]
        all_but: Vec<String>,
    },
    /// The roles a node has, and the roles there are.
    Info {
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Every node of the cluster: its id, address and roles (asked over the bus).
    List,
    /// Make a join token on the core: `kato node attach` on a new node spends it.
    Token {
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays good, in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Join this node to a cluster: CORE is the core's address (and NATS port, default
    /// 4222). Run it before this node's first start; it writes cluster.json.
    Attach {
        core: String,
        /// The token `kato node setup core` or `kato node token` printed.
        #[arg(long)]
        token: String,
        /// The roles this node starts with (comma-separated; default dea).
        #[arg(short = 'e', long = "enable", value_delimiter = ',')]
        roles: Vec<String>,
        /// The address other nodes reach this one at (default: the default route's).
        #[arg(long)]
        address: Option<std::net::IpAddr>,
    },
    /// Leave the cluster (this node must be stopped).
    Detach,
    /// Give the cloud a new domain: the API at api.NAME, apps at APP.NAME (their routes on
    /// the old shared domain move with it). Run it on a node with the controller.
    Rename { name: String },
    /// Revoke nodes' credentials and forget their roles (run on the core).
    Remove {
        /// Node ids, id prefixes or addresses.
        nodes: Vec<String>,
    },
    /// Show or set a node's availability zone; placement spreads each app's instances
    /// over zones first, then over the DEAs in a zone.
    Availabilityzone {
        zone: Option<String>,
        /// The node (id, id prefix or address; default: this one).
        #[arg(short = 'n', long)]
        node: Option<String>,
    },
    /// Node set-up: `micro` makes this node a micro cloud (every role);
    /// `firstuser EMAIL ORG [--password P]` creates an administrator and their org.
    Setup {
        /// `micro`, `core [ADDRESS]` or `firstuser EMAIL ORG`.
        kind: String,
        /// firstuser: the user's name (an email address) and the organization.
        args: Vec<String>,
        /// firstuser: the password (generated and printed once when not given).
        #[arg(long)]
        password: Option<String>,
        /// core: the NATS port the cluster uses (default 4222).
        #[arg(long)]
        port: Option<u16>,
        /// core: write the settings but do not restart stratod now.
        #[arg(long)]
        no_restart: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    Get {
        component: String,
        key_path: Option<String>,
    },
    Set {
        component: String,
        key_path: String,
        value: Option<String>,
    },
    Del {
        component: String,
        key_path: String,
    },
}

/// `--yaml`: structured output is printed as YAML instead of JSON.
static YAML: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a value for scripts: JSON, or YAML with `--yaml`.
fn print_data(v: &impl serde::Serialize) -> anyhow::Result<()> {
    if YAML.load(std::sync::atomic::Ordering::Relaxed) {
        let yaml =
            serde_saphyr::to_string(v).map_err(|e| anyhow::anyhow!("cannot print YAML: {e}"))?;
        print!("{yaml}");
    } else {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

fn home(cli: &Cli) -> PathBuf {
    cli.home
        .clone()
        .unwrap_or_else(strato_core::home::strato_home)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = home(&cli);
    let ctl = Control::new(&home);
    if cli.yaml {
        YAML.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let json_out = cli.json || cli.yaml;
    let cli = Cli {
        json: json_out,
        ..cli
    };
    match &cli.cmd {
        Cmd::Start {
            roles,
            node: Some(node),
        } => start_remote(&ctl.at(node), roles, cli.json).await,
        Cmd::Start { roles, node: None } => start(&ctl, &home, roles, cli.json).await,
        Cmd::Stop {
            roles,
            node: Some(node),
        } => stop_remote(&ctl.at(node), roles).await,
        Cmd::Stop { roles, node: None } => stop(&ctl, roles).await,
        Cmd::Restart {
            roles,
            node: Some(node),
        } => {
            let at = ctl.at(node);
            stop_remote(&at, roles).await?;
            start_remote(&at, roles, cli.json).await
        }
        Cmd::Restart { roles, node: None } => {
            if roles.is_empty() {
                stop(&ctl, roles).await?;
                wait_down(&ctl, Duration::from_secs(60)).await?;
            } else {
                stop(&ctl, roles).await?;
            }
            start(&ctl, &home, roles, cli.json).await
        }
        Cmd::Status { all: true, .. } => cluster_status(&ctl, cli.json).await,
        Cmd::Status { all: false, node } => status(&ctl.maybe_at(node), cli.json).await,
        Cmd::Process { cmd } => process(&ctl, cmd, cli.json).await,
        Cmd::Info { node } => {
            let s = ctl.maybe_at(node).call("GET", "/status", None).await?;
            if cli.json {
                print_data(&s)?;
            } else {
                println!("node id:    {}", s["node_id"].as_str().unwrap_or("?"));
                println!("version:    {}", s["version"].as_str().unwrap_or("?"));
                println!("home:       {}", s["home"].as_str().unwrap_or("?"));
                println!("endpoint:   {}", s["api_url"].as_str().unwrap_or("?"));
                println!("domain:     {}", s["domain"].as_str().unwrap_or("?"));
                if let Some(fp) = s["ca_fingerprint"].as_str() {
                    println!("https port: {}", s["https_port"]);
                    println!("CA SHA-256: {fp}");
                }
                println!("bus:        {}", s["bus"].as_str().unwrap_or("?"));
                let c = &s["cluster"];
                println!("cluster:    {}", c["membership"].as_str().unwrap_or("?"));
                if let Some(nats) = c["nats"].as_str() {
                    println!("nats:       {nats}");
                }
                if let Some(address) = c["address"].as_str() {
                    println!("address:    {address}");
                }
                let roles: Vec<&str> = s["roles"].as_array().map(|a| a.iter().filter_map(|r| r["role"].as_str()).collect()).unwrap_or_default();
                println!("assigned roles: {}", roles.join(", "));
                println!("available roles: {}", strato_core::Role::all().map(|r| r.name()).collect::<Vec<_>>().join(", "));
            }
            Ok(())
        }
        Cmd::History { node } => {
            let h = ctl.maybe_at(node).call("GET", "/history", None).await?;
            if cli.json {
                print_data(&h)?;
            } else {
                for e in h.as_array().into_iter().flatten() {
                    println!("{}  {}", e["time"].as_str().unwrap_or(""), e["action"].as_str().unwrap_or(""));
                }
            }
            Ok(())
        }
        Cmd::Version => {
            println!("kato {}", strato_core::VERSION);
            Ok(())
        }
        Cmd::Node {
            cmd:
                NodeCmd::Setup {
                    kind,
                    args,
                    password,
                    port,
                    no_restart,
                },
        } => match kind.as_str() {
            "firstuser" => {
                let [user, org] = args.as_slice() else {
                    anyhow::bail!("usage: kato node setup firstuser EMAIL ORG [--password P]");
                };
                let (password, generated) = match password {
                    Some(p) => (p.clone(), false),
                    None => (strato_core::new_guid().replace('-', ""), true),
                };
                let body = json!({"username": user, "password": password, "org": org});
                let r = ctl.call("POST", "/setup/firstuser", Some(&body)).await?;
                println!(
                    "administrator {user} created; organization {org}{} with space default",
                    if r["created_org"] == true { " created" } else { "" }
                );
                if generated {
                    println!("password (shown once): {password}");
                }
                Ok(())
            }
            "micro" => {
                if !ctl.is_up().await {
                    launch(&ctl, &home).await?;
                }
                let r = ctl.call("POST", "/setup/micro", None).await?;
                println!("this node is a micro cloud; roles: {}", join(&r["roles"]));
                Ok(())
            }
            "core" => setup_core(&ctl, &home, args, *port, *no_restart, cli.json).await,
            other => anyhow::bail!("unknown setup '{other}'; this version supports: micro, core, firstuser (load_balancer is not there yet)"),
        },
        Cmd::Node { cmd: NodeCmd::List } => node_list(&ctl, cli.json).await,
        Cmd::Node {
            cmd: NodeCmd::Token { uses, hours },
        } => {
            let v = ctl
                .call("POST", "/cluster/tokens", Some(&json!({"uses": uses, "hours": hours})))
                .await?;
            print_token(&v, cli.json)
        }
        Cmd::Node {
            cmd:
                NodeCmd::Attach {
                    core,
                    token,
                    roles,
                    address,
                },
        } => crate::attach::attach(&home, core, token, roles, *address).await,
        Cmd::Node {
            cmd: NodeCmd::Detach,
        } => crate::attach::detach(&home),
        Cmd::Node {
            cmd: NodeCmd::Rename { name },
        } => {
            let v = ctl
                .call("POST", "/node/rename", Some(&json!({ "name": name })))
                .await?;
            if cli.json {
                print_data(&v)
            } else if v["changed"] == true {
                let domain = v["domain"].as_str().unwrap_or(name);
                println!("the cloud's domain is now {domain} (was {})", v["was"].as_str().unwrap_or("?"));
                println!("API: api.{domain}; apps: APP.{domain}. Point DNS (*.{domain}) at the routers.");
                Ok(())
            } else {
                println!("the cloud's domain is {name} already");
                Ok(())
            }
        }
        Cmd::Node {
            cmd: NodeCmd::Remove { nodes },
        } => {
            if nodes.is_empty() {
                anyhow::bail!("name the nodes to remove (ids or addresses; see `kato node list`)");
            }
            for n in nodes {
                let v = ctl
                    .call("DELETE", &format!("/cluster/nodes/{}", percent_encode(n)), None)
                    .await?;
                println!("removed node {}", v["removed"].as_str().unwrap_or(n));
            }
            Ok(())
        }
        Cmd::Role { cmd } => role(&ctl, cmd, cli.json).await,
        Cmd::Node {
            cmd: NodeCmd::Availabilityzone { zone, node },
        } => {
            let path = format!("/node/zone{}", role_query(node, false));
            let v = match zone {
                Some(z) => ctl.call("PUT", &path, Some(&json!({ "zone": z }))).await?,
                None => ctl.call("GET", &path, None).await?,
            };
            if cli.json {
                println!("{v}");
            } else {
                println!(
                    "node {}: availability zone {}",
                    v["node"].as_str().unwrap_or("?"),
                    v["zone"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Cmd::Config { cmd } => config(&ctl, cmd, cli.json).await,
        Cmd::Op { cmd } => op(&ctl, cmd, cli.json).await,
    }
}

async fn op(ctl: &Control, cmd: &OpCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        OpCmd::Regenerate { what } if what == "token-signing-secret" => {
            let r = ctl
                .call("POST", "/op/regenerate-token-signing-secret", None)
                .await?;
            println!("new token-signing secret written; every user must log in again");
            if r["restarted_controller"] != true {
                println!("the controller does not run on this node: restart it where it runs (kato restart controller)");
            }
            Ok(())
        }
        OpCmd::Regenerate { what } => {
            anyhow::bail!(
                "cannot regenerate '{what}'; this version regenerates: token-signing-secret"
            )
        }
        OpCmd::MaxClientUpload { mb: None } => {
            let v = ctl
                .call("GET", "/config/cloud_controller_ng/max_client_upload", None)
                .await
                .ok()
                .map(|v| v["value"].clone())
                .filter(|v| !v.is_null());
            match v {
                Some(v) => println!("max_client_upload: {v} MB"),
                None => println!("max_client_upload: not set (stratod's default, STRATO_MAX_UPLOAD_MB or 1024 MB)"),
            }
            Ok(())
        }
        OpCmd::CustomSslCert { cmd } => custom_ssl_cert(ctl, cmd, json_out).await,
        OpCmd::MaxClientUpload { mb: Some(mb) } => {
            if *mb == 0 || *mb > 1024 * 1024 {
                anyhow::bail!("max_client_upload is in MB, from 1 to 1048576");
            }
            ctl.call(
                "PUT",
                "/config/cloud_controller_ng/max_client_upload",
                Some(&json!(mb)),
            )
            .await?;
            ctl.call("POST", "/roles/controller/stop", None).await.ok();
            ctl.call("POST", "/roles/controller/start", None).await?;
            println!("max_client_upload set to {mb} MB; the controller was restarted");
            Ok(())
        }
    }
}

async fn custom_ssl_cert(ctl: &Control, cmd: &CertCmd, json_out: bool) -> anyhow::Result<()> {
    // Domains go into a URL path: only what a domain may hold gets through.
    let path = |domain: &str| -> anyhow::Result<String> {
        let ok = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'));
        anyhow::ensure!(
            ok,
            "'{domain}' is not a domain name (letters, digits, '-', '.', a leading '*.')"
        );
        Ok(format!("/tls/custom/{}", domain.replace('*', "%2A")))
    };
    match cmd {
        CertCmd::Install { domain, cert, key } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let body = json!({"cert": read(cert)?, "key": read(key)?});
            let v = ctl.call("PUT", &path(domain)?, Some(&body)).await?;
            println!(
                "installed the certificate for {} ({}, valid until {}); the router uses it now",
                v["domain"].as_str().unwrap_or(domain),
                join(&v["names"]),
                v["not_after"].as_str().unwrap_or("?")
            );
        }
        CertCmd::Remove { domain } => {
            ctl.call("DELETE", &path(domain)?, None).await?;
            println!("removed the certificate for {domain}; the router issues its own again");
        }
        CertCmd::List => {
            let v = ctl.call("GET", "/tls/custom", None).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v.as_array().is_none_or(|a| a.is_empty()) {
                println!(
                    "no custom certificates; the router presents certificates from this node's CA"
                );
            } else {
                println!("{:<30} {:<26} SHA-256 FINGERPRINT", "DOMAIN", "VALID UNTIL");
                for c in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<30} {:<26} {}",
                        c["domain"].as_str().unwrap_or(""),
                        c["not_after"].as_str().unwrap_or(""),
                        c["fingerprint"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn check_roles(roles: &[String]) -> anyhow::Result<()> {
    for r in roles {
        r.parse::<strato_core::Role>()?;
    }
    Ok(())
}

/// Finds `stratod` beside this executable, else on PATH.
fn stratod_binary() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join("stratod");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("stratod")
}

/// Starts stratod in the background and waits for its control socket.
async fn launch(ctl: &Control, home: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let logs = home.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("stratod.log"))?;
    let mut cmd = std::process::Command::new(stratod_binary());
    cmd.env("STRATO_HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from kato's session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot run stratod; is it installed next to kato or on PATH?")?;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < until {
        if ctl.is_up().await {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "stratod exited at once ({status}); see {}",
                logs.join("stratod.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "stratod did not answer within 60 s; see {}",
        logs.join("stratod.log").display()
    )
}

async fn start(
    ctl: &Control,
    home: &std::path::Path,
    roles: &[String],
    json_out: bool,
) -> anyhow::Result<()> {
    check_roles(roles)?;
    if !ctl.is_up().await {
        println!("starting stratod ...");
        launch(ctl, home).await?;
    }
    if roles.is_empty() {
        // Also the roles added with `kato role add -s`, held until now.
        ctl.call("POST", "/roles/start", None).await?;
    }
    for r in roles {
        ctl.call("POST", &format!("/roles/{r}/start"), None).await?;
    }
    status(ctl, json_out).await
}

async fn stop(ctl: &Control, roles: &[String]) -> anyhow::Result<()> {
    check_roles(roles)?;
    if roles.is_empty() {
        if !ctl.is_up().await {
            println!("stratod is not running");
            return Ok(());
        }
        ctl.call("POST", "/stop", None).await?;
        wait_down(ctl, Duration::from_secs(60)).await?;
        println!("stratod stopped");
        return Ok(());
    }
    for r in roles {
        let v = ctl.call("POST", &format!("/roles/{r}/stop"), None).await?;
        println!("stopped: {}", join(&v["stopped"]));
    }
    Ok(())
}

/// `kato start [ROLE...] -n NODE`: the node's stratod starts them (all of its roles when
/// none are named).
async fn start_remote(at: &Control, roles: &[String], json_out: bool) -> anyhow::Result<()> {
    check_roles(roles)?;
    if roles.is_empty() {
        at.call("POST", "/roles/start", None).await?;
    }
    for r in roles {
        at.call("POST", &format!("/roles/{r}/start"), None).await?;
    }
    status(at, json_out).await
}

/// `kato stop [ROLE...] -n NODE`: stops them (all when none are named); the node's
/// stratod stays up to take the next command.
async fn stop_remote(at: &Control, roles: &[String]) -> anyhow::Result<()> {
    check_roles(roles)?;
    if roles.is_empty() {
        let v = at.call("POST", "/roles/stop", None).await?;
        println!("stopped: {}", join(&v["stopped"]));
    }
    for r in roles {
        let v = at.call("POST", &format!("/roles/{r}/stop"), None).await?;
        println!("stopped: {}", join(&v["stopped"]));
    }
    Ok(())
}

/// `kato process list|ready|restart`.
async fn process(ctl: &Control, cmd: &ProcessCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        ProcessCmd::List { cluster: true, .. } => {
            let mut all = Vec::new();
            for id in node_ids(ctl).await? {
                let v = ctl.at(&id).call("GET", "/processes", None).await?;
                for mut p in v["processes"].as_array().cloned().unwrap_or_default() {
                    p["node"] = json!(id);
                    all.push(p);
                }
            }
            print_processes(&all, true, json_out)
        }
        ProcessCmd::List { node, .. } => {
            let v = ctl.maybe_at(node).call("GET", "/processes", None).await?;
            let list = v["processes"].as_array().cloned().unwrap_or_default();
            print_processes(&list, false, json_out)
        }
        ProcessCmd::Ready {
            processes,
            block,
            node,
        } => process_ready(&ctl.maybe_at(node), processes, *block, json_out).await,
        ProcessCmd::Restart { processes, node } => {
            if processes.is_empty() {
                anyhow::bail!("name the processes to restart; see `kato process list`");
            }
            let at = ctl.maybe_at(node);
            for p in processes {
                let v = at
                    .call(
                        "POST",
                        &format!("/processes/{}/restart", percent_encode(p)),
                        None,
                    )
                    .await?;
                println!("restarted {}", v["restarted"].as_str().unwrap_or(p));
            }
            Ok(())
        }
    }
}

/// The ids of every node that answers discovery.
async fn node_ids(ctl: &Control) -> anyhow::Result<Vec<String>> {
    let ids: std::collections::BTreeSet<String> = components(ctl)
        .await?
        .iter()
        .filter(|c| c["state"] != "not answering")
        .filter_map(|c| c["node"].as_str().map(String::from))
        .collect();
    Ok(ids.into_iter().collect())
}

fn print_processes(list: &[Value], with_node: bool, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        return print_data(&list);
    }
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    let mut header = vec!["PROCESS", "STATE", "PID", "RESTARTS", "SINCE"];
    if with_node {
        header.insert(0, "NODE");
    }
    table.set_header(header);
    for p in list {
        let mut row = vec![
            text(p, "name"),
            text(p, "state"),
            p["pid"].to_string(),
            p["restarts"].to_string(),
            text(p, "since"),
        ];
        if with_node {
            row.insert(0, short_id(&text(p, "node")));
        }
        table.add_row(row);
    }
    println!("{table}");
    Ok(())
}

/// `kato process ready [PROC...] [-b SECS]`: succeeds once every named process (every
/// process when none are named) runs.
async fn process_ready(
    at: &Control,
    names: &[String],
    block: u64,
    json_out: bool,
) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + Duration::from_secs(block);
    loop {
        let v = at.call("GET", "/processes", None).await?;
        let list = v["processes"].as_array().cloned().unwrap_or_default();
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| {
                !list
                    .iter()
                    .any(|p| p["name"] == n.as_str() || p["role"] == n.as_str())
            })
            .collect();
        let waiting: Vec<String> = list
            .iter()
            .filter(|p| {
                names.is_empty()
                    || names
                        .iter()
                        .any(|n| p["name"] == n.as_str() || p["role"] == n.as_str())
            })
            .filter(|p| p["state"] != "running")
            .filter_map(|p| p["name"].as_str().map(String::from))
            .chain(unknown.iter().map(|n| n.to_string()))
            .collect();
        if waiting.is_empty() {
            if json_out {
                print_data(&json!({"ready": true}))?;
            } else {
                println!("ready");
            }
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            anyhow::bail!("not ready: {}", waiting.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until stratod has stopped: its control API closed and the process gone, so
/// a `kato start` right after finds its files free.
async fn wait_down(ctl: &Control, wait: Duration) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + wait;
    while std::time::Instant::now() < until {
        if !ctl.is_up().await && !ctl.process_alive() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "stratod is still running after {} s; see its log (STRATO_HOME/logs/stratod.log), and stop it with kill $(cat STRATO_HOME/run/stratod.pid) if it hangs",
        wait.as_secs()
    )
}

async fn status(ctl: &Control, json_out: bool) -> anyhow::Result<()> {
    let s = ctl.call("GET", "/status", None).await?;
    if json_out {
        print_data(&s)?;
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(vec!["ROLE", "STATE", "RESTARTS", "SINCE", "LAST ERROR"]);
    for r in s["roles"].as_array().into_iter().flatten() {
        table.add_row(vec![
            r["role"].as_str().unwrap_or("").to_string(),
            r["state"].as_str().unwrap_or("").to_string(),
            r["restarts"].to_string(),
            r["since"].as_str().unwrap_or("").to_string(),
            r["last_error"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!(
        "node {} (pid {}), API {}",
        s["node_id"].as_str().unwrap_or("?"),
        s["pid"],
        s["api_url"].as_str().unwrap_or("?")
    );
    println!("{table}");
    if s["isolated"] == json!(false) {
        println!("WARNING: app instances are NOT isolated: the '{}' container driver runs them as plain processes", s["container_driver"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// The components every node reports over the bus.
async fn components(ctl: &Control) -> anyhow::Result<Vec<Value>> {
    let v = ctl.call("GET", "/cluster/components", None).await?;
    Ok(v["components"].as_array().cloned().unwrap_or_default())
}

/// `kato status --all`: each role on each node.
async fn cluster_status(ctl: &Control, json_out: bool) -> anyhow::Result<()> {
    let found = components(ctl).await?;
    if json_out {
        print_data(&found)?;
        return Ok(());
    }
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(vec![
        "NODE", "ADDRESS", "ROLE", "STATE", "RESTARTS", "SINCE",
    ]);
    for c in &found {
        table.add_row(vec![
            short_id(&text(c, "node")),
            text(c, "host"),
            text(c, "role"),
            text(c, "state"),
            c["restarts"].to_string(),
            text(c, "since"),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// `kato node list`: one line per node.
async fn node_list(ctl: &Control, json_out: bool) -> anyhow::Result<()> {
    let found = components(ctl).await?;
    // (address, id) -> (roles, answering)
    let mut nodes: std::collections::BTreeMap<(String, String), (Vec<String>, bool)> =
        Default::default();
    for c in &found {
        let id = c["node"].as_str().unwrap_or_default().to_string();
        let host = c["host"].as_str().unwrap_or_default().to_string();
        let role = c["role"].as_str().unwrap_or_default().to_string();
        let entry = nodes.entry((host, id)).or_default();
        entry.0.push(role);
        entry.1 |= c["state"] != "not answering";
    }
    let state = |up: bool| if up { "up" } else { "not answering" };
    if json_out {
        let list: Vec<Value> = nodes
            .iter()
            .map(|((host, id), (roles, up))| {
                json!({"node": id, "address": host, "roles": roles, "state": state(*up)})
            })
            .collect();
        print_data(&list)?;
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(vec!["ADDRESS", "NODE", "ROLES", "STATE"]);
    for ((host, id), (roles, up)) in &nodes {
        table.add_row(vec![
            host.clone(),
            id.clone(),
            roles.join(","),
            state(*up).to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn print_token(v: &Value, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        print_data(v)?;
        return Ok(());
    }
    let token = v["token"].as_str().unwrap_or("?");
    println!(
        "join token (good for {} node(s), {} h; shown once):\n  {token}",
        v["uses"], v["hours"]
    );
    println!(
        "on each new node:\n  kato node attach {} --token {token} -e dea && kato start",
        v["core"].as_str().unwrap_or("CORE-ADDRESS")
    );
    Ok(())
}

/// `kato node setup core [ADDRESS]`: records the cluster's NATS server settings, restarts
/// stratod so it runs it, and prints a first join token.
async fn setup_core(
    ctl: &Control,
    home: &std::path::Path,
    args: &[String],
    port: Option<u16>,
    no_restart: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    let address = match args.first() {
        Some(a) => Some(a.parse::<std::net::IpAddr>().with_context(|| {
            format!("'{a}' is not an IP address; give the address other nodes reach this one at")
        })?),
        None => None,
    };
    let v = ctl
        .call(
            "POST",
            "/setup/core",
            Some(&json!({"address": address, "port": port})),
        )
        .await?;
    println!(
        "this node is the core; the cluster's NATS server listens on {}:{}",
        v["address"].as_str().unwrap_or("?"),
        v["port"]
    );
    if no_restart {
        println!("restart stratod (`kato restart`) to run it, then make a join token with `kato node token`");
        return Ok(());
    }
    stop(ctl, &[]).await?;
    launch(ctl, home).await?;
    let v = ctl
        .call(
            "POST",
            "/cluster/tokens",
            Some(&json!({"uses": 1, "hours": 24})),
        )
        .await?;
    print_token(&v, json_out)
}

/// `node=..&force=..` for the role endpoints.
fn role_query(node: &Option<String>, force: bool) -> String {
    let mut q = Vec::new();
    if let Some(n) = node {
        q.push(format!("node={}", percent_encode(n)));
    }
    if force {
        q.push("force=true".to_string());
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Encodes everything but unreserved characters (RFC 3986) for a query value.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn role(ctl: &Control, cmd: &RoleCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        RoleCmd::Info { node } => {
            let v = ctl
                .call(
                    "GET",
                    &format!("/roles/info{}", role_query(node, false)),
                    None,
                )
                .await?;
            if json_out {
                print_data(&v)?;
            } else {
                let list = |k: &str| join(&v[k]);
                println!("node {}", v["node"].as_str().unwrap_or("?"));
                println!("assigned:  {}", list("roles"));
                println!("available: {}", list("available"));
            }
            Ok(())
        }
        RoleCmd::Add {
            roles,
            node,
            all,
            all_but,
            only,
            no_start,
        } => {
            let roles = role_selection(roles, *all, all_but, "add")?;
            let mut query = role_query(node, false);
            if *no_start {
                query.push_str(if query.is_empty() { "?" } else { "&" });
                query.push_str("no_start=true");
            }
            // --only: the node's other roles, each removal checked before anything changes.
            let mut drop = Vec::new();
            if *only {
                let info = ctl
                    .call(
                        "GET",
                        &format!("/roles/info{}", role_query(node, false)),
                        None,
                    )
                    .await?;
                let keep: Vec<String> = roles
                    .iter()
                    .flat_map(|r| expanded(r))
                    .chain(["base".to_string()])
                    .collect();
                for assigned in info["roles"].as_array().into_iter().flatten() {
                    let Some(name) = assigned.as_str() else {
                        continue;
                    };
                    if !keep.iter().any(|k| k == name) {
                        let check = format!("/roles/{name}/remove{}", role_query(node, false));
                        let check = format!(
                            "{check}{}dry_run=true",
                            if check.contains('?') { "&" } else { "?" }
                        );
                        ctl.call("POST", &check, None).await.with_context(|| {
                            format!(
                                "--only would remove {name}, which cannot go; nothing was changed"
                            )
                        })?;
                        drop.push(name.to_string());
                    }
                }
            }
            for r in &roles {
                let v = ctl
                    .call(
                        "POST",
                        &format!("/roles/{}/add{query}", percent_encode(r)),
                        None,
                    )
                    .await?;
                report_role(&v, r, "added to", json_out)?;
            }
            for name in &drop {
                let path = format!("/roles/{name}/remove{}", role_query(node, false));
                let v = ctl.call("POST", &path, None).await?;
                report_role(&v, name, "removed from", json_out)?;
            }
            Ok(())
        }
        RoleCmd::Remove {
            roles,
            node,
            force,
            all,
            all_but,
        } => {
            let roles = role_selection(roles, *all, all_but, "remove")?;
            for r in &roles {
                let path = format!(
                    "/roles/{}/remove{}",
                    percent_encode(r),
                    role_query(node, *force)
                );
                let v = ctl.call("POST", &path, None).await?;
                report_role(&v, r, "removed from", json_out)?;
            }
            Ok(())
        }
    }
}

/// The roles a `role add|remove` names: the listed ones, every role (`--all`), or every
/// role but some (`--all-but`). Unknown names are refused before anything changes.
fn role_selection(
    roles: &[String],
    all: bool,
    all_but: &[String],
    verb: &str,
) -> anyhow::Result<Vec<String>> {
    check_roles(roles)?;
    check_roles(all_but)?;
    let every = || {
        strato_core::Role::all()
            .filter(|r| !matches!(r, strato_core::Role::Base | strato_core::Role::Primary))
            .map(|r| r.name().to_string())
    };
    let chosen: Vec<String> = if all {
        every().collect()
    } else if !all_but.is_empty() {
        let skip: Vec<String> = all_but.iter().flat_map(|r| expanded(r)).collect();
        every().filter(|r| !skip.contains(r)).collect()
    } else {
        roles.to_vec()
    };
    if chosen.is_empty() {
        anyhow::bail!(
            "name at least one role, e.g. `kato role {verb} dea` (or --all, --all-but ROLES); `kato role info` lists them"
        );
    }
    Ok(chosen)
}

/// A role's name and, for `primary`, the roles it stands for.
fn expanded(name: &str) -> Vec<String> {
    match name.parse::<strato_core::Role>() {
        Ok(r) => std::iter::once(name.to_string())
            .chain(r.expand().into_iter().map(|r| r.name().to_string()))
            .collect(),
        Err(_) => vec![name.to_string()],
    }
}

fn report_role(v: &Value, role: &str, done: &str, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        print_data(v)
    } else {
        println!("{role}: {done} node {}", v["node"].as_str().unwrap_or("?"));
        Ok(())
    }
}

/// The first 8 characters of a node id, enough to tell nodes apart in a table.
fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

fn key(component: &str, key_path: Option<&str>) -> anyhow::Result<String> {
    let comp = component.trim_matches('/');
    if comp.is_empty() {
        anyhow::bail!("give a component, e.g. `kato config get dea_ng`");
    }
    Ok(
        match key_path
            .map(|k| k.trim_matches('/'))
            .filter(|k| !k.is_empty())
        {
            Some(k) => format!("{comp}/{k}"),
            None => comp.to_string(),
        },
    )
}

async fn config(ctl: &Control, cmd: &ConfigCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Get {
            component,
            key_path,
        } => {
            let v = ctl
                .call(
                    "GET",
                    &format!("/config/{}", key(component, key_path.as_deref())?),
                    None,
                )
                .await?;
            let value = &v["value"];
            match value {
                Value::String(s) if !json_out => println!("{s}"),
                _ => println!("{}", serde_json::to_string_pretty(value)?),
            }
            Ok(())
        }
        ConfigCmd::Set {
            component,
            key_path,
            value,
        } => {
            let raw = match value {
                Some(v) => v.clone(),
                None => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                    s.trim().to_string()
                }
            };
            // A value that parses as JSON is JSON (numbers, booleans, objects); else a string.
            let parsed: Value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
            ctl.call(
                "PUT",
                &format!("/config/{}", key(component, Some(key_path))?),
                Some(&parsed),
            )
            .await?;
            Ok(())
        }
        ConfigCmd::Del {
            component,
            key_path,
        } => {
            let v = ctl
                .call(
                    "DELETE",
                    &format!("/config/{}", key(component, Some(key_path))?),
                    None,
                )
                .await?;
            if v["deleted"] == json!(false) {
                anyhow::bail!("nothing at {component}/{key_path}");
            }
            Ok(())
        }
    }
}
