//! `nova bench queue` runs end to end on both stores and reports what it
//! measured. (Its figures are not checked against targets here: the test
//! machines are shared and noisy; see the README for measured figures.)

mod common;

use common::Workspace;
use common::redis_server::RedisServer;

fn check_report(report: &serde_json::Value, tasks: u64) {
    assert_eq!(report["tasks"], tasks);
    let runs = report["runs"].as_array().unwrap();
    let paths: Vec<&str> = runs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["grpc", "direct"]);
    for r in runs {
        for key in [
            "enqueue_per_second",
            "end_to_end_per_second",
            "total_seconds",
        ] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key} in {r}");
        }
        let p50 = r["latency_p50_ms"].as_f64().unwrap();
        let p99 = r["latency_p99_ms"].as_f64().unwrap();
        let max = r["latency_max_ms"].as_f64().unwrap();
        assert!(p50 <= p99 && p99 <= max, "{r}");
    }
}

#[test]
fn bench_queue_on_sqlite_reports_both_paths_and_leaves_nothing() {
    let ws = Workspace::new();
    let report = ws
        .run(&[
            "bench",
            "queue",
            "--tasks",
            "300",
            "--batch",
            "10",
            "--server-threads",
            "2",
            "--client-threads",
            "3",
            "--json",
        ])
        .success()
        .json();
    check_report(&report, 300);
    assert_eq!(report["server_threads"], 2);
    assert_eq!(report["client_threads"], 3);
    // What bounds a durable commit on this disk, measured beside the store.
    let fsync = report["fsync_p50_us"].as_f64().unwrap();
    assert!(fsync > 0.0, "{report}");
    assert_eq!(
        report["grpc_producers"], "unary",
        "batches are EnqueueBatch calls"
    );
    assert!(ws.files().is_empty(), "{:?}", ws.files());

    // Into a file it would create: fine; over an existing one: refused.
    ws.write("taken.db.grpc", "precious");
    ws.run(&[
        "bench",
        "queue",
        "--store",
        "sqlite:taken.db",
        "--tasks",
        "10",
    ])
    .code(2)
    .stderr_has("taken.db.grpc exists");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("taken.db.grpc")).unwrap(),
        "precious"
    );
}

#[test]
fn bench_queue_on_redis_cleans_up_its_keys() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let report = ws
        .run(&[
            "bench",
            "queue",
            "--store",
            &redis.url(),
            "--tasks",
            "300",
            "--json",
        ])
        .success()
        .json();
    check_report(&report, 300);
    assert!(
        report.get("fsync_p50_us").is_none(),
        "no disk of ours on Redis"
    );
    // One task per call: a stream for each producer and each worker.
    assert_eq!(report["grpc_producers"], "stream");
    assert_eq!(report["grpc_workers"], "stream");
    assert_eq!(report["quiet_acks"], false);
    // The clients take the CPUs the server's threads leave, at least one.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let server = report["server_threads"].as_u64().unwrap();
    assert_eq!(
        report["client_threads"].as_u64().unwrap(),
        cpus.saturating_sub(server).max(1)
    );
    // Workers whose applied acks are not answered still see every task
    // through (the run ends when their streams end, all acks applied).
    let quiet = ws
        .run(&[
            "bench",
            "queue",
            "--store",
            &redis.url(),
            "--tasks",
            "300",
            "--workers",
            "3",
            "--quiet-acks",
            "--json",
        ])
        .success()
        .json();
    check_report(&quiet, 300);
    assert_eq!(quiet["grpc_workers"], "stream");
    assert_eq!(quiet["quiet_acks"], true);
    // The benchmark's own keys are gone afterwards; the queue's are untouched.
    ws.run(&["queue", "--store", &redis.url(), "enqueue", "keep"])
        .success();
    ws.run(&["bench", "queue", "--store", &redis.url(), "--tasks", "50"])
        .success()
        .stdout_has("grpc");
    let listed = ws
        .run(&["queue", "--store", &redis.url(), "list", "--json"])
        .success()
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("nova:bench:*")
        .query(&mut con)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bench_queue_flags_are_checked() {
    let ws = Workspace::new();
    ws.run(&["bench", "queue", "--batch", "0"])
        .code(2)
        .stderr_has("--batch");
    ws.run(&["bench", "queue", "--tasks", "0"])
        .code(2)
        .stderr_has("--tasks");
    ws.run(&["bench", "queue", "--store", "postgres://x"])
        .code(2)
        .stderr_has("expected sqlite:PATH or redis://");
    // Tokio starts every thread asked for and aborts when one is refused.
    for flag in ["--server-threads", "--client-threads"] {
        for n in ["0", "1025", "1000000"] {
            ws.run(&["bench", "queue", flag, n])
                .code(2)
                .stderr_has(flag)
                .stderr_has("from 1 to 1024");
        }
    }
    ws.run(&["serve", "--threads", "1000000"])
        .code(2)
        .stderr_has("--threads")
        .stderr_has("from 1 to 1024");
    ws.run(&["bench", "queue", "--quiet-acks", "--unary"])
        .code(2)
        .stderr_has("--quiet-acks");
    ws.run(&["serve", "--threads", "none"])
        .code(2)
        .stderr_has("--threads");
    for rounds in ["0", "51", "many"] {
        ws.run(&["bench", "orchestrate", "--rounds", rounds])
            .code(2)
            .stderr_has("--rounds");
    }
    assert!(ws.files().is_empty(), "{:?}", ws.files());
}

#[test]
fn bench_kpi_reports_the_cost_per_call() {
    let ws = Workspace::new();
    let rows = ws
        .run(&[
            "bench",
            "kpi",
            "--calls",
            "1000",
            "--threads",
            "3",
            "--json",
        ])
        .success()
        .json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|r| r["ns_per_call"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(rows[5]["threads"], 3);
    ws.run(&["bench", "kpi", "--calls", "0"]).code(2);
}

#[test]
fn bench_policy_and_audit_report_their_figures() {
    let ws = Workspace::new();
    let rows = ws
        .run(&["bench", "policy", "--decisions", "200", "--json"])
        .success()
        .json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["p50_us"].as_f64().unwrap() > 0.0));
    let audit = ws
        .run(&["bench", "audit", "--records", "50", "--json"])
        .success()
        .json();
    assert_eq!(audit["records"], 50);
    assert!(ws.files().is_empty(), "{:?}", ws.files());
}

#[test]
fn bench_orchestrate_compares_with_xargs() {
    let ws = Workspace::new();
    let report = ws
        .run(&[
            "bench",
            "orchestrate",
            "--tasks",
            "20",
            "--jobs",
            "2",
            "--rounds",
            "2",
            "--json",
        ])
        .success()
        .json();
    assert_eq!(report["tasks"], 20);
    assert_eq!(report["rounds"], 2);
    let per_round = report["ratio_per_round"].as_array().unwrap();
    assert_eq!(per_round.len(), 2, "{report}");
    assert!(
        per_round.iter().all(|r| r.as_f64().unwrap() > 0.0),
        "{report}"
    );
    for key in ["nova_seconds", "xargs_seconds", "ratio"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert!(report["nova_peak_rss_bytes"].as_u64().unwrap() > 1_000_000);
    // GNU parallel is the second reference wherever it is installed
    // (scripts/test installs it).
    let gnu_parallel = std::process::Command::new("parallel")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU parallel"));
    if gnu_parallel {
        assert!(
            report["parallel_seconds"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        assert!(
            report["parallel_over_nova"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    } else {
        assert!(report["parallel_seconds"].is_null(), "{report}");
    }
    assert!(ws.files().is_empty(), "{:?}", ws.files());
}
