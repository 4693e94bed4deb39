//! A cluster end to end: a core node (controller, stager, health manager, router), a router
//! node and three DEA nodes, each DEA a separate host in its own network namespace, on
//! NATS and PostgreSQL. Apps are pushed through the core, spread over the DEAs, reached
//! through either router, and moved when a DEA dies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use strato_e2e::cluster::Cluster;
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
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let base = c.url();
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
}
