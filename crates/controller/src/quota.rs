//! Quota arithmetic, kept pure so it can be tested on its own (unit and property tests):
//! given a quota's limits, what the rest of the org or space already uses, and an app
//! before and after a change, is the change allowed? A refusal says which quota, which
//! limit and the numbers, with Cloud Foundry's error code.
//!
//! The rules, after cloud_controller_ng's v2 app validations:
//! - only started apps use memory (`memory × instances`) and instances;
//! - a change that does not raise what the app uses is always allowed (scaling down an
//!   app in an org that is over its limit, after the limit was lowered, must work);
//! - one instance may not have more memory than `instance_memory_limit`, checked whenever
//!   the memory is set or the app starts;
//! - `-1` ([`UNLIMITED`]) means no limit;
//! - org and space quotas both apply; when both refuse, the one with the least room left
//!   is named.
//!
//! Error codes and names are those of cloud_controller_ng's `errors/v2.yml`.

use strato_core::ApiError;
use strato_db::{QuotaLimits, QuotaUsage, UNLIMITED};

/// Whose quota: an organization's or a space's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Org,
    Space,
}

impl Level {
    fn possessive(self) -> &'static str {
        match self {
            Level::Org => "organization's",
            Level::Space => "space's",
        }
    }
}

/// One quota that applies to a change: its level, its name and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub level: Level,
    pub name: String,
    pub limits: QuotaLimits,
}

/// What an app asks for: memory per instance (MB), instances, and whether it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppDemand {
    pub memory_mb: i64,
    pub instances: i64,
    pub started: bool,
}

impl AppDemand {
    /// MB counted against the memory limit.
    pub fn memory_used(&self) -> i64 {
        if self.started {
            self.memory_mb.saturating_mul(self.instances)
        } else {
            0
        }
    }

    /// Instances counted against the instance limit.
    pub fn instances_used(&self) -> i64 {
        if self.started {
            self.instances
        } else {
            0
        }
    }
}

/// Which limit a change runs into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    InstanceMemory,
    Memory,
    AppInstances,
    PaidServices,
    Services,
    Routes,
}

/// A refused change: the quota, the limit, and the numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub level: Level,
    pub quota: String,
    pub limit: Limit,
    /// The limit's value (MB for memory).
    pub allowed: i64,
    /// What the rest already uses (without the thing being changed).
    pub in_use: i64,
    /// What the change asks for (MB, instances, or 1 service/route).
    pub requested: i64,
    /// How the request is made up, for the message (e.g. "3 × 128 MB").
    pub detail: String,
}

impl Exceeded {
    /// How far past the limit the change would go (the tighter quota goes further).
    fn overshoot(&self) -> i64 {
        self.in_use
            .saturating_add(self.requested)
            .saturating_sub(self.allowed)
    }

    /// The CF code and name.
    pub fn code(&self) -> (u32, &'static str) {
        match (self.limit, self.level) {
            (Limit::Memory, Level::Org) => (100005, "CF-AppMemoryQuotaExceeded"),
            (Limit::Memory, Level::Space) => (310003, "CF-SpaceQuotaMemoryLimitExceeded"),
            (Limit::InstanceMemory, Level::Org) => (100007, "CF-QuotaInstanceMemoryLimitExceeded"),
            (Limit::InstanceMemory, Level::Space) => {
                (310004, "CF-SpaceQuotaInstanceMemoryLimitExceeded")
            }
            (Limit::AppInstances, Level::Org) => (100008, "CF-QuotaInstanceLimitExceeded"),
            (Limit::AppInstances, Level::Space) => (310008, "CF-SpaceQuotaInstanceLimitExceeded"),
            (Limit::PaidServices, Level::Org) => (60007, "CF-ServiceInstanceServicePlanNotAllowed"),
            (Limit::PaidServices, Level::Space) => {
                (60013, "CF-ServiceInstanceServicePlanNotAllowedBySpaceQuota")
            }
            (Limit::Services, Level::Org) => (60005, "CF-ServiceInstanceQuotaExceeded"),
            (Limit::Services, Level::Space) => (60012, "CF-ServiceInstanceSpaceQuotaExceeded"),
            (Limit::Routes, Level::Org) => (310006, "CF-OrgQuotaTotalRoutesExceeded"),
            (Limit::Routes, Level::Space) => (310005, "CF-SpaceQuotaTotalRoutesExceeded"),
        }
    }

