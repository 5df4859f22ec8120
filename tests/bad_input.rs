//! The contract on bad input (issue 12): files nova is pointed at that are
//! not what they should be, each refused with its name and exit 2, nothing
//! hanging, nothing stored harmed. Each test names the case that broke it.

mod common;

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::Workspace;

fn blueprint(tasks: usize) -> String {
    let mut text =
        String::from("name: big\nrole: implementation\nphase: build\nplan: delivery\ntasks:\n");
    for i in 0..tasks {
        text.push_str(&format!(
            "  - id: t{i}\n    title: task {i}\n    check: [\"true\"]\n"
        ));
    }
    text
}

// One blueprint of 16k tasks took 14.6 s to check (each task's line was
// found by rescanning the file); an agent now holds at most 1,000 tasks.
#[test]
fn a_blueprint_is_bounded_and_checked_without_rescanning() {
    let ws = Workspace::new();
    ws.write("blueprints/big.yaml", &blueprint(1_000));
    ws.run(&["blueprints", "validate"]).success();
    ws.write("blueprints/big.yaml", &blueprint(1_001));
    ws.run(&["blueprints", "validate"])
        .code(2)
        .stderr_has("big.yaml:5: field `tasks`: 1001 tasks: an agent holds at most 1000");
    // Past the size limit, the file is not read at all.
    ws.write("blueprints/big.yaml", &"#".repeat(2 * 1024 * 1024));
    ws.run(&["plan"])
        .code(2)
        .stderr_has("big.yaml: 2.0 MiB is more than the 1.0 MiB nova reads from such a file");
}

// `ln -s /dev/zero blueprints/z.yaml; nova plan` grew to 7 GB; a FIFO hung for ever.
#[test]
fn devices_fifos_and_folders_in_a_files_place_are_refused_at_once() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("blueprints")).unwrap();
    let started = Instant::now();
    symlink("/dev/zero", ws.path().join("blueprints/z.yaml")).unwrap();
    ws.run(&["plan"])
        .code(2)
        .stderr_has("z.yaml: not a regular file (a device)");
    std::fs::remove_file(ws.path().join("blueprints/z.yaml")).unwrap();
    mkfifo(&ws.path().join("blueprints/f.yaml"));
    ws.run(&["plan"])
        .code(2)
        .stderr_has("f.yaml: not a regular file (a FIFO)");
    std::fs::remove_file(ws.path().join("blueprints/f.yaml")).unwrap();
    std::fs::create_dir_all(ws.home()).unwrap();
    mkfifo(&ws.home().join("nova.db"));
    ws.run(&["tasks"])
        .code(2)
        .stderr_has("nova.db is not a regular file (a FIFO)");
    std::fs::remove_file(ws.home().join("nova.db")).unwrap();
    std::fs::create_dir(ws.home().join("nova.db")).unwrap();
    ws.run(&["tasks"])
        .code(2)
        .stderr_has("nova.db is not a regular file (a folder)");
    std::fs::remove_dir(ws.home().join("nova.db")).unwrap();
    std::fs::create_dir(ws.path().join("nova.yaml")).unwrap();
    ws.run(&["plan"])
        .code(2)
        .stderr_has("nova.yaml: not a regular file (a folder)");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "nothing waited"
    );
}

