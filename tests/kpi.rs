//! KPIs: `nova serve --metrics` serves them in the Prometheus text format,
//! saves a snapshot when it stops, and `nova kpi` shows it.

mod common;

use std::io::{Read, Write};

use common::Workspace;

fn http_get(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn serve_exposes_metrics_and_leaves_a_snapshot_for_nova_kpi() {
    let ws = Workspace::new();
    ws.run(&["kpi"])
        .success()
        .stdout_has("no KPIs recorded yet");
    assert!(ws.files().is_empty(), "nova kpi creates nothing");

    let (mut server, announced) =
        ws.serve(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap();
    let metrics = announced["metrics"].as_str().unwrap();

    for kind in ["a", "b"] {
        ws.run(&["queue", "--server", url, "enqueue", kind])
            .success();
    }
    let (head, body) = http_get(metrics);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("nova_queue_tasks_enqueued_total 2\n"),
        "{body}"
    );
    assert!(
        body.contains("nova_queue_grpc_enqueue_seconds_count 2\n"),
        "{body}"
    );
    assert!(
        body.contains("nova_queue_tasks{queue=\"default\",status=\"PENDING\"} 2\n"),
        "{body}"
    );
    let (head, _) = http_get(&metrics.replace("/metrics", "/nope"));
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let pid = server.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());

    let kpis = ws.run(&["kpi", "--json"]).success().json();
    let serve = kpis
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "serve")
        .unwrap_or_else(|| panic!("{kpis}"));
    let counters = serve["snapshot"]["counters"].as_array().unwrap();
    assert!(
        counters.contains(&serde_json::json!(["queue.tasks.enqueued", 2])),
        "{counters:?}"
    );
    let enqueue = serve["snapshot"]["histograms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "queue.grpc.enqueue")
        .unwrap();
    assert_eq!(enqueue["count"], 2);
    assert!(enqueue["p50_ns"].as_u64().unwrap() <= enqueue["max_ns"].as_u64().unwrap());
    ws.run(&["kpi"]).success().stdout_has("queue.grpc.enqueue");
}

#[test]
fn a_busy_metrics_address_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let ws = Workspace::new();
    ws.run(&["serve", "--listen", "127.0.0.1:0", "--metrics", &addr])
        .code(1)
        .stderr_has("--metrics: cannot listen on");
    ws.run(&["serve", "--metrics", "not-an-address"])
        .code(2)
        .stderr_has("--metrics");
}
