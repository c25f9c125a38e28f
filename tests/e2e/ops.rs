//! The operations listeners: `/health` readiness and Prometheus `/metrics`
//! of a running coordinator and node, scraped over plain HTTP, with the
//! counters moving as queries run and are refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{NodeProcess, client, generate, query};

/// `GET path` from `addr`: (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `series` (name and labels as printed), 0 if absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of the family `name`.
fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The ops listener's address, from the line a service logs when it starts it.
fn ops_addr(log: impl Fn() -> String) -> SocketAddr {
    crate::support::logged_addr(log, "ops listener serving")
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_follow_queries_refusals_and_a_lost_node() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 600, 53);
    let with_ops = |name: &str| {
        let path = root.join(format!("{name}/node.toml"));
        let mut config: carrow_node::NodeConfig =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config.ops_listen = Some("127.0.0.1:0".into());
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        NodeProcess::start(&path)
    };
    let nodes = [with_ops("acute"), with_ops("gp"), with_ops("council")];
    let addrs: Vec<(&str, SocketAddr)> = ["acute", "gp", "council"]
        .into_iter()
        .zip(&nodes)
        .map(|(name, node)| (name, node.addr))
        .collect();
    let coordinator = crate::coordinator::start_coordinator_at(root, &addrs, |config| {
        config.ops_listen = Some("127.0.0.1:0".into());
        config.catalog_refresh_secs = 1;
    });
    let coordinator_ops =
        ops_addr(|| std::fs::read_to_string(root.join("coordinator/coordinator.log")).unwrap());
    let gp_ops = ops_addr(|| nodes[1].log());

    let (status, body) = get(coordinator_ops, "/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ready"], true, "{body}");
    assert_eq!(health["checks"]["nodes"], "ok", "{body}");
    assert_eq!(health["checks"]["linkage_index"], "ok", "{body}");
    assert_eq!(get(gp_ops, "/health").0, 200);

    let (_, before) = get(coordinator_ops, "/metrics");
    let (_, gp_before) = get(gp_ops, "/metrics");
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    for sql in [
        "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
        "SELECT setting, count(*) FROM combined.contacts GROUP BY setting",
    ] {
        query(&mut planner, sql).await.unwrap();
    }
    query(&mut planner, "SELECT pid FROM gp.registrations")
        .await
        .unwrap_err();
    let (status, after) = get(coordinator_ops, "/metrics");
    assert_eq!(status, 200);
    let ok = r#"carrow_queries_total{role="planner",outcome="ok"}"#;
    assert_eq!(value(&after, ok) - value(&before, ok), 2.0, "{after}");
    assert_eq!(
        total(&after, "carrow_refusals_total") - total(&before, "carrow_refusals_total"),
        1.0,
        "{after}"
    );
    let released = r#"carrow_rows_released_total{role="planner"}"#;
    assert!(
        value(&after, released) > value(&before, released),
        "{after}"
    );
    let fragments = r#"carrow_fragment_seconds_count{node="gp"}"#;
    assert!(
        value(&after, fragments) >= value(&before, fragments) + 2.0,
        "{after}"
    );
    assert_eq!(
        value(&after, r#"carrow_node_up{node="council"}"#),
        1.0,
        "{after}"
    );
    assert!(
        value(&after, r#"carrow_linkage_index_records{project="demo"}"#) > 0.0,
        "{after}"
    );
    assert!(
        value(&after, "carrow_audit_log_records")
            >= value(&before, "carrow_audit_log_records") + 5.0
    );
    let (_, gp_after) = get(gp_ops, "/metrics");
    let served = r#"carrow_statements_total{role="coordinator",outcome="ok"}"#;
    assert!(
        value(&gp_after, served) >= value(&gp_before, served) + 2.0,
        "{gp_after}"
    );

    // A node lost: readiness says which, and its gauge drops.
    let [acute, gp, council] = nodes;
    drop(council);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = get(coordinator_ops, "/health");
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("unreachable at the last refresh: council"),
        "{body}"
    );
    let (_, now) = get(coordinator_ops, "/metrics");
    assert_eq!(
        value(&now, r#"carrow_node_up{node="council"}"#),
        0.0,
        "{now}"
    );
    assert_eq!(get(coordinator_ops, "/nothing").0, 404);
    drop((acute, gp, coordinator));
}