    /// CF's message, then the quota, the limit and the numbers, then what to do.
    pub fn message(&self) -> String {
        let whose = self.level.possessive();
        let quota = match self.level {
            Level::Org => format!("quota '{}'", self.quota),
            Level::Space => format!("space quota '{}'", self.quota),
        };
        let (n, u, a) = (self.in_use, self.requested, self.allowed);
        let fix = match self.level {
            Level::Org => "ask an administrator for a bigger quota (`strato quota-org`)",
            Level::Space => "ask an org manager for a bigger space quota",
        };
        match self.limit {
            Limit::Memory => format!(
                "You have exceeded your {whose} memory limit: {quota} allows {a} MB; other apps use {n} MB and this app would use {u} MB ({}). Scale down, stop another app or {fix}",
                self.detail
            ),
            Limit::InstanceMemory => format!(
                "You have exceeded the instance memory limit for your {whose} quota: {quota} allows {a} MB per instance and this asks for {u} MB. Use less memory (`strato scale --mem`) or {fix}"
            ),
            Limit::AppInstances => format!(
                "You have exceeded the instance limit for your {whose} quota: {quota} allows {a} app instance(s); other apps have {n} and this app would have {u}. Scale down, stop another app or {fix}"
            ),
            Limit::PaidServices => format!(
                "The service instance cannot be created because paid service plans are not allowed by the {whose} {quota}: choose a free plan or {fix}"
            ),
            Limit::Services => format!(
                "You have exceeded your {whose} services limit: {quota} allows {a} service instance(s) and {n} are in use. Delete one (`strato delete-service`) or {fix}"
            ),
            Limit::Routes => format!(
                "You have exceeded the total routes for your {whose} quota: {quota} allows {a} route(s) and {n} are in use. Delete one (`strato delete-route`) or {fix}"
            ),
        }
    }
}

impl From<Exceeded> for ApiError {
    fn from(e: Exceeded) -> ApiError {
        let (code, name) = e.code();
        ApiError::new(400, code, name, e.message())
    }
}

fn limited(limit: i64) -> bool {
    limit != UNLIMITED
}

/// Checks an app change against one quota. `before` is the app as it is (`None`: a new
/// app, or one moving in from another org or space); `others` what everything else under
/// the quota uses.
pub fn check_app_one(
    q: &Quota,
    others: &QuotaUsage,
    before: Option<AppDemand>,
    after: AppDemand,
) -> Result<(), Exceeded> {
    let l = &q.limits;
    let refuse = |limit, allowed, in_use, requested, detail: String| Exceeded {
        level: q.level,
        quota: q.name.clone(),
        limit,
        allowed,
        in_use,
        requested,
        detail,
    };
    let memory_set_or_starting = match before {
        None => true,
        Some(b) => b.memory_mb != after.memory_mb || (after.started && !b.started),
    };
    if limited(l.instance_memory_limit)
        && memory_set_or_starting
        && after.memory_mb > l.instance_memory_limit
    {
        return Err(refuse(
            Limit::InstanceMemory,
            l.instance_memory_limit,
            0,
            after.memory_mb,
            format!("{} MB per instance", after.memory_mb),
        ));
    }
    let was = before.unwrap_or(AppDemand {
        started: false,
        ..after
    });
    let memory = after.memory_used();
    if limited(l.memory_limit)
        && memory > was.memory_used()
        && others.memory_mb.saturating_add(memory) > l.memory_limit
    {
        return Err(refuse(
            Limit::Memory,
            l.memory_limit,
            others.memory_mb,
            memory,
            format!("{} × {} MB", after.instances, after.memory_mb),
        ));
    }
    let instances = after.instances_used();
    if limited(l.app_instance_limit)
        && instances > was.instances_used()
        && others.app_instances.saturating_add(instances) > l.app_instance_limit
    {
        return Err(refuse(
            Limit::AppInstances,
            l.app_instance_limit,
            others.app_instances,
            instances,
            format!("{} × {} MB", after.instances, after.memory_mb),
        ));
    }
    Ok(())
}

/// Checks a new managed service instance (`paid`: its plan is not free) against one quota.
pub fn check_service_one(q: &Quota, used: &QuotaUsage, paid: bool) -> Result<(), Exceeded> {
    let l = &q.limits;
    let refuse = |limit, allowed| Exceeded {
        level: q.level,
        quota: q.name.clone(),
        limit,
        allowed,
        in_use: used.services,
        requested: 1,
        detail: "1 service instance".into(),
    };
    if paid && l.non_basic_services_allowed == 0 {
        return Err(refuse(Limit::PaidServices, 0));
    }
    if limited(l.total_services) && used.services.saturating_add(1) > l.total_services {
        return Err(refuse(Limit::Services, l.total_services));
    }
    Ok(())
}

