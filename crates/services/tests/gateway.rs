//! The Open Service Broker gateway, served for real on a port in front of a real Redis
//! node, driven by the controller's own client ([`BrokerClient`]): catalog, provision,
//! bind, unbind, deprovision, export and import, and the refusals a broker owes its client.

mod common;

use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use strato_core::messages::BrokerAnnounce;
use strato_services::gateway::{self, Gateway};
use strato_services::osb::{self, BindRequest, BrokerClient, BrokerError, ProvisionRequest};
use strato_services::redis::RedisNode;
use strato_services::{NodeConfig, Plan, ServiceKind, ServiceNode};
use tokio_util::sync::CancellationToken;

struct Served {
    client: BrokerClient,
    url: String,
    stop: CancellationToken,
    node: Arc<RedisNode>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(capacity: u64) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let address = common::address();
    let node = Arc::new(
        RedisNode::open(NodeConfig {
            dir: dir.path().to_path_buf(),
            address,
            port: 0,
            port_range: None,
            capacity,
        })
        .await
        .unwrap(),
    );
    let plans = vec![Plan {
        name: "free".into(),
        size_mb: 16,
    }];
    let gw = Gateway::new(node.clone(), plans, "strato", "broker-secret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(gateway::serve(gw, listener, stop.clone()));
    let client = BrokerClient::new(BrokerAnnounce {
        label: "redis".into(),
        url: url.clone(),
        username: "strato".into(),
        password: "broker-secret".into(),
    });
    Served {
        client,
        url,
        stop,
        node,
        _dir: dir,
    }
}

fn provision_request(plan: &str) -> ProvisionRequest {
    ProvisionRequest {
        service_id: osb::service_id(ServiceKind::Redis),
        plan_id: osb::plan_id(ServiceKind::Redis, plan),
        organization_guid: "org".into(),
        space_guid: "space".into(),
    }
}

fn bind_request() -> BindRequest {
    BindRequest {
        service_id: osb::service_id(ServiceKind::Redis),
        plan_id: osb::plan_id(ServiceKind::Redis, "free"),
        app_guid: Some("app".into()),
    }
}

async fn redis_cli(creds: &Value, args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-h", creds["host"].as_str().unwrap()])
        .args(["-p", &creds["port"].to_string()])
        .args(args)
        .env("REDISCLI_AUTH", creds["password"].as_str().unwrap())
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn the_broker_lifecycle_through_the_controllers_client() {
    let s = serve(5).await;
    let catalog = s.client.catalog().await.unwrap();
    assert_eq!(catalog.services.len(), 1);
    assert_eq!(catalog.services[0].name, "redis");
    assert_eq!(catalog.services[0].plans[0].name, "free");
    assert!(catalog.services[0].bindable);

    s.client
        .provision("inst-1", &provision_request("free"))
        .await
        .unwrap();
    let creds = s
        .client
        .bind("inst-1", "bind-1", &bind_request())
        .await
        .unwrap();
    assert!(creds["uri"].as_str().unwrap().starts_with("redis://"));
    assert!(
        creds.get("host_path").is_none(),
        "a network service has no host path"
    );
    assert_eq!(
        redis_cli(&creds, &["SET", "k", "through-the-broker"]).await,
        "OK"
    );
    assert!(s.client.usage("inst-1").await.unwrap() > 0);

    // Export from one instance, import into another: the data moves.
    let dump: Vec<u8> = s
        .client
        .export("inst-1")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert!(dump.starts_with(b"REDIS"), "an RDB file");
    s.client
        .provision("inst-2", &provision_request("free"))
        .await
        .unwrap();
    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(dump))]);
    s.client.import("inst-2", body).await.unwrap();
    let creds2 = s
        .client
        .bind("inst-2", "bind-2", &bind_request())
        .await
        .unwrap();
    assert_eq!(
        redis_cli(&creds2, &["GET", "k"]).await,
        "through-the-broker"
    );

    s.client
        .unbind("inst-1", "bind-1", "strato-redis", "strato-redis-free")
        .await
        .unwrap();
    s.client
        .deprovision("inst-1", "strato-redis", "strato-redis-free")
        .await
        .unwrap();
    assert!(!s
        .node
        .instances()
        .await
        .unwrap()
        .iter()
        .any(|i| i.as_str() == "inst-1"));
    // Deprovisioning what is gone is fine (410 is treated as done).
    s.client
        .deprovision("inst-1", "strato-redis", "strato-redis-free")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_broker_refuses_strangers_unknown_plans_bad_ids_and_overflow() {
    let s = serve(1).await;
    // Wrong broker credentials.
    let stranger = BrokerClient::new(BrokerAnnounce {
        label: "redis".into(),
        url: s.url.clone(),
        username: "strato".into(),
        password: "guess".into(),
    });
    match stranger.catalog().await {
        Err(BrokerError::Rejected { status: 401, .. }) => {}
        other => panic!("a wrong password must be refused: {other:?}"),
    }
    // An unknown plan.
    match s
        .client
        .provision("inst-x", &provision_request("gold"))
        .await
    {
        Err(BrokerError::Rejected {
            status: 400,
            description,
        }) => assert!(description.contains("gold"), "{description}"),
        other => panic!("unknown plan: {other:?}"),
    }
    // An id that could name a path.
    match s
        .client
        .provision("..%2F..", &provision_request("free"))
        .await
    {
        Err(BrokerError::Rejected { status, .. }) => assert!(status == 400 || status == 404),
        other => panic!("bad id: {other:?}"),
    }
    // Capacity 1: the second instance is refused and says which key to raise.
    s.client
        .provision("inst-a", &provision_request("free"))
        .await
        .unwrap();
    match s
        .client
        .provision("inst-b", &provision_request("free"))
        .await
    {
        Err(BrokerError::Rejected {
            status: 422,
            description,
        }) => assert!(description.contains("redis_node/capacity"), "{description}"),
        other => panic!("over capacity: {other:?}"),
    }
    // A dump of an instance that does not exist.
    assert!(s.client.export("nope").await.is_err());
    let _ = s
        .client
        .export("inst-a")
        .await
        .unwrap()
        .bytes_stream()
        .next()
        .await;
}
