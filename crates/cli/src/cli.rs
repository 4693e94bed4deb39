//! The command line: global options and one subcommand per Stackato verb.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "strato",
    version,
    about = "Push and manage apps on a Strato (Stackato-compatible) cloud",
    after_help = "The target is taken from --target, then STRATO_TARGET/STACKATO_TARGET, then `strato target`."
)]
pub struct Cli {
    /// API endpoint to use for this command only (overrides STRATO_TARGET and the saved target).
    #[arg(long, global = true, value_name = "URL")]
    pub target: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never ask questions; take defaults (and confirm deletions).
    #[arg(short = 'n', long = "no-prompt", global = true)]
    pub no_prompt: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show or set the API endpoint (host without scheme: https, then http).
    Target {
        url: Option<String>,
        /// Accept the server's certificate authority if its SHA-256 fingerprint is this
        /// (`kato info` shows it on the server).
        #[arg(long, value_name = "SHA256")]
        ca_fingerprint: Option<String>,
        /// Do not check this target's TLS certificates at all.
        #[arg(long)]
        skip_ssl_validation: bool,
    },
    /// List the saved targets.
    Targets,
    /// Log in to the target.
    Login(LoginArgs),
    /// Forget the tokens of the target.
    Logout,
    /// Show the target, user, org, space and server version.
    Info,
    /// Show the client version.
    Version,
    /// Create or update an app, upload its files and start it.
    Push(PushArgs),
    /// List the apps of the current space.
    Apps,
    /// Show one app.
    App { name: String },
    /// Start an app.
    Start(AppStartArgs),
    /// Stop an app.
    Stop { name: String },
    /// Restart an app: stop and start, or `--strategy rolling` without downtime.
    Restart(crate::commands::releases::RestartArgs),
    /// Stage an app again and restart it.
    Restage(AppStartArgs),
    /// Delete an app (asks first unless -n).
    Delete { name: String },
    /// List the instances of an app.
    Instances { name: String },
    /// Resource usage of each instance of an app.
    Stats { name: String },
    /// Change the instance count, memory or disk of an app.
    Scale(ScaleArgs),
    /// Show an app's environment variables.
    Env { name: String },
    /// Set an environment variable of an app.
    #[command(name = "env-add", visible_alias = "set-env")]
    EnvAdd {
        name: String,
        key: String,
        value: String,
    },
    /// Remove an environment variable of an app.
    #[command(name = "env-del", visible_alias = "unset-env")]
    EnvDel { name: String, key: String },
    /// Add a URL to an app.
    Map { name: String, url: String },
    /// Remove a URL from an app.
    Unmap { name: String, url: String },
    /// List the domains apps can use.
    Domains,
    /// An app's log drains: `drain add [--json] APP NAME URI`, `drain delete APP NAME`,
    /// `drain list APP` (URIs: tcp://HOST:PORT, udp://HOST:PORT for syslog).
    Drain {
        #[command(subcommand)]
        cmd: DrainCmd,
    },
    /// Add a private domain to the current organization (or --org), for app URLs.
    #[command(name = "create-domain", visible_alias = "map-domain")]
    CreateDomain {
        name: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Delete a private domain (refused while routes use it).
    #[command(name = "delete-domain", visible_alias = "unmap-domain")]
    DeleteDomain { name: String },
    /// List the routes of the current space.
    Routes,
    /// Show an app's log.
    Logs(LogsArgs),
    /// List the service types and plans on offer.
    Marketplace,
    /// List the services of the current space.
    Services,
    /// Show one service.
    Service { name: String },
    /// Create a service (and bind it to APP when given).
    #[command(name = "create-service")]
    CreateService {
        /// Service type: mysql, postgresql, redis, filesystem (see `strato marketplace`).
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Name of the new service (default TYPE-xxxxx).
        name: Option<String>,
        /// App to bind it to.
        app: Option<String>,
        /// Plan (default: the first on offer).
        #[arg(long)]
        plan: Option<String>,
    },
    /// Create a service for an external resource from credentials you give.
    #[command(name = "create-user-provided-service", visible_alias = "cups")]
    CreateUserProvidedService {
        name: String,
        /// Credentials as a JSON object, e.g. '{"uri":"postgres://u:p@db.example.com/x"}'.
        credentials: Option<String>,
        /// Ask for these comma-separated keys instead, e.g. -p 'host, port, password'.
        #[arg(short = 'p', long = "parameters", value_name = "KEYS")]
        params: Option<String>,
    },
    /// Delete services and their data (asks first unless -n).
    #[command(name = "delete-service")]
    DeleteService {
        #[arg(required = true)]
        names: Vec<String>,
        /// Unbind it from its apps first instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Rename a service.
    #[command(name = "rename-service")]
    RenameService { name: String, new_name: String },
    /// Bind a service to an app (APP defaults to `name:` in stackato.yml).
    #[command(name = "bind-service")]
    BindService {
        service: String,
        app: Option<String>,
    },
    /// Unbind a service from an app.
    #[command(name = "unbind-service")]
    UnbindService {
        service: String,
        app: Option<String>,
    },
    /// Open a local port to a service (and start psql, mysql, mysqldump, pg_dump or redis-cli).
    Tunnel {
        service: String,
        /// Local port (default: any free one).
        #[arg(long)]
        port: Option<u16>,
        /// Client to start against the tunnel: psql, pg_dump, mysql, mysqldump, redis-cli.
        client: Option<String>,
        /// Arguments for the client (after `--`).
        #[arg(last = true)]
        client_args: Vec<String>,
    },
    /// Write a consistent dump of a service to stdout (SQL, Redis RDB, or tar).
    Dbexport { service: String },
    /// Restore a dump from stdin into a service, or open its client on a terminal.
    Dbshell {
        /// [APP] [SERVICE]
        #[arg(num_args = 0..=2)]
        args: Vec<String>,
    },
    /// Run a command in an app instance; its output streams here and its exit code is ours.
    Run(RunArgs),
    /// An interactive shell (or CMD) in an app instance, on a terminal.
    Ssh(SshArgs),
    /// Copy a file between here and an app instance: `scp FILE APP:PATH`, `scp APP:PATH FILE`.
    Scp(ScpArgs),
    /// List a directory or show a file of an app instance (paths relative to the app dir).
    Files(FilesArgs),
    /// Create a user (administrators).
    #[command(name = "add-user", visible_alias = "create-user")]
    AddUser(AddUserArgs),
    /// Register a new user (administrators; the same as add-user).
    Register(AddUserArgs),
    /// Delete a user; their logins end at once (asks first unless -n).
    #[command(name = "delete-user")]
    DeleteUser { name: String },
    /// Change your password; your other logins end.
    Passwd {
        /// The current password (asked on a terminal).
        #[arg(long)]
        old: Option<String>,
        /// The new password (asked on a terminal).
        #[arg(long)]
        new: Option<String>,
    },
    /// List the users (administrators).
    Users,
    /// Administrator rights: grant, revoke, list.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// List the organizations you can see.
    Orgs,
    /// Show an organization (default: the current one).
    Org { name: Option<String> },
    /// Create an organization.
    #[command(name = "create-org")]
    CreateOrg { name: String },
    /// Delete an organization (asks first unless -n).
    #[command(name = "delete-org")]
    DeleteOrg {
        name: String,
        /// Also delete its spaces, apps, services and routes.
        #[arg(long, short = 'r')]
        recursive: bool,
    },
    /// Rename an organization.
    #[command(name = "rename-org")]
    RenameOrg { name: String, new_name: String },
    /// Make an organization (and its first space) the current one.
    #[command(name = "switch-org")]
    SwitchOrg { name: String },
    /// Add a user to an organization (as a member; with flags also in those roles).
    #[command(name = "link-user-org")]
    LinkUserOrg {
        user: String,
        org: Option<String>,
        #[command(flatten)]
        roles: OrgRoleFlags,
    },
    /// Remove a user from an organization (everything), or only from the roles named.
    #[command(name = "unlink-user-org")]
    UnlinkUserOrg {
        user: String,
        org: Option<String>,
        #[command(flatten)]
        roles: OrgRoleFlags,
    },
    /// List the members of an organization and their roles.
    #[command(name = "org-users")]
    OrgUsers { org: Option<String> },
    /// List the spaces of an organization (default: the current one).
    Spaces {
        #[arg(long)]
        org: Option<String>,
    },
    /// Show a space (default: the current one).
    Space {
        name: Option<String>,
        #[arg(long)]
        org: Option<String>,
    },
    /// Create a space.
    #[command(name = "create-space")]
    CreateSpace {
        name: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Delete a space (asks first unless -n).
    #[command(name = "delete-space")]
    DeleteSpace {
        name: String,
        #[arg(long)]
        org: Option<String>,
        /// Also delete its apps, services and routes.
        #[arg(long, short = 'r')]
        recursive: bool,
    },
    /// Rename a space.
    #[command(name = "rename-space")]
    RenameSpace {
        name: String,
        new_name: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Make a space the current one.
    #[command(name = "switch-space")]
    SwitchSpace {
        name: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Give a user roles in a space (developer unless --manager/--auditor).
    #[command(name = "link-user-space")]
    LinkUserSpace {
        user: String,
        space: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        roles: SpaceRoleFlags,
    },
    /// Take roles in a space from a user (developer unless --manager/--auditor).
    #[command(name = "unlink-user-space")]
    UnlinkUserSpace {
        user: String,
        space: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        roles: SpaceRoleFlags,
    },
    /// List the members of a space and their roles.
    #[command(name = "space-users")]
    SpaceUsers {
        space: Option<String>,
        #[arg(long)]
        org: Option<String>,
    },
    /// List the quota definitions (memory, instances, services, routes).
    Quotas,
    /// Create, change or delete a quota definition (administrators).
    Quota {
        #[command(subcommand)]
        action: QuotaAction,
    },
    /// Give an organization a quota (administrators).
    #[command(name = "quota-org")]
    QuotaOrg { org: String, quota: String },
    /// Send a raw authenticated request to the API.
    Curl {
        /// GET, POST, PUT, DELETE, ...
        method: String,
        /// Path such as /v2/apps
        path: String,
        /// JSON body
        body: Option<String>,
    },
    /// Releases, rollback, health checks and the smaller app commands.
    #[command(flatten)]
    More(crate::commands::appcmds::MoreCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum DrainCmd {
    /// Send the app's log lines to URI too.
    Add {
        app: String,
        name: String,
        uri: String,
        /// Lines as JSON instead of `TIME SOURCE.INDEX: TEXT`.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending to a drain.
    Delete { app: String, name: String },
    /// The app's drains.
    List { app: String },
}

#[derive(Debug, Args)]
pub struct AddUserArgs {
    pub name: String,
    /// The password (asked twice on a terminal).
    #[arg(long)]
    pub password: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Make a user an administrator.
    Grant { user: String },
    /// Take administrator rights from a user.
    Revoke { user: String },
    /// List the administrators.
    List,
}

#[derive(Debug, Subcommand)]
pub enum QuotaAction {
    /// Create a quota (unset limits take the `default` quota's: 10G, 100 services,
    /// 1000 routes, no per-instance or instance-count limit; paid plans off).
    Create(QuotaArgs),
    /// Change the limits given.
    Update(QuotaArgs),
    /// Delete a quota no organization has (asks first unless -n).
    Delete { name: String },
}

/// A quota's limits; `-1` (or `unlimited`) means no limit.
#[derive(Debug, Args, Default)]
pub struct QuotaArgs {
    pub name: String,
    /// Memory of all started instances together, e.g. 2048, 2G, unlimited.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub mem: Option<String>,
    /// Memory of one instance, e.g. 512M, unlimited.
    #[arg(long = "instance-mem", value_name = "SIZE", allow_hyphen_values = true)]
    pub instance_mem: Option<String>,
    /// Managed service instances.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub services: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub routes: Option<i64>,
    /// Instances of all started apps together.
    #[arg(
        long = "app-instances",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub app_instances: Option<i64>,
    /// Allow paid service plans.
    #[arg(long = "allow-paid-services", conflicts_with = "no_paid_services")]
    pub allow_paid_services: bool,
    /// Allow free service plans only.
    #[arg(long = "no-paid-services")]
    pub no_paid_services: bool,
}

#[derive(Debug, Args, Default)]
pub struct OrgRoleFlags {
    /// Manager of the organization.
    #[arg(long)]
    pub manager: bool,
    /// Auditor of the organization.
    #[arg(long)]
    pub auditor: bool,
    /// Billing manager of the organization.
    #[arg(long)]
    pub billing: bool,
}

#[derive(Debug, Args, Default)]
pub struct SpaceRoleFlags {
    /// Manager of the space.
    #[arg(long)]
    pub manager: bool,
    /// Auditor of the space.
    #[arg(long)]
    pub auditor: bool,
    /// Developer of the space (the default).
    #[arg(long)]
    pub developer: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name (asked when missing on a terminal).
    pub user: Option<String>,
    #[arg(long = "username", conflicts_with = "user", value_name = "USER")]
    pub username: Option<String>,
    /// Password (asked when missing on a terminal).
    #[arg(long)]
    pub password: Option<String>,
    /// Organization to use (default: STRATO_ORG, else the first).
    #[arg(long)]
    pub organization: Option<String>,
    /// Space to use (default: STRATO_SPACE, else the first).
    #[arg(long)]
    pub space: Option<String>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// App name (default: `name:` from stackato.yml).
    pub name: Option<String>,
    /// Directory to push (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Memory per instance, e.g. 256, 256M, 1.5G.
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// Disk per instance, e.g. 1G.
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    #[arg(long)]
    pub instances: Option<u32>,
    /// URL to map (repeatable); default NAME.DOMAIN.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    #[arg(long)]
    pub buildpack: Option<String>,
    /// Command that starts the app.
    #[arg(long)]
    pub command: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Seconds the app may take to start after staging.
    #[arg(long = "health-timeout", value_name = "SECS")]
    pub health_timeout: Option<u64>,
    /// Upload but do not start.
    #[arg(long)]
    pub no_start: bool,
    /// Do not stream the staging log.
    #[arg(long)]
    pub no_tail: bool,
    /// How the new version replaces a running one: `rolling` (new instances first, no
    /// downtime; the default) or `recreate` (the old ones stop first, for apps that must
    /// never run twice at once).
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Rolling: replace at most N instances at a time (default: all at once).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,
}

/// How a new version replaces a running one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    Rolling,
    Recreate,
}

impl Strategy {
    /// The API's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Recreate => "recreate",
        }
    }
}

#[derive(Debug, Args)]
pub struct AppStartArgs {
    pub name: String,
    /// Seconds the app may take to start after staging.
    #[arg(long = "health-timeout", value_name = "SECS")]
    pub health_timeout: Option<u64>,
    /// Do not stream the staging log.
    #[arg(long)]
    pub no_tail: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    pub name: String,
    #[arg(long)]
    pub instances: Option<u32>,
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep streaming new lines until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Number of past lines to show.
    #[arg(long, default_value_t = 100)]
    pub num: u32,
    /// Only lines from this instance index.
    #[arg(long)]
    pub instance: Option<i64>,
    /// Only lines from this source (app, staging, ...).
    #[arg(long)]
    pub source: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub name: String,
    /// Instance index.
    #[arg(long, default_value_t = 0)]
    pub instance: u32,
    /// Run on every running instance, prefixing output lines with the index.
    #[arg(long, conflicts_with = "instance")]
    pub all: bool,
    /// The command and its arguments (put `--` before a command with options of its own).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    pub name: String,
    /// Instance index.
    #[arg(long, default_value_t = 0)]
    pub instance: u32,
    /// Run CMD on every running instance (as `run --all`).
    #[arg(long, conflicts_with = "instance")]
    pub all: bool,
    /// A command instead of a shell.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScpArgs {
    /// A local file, or APP:PATH.
    pub source: String,
    /// A local file or directory, or APP:PATH (a directory there keeps the file's name).
    pub destination: String,
    /// Instance index.
    #[arg(long, default_value_t = 0)]
    pub instance: u32,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    pub name: String,
    /// A directory or file, relative to the app dir (default: the app dir).
    pub path: Option<String>,
    /// Instance index.
    #[arg(long, default_value_t = 0)]
    pub instance: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["strato", "delete", "web", "-n", "--target", "http://x"]).unwrap();
        assert!(cli.no_prompt);
        assert_eq!(cli.target.as_deref(), Some("http://x"));
        let cli = Cli::try_parse_from([
            "strato",
            "push",
            "web",
            "--url",
            "a.b",
            "--url",
            "c.d",
            "--no-start",
        ])
        .unwrap();
        let Command::Push(p) = cli.command else {
            panic!("not push")
        };
        assert_eq!(p.urls, vec!["a.b", "c.d"]);
        assert!(p.no_start);
    }

    #[test]
    fn quota_limits_take_unlimited_and_negative_numbers() {
        let cli = Cli::try_parse_from([
            "strato",
            "quota",
            "create",
            "small",
            "--mem",
            "256",
            "--instance-mem",
            "-1",
            "--app-instances",
            "-1",
            "--routes",
            "10",
            "--allow-paid-services",
        ])
        .unwrap();
        let Command::Quota {
            action: QuotaAction::Create(q),
        } = cli.command
        else {
            panic!("not quota create")
        };
        assert_eq!(q.name, "small");
        assert_eq!(q.mem.as_deref(), Some("256"));
        assert_eq!(q.instance_mem.as_deref(), Some("-1"));
        assert_eq!(
            (q.app_instances, q.routes, q.services),
            (Some(-1), Some(10), None)
        );
        assert!(q.allow_paid_services);
        assert!(Cli::try_parse_from([
            "strato",
            "quota",
            "update",
            "x",
            "--allow-paid-services",
            "--no-paid-services"
        ])
        .is_err());
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = Cli::try_parse_from(["strato", "app"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
