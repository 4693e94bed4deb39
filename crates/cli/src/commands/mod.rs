//! One module per group of commands; this one dispatches and holds what they share: the
//! resolved target, the session, and the current space.

pub mod appcmds;
mod apps;
mod curl;
mod drains;
mod exec;
mod lifecycle;
mod logs;
mod push;
mod quotas;
pub mod releases;
mod routes;
mod services;
mod session;
mod tenancy;
mod tunnel;

use crate::api::Api;
use crate::cf::{AppEntity, Resource};
use crate::cli::{AdminAction, Cli, Command, QuotaAction};
use crate::config::{resolve_target, Config, ConfigFile, ResolvedTarget, Session};
use crate::output::Output;
use anyhow::{anyhow, Result};

/// What every command gets.
pub struct Ctx {
    pub target_flag: Option<String>,
    pub no_prompt: bool,
    pub out: Output,
    pub store: ConfigFile,
}

/// A logged-in client working in one space.
pub struct Scope {
    pub api: Api,
    pub target: String,
    pub session: Session,
    pub space_guid: String,
}

impl Ctx {
    /// The target in use given `config`, if any.
    pub fn resolve(&self, config: &Config) -> Option<ResolvedTarget> {
        resolve_target(
            self.target_flag.as_deref(),
            &|k| std::env::var(k).ok(),
            config.target.as_deref(),
        )
    }

    /// The target in use, or an error saying how to set one.
    pub fn target(&self) -> Result<ResolvedTarget> {
        let config = self.store.load()?;
        self.resolve(&config)
            .ok_or_else(|| anyhow!("no target set; run `strato target URL` (or set STRATO_TARGET)"))
    }

    /// What is saved for `target` (empty when never logged in there).
    pub fn saved_session(&self, target: &ResolvedTarget) -> Result<Session> {
        Ok(self
            .store
            .load()?
            .targets
            .get(&target.url)
            .cloned()
            .unwrap_or_default())
    }

    /// The target and its saved session, which must hold a token.
    pub fn session(&self) -> Result<(ResolvedTarget, Session)> {
        let target = self.target()?;
        let session = self.saved_session(&target)?;
        if !session.logged_in() {
            return Err(anyhow!(
                "not logged in to {}; run `strato login`",
                target.url
            ));
        }
        Ok((target, session))
    }

    /// A logged-in client.
    pub fn api(&self) -> Result<(Api, ResolvedTarget, Session)> {
        let (target, session) = self.session()?;
        let api = Api::with_session(&target.url, &session, self.store.clone())?;
        Ok((api, target, session))
    }

    /// A logged-in client and the current space.
    pub fn scope(&self) -> Result<Scope> {
        let (api, target, session) = self.api()?;
        let space_guid = session.space_guid.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
            anyhow!("no space selected on {}; log in again (`strato login`) once your user belongs to a space", target.url)
        })?;
        Ok(Scope {
            api,
            target: target.url,
            session,
            space_guid,
        })
    }
}

impl Scope {
    /// The app called `name` in this space, if any.
    pub async fn find_app(&self, name: &str) -> Result<Option<Resource<AppEntity>>> {
        let query = [
            ("q", format!("name:{name}")),
            ("q", format!("space_guid:{}", self.space_guid)),
        ];
        let apps = self.api.list::<AppEntity>("/v2/apps", &query).await?;
        // A server that ignores a filter must not make us act on the wrong app.
        Ok(apps.into_iter().find(|a| {
            a.entity.name == name
                && a.entity
                    .space_guid
                    .as_deref()
                    .is_none_or(|s| s == self.space_guid)
        }))
    }

