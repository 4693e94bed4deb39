//! A cluster end to end: a core node (controller, stager, health manager, router), a router
//! node and three DEA nodes, each DEA a separate host in its own network namespace, on
//! NATS and PostgreSQL. Apps are pushed through the core, spread over the DEAs, reached
//! through either router, and moved when a DEA dies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use strato_e2e::cluster::{Cluster, NodeKind};
use strato_e2e::{fixture, http_get_at};

const APP: &str = "staticfixture";
const APP_HOST: &str = "staticfixture.localhost";

/// The API as a script would use it: an admin token and blocking requests.
struct Api {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn login(c: &Cluster) -> Api {
        Api::login_at(c, c.url())
    }

    /// Logs in through the API at `base` (a router of the cluster).
    fn login_at(c: &Cluster, base: String) -> Api {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let tok: Value = http
            .post(format!("{base}/oauth/token"))
            .basic_auth("cf", Some(""))
            .form(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", c.password.as_str()),
            ])
            .send()
            .unwrap()
            .json()
            .unwrap();
        Api {
            base,
            token: tok["access_token"].as_str().unwrap().to_string(),
            http,
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .ok()?;
        r.status().is_success().then(|| r.json().ok()).flatten()
    }

    fn app_guid(&self, name: &str) -> String {
        let list = self.get(&format!("/v2/apps?q=name:{name}")).unwrap();
        list["resources"][0]["metadata"]["guid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// (state, host) of each instance index.
    fn instances(&self, guid: &str) -> BTreeMap<String, (String, String)> {
        let Some(v) = self.get(&format!("/v2/apps/{guid}/instances")) else {
            return BTreeMap::new();
        };
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(i, x)| {
                        let s = |k: &str| x[k].as_str().unwrap_or_default().to_string();
                        (i.clone(), (s("state"), s("host")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `n` instances run, none of them on `not_on`; returns how long it took
    /// and the hosts.
    fn wait_running(
        &self,
        guid: &str,
        n: usize,
        not_on: Option<&str>,
        wait: Duration,
        c: &Cluster,
    ) -> (Duration, Vec<String>) {
        let start = Instant::now();
        let mut last = BTreeMap::new();
        while start.elapsed() < wait {
            last = self.instances(guid);
            let hosts: Vec<String> = last
                .values()
                .filter(|(state, _)| state == "RUNNING")
                .map(|(_, host)| host.clone())
                .collect();
            if hosts.len() == n && not_on.is_none_or(|dead| hosts.iter().all(|h| h != dead)) {
                return (start.elapsed(), hosts);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{n} instances were not running (not on {not_on:?}) within {wait:?}; last: {last:?}\n{}",
            c.logs()
        );
    }
}

/// Requests through one router in a loop until stopped; records when each failed.
struct Traffic {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<Instant>>>,
    sent: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(router: std::net::SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0));
        let (s, f, n) = (stop.clone(), failures.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (status, _) = http_get_at(router, APP_HOST, "/");
                *n.lock().unwrap() += 1;
                if status != 200 {
                    f.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            failures,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops; returns (requests, failed requests, seconds from the first failure to the
    /// last).
    fn finish(mut self) -> (u64, usize, f64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let f = self.failures.lock().unwrap();
        let window = match (f.first(), f.last()) {
            (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
            _ => 0.0,
        };
        (*self.sent.lock().unwrap(), f.len(), window)
    }
}

/// Waits until `done`, or fails after `wait` saying what did not happen, with the nodes'
/// logs.
fn eventually(c: &Cluster, wait: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + wait;
    while !done() {
        assert!(
            Instant::now() < until,
            "{what} within {wait:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Requests the app through `router` four times a second for `period`, each of which
/// must be answered; returns how many were sent.
fn every_request_answered(
    c: &Cluster,
    router: std::net::SocketAddr,
    period: Duration,
    after: &str,
) -> usize {
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < period {
        let (status, body) = http_get_at(router, APP_HOST, "/");
        assert_eq!(
            status,
            200,
            "request {sent} failed {:.1} s after {after}: {body}\n{}",
            start.elapsed().as_secs_f64(),
            c.logs()
        );
        sent += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    sent
}

fn per_host(hosts: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in hosts {
        *m.entry(h.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn instances_spread_over_deas_and_move_when_one_dies() {
    let mut c = Cluster::start(1, 3).expect("cluster");
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "6"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    let (_, hosts) = api.wait_running(&guid, 6, None, Duration::from_secs(60), &c);

    // Placement spreads the instances evenly over the three DEAs.
    let spread = per_host(&hosts);
    let dea_addresses: Vec<String> = c.deas.iter().map(|d| d.address.to_string()).collect();
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        {
            let mut a = dea_addresses.clone();
            a.sort();
            a
        },
        "every instance runs on a DEA node, each DEA has some: {spread:?}"
    );
    assert!(
        spread.values().all(|&n| n == 2),
        "6 instances over 3 DEAs: {spread:?}"
    );
    // The user sees where each instance runs.
    let table = c.strato_ok(c.client_home.path(), &["instances", APP]);
    for address in &dea_addresses {
        assert!(table.contains(address.as_str()), "{table}");
    }

    // Both routers reach instances on other hosts.
    for router in [&c.core, &c.routers[0]] {
        let (status, body) = c.get_via(router, APP_HOST, "/");
        assert_eq!(status, 200, "through {}: {body}\n{}", router.name, c.logs());
    }

    // Kill a DEA (its stratod and its containers): its instances come back elsewhere.
    let router = std::net::SocketAddr::from((c.routers[0].address, c.routers[0].http_port));
    let traffic = Traffic::start(router);
    std::thread::sleep(Duration::from_millis(500));
    let victim = c.deas[0].address.to_string();
    c.deas[0].kill();
    let (took, hosts) = api.wait_running(&guid, 6, Some(&victim), Duration::from_secs(60), &c);
    // Let the routers settle, then the app must answer every time.
    std::thread::sleep(Duration::from_secs(2));
    let (sent, failed, window) = traffic.finish();
    eprintln!(
        "MEASURED dea kill: 6 instances running elsewhere after {:.1} s; {failed} of {sent} requests through the router failed, over {window:.1} s",
        took.as_secs_f64()
    );
    let spread = per_host(&hosts);
    assert_eq!(spread.len(), 2, "the two live DEAs hold them: {spread:?}");
    assert!(spread.values().all(|&n| n == 3), "evenly again: {spread:?}");
    for _ in 0..20 {
        let (status, body) = c.get_via(&c.routers[0], APP_HOST, "/");
        assert_eq!(status, 200, "after the failover: {body}\n{}", c.logs());
    }
    // The operator sees the dead node, by its address, as not answering.
    let list = kato_ok(c.kato(&["node", "list", "--json"]), "node list");
    let list: Vec<Value> = serde_json::from_str(&list).unwrap();
    let dead = list.iter().find(|n| n["address"] == victim.as_str());
    assert_eq!(
        dead.map(|n| n["state"].clone()),
        Some(Value::from("not answering")),
        "{list:?}"
    );
    assert!(
        list.iter().filter(|n| n["state"] == "up").count() >= 4,
        "{list:?}"
    );
}

/// How many app containers run on each DEA node.
fn containers_per_dea(c: &Cluster) -> Vec<usize> {
    c.deas.iter().map(|d| d.containers().len()).collect()
}

#[test]
fn a_partitioned_dea_is_replaced_and_its_stale_instances_stop_when_it_returns() {
    let c = Cluster::start(0, 2).expect("cluster");
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "4"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    let (_, hosts) = api.wait_running(&guid, 4, None, Duration::from_secs(60), &c);
    assert_eq!(per_host(&hosts).len(), 2, "{hosts:?}");

    // Cut dea0 off: its instances keep running there, unreachable; the cluster replaces
    // them on dea1.
    let cut = c.deas[0].address.to_string();
    c.deas[0].cut().unwrap();
    let (took, hosts) = api.wait_running(&guid, 4, Some(&cut), Duration::from_secs(60), &c);
    eprintln!(
        "MEASURED partition: 4 instances running without the cut-off DEA after {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(per_host(&hosts).len(), 1);
    assert_eq!(containers_per_dea(&c)[0], 2, "still running behind the cut");

    // Heal: dea0 comes back with two stale instances; they are stopped, never more than
    // the 4 desired for long.
    c.deas[0].heal().unwrap();
    let healed = Instant::now();
    let mut extra_for = Duration::ZERO;
    loop {
        let counts = containers_per_dea(&c);
        let total: usize = counts.iter().sum();
        if total > 4 {
            extra_for = healed.elapsed();
        }
        let running = api
            .instances(&guid)
            .values()
            .filter(|(s, _)| s == "RUNNING")
            .count();
        if total == 4 && running == 4 && healed.elapsed() > Duration::from_secs(8) {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(45),
            "still {counts:?} containers, {running} running, 45 s after the heal\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "MEASURED heal: stale instances stopped {:.1} s after the partition healed",
        extra_for.as_secs_f64()
    );
    assert_eq!(containers_per_dea(&c).iter().sum::<usize>(), 4);
    assert!(
        extra_for < Duration::from_secs(10),
        "more instances than desired for {extra_for:?} after the heal"
    );
    let (status, _) = c.get_via(&c.core, APP_HOST, "/");
    assert_eq!(status, 200);
}

#[test]
fn apps_keep_serving_while_the_core_is_down_and_reconcile_when_it_returns() {
    let mut c = Cluster::start(1, 2).expect("cluster");
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "2"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    api.wait_running(&guid, 2, None, Duration::from_secs(60), &c);

    // The core (controller, health manager, its router) dies; the router node keeps
    // routing from what the DEAs keep registering, past the route TTL.
    c.core.kill();
    let router = std::net::SocketAddr::from((c.routers[0].address, c.routers[0].http_port));
    let sent = every_request_answered(&c, router, Duration::from_secs(25), "the core died");
    eprintln!(
        "MEASURED core down: {sent} requests over 25 s through the router node, all answered"
    );

    // Back: the controller reads its state from PostgreSQL and sees the instances.
    c.core.restart().unwrap();
    c.wait_api(Duration::from_secs(60)).unwrap();
    let api = Api::login(&c);
    let (_, hosts) = api.wait_running(&guid, 2, None, Duration::from_secs(60), &c);
    assert_eq!(hosts.len(), 2);
    let apps = c.strato_ok(c.client_home.path(), &["apps"]);
    assert!(apps.contains(APP), "{apps}");
}

#[test]
fn kato_sees_every_node_of_the_cluster() {
    let c = Cluster::start(1, 2).expect("cluster");
    // Discovery answers within a moment of the nodes starting.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.kato(&["node", "list", "--json"]);
        assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
        let nodes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let addresses: Vec<&str> = nodes.iter().filter_map(|n| n["address"].as_str()).collect();
        let all_there = [&c.core, &c.routers[0], &c.deas[0], &c.deas[1]]
            .iter()
            .all(|n| addresses.contains(&n.address.to_string().as_str()));
        if all_there {
            let roles = |address: String| -> Vec<String> {
                nodes
                    .iter()
                    .find(|n| n["address"] == address.as_str())
                    .and_then(|n| n["roles"].as_array())
                    .map(|r| {
                        r.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            assert!(roles(c.deas[0].address.to_string()).contains(&"dea".to_string()));
            assert!(roles(c.routers[0].address.to_string()).contains(&"router".to_string()));
            assert!(roles(c.core.address.to_string()).contains(&"controller".to_string()));
            break;
        }
        assert!(Instant::now() < until, "kato node list: {nodes:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = c.kato(&["status", "--all"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("dea") && text.contains("running"),
        "{text}"
    );
}

#[test]
fn roles_are_added_and_removed_live_from_the_core() {
    let c = Cluster::start(0, 1).expect("cluster");
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    api.wait_running(&guid, 1, None, Duration::from_secs(60), &c);
    let dea = c.deas[0].address.to_string();

    // A router on the DEA node, started by its stratod without a restart.
    let out = c.kato(&["role", "add", "router", "-n", &dea]);
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    eventually(
        &c,
        Duration::from_secs(20),
        "the added router did not serve",
        || c.get_via(&c.deas[0], APP_HOST, "/").0 == 200,
    );
    let info = c.kato(&["role", "info", "-n", &dea]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("router") && text.contains("dea"), "{text}");

    // `--only dea`: every other role goes; it stops listening.
    let out = c.kato(&["role", "add", "dea", "--only", "-n", &dea]);
    let text = strato_e2e::output_text(&out);
    assert!(
        out.status.success() && text.contains("router: removed from"),
        "{text}"
    );
    eventually(
        &c,
        Duration::from_secs(20),
        "the removed router still answers",
        || c.get_via(&c.deas[0], APP_HOST, "/").0 == 0,
    );

    // `-s`: assigned, not started until `kato start` (on that node, from the core).
    let out = c.kato(&["role", "add", "router", "-s", "-n", &dea]);
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.get_via(&c.deas[0], APP_HOST, "/").0,
        0,
        "a held role started"
    );
    let status = kato_ok(c.kato(&["status", "-n", &dea, "--yaml"]), "status --yaml");
    assert!(
        status.contains("role: router") && status.contains("state: stopped"),
        "{status}"
    );
    kato_ok(c.kato(&["start", "-n", &dea]), "start -n");
    eventually(
        &c,
        Duration::from_secs(20),
        "`kato start -n` did not start the held router",
        || c.get_via(&c.deas[0], APP_HOST, "/").0 == 200,
    );
    let out = c.kato(&["role", "remove", "router", "-n", &dea]);
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));

    // --only that would take the last DEA away: refused before anything changes.
    let out = c.kato(&["role", "add", "router", "--only", "-n", &dea]);
    let text = strato_e2e::output_text(&out);
    assert!(
        !out.status.success() && text.contains("nothing was changed") && text.contains("last DEA"),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        c.get_via(&c.deas[0], APP_HOST, "/").0,
        0,
        "no router was added"
    );

    // The last DEA, with an app running: refused, naming the app, unless forced.
    let out = c.kato(&["role", "remove", "dea", "-n", &dea]);
    let text = strato_e2e::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("last DEA") && text.contains(APP), "{text}");
    assert_eq!(c.get_via(&c.core, APP_HOST, "/").0, 200, "still serving");

    // Unknown roles and nodes get a clear error.
    let out = c.kato(&["role", "add", "teapot", "-n", &dea]);
    let text = strato_e2e::output_text(&out);
    assert!(!out.status.success() && text.contains("teapot"), "{text}");
    let out = c.kato(&["role", "add", "router", "-n", "10.255.255.254"]);
    let text = strato_e2e::output_text(&out);
    assert!(
        !out.status.success() && text.contains("kato node list"),
        "{text}"
    );

    let out = c.kato(&["role", "remove", "dea", "-n", &dea, "--force"]);
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    eventually(
        &c,
        Duration::from_secs(30),
        "the DEA role did not stop its instances",
        || c.deas[0].containers().is_empty(),
    );
}

#[test]
fn a_node_with_a_copied_id_is_refused() {
    let mut c = Cluster::start(0, 1).expect("cluster");
    // Let discovery see the first one.
    std::thread::sleep(Duration::from_secs(1));
    let refused = c
        .add_dea_with_the_id_of(0)
        .expect_err("a second node with the same id must not run");
    assert!(
        refused.contains("already used by the node at")
            && refused.contains(&c.deas[0].address.to_string()),
        "{refused}"
    );
}

#[test]
fn instances_spread_over_availability_zones_first() {
    let c = Cluster::start(0, 3).expect("cluster");
    for (dea, zone) in [(0, "zone-a"), (1, "zone-a"), (2, "zone-b")] {
        let address = c.deas[dea].address.to_string();
        let out = c.kato(&["node", "availabilityzone", zone, "-n", &address]);
        assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    }
    let out = c.kato(&[
        "node",
        "availabilityzone",
        "-n",
        &c.deas[2].address.to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("zone-b"),
        "{}",
        strato_e2e::output_text(&out)
    );
    let out = c.kato(&["node", "availabilityzone", "no zone!"]);
    assert!(!out.status.success(), "a bad zone name is refused");
    // The DEAs start again with their zone and advertise it.
    std::thread::sleep(Duration::from_secs(6));

    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "4"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    let (_, hosts) = api.wait_running(&guid, 4, None, Duration::from_secs(60), &c);
    let spread = per_host(&hosts);
    let on = |i: usize| {
        spread
            .get(&c.deas[i].address.to_string())
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(on(2), 2, "zone-b (one DEA) holds half: {spread:?}");
    assert_eq!(
        (on(0), on(1)),
        (1, 1),
        "zone-a's half over its two DEAs: {spread:?}"
    );
}

#[test]
fn nodes_join_with_a_token_and_a_removed_node_is_shut_out() {
    // A setting made while the core was a single node survives it becoming the core.
    let mut c = Cluster::start_self_hosted_after(1, |c| {
        let out = c.kato(&["config", "set", "dea_ng", "marker", "42"]);
        anyhow::ensure!(out.status.success(), "{}", strato_e2e::output_text(&out));
        Ok(())
    })
    .expect("cluster");
    let marker = kato_ok(c.kato(&["config", "get", "dea_ng", "marker"]), "config get");
    assert_eq!(
        marker.trim(),
        "42",
        "the setting was carried into the cluster's store"
    );
    let core = c.core_bus.clone().unwrap();

    // A wrong token is refused and leaves nothing behind.
    let out = c.attach_dea("stranger", "not-a-token").unwrap();
    let text = strato_e2e::output_text(&out);
    assert!(!out.status.success() && text.contains("token"), "{text}");
    assert!(!c.deas[1].home.path().join("cluster.json").exists());

    // The core's NATS speaks TLS only.
    {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&core).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut info = [0u8; 1024];
        let n = s.read(&mut info).unwrap();
        let info = String::from_utf8_lossy(&info[..n]);
        assert!(info.contains("\"tls_required\":true"), "{info}");
    }

    // A token is spent: one use, one node.
    let token = c.join_token(1).unwrap();

    // A token naming another CA is refused before its secret is sent (a core that is
    // not ours), and nothing is written.
    let (secret, _) = token.split_once('.').unwrap();
    let forged = format!("{secret}.{}", "ab".repeat(32));
    let out = c.attach_dea("impostor", &forged).unwrap();
    let text = strato_e2e::output_text(&out);
    assert!(
        !out.status.success() && text.contains("CA the join token names"),
        "{text}"
    );
    assert!(!c.deas[2].home.path().join("cluster.json").exists());

    // Anyone may connect as the `join` user and read the answers' subjects: a spy there
    // sees the core's answer, sealed, and not the credentials in it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pinned = std::sync::Arc::new(strato_tls::PinnedCa::new(token.split_once('.').unwrap().1));
    let spy = rt
        .block_on(strato_bus::NatsBus::connect_with_inbox_prefix(
            &format!("nats://join:join@{core}"),
            "_JOIN",
            pinned.client_config().unwrap(),
        ))
        .expect("the spy connects as the join user");
    let mut spied = rt
        .block_on(strato_bus::Bus::subscribe(&spy, "_JOIN.>"))
        .unwrap();
    rt.block_on(strato_bus::Bus::flush(&spy)).unwrap();

    let out = c.attach_dea("dea2", &token).unwrap();
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    let seen = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), spied.next()).await })
        .expect("the spy saw the answer")
        .unwrap();
    let seen = String::from_utf8_lossy(&seen.payload).into_owned();
    let membership: Value = serde_json::from_slice(
        &std::fs::read(c.deas.last().unwrap().home.path().join("cluster.json")).unwrap(),
    )
    .unwrap();
    let url = membership["nats_url"].as_str().unwrap();
    let password = url.split('@').next().unwrap().rsplit(':').next().unwrap();
    assert!(password.len() >= 16, "{url}");
    assert!(
        seen.contains("sealed") && !seen.contains(password) && !seen.contains("nats://"),
        "the join answer is readable by others: {seen}"
    );
    let out = c.attach_dea("dea3", &token).unwrap();
    let text = strato_e2e::output_text(&out);
    assert!(!out.status.success() && text.contains("used up"), "{text}");
    assert!(!c.deas[4].home.path().join("cluster.json").exists());

    // An unreachable core: a clear error, nothing written.
    let o = c.core.address.octets();
    let port = core.rsplit(':').next().unwrap();
    let unreachable = format!("{}.{}.{}.250:{port}", o[0], o[1], o[2]);
    let out = std::process::Command::new(strato_e2e::bin("kato"))
        .env("STRATO_HOME", c.deas[4].home.path())
        .args(["node", "attach", &unreachable, "--token", &token])
        .output()
        .unwrap();
    let text = strato_e2e::output_text(&out);
    assert!(
        !out.status.success() && text.contains("cannot reach"),
        "{text}"
    );
    assert!(!c.deas[4].home.path().join("cluster.json").exists());

    // kato info tells the core from its members, never showing a password.
    let info = strato_e2e::output_text(&c.kato(&["info"]));
    assert!(
        info.contains("cluster:    core") && info.contains(":***@"),
        "{info}"
    );

    // The joined DEAs run apps, and their credentials are their own.
    let joined = c.deas[0].home.path().join("cluster.json");
    let membership = std::fs::read_to_string(&joined).unwrap();
    assert!(membership.contains("node-"), "{membership}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&joined).unwrap().permissions().mode() & 0o777,
        0o600
    );
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "2"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    let (_, hosts) = api.wait_running(&guid, 2, None, Duration::from_secs(60), &c);
    let removed = c.deas[0].address.to_string();
    assert!(hosts.contains(&removed), "{hosts:?}");

    // Removed on the core: its credentials are revoked, it drops off the bus, and its
    // instance runs on the other DEA.
    let out = c.kato(&["node", "remove", &removed]);
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    let (took, _) = api.wait_running(&guid, 2, Some(&removed), Duration::from_secs(60), &c);
    eprintln!(
        "MEASURED node remove: its instance ran elsewhere after {:.1} s",
        took.as_secs_f64()
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.kato(&["node", "list", "--json"]);
        let list = String::from_utf8_lossy(&out.stdout).to_string();
        if !list.contains(&format!("\"{removed}\"")) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the removed node still answers: {list}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        c.deas[0]
            .log_tail()
            .to_lowercase()
            .contains("authorization"),
        "the removed node's log shows it refused:\n{}",
        c.deas[0].log_tail()
    );
}

/// The droplets a node's controller holds.
fn droplets_held(node: &strato_e2e::cluster::Node) -> usize {
    std::fs::read_dir(node.home.path().join("blobs"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tgz"))
                .count()
        })
        .unwrap_or(0)
}

fn kato_ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "kato {what}: {}",
        strato_e2e::output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn two_controllers_share_the_api_and_either_carries_on_alone() {
    let mut c = Cluster::start(1, 2).expect("cluster");
    c.add_controller("cc1").expect("second controller");
    let cc1 = c.controllers[0].address.to_string();
    // The client targets the router node: it sends the API to either controller.
    let here = c.client_home.path().to_path_buf();
    let router = c.router_url(&c.routers[0]);
    c.strato_ok(&here, &["target", &router]);
    c.strato_ok(
        &here,
        &["login", "admin", "--password", &c.password.clone()],
    );
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "2"]);
    let api = Api::login_at(&c, router.clone());
    let first = api.app_guid(APP);
    api.wait_running(&first, 2, None, Duration::from_secs(60), &c);
    // The droplet is copied to the controller that did not stage it.
    eventually(
        &c,
        Duration::from_secs(20),
        "the droplet was not copied to both controllers",
        || droplets_held(&c.controllers[0]) >= 1 && droplets_held(&c.core) >= 1,
    );

    // kato on the core stops the other node's controller; the core's serves alone and
    // stages a second app.
    kato_ok(c.kato(&["stop", "controller", "-n", &cc1]), "stop -n");
    let status = kato_ok(c.kato(&["status", "-n", &cc1, "--json"]), "status -n");
    let status: Value = serde_json::from_str(&status).unwrap();
    let controller = status["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "controller")
        .cloned()
        .unwrap_or_default();
    assert_eq!(controller["state"], "stopped", "{status}");
    c.strato_ok(&fixture("static"), &["push", "second", "-n"]);
    let second = api.app_guid("second");
    api.wait_running(&second, 1, None, Duration::from_secs(60), &c);

    // Back on: it copies what it missed. Then the core's controller stops and the
    // other one runs everything: the same login, both droplets for new instances.
    kato_ok(c.kato(&["start", "controller", "-n", &cc1]), "start -n");
    kato_ok(
        c.kato(&[
            "process",
            "ready",
            "cloud_controller_ng",
            "-n",
            &cc1,
            "-b",
            "30",
        ]),
        "process ready -n",
    );
    eventually(
        &c,
        Duration::from_secs(20),
        "the controller did not catch up on the droplet it missed",
        || droplets_held(&c.controllers[0]) >= 2,
    );
    kato_ok(c.kato(&["stop", "controller"]), "stop controller");
    let apps = c.strato_ok(&here, &["apps"]);
    assert!(apps.contains(APP) && apps.contains("second"), "{apps}");
    c.strato_ok(&here, &["scale", APP, "--instances", "3"]);
    c.strato_ok(&here, &["scale", "second", "--instances", "2"]);
    api.wait_running(&first, 3, None, Duration::from_secs(60), &c);
    api.wait_running(&second, 2, None, Duration::from_secs(60), &c);
    let router_addr = std::net::SocketAddr::from((c.routers[0].address, c.routers[0].http_port));
    for _ in 0..6 {
        assert_eq!(http_get_at(router_addr, "second.localhost", "/").0, 200);
    }

    // Every node's processes, through the bus.
    let processes = kato_ok(
        c.kato(&["process", "list", "-c", "--json"]),
        "process list -c",
    );
    let processes: Vec<Value> = serde_json::from_str(&processes).unwrap();
    let nodes: std::collections::BTreeSet<&str> = processes
        .iter()
        .filter_map(|p| p["node"].as_str())
        .collect();
    assert!(nodes.len() >= 5, "core, router, 2 DEAs, cc1: {processes:?}");
    assert!(
        processes
            .iter()
            .any(|p| p["name"] == "dea_ng" && p["state"] == "running"),
        "{processes:?}"
    );
}

#[test]
fn the_platform_carries_on_when_one_nats_server_of_three_dies() {
    let mut c = Cluster::start_on_nats_cluster(1, 2).expect("cluster on a NATS cluster of three");
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "2"]);
    let api = Api::login(&c);
    let first = api.app_guid(APP);
    api.wait_running(&first, 2, None, Duration::from_secs(60), &c);
    let router = std::net::SocketAddr::from((c.routers[0].address, c.routers[0].http_port));
    let traffic = Traffic::start(router);

    // Every node whose connection was on that server moves to another; the config
    // store (three replicas) keeps its quorum.
    c.kill_nats_server(0).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    kato_ok(
        c.kato(&["config", "set", "router2g", "drain", "4"]),
        "config set",
    );
    let router_node = &c.routers[0];
    let drain = kato_ok(
        c.kato_on(router_node, &["config", "get", "router2g", "drain"]),
        "config get",
    );
    assert_eq!(
        drain.trim(),
        "4",
        "the router node reads what the core wrote"
    );
    c.strato_ok(
        &fixture("static"),
        &["push", "second", "-n", "--instances", "2"],
    );
    let second = api.app_guid("second");
    api.wait_running(&second, 2, None, Duration::from_secs(60), &c);
    eventually(
        &c,
        Duration::from_secs(20),
        "the second app is not reachable",
        || http_get_at(router, "second.localhost", "/").0 == 200,
    );
    std::thread::sleep(Duration::from_secs(2));
    let (sent, failed, window) = traffic.finish();
    eprintln!(
        "MEASURED one NATS server of three killed: {failed} of {sent} requests failed over {window:.1} s"
    );
    assert!(
        window < 3.0,
        "requests failed for {window:.1} s\n{}",
        c.logs()
    );
}

#[test]
fn a_core_runs_its_own_database_and_an_attached_controller_uses_it() {
    let mut c = Cluster::start_self_hosted_with_its_own_database(1).expect("cluster");
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    api.wait_running(&guid, 1, None, Duration::from_secs(60), &c);

    // A controller node joins with nothing but the core's address and a token: it asks
    // the core where the database is.
    let token = c.join_token(1).unwrap();
    let out = c.attach("cc1", &token, NodeKind::Controller).unwrap();
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    let cc1 = c.controllers[0].address.to_string();
    kato_ok(
        c.kato(&[
            "process",
            "ready",
            "cloud_controller_ng",
            "-n",
            &cc1,
            "-b",
            "60",
        ]),
        "process ready -n",
    );
    // Any member may use the bus, but the database goes only to a node with the
    // controller (or health manager) role that proves who it is: a DEA asking with its
    // own credentials is refused, and so is one claiming to be the controller node.
    let dea = std::fs::read(c.deas[0].home.path().join("cluster.json")).unwrap();
    let dea: Value = serde_json::from_slice(&dea).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = rt
        .block_on(strato_bus::NatsBus::connect_tls(
            dea["nats_url"].as_str().unwrap(),
            std::path::Path::new(dea["ca_file"].as_str().unwrap()),
        ))
        .expect("the DEA's credentials connect");
    let password = dea["nats_url"].as_str().unwrap().split('@').next().unwrap();
    let password = password.rsplit(':').next().unwrap();
    let ask = |node_id: &str| {
        use hmac::Mac;
        let public_key = "ab".repeat(32);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(password.as_bytes()).unwrap();
        mac.update(format!("strato database ask v1\n{node_id}\n{public_key}").as_bytes());
        let body = serde_json::json!({
            "node_id": node_id, "public_key": public_key,
            "mac": hex::encode(mac.finalize().into_bytes()),
        });
        let reply = rt
            .block_on(strato_bus::Bus::request(
                &bus,
                "strato.cluster.database",
                serde_json::to_vec(&body).unwrap().into(),
                Duration::from_secs(5),
            ))
            .expect("the core answers");
        String::from_utf8_lossy(&reply.payload).into_owned()
    };
    let dea_id = dea["node_id"].as_str().unwrap();
    let answer = ask(dea_id);
    assert!(
        answer.contains("refused") && answer.contains("role"),
        "{answer}"
    );
    let cc1_id: Value = serde_json::from_slice(
        &std::fs::read(c.controllers[0].home.path().join("node.json")).unwrap(),
    )
    .unwrap();
    let answer = ask(cc1_id["id"].as_str().unwrap());
    assert!(answer.contains("does not come from"), "{answer}");
    assert!(!answer.contains("postgres://"), "{answer}");

    // The core's controller stops: the API is the other one's, on the same data.
    kato_ok(c.kato(&["stop", "controller"]), "stop controller");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.strato(c.client_home.path(), &["apps"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(APP) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the attached controller does not serve the core's data: {}\n{}",
            strato_e2e::output_text(&out),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(c.get_via(&c.core, APP_HOST, "/").0, 200);
}

#[test]
fn a_self_hosted_cluster_keeps_serving_while_its_core_and_bus_are_down() {
    let mut c = Cluster::start_self_hosted(2).expect("cluster");
    let token = c.join_token(1).unwrap();
    let out = c.attach("router0", &token, NodeKind::Router).unwrap();
    assert!(out.status.success(), "{}", strato_e2e::output_text(&out));
    c.login();
    c.strato_ok(&fixture("static"), &["push", "-n", "--instances", "2"]);
    let api = Api::login(&c);
    let guid = api.app_guid(APP);
    api.wait_running(&guid, 2, None, Duration::from_secs(60), &c);
    let router = std::net::SocketAddr::from((c.routers[0].address, c.routers[0].http_port));
    eventually(
        &c,
        Duration::from_secs(30),
        "the router node never served the app",
        || http_get_at(router, APP_HOST, "/").0 == 200,
    );

    // The core dies and its NATS server with it: nobody can refresh a route, and the
    // router keeps them all (past the route TTL and the DEA deadline).
    c.core.kill();
    let sent = every_request_answered(
        &c,
        router,
        Duration::from_secs(25),
        "the core and the bus died",
    );
    eprintln!("MEASURED core and bus down: {sent} requests over 25 s through the router node, all answered");

    // Back: every node finds its bus again, and the platform is whole.
    c.core.restart().unwrap();
    c.wait_api(Duration::from_secs(60)).unwrap();
    let api = Api::login(&c);
    api.wait_running(&guid, 2, None, Duration::from_secs(60), &c);
    let list = kato_ok(c.kato(&["node", "list", "--json"]), "node list");
    let list: Vec<Value> = serde_json::from_str(&list).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let mut list = list;
    while list.iter().filter(|n| n["state"] == "up").count() < 4 {
        assert!(
            Instant::now() < until,
            "not every node is back on the bus: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        let out = kato_ok(c.kato(&["node", "list", "--json"]), "node list");
        list = serde_json::from_str(&out).unwrap();
    }
    assert_eq!(http_get_at(router, APP_HOST, "/").0, 200);
}
