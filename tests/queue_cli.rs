//! `nova queue` and `nova serve` through the real binary.

mod common;

use common::Workspace;

#[test]
fn enqueue_list_get_cancel_retry_stats_in_process() {
    let ws = Workspace::new();
    let task = ws
        .run(&[
            "queue",
            "enqueue",
            "build",
            "--payload",
            "{\"a\":1}",
            "--meta",
            "team=core",
            "--priority",
            "5",
            "--json",
        ])
        .success()
        .json();
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["status"], "PENDING");
    assert_eq!(task["metadata"]["team"], "core");
    assert!(
        ws.home().join("nova.db").exists(),
        "the first write creates the store"
    );

    let again = ws
        .run(&[
            "queue",
            "enqueue",
            "build",
            "--idempotency-key",
            "k",
            "--json",
        ])
        .success()
        .json();
    let same = ws
        .run(&[
            "queue",
            "enqueue",
            "build",
            "--idempotency-key",
            "k",
            "--json",
        ])
        .success()
        .json();
    assert_eq!(again["id"], same["id"]);
    assert_eq!(same["existing"], true);

    let listed = ws.run(&["queue", "list", "--json"]).success().json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(
        ws.run(&["queue", "get", &id, "--json"]).success().json()["priority"],
        5
    );
    assert_eq!(
        ws.run(&["queue", "cancel", &id, "--json"]).success().json()["status"],
        "CANCELLED"
    );
    assert_eq!(
        ws.run(&["queue", "retry", &id, "--json"]).success().json()["status"],
        "PENDING"
    );
    let stats = ws.run(&["queue", "stats", "--json"]).success().json();
    assert_eq!(stats["counts"][0]["count"], 2);
}

#[test]
fn bad_queue_input() {
    let ws = Workspace::new();
    ws.run(&["queue", "enqueue", "x", "--payload", "{nope"])
        .code(2)
        .stderr_has("--payload: not valid JSON");
    ws.run(&["queue", "enqueue", "x", "--meta", "novalue"])
        .code(2)
        .stderr_has("--meta \"novalue\": expected KEY=VALUE");
    ws.run(&["queue", "enqueue", "", "--json"])
        .code(2)
        .stderr_has("type: must not be empty");
    ws.run(&["queue", "enqueue", "x", "--queue", "bad queue"])
        .code(2)
        .stderr_has("queue name");
    ws.run(&["queue", "list", "--status", "DONE"])
        .code(2)
        .stderr_has("valid statuses");
    ws.run(&["queue", "get", "missing"])
        .code(2)
        .stderr_has("task missing not found");
    ws.run(&["queue", "--store", "mysql://x", "stats"])
        .code(2)
        .stderr_has("expected sqlite:PATH or redis://");
}

#[test]
fn the_queue_refuses_a_store_that_is_not_sqlite() {
    let ws = Workspace::new();
    ws.write(".nova/nova.db", "plain text, not a database");
    ws.run(&["queue", "stats"])
        .code(2)
        .stderr_has("is not a SQLite database");
    assert_eq!(
        std::fs::read_to_string(ws.home().join("nova.db")).unwrap(),
        "plain text, not a database"
    );
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let ws = Workspace::new();
    ws.run(&["serve", "--listen", "0.0.0.0:0"])
        .code(2)
        .stderr_has("needs --token-file");
    ws.write("empty-token", "\n");
    ws.run(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        "empty-token",
    ])
    .code(2)
    .stderr_has("the file is empty");
}