    /// The app called `name`, or an error saying it does not exist here.
    pub async fn require_app(&self, name: &str) -> Result<Resource<AppEntity>> {
        self.find_app(name).await?.ok_or_else(|| {
            anyhow!(
                "no app named {name:?} in space {}; see `strato apps`",
                self.session
                    .space_name
                    .as_deref()
                    .unwrap_or(&self.space_guid)
            )
        })
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        target_flag: cli.target,
        no_prompt: cli.no_prompt,
        out: Output::detect(cli.json),
        store: ConfigFile::from_env()?,
    };
    match cli.command {
        Command::Target {
            url,
            ca_fingerprint,
            skip_ssl_validation,
        } => {
            let tls = session::TlsChoice {
                ca_fingerprint,
                skip_validation: skip_ssl_validation,
            };
            session::target(&ctx, url, tls).await
        }
        Command::Targets => session::targets(&ctx),
        Command::Login(args) => session::login(&ctx, args).await,
        Command::Logout => session::logout(&ctx).await,
        Command::Info => session::info(&ctx).await,
        Command::Version => {
            println!("strato {}", strato_core::VERSION);
            Ok(())
        }
        Command::Push(args) => push::push(&ctx, args).await,
        Command::Apps => apps::list(&ctx).await,
        Command::App { name } => apps::show(&ctx, &name).await,
        Command::Start(args) => lifecycle::start_cmd(&ctx, args).await,
        Command::Stop { name } => lifecycle::stop_cmd(&ctx, &name).await,
        Command::Restart(args) => releases::restart_cmd(&ctx, args).await,
        Command::Restage(args) => lifecycle::restage_cmd(&ctx, args).await,
        Command::Delete { name } => apps::delete(&ctx, &name).await,
        Command::Instances { name } => apps::instances(&ctx, &name).await,
        Command::Stats { name } => apps::stats(&ctx, &name).await,
        Command::Scale(args) => apps::scale(&ctx, args).await,
        Command::Env { name } => apps::env(&ctx, &name).await,
        Command::EnvAdd { name, key, value } => apps::env_set(&ctx, &name, &key, Some(value)).await,
        Command::EnvDel { name, key } => apps::env_set(&ctx, &name, &key, None).await,
        Command::Map { name, url } => routes::map_cmd(&ctx, &name, &url).await,
        Command::Unmap { name, url } => routes::unmap_cmd(&ctx, &name, &url).await,
        Command::Domains => routes::domains_cmd(&ctx).await,
        Command::Drain { cmd } => match cmd {
            crate::cli::DrainCmd::Add {
                app,
                name,
                uri,
                json,
            } => drains::add(&ctx, &app, &name, &uri, json).await,
            crate::cli::DrainCmd::Delete { app, name } => drains::delete(&ctx, &app, &name).await,
            crate::cli::DrainCmd::List { app } => drains::list(&ctx, &app).await,
        },
        Command::CreateDomain { name, org } => {
            routes::create_domain_cmd(&ctx, &name, org.as_deref()).await
        }
        Command::DeleteDomain { name } => routes::delete_domain_cmd(&ctx, &name).await,
        Command::Routes => routes::routes_cmd(&ctx).await,
        Command::Logs(args) => logs::logs(&ctx, args).await,
        Command::Marketplace => services::marketplace(&ctx).await,
        Command::Services => services::list(&ctx).await,
        Command::Service { name } => services::show(&ctx, &name).await,
        Command::CreateService {
            kind,
            name,
            app,
            plan,
        } => {
            services::create_cmd(
                &ctx,
                &kind,
                name.as_deref(),
                app.as_deref(),
                plan.as_deref(),
            )
            .await
        }
        Command::CreateUserProvidedService {
            name,
            credentials,
            params,
        } => {
            services::create_user_provided(&ctx, &name, credentials.as_deref(), params.as_deref())
                .await
        }
        Command::DeleteService { names, force } => services::delete_cmd(&ctx, &names, force).await,
        Command::RenameService { name, new_name } => {
            services::rename_cmd(&ctx, &name, &new_name).await
        }
        Command::BindService { service, app } => {
            services::bind_cmd(&ctx, &service, app.as_deref()).await
        }
        Command::UnbindService { service, app } => {
            services::unbind_cmd(&ctx, &service, app.as_deref()).await
        }
        Command::Tunnel {
            service,
            port,
            client,
            client_args,
        } => tunnel::tunnel_cmd(&ctx, &service, port, client.as_deref(), &client_args).await,
        Command::Dbexport { service } => tunnel::dbexport_cmd(&ctx, &service).await,
        Command::Dbshell { args } => tunnel::dbshell_cmd(&ctx, &args).await,
        Command::Run(args) => exec::run(&ctx, args).await,
        Command::Ssh(args) => exec::ssh(&ctx, args).await,
        Command::Scp(args) => exec::scp(&ctx, args).await,
        Command::Files(args) => exec::files(&ctx, args).await,
        Command::AddUser(a) | Command::Register(a) => {
            tenancy::add_user(&ctx, &a.name, a.password, a.email).await
        }
        Command::DeleteUser { name } => tenancy::delete_user(&ctx, &name).await,
        Command::Passwd { old, new } => tenancy::passwd(&ctx, old, new).await,
        Command::Users => tenancy::users(&ctx).await,
        Command::Admin { action } => match action {
            AdminAction::Grant { user } => tenancy::admin_set(&ctx, &user, true).await,
            AdminAction::Revoke { user } => tenancy::admin_set(&ctx, &user, false).await,
            AdminAction::List => tenancy::admin_list(&ctx).await,
        },
        Command::Orgs => tenancy::orgs(&ctx).await,
        Command::Org { name } => tenancy::org_show(&ctx, name.as_deref()).await,
        Command::CreateOrg { name } => tenancy::create_org(&ctx, &name).await,
        Command::DeleteOrg { name, recursive } => tenancy::delete_org(&ctx, &name, recursive).await,
        Command::RenameOrg { name, new_name } => tenancy::rename_org(&ctx, &name, &new_name).await,
        Command::SwitchOrg { name } => tenancy::switch_org(&ctx, &name).await,
        Command::LinkUserOrg { user, org, roles } => {
            tenancy::link_user_org(&ctx, &user, org.as_deref(), &roles, true).await
        }
        Command::UnlinkUserOrg { user, org, roles } => {
            tenancy::link_user_org(&ctx, &user, org.as_deref(), &roles, false).await
        }
        Command::OrgUsers { org } => tenancy::org_users(&ctx, org.as_deref()).await,
        Command::Spaces { org } => tenancy::spaces(&ctx, org.as_deref()).await,
        Command::Space { name, org } => {
            tenancy::space_show(&ctx, name.as_deref(), org.as_deref()).await
        }
        Command::CreateSpace { name, org } => {
            tenancy::create_space(&ctx, &name, org.as_deref()).await
        }
        Command::DeleteSpace {
            name,
            org,
            recursive,
        } => tenancy::delete_space(&ctx, &name, org.as_deref(), recursive).await,
        Command::RenameSpace {
            name,
            new_name,
            org,
        } => tenancy::rename_space(&ctx, &name, &new_name, org.as_deref()).await,
        Command::SwitchSpace { name, org } => {
            tenancy::switch_space(&ctx, &name, org.as_deref()).await
        }
        Command::LinkUserSpace {
            user,
            space,
            org,
            roles,
        } => {
            tenancy::link_user_space(&ctx, &user, space.as_deref(), org.as_deref(), &roles, true)
                .await
        }
        Command::UnlinkUserSpace {
            user,
            space,
            org,
            roles,
        } => {
            tenancy::link_user_space(&ctx, &user, space.as_deref(), org.as_deref(), &roles, false)
                .await
        }
        Command::SpaceUsers { space, org } => {
            tenancy::space_users(&ctx, space.as_deref(), org.as_deref()).await
        }
        Command::Quotas => quotas::list(&ctx).await,
        Command::Quota { action } => match action {
            QuotaAction::Create(args) => quotas::create(&ctx, &args).await,
            QuotaAction::Update(args) => quotas::update(&ctx, &args).await,
            QuotaAction::Delete { name } => quotas::delete(&ctx, &name).await,
        },
        Command::QuotaOrg { org, quota } => quotas::assign_org(&ctx, &org, &quota).await,
        Command::Curl { method, path, body } => {
            curl::curl(&ctx, &method, &path, body.as_deref()).await
        }
        Command::More(cmd) => appcmds::run(&ctx, cmd).await,
    }
}