fn mkfifo(path: &std::path::Path) {
    assert!(
        std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

// Each of these exited 1 ("the job failed") where the contract says 2.
#[test]
fn unreadable_inputs_exit_2_with_their_name() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("blueprints")).unwrap();
    std::fs::write(ws.path().join("blueprints/bad.yaml"), b"name: caf\xe9\n").unwrap();
    ws.run(&["plan"])
        .code(2)
        .stderr_has("bad.yaml: not UTF-8 text (byte 9 is not valid UTF-8)");
    std::fs::remove_file(ws.path().join("blueprints/bad.yaml")).unwrap();
    symlink("loop.yaml", ws.path().join("blueprints/loop.yaml")).unwrap();
    ws.run(&["plan"])
        .code(2)
        .stderr_has("loop.yaml: a symbolic link that leads back to itself");
    std::fs::remove_file(ws.path().join("blueprints/loop.yaml")).unwrap();
    symlink("nowhere.yaml", ws.path().join("blueprints/dangling.yaml")).unwrap();
    ws.run(&["plan"])
        .code(2)
        .stderr_has("dangling.yaml: no such file");
    std::fs::remove_file(ws.path().join("blueprints/dangling.yaml")).unwrap();
    std::fs::write(ws.path().join("nova.yaml"), b"plan: \xff\n").unwrap();
    ws.run(&["plan"])
        .code(2)
        .stderr_has("nova.yaml: not UTF-8 text");
    std::fs::remove_file(ws.path().join("nova.yaml")).unwrap();
    std::fs::write(ws.path().join("input.json"), b"{\"a\": \"\xff\"}").unwrap();
    ws.run(&["policy", "eval", "--input", "input.json"])
        .code(2)
        .stderr_has("input.json: not UTF-8 text");
    ws.run(&["policy", "eval", "--input", "missing.json"])
        .code(2)
        .stderr_has("missing.json: no such file");
    ws.run(&[
        "queue",
        "--server",
        "http://127.0.0.1:1",
        "--token-file",
        "missing-token",
        "stats",
    ])
    .code(2)
    .stderr_has("missing-token: no such file");
    ws.write("home-file", "");
    let out = ws
        .std_command()
        .env("NOVA_HOME", ws.path().join("home-file"))
        .args(["tasks"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a file, not a folder"));
}

// A truncated nova.db said "database disk image is malformed" with exit 1.
#[test]
fn a_damaged_database_is_bad_input_and_stays_as_it_was() {
    let ws = Workspace::new();
    ws.run(&["queue", "enqueue", "a", "--payload", "{}"])
        .success();
    let db = ws.home().join("nova.db");
    let whole = std::fs::read(&db).unwrap();
    std::fs::write(&db, &whole[..whole.len().min(5_000)]).unwrap();
    let before = std::fs::read(&db).unwrap();
    ws.run(&["queue", "stats"])
        .code(2)
        .stderr_has("nova.db: database disk image is malformed");
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file is untouched");
}

// A byte-order mark in front of a blueprint read as "missing field role";
// NOVA_HOME="" said "a value is required for '--home <DIR>'".
#[test]
fn a_byte_order_mark_and_an_empty_nova_home_are_taken_as_meant() {
    let ws = Workspace::new();
    ws.write(
        "blueprints/bom.yaml",
        "\u{feff}name: bom\nrole: implementation\nphase: build\nplan: delivery\ntasks:\n  - id: a\n    title: a\n    check: [\"true\"]\n",
    );
    ws.run(&["blueprints", "show", "bom"]).success();
    let out = ws
        .std_command()
        .env("NOVA_HOME", "")
        .args(["tasks", "--agent", "bom"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

// After `nova queue enqueue` (and most commands) nova.db-wal and nova.db-shm
// stayed behind, and nova.db alone lacked the last writes.
#[test]
fn every_command_leaves_the_database_whole_in_one_file() {
    let ws = Workspace::new();
    let sides = || {
        ["nova.db-wal", "nova.db-shm"]
            .into_iter()
            .filter(|s| ws.home().join(s).exists())
            .collect::<Vec<_>>()
    };
    for args in [
        &["queue", "enqueue", "a", "--payload", "{}"][..],
        &["queue", "stats"],
        &["runs"],
        &["tasks"],
        &["audit", "verify"],
        &["kpi"],
    ] {
        ws.run(args).success();
        assert!(sides().is_empty(), "after nova {args:?}: {:?}", sides());
    }
    // nova.db alone (what a person copies) holds the task.
    let copy = ws.path().join("copy.db");
    std::fs::copy(ws.home().join("nova.db"), &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let tasks: i64 = conn
        .query_row("SELECT COUNT(*) FROM queue_tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tasks, 1);
}

// `nova queue --store sqlite:/nonexistent/dir/x.db stats` exited 0 after
// making the folders and a database; `sqlite::memory:` made a file named
// `:memory:`; an error in NOVA_STORE or nova.yaml was blamed on --store.
#[test]
fn a_mistyped_store_path_makes_nothing_and_errors_name_where_the_store_came_from() {
    let ws = Workspace::new();
    let missing = ws.path().join("no/such/dir/x.db");
    let store = format!("sqlite:{}", missing.display());
    ws.run(&["queue", "--store", &store, "stats"])
        .code(2)
        .stderr_has("there is no database at")
        .stderr_has("--create makes one");
    assert!(!ws.path().join("no").exists(), "no folder was made");
    // A backup takes --store (to find the audit log) but has no --create to suggest.
    let out = ws.run(&["backup", "--to", "bk", "--store", &store]).code(2);
    assert!(
        out.stderr.contains("there is no database at") && !out.stderr.contains("--create"),
        "{}",
        out.stderr
    );
    assert!(!ws.path().join("bk").exists(), "no backup folder was made");
    // A restore records itself in the store at its end: a malformed one is
    // named before anything is restored.
    let out: common::Outcome = ws
        .std_command()
        .env("NOVA_STORE", "garbage")
        .args(["restore", "some-id", "--from", "bk", "--to", "restored"])
        .output()
        .unwrap()
        .into();
    out.code(2).stderr_has("NOVA_STORE \"garbage\"");
    assert!(!ws.path().join("restored").exists());
    ws.run(&["queue", "--store", "sqlite::memory:", "stats"])
        .code(2)
        .stderr_has("an in-memory database would lose everything");
    let made: Vec<String> = ws
        .files()
        .into_iter()
        .filter(|f| !f.starts_with(".nova"))
        .collect();
    assert!(made.is_empty(), "{made:?}");
    ws.run(&["queue", "--store", &store, "--create", "stats"])
        .success();
    assert!(missing.exists());

    let out = ws
        .std_command()
        .env("NOVA_STORE", "bogus")
        .args(["queue", "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOVA_STORE \"bogus\": expected sqlite:PATH"),
        "{out:?}"
    );
    ws.write("nova.yaml", "store: bogus\n");
    ws.run(&["queue", "stats"])
        .code(2)
        .stderr_has("nova.yaml store \"bogus\": expected sqlite:PATH");
}

// An existing SQLite database of another program silently got nova's tables;
// `min_disk_free: lots` said "expected parsable string".
#[test]
fn another_programs_database_is_left_alone_and_sizes_say_what_they_expect() {
    let ws = Workspace::new();
    let other = ws.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE users (id INTEGER)")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&other).unwrap();
    ws.run(&["queue", "--store", "sqlite:other.db", "stats"])
        .code(2)
        .stderr_has("other.db is another program's SQLite database (it has tables users");
    assert_eq!(std::fs::read(&other).unwrap(), before, "untouched");
    ws.write("nova.yaml", "service_user: \"Bad User\"\n");
    ws.run(&["plan"])
        .code(2)
        .stderr_has("field `service_user`: \"Bad User\" is not a user name");
    ws.write("nova.yaml", "setup:\n  min_disk_free: lots\n");
    ws.run(&["setup"])
        .code(2)
        .stderr_has("\"lots\", expected a size such as 5GiB");
}

// Two `nova policy eval --input` of 10 MB each grew the database by 20 MB,
// and the audit log is never pruned.
#[test]
fn the_audit_log_keeps_a_bounded_digest_of_a_large_policy_input() {
    let ws = Workspace::new();
    let blob = "y".repeat(900 * 1024);
    ws.write(
        "input.json",
        &serde_json::json!({
            "subject": {"agent": "me", "role": "operator"},
            "action": "run",
            "resource": "x",
            "context": {"blob": blob},
        })
        .to_string(),
    );
    ws.run(&["policy", "eval", "--input", "input.json"])
        .success();
    ws.run(&["policy", "eval", "--input", "input.json"])
        .success();
    let size = std::fs::metadata(ws.home().join("nova.db")).unwrap().len();
    assert!(size < 512 * 1024, "the database grew to {size} bytes");
    let records = ws
        .run(&["audit", "log", "--action", "policy.decision", "--json"])
        .success()
        .json();
    let input = &records[0]["details"]["input"];
    assert_eq!(input["action"], "run");
    assert_eq!(input["context_keys"][0], "blob");
    assert!(
        input["digest"]["bytes"].as_u64().unwrap() > 900 * 1024,
        "{input}"
    );
    assert_eq!(input["digest"]["sha256"].as_str().unwrap().len(), 64);
    ws.run(&["audit", "verify"]).success();
    // Past the input limit, nothing is evaluated or recorded.
    ws.write(
        "huge.json",
        &format!("{{\"a\": \"{}\"}}", "z".repeat(2 * 1024 * 1024)),
    );
    ws.run(&["policy", "eval", "--input", "huge.json"])
        .code(2)
        .stderr_has("huge.json: 2.0 MiB is more than the 1.0 MiB nova reads from such a file");
}

// With the audit log unwritable, actions went ahead and only a WARN said
// their records were lost. A real SQLite failure stands in for it here: a
// trigger that aborts every insert into the audit log.
#[test]
fn what_cannot_be_audited_is_not_done() {
    let ws = Workspace::new();
    ws.run(&["queue", "enqueue", "first", "--payload", "{}"])
        .success();
    let conn = rusqlite::Connection::open(ws.home().join("nova.db")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit writes are blocked'); END;",
    )
    .unwrap();
    drop(conn);
    ws.run(&["queue", "enqueue", "second", "--payload", "{}"])
        .code(1)
        .stderr_has("was not done: its policy decision could not be recorded in the audit log")
        .stderr_has("audit writes are blocked");
    let tasks = ws.run(&["queue", "list", "--json"]).success().json();
    assert_eq!(
        tasks.as_array().unwrap().len(),
        1,
        "nothing enqueued: {tasks}"
    );

    ws.write(
        "blueprints/marker.yaml",
        "name: marker\nrole: implementation\nphase: build\nplan: delivery\ntasks:\n  - id: touch\n    title: leaves a mark\n    run: [touch, ran]\n",
    );
    let out = ws.run(&[
        "orchestrate",
        "--agents",
        "marker",
        "--only",
        "--apply",
        "--json",
    ]);
    assert_ne!(out.code, 0);
    assert!(!ws.path().join("ran").exists(), "the task ran unaudited");

    // Evaluating changes nothing: it is answered, and says nothing was recorded.
    ws.write(
        "input.json",
        "{\"subject\": {\"agent\": \"me\", \"role\": \"operator\"}, \"action\": \"run\", \"resource\": \"x\"}",
    );
    ws.run(&["policy", "eval", "--input", "input.json"])
        .success()
        .stderr_has("note: this decision was not recorded in the audit log");
}

// An error in nova.yaml's opa_url or in NOVA_OPA_URL was blamed on --opa-url.
#[test]
fn an_opa_url_error_names_where_the_url_came_from() {
    let ws = Workspace::new();
    ws.write("input.json", "{\"action\": \"run\"}");
    ws.write("nova.yaml", "opa_url: ftp://x\n");
    ws.run(&["policy", "eval", "--input", "input.json"])
        .code(2)
        .stderr_has("nova.yaml opa_url: bad OPA URL \"ftp://x\"");
    std::fs::remove_file(ws.path().join("nova.yaml")).unwrap();
    let out = ws
        .std_command()
        .env("NOVA_OPA_URL", "nope")
        .args(["policy", "eval", "--input", "input.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOVA_OPA_URL: bad OPA URL \"nope\""));
    ws.run(&[
        "--opa-url",
        "nope",
        "policy",
        "eval",
        "--input",
        "input.json",
    ])
    .code(2)
    .stderr_has("--opa-url: bad OPA URL");
}

// The CLI side of listing a queue over one answer's size: it pages.
#[test]
fn nova_queue_list_pages_through_a_queue_bigger_than_one_answer() {
    use nova::queue::proto::task_queue_server::TaskQueue;
    let ws = Workspace::new();
    ws.run(&["queue", "stats"]).success();
    let backend = nova::queue::sqlite::SqliteQueue::open(&ws.home().join("nova.db")).unwrap();
    let service = nova::queue::service::QueueService::new(std::sync::Arc::new(backend));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in 0..20 {
        rt.block_on(
            service.enqueue(tonic::Request::new(nova::queue::proto::EnqueueRequest {
                r#type: format!("big-{i}"),
                payload: format!("\"{}\"", "x".repeat(1_000_000)),
                ..Default::default()
            })),
        )
        .unwrap();
    }
    drop(service);
    drop(rt);
    let listed = ws.run(&["queue", "list", "--json"]).success().json();
    assert_eq!(listed.as_array().unwrap().len(), 20);
    let some = ws
        .run(&["queue", "list", "--limit", "15", "--json"])
        .success()
        .json();
    assert_eq!(some.as_array().unwrap().len(), 15);
}

// With nova.db read-only, commands went ahead and only a WARN said their
// audit records were lost; read-only views must still work there.
#[test]
fn a_read_only_workspace_can_be_read_and_says_what_was_not_recorded() {
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !nix::unistd::Uid::effective().is_root() || !setpriv.exists() {
        eprintln!("skipped: needs root and setpriv to act as a user who may not write");
        return;
    }
    let ws = Workspace::new();
    ws.run(&["queue", "enqueue", "a", "--payload", "{}"])
        .success();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |args: &[&str]| {
        let out = std::process::Command::new(setpriv)
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(assert_cmd::cargo::cargo_bin("nova"))
            .args(args)
            .current_dir(ws.path())
            .env_remove("NOVA_HOME")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    if nobody(&["--version"]).0 != Some(0) {
        eprintln!("skipped: the user nobody cannot run this build of nova");
        return;
    }
    let before = std::fs::read(ws.home().join("nova.db")).unwrap();
    for args in [&["tasks"][..], &["runs"], &["audit", "log"], &["kpi"]] {
        let (code, stdout, stderr) = nobody(args);
        assert_eq!(code, Some(0), "nova {args:?}: {stdout}{stderr}");
    }
    let (code, stdout, stderr) = nobody(&["audit", "verify"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("audit chain holds"), "{stdout}");
    assert!(
        stderr.contains("note: nothing this command did was recorded in the audit log"),
        "{stderr}"
    );
    let (code, _, stderr) = nobody(&["queue", "enqueue", "b", "--payload", "{}"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nova.db"), "the file is named: {stderr}");
    assert_eq!(
        std::fs::read(ws.home().join("nova.db")).unwrap(),
        before,
        "nothing changed"
    );
}

#[test]
fn dashboard_and_run_control_flags_are_checked_and_change_nothing() {
    let ws = Workspace::new();
    // Off loopback, the dashboard needs a token; nothing is served or created.
    ws.run(&["dashboard", "--listen", "0.0.0.0:0"])
        .code(2)
        .stderr_has("--listen 0.0.0.0:0")
        .stderr_has("--token-file");
    ws.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "192.0.2.1:0",
        "--insecure",
    ])
    .code(2)
    .stderr_has("--http 192.0.2.1:0");
    // A run id that is not one, and a run that does not exist.
    ws.run(&["orchestrate", "--run-id", "../etc", "--agents", "planner"])
        .code(2)
        .stderr_has("--run-id");
    ws.run(&["runs", "cancel", "no-such-run"])
        .code(2)
        .stderr_has("no-such-run");
    assert!(!ws.home().join("runs").exists(), "nothing was started");
    // A finished run is not cancelled.
    ws.run(&["orchestrate", "--agents", "planner", "--only"]);
    let runs = ws.run(&["runs", "--json"]).success().json();
    let id = runs[0]["id"].as_str().unwrap().to_string();
    ws.run(&["runs", "cancel", &id])
        .code(2)
        .stderr_has("nothing to cancel");
    let after = ws.run(&["runs", "--json"]).success().json();
    assert_eq!(
        after[0]["status"], runs[0]["status"],
        "the stored run is unchanged"
    );
    // A queue name that is not one.
    ws.run(&["queue", "pause", "bad name"])
        .code(2)
        .stderr_has("queue name");
}

/// `resources.gpus` is a count: anything else stops the run before it
/// starts, with the file, line and field, and records no run.
#[test]
fn a_gpu_count_that_is_not_one_is_refused_with_its_place() {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "plan: workspace\nphases:\n  - name: one\n    goal: first\n",
    );
    for (value, said) in [("-1", "integer `-1`"), ("lots", "string \"lots\"")] {
        ws.write(
            "blueprints/trainer.yaml",
            &format!("name: trainer\nrole: implementation\nphase: one\nresources:\n  gpus: {value}\ntasks:\n  - id: train\n    title: trains\n    run: [touch, trained]\n"),
        );
        ws.run(&["orchestrate", "--apply"])
            .code(2)
            .stderr_has("blueprints/trainer.yaml:5:9: field `resources.gpus`")
            .stderr_has(said);
        assert!(!ws.path().join("trained").exists());
    }
    assert!(!ws.home().join("runs").exists(), "no run was recorded");
}