#[test]
fn serve_answers_remote_clients_and_stops_on_sigterm() {
    let ws = Workspace::new();
    ws.write("token", "tok-123\n");
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0", "--token-file", "token"]);
    let url = announced["listening"].as_str().unwrap().to_string();

    ws.run(&["queue", "--server", &url, "stats"])
        .code(3)
        .stderr_has("bearer token");
    let task = ws
        .run(&[
            "queue",
            "--server",
            &url,
            "--token-file",
            "token",
            "enqueue",
            "remote",
            "--json",
        ])
        .success()
        .json();
    let listed = ws
        .run(&[
            "queue",
            "--server",
            &url,
            "--token-file",
            "token",
            "list",
            "--json",
        ])
        .success()
        .json();
    assert_eq!(listed[0]["id"], task["id"]);

    let pid = server.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "nova serve exited with {status:?} on SIGTERM"
    );
    // The JSON log file was flushed on the way out.
    let logs = log_lines(&ws);
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "server stopped"),
        "{logs:?}"
    );
}

/// `nova queue workers` lists a client that polls (as the original proto's
/// do) by the address it calls from, with what it cannot say marked
/// unknown, beside a `nova worker` process.
#[test]
fn queue_workers_lists_polling_clients() {
    let ws = Workspace::new();
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    ws.run(&["queue", "--server", &url, "workers"])
        .success()
        .stdout_has("no workers connected");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = nova::queue::client::connect(&url, None).await.unwrap();
        c.dequeue(nova::queue::proto::DequeueRequest {
            worker_id: "legacy-7".into(),
            queues: vec!["reports".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let text = ws.run(&["queue", "--server", &url, "workers"]).success();
    let row = text
        .stdout
        .lines()
        .find(|l| l.contains("127.0.0.1"))
        .unwrap_or_else(|| panic!("no row for the poller:\n{}", text.stdout));
    assert!(
        row.contains("reports") && row.contains("0/-") && row.contains(" - "),
        "{row}"
    );
    let listed = ws
        .run(&["queue", "--server", &url, "workers", "--json"])
        .success()
        .json();
    assert_eq!(listed[0]["worker_id"], "legacy-7");
    assert_eq!(listed[0]["pid"], 0);
    let _ = server.kill();
    let _ = server.wait();
}

/// Every JSON line in the workspace's log files.
fn log_lines(ws: &Workspace) -> Vec<serde_json::Value> {
    let dir = ws.home().join("logs");
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("nova.log."), "{name}");
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            lines.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
        }
    }
    lines
}

#[test]
fn a_failing_queue_command_leaves_its_error_in_the_log_file() {
    let ws = Workspace::new();
    ws.run(&["queue", "get", "no-such-task"])
        .code(2)
        .stderr_has("task no-such-task not found");
    let logs = log_lines(&ws);
    let failed = logs
        .iter()
        .find(|l| l["fields"]["message"] == "command failed")
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert_eq!(failed["fields"]["exit_code"], 2);
    assert_eq!(failed["level"], "INFO");
    // Views keep no log files.
    let fresh = Workspace::new();
    fresh.run(&["roadmap"]).success();
    assert!(fresh.files().is_empty(), "{:?}", fresh.files());
}

#[test]
fn the_queue_commands_work_on_redis() {
    let redis = common::redis_server::RedisServer::start();
    let ws = Workspace::new();
    ws.write("nova.yaml", &format!("store: {}\n", redis.url()));
    let task = ws
        .run(&["queue", "enqueue", "deploy", "--priority", "2", "--json"])
        .success()
        .json();
    assert_eq!(task["status"], "PENDING");
    let id = task["id"].as_str().unwrap();
    let got = ws.run(&["queue", "get", id, "--json"]).success().json();
    assert_eq!(got["type"], "deploy");
    ws.run(&["queue", "stats"])
        .success()
        .stdout_has("default  PENDING  1");
    assert!(
        !ws.home().join("nova.db").exists(),
        "a Redis store leaves no SQLite file behind"
    );
}

#[test]
fn a_bad_or_unreachable_redis_is_named() {
    let ws = Workspace::new();
    ws.run(&["queue", "--store", "redis://:::x", "stats"])
        .code(2)
        .stderr_has("bad Redis URL");
    // Port 1 on loopback: nothing listens there.
    ws.run(&["queue", "--store", "redis://127.0.0.1:1/0", "stats"])
        .code(1)
        .stderr_has("cannot connect to redis://127.0.0.1:1/0");
}