/// Checks a new route against one quota.
pub fn check_route_one(q: &Quota, used: &QuotaUsage) -> Result<(), Exceeded> {
    let l = &q.limits;
    if limited(l.total_routes) && used.routes.saturating_add(1) > l.total_routes {
        return Err(Exceeded {
            level: q.level,
            quota: q.name.clone(),
            limit: Limit::Routes,
            allowed: l.total_routes,
            in_use: used.routes,
            requested: 1,
            detail: "1 route".into(),
        });
    }
    Ok(())
}

/// Runs `check` on every quota (with what is used under it); when more than one refuses,
/// the first kind of limit in [`Limit`]'s order wins, and within it the quota the change
/// overshoots most: the tighter one.
pub fn tightest<F>(quotas: &[(Quota, QuotaUsage)], check: F) -> Result<(), Exceeded>
where
    F: Fn(&Quota, &QuotaUsage) -> Result<(), Exceeded>,
{
    let refusals = quotas.iter().filter_map(|(q, used)| check(q, used).err());
    match refusals.min_by_key(|e| (limit_rank(e.limit), std::cmp::Reverse(e.overshoot()))) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn limit_rank(l: Limit) -> u8 {
    match l {
        Limit::InstanceMemory => 0,
        Limit::Memory => 1,
        Limit::AppInstances => 2,
        Limit::PaidServices => 3,
        Limit::Services => 4,
        Limit::Routes => 5,
    }
}

/// Checks an app change against every quota that applies.
pub fn check_app(
    quotas: &[(Quota, QuotaUsage)],
    before: Option<AppDemand>,
    after: AppDemand,
) -> Result<(), Exceeded> {
    tightest(quotas, |q, others| check_app_one(q, others, before, after))
}

/// Checks a new managed service instance against every quota that applies.
pub fn check_service(quotas: &[(Quota, QuotaUsage)], paid: bool) -> Result<(), Exceeded> {
    tightest(quotas, |q, used| check_service_one(q, used, paid))
}

/// Checks a new route against every quota that applies.
pub fn check_route(quotas: &[(Quota, QuotaUsage)]) -> Result<(), Exceeded> {
    tightest(quotas, check_route_one)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(memory: i64, instance_memory: i64, instances: i64) -> QuotaLimits {
        QuotaLimits {
            memory_limit: memory,
            instance_memory_limit: instance_memory,
            app_instance_limit: instances,
            ..QuotaLimits::cf_default()
        }
    }

    fn org(name: &str, l: QuotaLimits) -> Quota {
        Quota {
            level: Level::Org,
            name: name.into(),
            limits: l,
        }
    }

    fn space(name: &str, l: QuotaLimits) -> Quota {
        Quota {
            level: Level::Space,
            name: name.into(),
            limits: l,
        }
    }

    fn started(memory_mb: i64, instances: i64) -> AppDemand {
        AppDemand {
            memory_mb,
            instances,
            started: true,
        }
    }

    fn stopped(memory_mb: i64, instances: i64) -> AppDemand {
        AppDemand {
            started: false,
            ..started(memory_mb, instances)
        }
    }

    fn used(memory_mb: i64, app_instances: i64) -> QuotaUsage {
        QuotaUsage {
            memory_mb,
            app_instances,
            ..Default::default()
        }
    }

    #[test]
    fn starting_past_the_org_memory_limit_names_the_limit_and_the_use() {
        let q = org("small", limits(256, -1, -1));
        let e = check_app(&[(q, used(0, 0))], Some(stopped(128, 3)), started(128, 3)).unwrap_err();
        assert_eq!(e.code(), (100005, "CF-AppMemoryQuotaExceeded"));
        let m = e.message();
        assert!(
            m.starts_with("You have exceeded your organization's memory limit: quota 'small' allows 256 MB; other apps use 0 MB and this app would use 384 MB (3 × 128 MB)"),
            "{m}"
        );
    }

    #[test]
    fn stopped_apps_use_nothing_and_scaling_down_always_works() {
        let q = org("small", limits(256, -1, 2));
        let quotas = [(q, used(1024, 10))];
        // Over the limit already (it was lowered); creating a stopped app and scaling a
        // started one down are still allowed.
        assert!(check_app(&quotas, None, stopped(128, 3)).is_ok());
        assert!(check_app(&quotas, Some(started(128, 3)), started(128, 2)).is_ok());
        assert!(check_app(&quotas, Some(started(128, 3)), stopped(128, 3)).is_ok());
        let e = check_app(&quotas, Some(started(128, 1)), started(128, 2)).unwrap_err();
        assert_eq!(e.limit, Limit::Memory);
    }

    #[test]
    fn instance_memory_and_instance_count_limits() {
        let q = org("q", limits(-1, 64, 4));
        let e = check_app(&[(q.clone(), used(0, 0))], None, stopped(128, 1)).unwrap_err();
        assert_eq!(e.code().0, 100007);
        assert!(e
            .message()
            .contains("allows 64 MB per instance and this asks for 128 MB"));
        // Unchanged memory of a running app is not checked again.
        assert!(check_app(
            &[(q.clone(), used(0, 0))],
            Some(started(128, 1)),
            started(128, 1)
        )
        .is_ok());
        let e = check_app(&[(q, used(0, 2))], Some(started(32, 1)), started(32, 3)).unwrap_err();
        assert_eq!(e.code(), (100008, "CF-QuotaInstanceLimitExceeded"));
        assert!(
            e.message()
                .contains("allows 4 app instance(s); other apps have 2 and this app would have 3"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn the_tighter_of_org_and_space_quota_names_itself() {
        let o = org("big", limits(1024, -1, -1));
        let s = space("tiny", limits(128, -1, -1));
        let both = [(o.clone(), used(0, 0)), (s.clone(), used(0, 0))];
        let e = check_app(&both, None, started(256, 1)).unwrap_err();
        assert_eq!((e.level, e.quota.as_str()), (Level::Space, "tiny"));
        assert_eq!(e.code(), (310003, "CF-SpaceQuotaMemoryLimitExceeded"));
        assert!(e.message().contains("space quota 'tiny' allows 128 MB"));
        // The org's quota is the tighter one when the org's other spaces use most of it.
        let both = [(o, used(1000, 1)), (s, used(0, 0))];
        let e = check_app(&both, None, started(200, 1)).unwrap_err();
        assert_eq!((e.level, e.allowed), (Level::Org, 1024));
    }

    #[test]
    fn services_and_routes() {
        let mut l = QuotaLimits::cf_default();
        l.total_services = 1;
        l.total_routes = 2;
        l.non_basic_services_allowed = 0;
        let q = org("q", l.clone());
        let none = QuotaUsage::default();
        assert!(check_service(&[(q.clone(), none)], false).is_ok());
        let e = check_service(&[(q.clone(), none)], true).unwrap_err();
        assert_eq!(e.code().1, "CF-ServiceInstanceServicePlanNotAllowed");
        let one = QuotaUsage {
            services: 1,
            routes: 2,
            ..none
        };
        let e = check_service(&[(q.clone(), one)], false).unwrap_err();
        assert_eq!(e.code(), (60005, "CF-ServiceInstanceQuotaExceeded"));
        assert!(e
            .message()
            .contains("allows 1 service instance(s) and 1 are in use"));
        let e = check_route(&[(q.clone(), one)]).unwrap_err();
        assert_eq!(e.code(), (310006, "CF-OrgQuotaTotalRoutesExceeded"));
        assert!(e.message().contains("allows 2 route(s) and 2 are in use"));
        assert!(check_route(&[(q, none)]).is_ok());
        let e: ApiError = check_route(&[(space("s", l), one)]).unwrap_err().into();
        assert_eq!((e.status, e.code), (400, 310005));
    }

    fn limit() -> impl Strategy<Value = i64> {
        prop_oneof![Just(UNLIMITED), 0i64..4096]
    }

    fn demand() -> impl Strategy<Value = AppDemand> {
        (1i64..2048, 0i64..16, any::<bool>()).prop_map(|(memory_mb, instances, started)| {
            AppDemand {
                memory_mb,
                instances,
                started,
            }
        })
    }

    proptest! {
        /// A change is refused exactly when it raises what the app uses and then the
        /// total passes a limit (or one instance passes the instance memory limit);
        /// a refusal names the quota and carries the limit's value.
        #[test]
        fn app_changes_are_refused_exactly_when_they_pass_a_limit(
            mem in limit(), inst_mem in limit(), insts in limit(),
            others_mem in 0i64..8192, others_inst in 0i64..64,
            before in proptest::option::of(demand()), after in demand(),
        ) {
            let q = org("prop", limits(mem, inst_mem, insts));
            let others = used(others_mem, others_inst);
            let was = before.unwrap_or(AppDemand { started: false, ..after });
            let memory_checked = before.is_none_or(|b| b.memory_mb != after.memory_mb || (after.started && !b.started));
            let over_instance_memory = inst_mem != UNLIMITED && memory_checked && after.memory_mb > inst_mem;
            let over_memory = mem != UNLIMITED && after.memory_used() > was.memory_used()
                && others_mem + after.memory_used() > mem;
            let over_instances = insts != UNLIMITED && after.instances_used() > was.instances_used()
                && others_inst + after.instances_used() > insts;
            match check_app_one(&q, &others, before, after) {
                Ok(()) => prop_assert!(!over_instance_memory && !over_memory && !over_instances),
                Err(e) => {
                    prop_assert!(over_instance_memory || over_memory || over_instances);
                    let allowed = match e.limit {
                        Limit::InstanceMemory => inst_mem,
                        Limit::Memory => mem,
                        Limit::AppInstances => insts,
                        _ => unreachable!("an app change only meets app limits"),
                    };
                    prop_assert_eq!(e.allowed, allowed);
                    let m = e.message();
                    prop_assert!(m.contains("quota 'prop'"), "{}", m);
                    prop_assert!(m.contains(&format!("allows {allowed}")), "{}", m);
                    prop_assert!(e.allowed != UNLIMITED);
                }
            }
        }

        /// What keeps usage within every limit is allowed; unlimited quotas allow all.
        #[test]
        fn staying_within_the_limits_is_always_allowed(
            others_mem in 0i64..4096, others_inst in 0i64..32, after in demand(),
            mem_room in 0i64..1024, inst_room in 0i64..8,
        ) {
            let q = org("roomy", limits(
                others_mem + after.memory_used() + mem_room,
                after.memory_mb,
                others_inst + after.instances_used() + inst_room,
            ));
            prop_assert!(check_app_one(&q, &used(others_mem, others_inst), None, after).is_ok());
            let free = org("free", limits(UNLIMITED, UNLIMITED, UNLIMITED));
            prop_assert!(check_app_one(&free, &used(i64::MAX / 2, i64::MAX / 2), None, after).is_ok());
        }

        /// Starting an app that would pass the memory limit is always refused, with the
        /// limit and the use in the message.
        #[test]
        fn passing_the_memory_limit_is_always_refused(
            limit in 0i64..4096, others_mem in 0i64..4096, memory_mb in 1i64..1024, instances in 1i64..8,
        ) {
            let after = started(memory_mb, instances);
            prop_assume!(others_mem + after.memory_used() > limit);
            let q = org("tight", limits(limit, UNLIMITED, UNLIMITED));
            let e = check_app_one(&q, &used(others_mem, 0), Some(stopped(memory_mb, instances)), after).unwrap_err();
            prop_assert_eq!(e.code().0, 100005);
            let m = e.message();
            let want = format!("allows {limit} MB; other apps use {others_mem} MB and this app would use {} MB", after.memory_used());
            prop_assert!(m.contains(&want), "{}", m);
        }

        /// With two quotas the refusal, if any, is the one that overshoots most, and a
        /// change both allow is allowed.
        #[test]
        fn the_tightest_refusal_wins(
            org_mem in 0i64..4096, space_mem in 0i64..4096,
            org_used in 0i64..4096, space_used in 0i64..4096, after in demand(),
        ) {
            let quotas = [
                (org("o", limits(org_mem, UNLIMITED, UNLIMITED)), used(org_used, 0)),
                (space("s", limits(space_mem, UNLIMITED, UNLIMITED)), used(space_used, 0)),
            ];
            let over_org = org_used + after.memory_used() - org_mem;
            let over_space = space_used + after.memory_used() - space_mem;
            match check_app(&quotas, None, after) {
                Ok(()) => prop_assert!(after.memory_used() == 0 || (over_org <= 0 && over_space <= 0)),
                Err(e) => {
                    prop_assert!(over_org > 0 || over_space > 0);
                    let want = if over_space >= over_org { Level::Space } else { Level::Org };
                    if over_space != over_org {
                        prop_assert_eq!(e.level, want);
                    }
                }
            }
        }

        /// Services and routes: the n+1-th is refused exactly when n reaches the limit.
        #[test]
        fn counts_are_refused_exactly_at_the_limit(limit in limit(), n in 0i64..2048) {
            let mut l = QuotaLimits::cf_default();
            l.total_services = limit;
            l.total_routes = limit;
            let q = org("c", l);
            let u = QuotaUsage { services: n, routes: n, ..Default::default() };
            let full = limit != UNLIMITED && n >= limit;
            prop_assert_eq!(check_route_one(&q, &u).is_err(), full);
            prop_assert_eq!(check_service_one(&q, &u, false).is_err(), full);
        }
    }
}