#[test]
fn ctrl_c_flushes_the_log_file() {
    // A "server" that accepts connections and never answers: the command waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let ws = Workspace::new();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("nova"))
        .args(["queue", "--server", &url, "stats"])
        .current_dir(ws.path())
        .env_remove("NOVA_HOME")
        .env("NOVA_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it is connected and waiting.
    let (_conn, _) = silent.accept().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "128 + SIGINT");
    let logs = log_lines(&ws);
    assert!(
        logs.iter().any(|l| l["fields"]["message"] == "interrupted"),
        "{logs:?}"
    );
}

#[test]
fn a_bad_or_unreachable_server_url_is_named() {
    let ws = Workspace::new();
    ws.run(&["queue", "--server", "ftp://x:1", "stats"])
        .code(2)
        .stderr_has("bad server URL \"ftp://x:1\"");
    ws.run(&["queue", "--server", "http://127.0.0.1:1", "stats"])
        .code(1)
        .stderr_has("cannot connect to http://127.0.0.1:1");
}

#[test]
fn purge_deletes_finished_tasks_from_the_store_and_is_audited() {
    let ws = Workspace::new();
    let mut ids = Vec::new();
    for queue in ["default", "default", "mail"] {
        let t = ws
            .run(&["queue", "enqueue", "job", "--queue", queue, "--json"])
            .success()
            .json();
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    ws.run(&["queue", "cancel", &ids[0]]).success();
    ws.run(&["queue", "cancel", &ids[2]]).success();

    ws.run(&["queue", "purge"])
        .code(2)
        .stderr_has("--older-than");
    ws.run(&["queue", "purge", "--older-than", "soon"]).code(2);
    ws.run(&["queue", "purge", "--older-than", "0s", "--queue", ""])
        .code(2)
        .stderr_has("--queue");
    ws.run(&[
        "queue",
        "purge",
        "--older-than",
        "0s",
        "--server",
        "http://127.0.0.1:1",
    ])
    .code(2)
    .stderr_has("works on the store");
    let kept = ws
        .run(&["queue", "purge", "--older-than", "1h", "--json"])
        .success()
        .json();
    assert_eq!(kept["deleted"], 0, "nothing finished an hour ago");

    let one = ws
        .run(&["queue", "purge", "--older-than", "0s", "--queue", "mail"])
        .success();
    assert!(
        one.stdout
            .contains("deleted 1 finished task from queue mail"),
        "{}",
        one.stdout
    );
    ws.run(&["queue", "get", &ids[2]]).code(2);
    let all = ws
        .run(&["queue", "purge", "--older-than", "0s", "--json"])
        .success()
        .json();
    assert_eq!(all["deleted"], 1);
    let left = ws.run(&["queue", "list", "--json"]).success().json();
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["id"], ids[1].as_str());
    let audit = ws
        .run(&["audit", "log", "--action", "queue.purge", "--json"])
        .success()
        .json();
    assert_eq!(audit.as_array().unwrap().len(), 3);
    assert_eq!(audit[1]["target"], "mail");
    assert_eq!(audit[1]["details"]["deleted"], 1);
}

#[test]
fn serve_keeps_finished_tasks_only_as_long_as_told() {
    let ws = Workspace::new();
    ws.run(&["serve", "--keep-finished", "forever"])
        .code(2)
        .stderr_has("--keep-finished");
    let done = ws
        .run(&["queue", "enqueue", "old", "--json"])
        .success()
        .json();
    ws.run(&["queue", "cancel", done["id"].as_str().unwrap()])
        .success();
    let waiting = ws
        .run(&["queue", "enqueue", "waiting", "--json"])
        .success()
        .json();
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0", "--keep-finished", "0s"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    // The first sweep runs as the server starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let listed = loop {
        let listed = ws
            .run(&["queue", "--server", &url, "list", "--json"])
            .success()
            .json();
        if listed.as_array().unwrap().len() == 1 || std::time::Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], waiting["id"], "the pending task stays");
}
