//! `nova backup` and `nova restore` against a folder target: a restored
//! workspace matches the original, objects are written once, and damage is
//! named and refused.

mod common;

use common::{Outcome, Workspace};

fn target(ws: &Workspace) -> String {
    ws.path().join("backups").display().to_string()
}

/// `nova args` run in `dir` (a restored workspace), its stdout as JSON when asked.
fn run_in(ws: &Workspace, dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = ws
        .std_command()
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `nova restore ID --from TARGET --to INTO`.
fn restore(ws: &Workspace, id: &str, into: &std::path::Path) -> Outcome {
    ws.run(&[
        "restore",
        id,
        "--from",
        &target(ws),
        "--to",
        into.to_str().unwrap(),
    ])
}

/// The manifest of backup `id` as stored in the target.
fn stored_manifest(ws: &Workspace, id: &str) -> serde_json::Value {
    let file = ws.path().join(format!("backups/backups/{id}.json"));
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

fn newest(ws: &Workspace) -> String {
    let list = ws
        .run(&["backup", "list", "--to", &target(ws), "--json"])
        .success()
        .json();
    let all = list.as_array().expect("a list");
    all.last().expect("a backup")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// How many backups `nova backup list` shows in `to`.
fn listed(ws: &Workspace, to: &str) -> usize {
    ws.run(&["backup", "list", "--to", to, "--json"])
        .success()
        .json()
        .as_array()
        .unwrap()
        .len()
}

fn busy_workspace() -> Workspace {
    Workspace::with_history()
}

#[test]
fn a_restored_workspace_matches_the_original() {
    let ws = busy_workspace();
    let to = target(&ws);
    let first = ws.run(&["backup", "--to", &to, "--json"]).success().json();
    let files: Vec<&str> = first["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for expected in [".nova/nova.db", "nova.yaml", "policies/extra.rego"] {
        assert!(
            files.contains(&expected),
            "{expected} missing from {files:?}"
        );
    }
    let id = first["manifest"]["id"].as_str().unwrap().to_string();
    assert!(first["manifest"]["audit_head"]["seq"].as_u64().unwrap() >= 3);

    ws.run(&["backup", "verify", &id, "--to", &to])
        .success()
        .stdout_has("match their hashes");

    let restored_dir = ws.path().join("restored");
    restore(&ws, &id, &restored_dir)
        .success()
        .stdout_has("audit chain of");
    let original = ws.run(&["queue", "list", "--json"]).success().json();
    let (code, listed) = run_in(&ws, &restored_dir, &["queue", "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        original,
        serde_json::from_str::<serde_json::Value>(&listed).unwrap()
    );
    assert_eq!(original.as_array().map(Vec::len), Some(3), "{original}");
    assert_eq!(
        std::fs::read_to_string(restored_dir.join("policies/extra.rego")).unwrap(),
        "package extra\n"
    );
    // The restore is recorded in the restored workspace, after the backup's head.
    let (code, verified) = run_in(&ws, &restored_dir, &["audit", "verify"]);
    assert_eq!(code, 0, "{verified}");
    assert!(verified.contains("audit chain holds"), "{verified}");

    // Into a folder that is not empty: refused, nothing changed.
    restore(&ws, &id, &restored_dir)
        .code(2)
        .stderr_has("not empty");
}

#[test]
fn a_second_backup_writes_only_what_changed() {
    let ws = busy_workspace();
    let to = target(&ws);
    let first = ws.run(&["backup", "--to", &to, "--json"]).success().json();
    let second = ws.run(&["backup", "--to", &to, "--json"]).success().json();
    let first_objects = first["uploaded_objects"].as_u64().unwrap();
    // Only the database (holding the first backup's audit record) and the manifest.
    assert!(first_objects >= 4, "{first}");
    assert_eq!(second["uploaded_objects"].as_u64().unwrap(), 2, "{second}");
    let list = ws
        .run(&["backup", "list", "--to", &to, "--json"])
        .success()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[test]
fn a_changed_object_is_named_by_verify_and_refused_by_restore() {
    let ws = busy_workspace();
    let to = target(&ws);
    ws.run(&["backup", "--to", &to]).success();
    let id = newest(&ws);
    let manifest = stored_manifest(&ws, &id);
    let policy = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "policies/extra.rego")
        .unwrap();
    let sha = policy["sha256"].as_str().unwrap();
    let object = ws
        .path()
        .join(format!("backups/objects/{}/{sha}", &sha[..2]));
    std::fs::write(&object, "package evil\n").unwrap();

    ws.run(&["backup", "verify", &id, "--to", &to])
        .code(1)
        .stderr_has("policies/extra.rego")
        .stderr_has("SHA-256");
    let into = ws.path().join("restored");
    restore(&ws, &id, &into)
        .code(1)
        .stderr_has("nothing was restored");
    assert!(!into.exists(), "a damaged backup left files behind");
}

#[test]
fn bad_targets_and_ids_are_refused() {
    let ws = busy_workspace();
    ws.run(&["backup"]).code(2).stderr_has("no backup target");
    ws.run(&["backup", "--to", "gopher://somewhere"])
        .code(2)
        .stderr_has("gopher://");
    let to = target(&ws);
    ws.run(&["backup", "--to", &to]).success();
    ws.run(&["restore", "../../etc", "--from", &to, "--to", "x"])
        .code(2)
        .stderr_has("ids are letters");
    ws.run(&[
        "restore",
        "20000101T000000Z-0000",
        "--from",
        &to,
        "--to",
        "x",
    ])
    .code(2)
    .stderr_has("no backup 20000101T000000Z-0000");
    // A manifest that is not one is named.
    std::fs::write(ws.path().join("backups/backups/junk.json"), "{").unwrap();
    ws.run(&["backup", "list", "--to", &to])
        .code(1)
        .stderr_has("backups/junk.json");
}

#[test]
fn a_missing_target_folder_is_named_not_created() {
    let ws = busy_workspace();
    let missing = ws.path().join("no-such-backups");
    let missing_str = missing.to_str().unwrap();
    ws.run(&["backup", "list", "--to", missing_str])
        .code(2)
        .stderr_has("there is no backup folder");
    ws.run(&["backup", "verify", "--to", missing_str]).code(2);
    ws.run(&[
        "restore",
        "20000101T000000Z-0000",
        "--from",
        missing_str,
        "--to",
        "x",
    ])
    .code(2)
    .stderr_has(missing_str);
    assert!(!missing.exists(), "a read of a missing target created it");
}

#[test]
fn a_manifest_with_an_unsafe_path_restores_nothing() {
    let ws = busy_workspace();
    ws.run(&["backup", "--to", &target(&ws)]).success();
    let id = newest(&ws);
    let mut manifest = stored_manifest(&ws, &id);
    manifest["files"][0]["path"] = "../outside".into();
    std::fs::write(
        ws.path().join(format!("backups/backups/{id}.json")),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let into = ws.path().join("restored");
    restore(&ws, &id, &into)
        .code(1)
        .stderr_has("../outside")
        .stderr_has("unsafe path");
    assert!(!into.exists());
    assert!(!ws.path().join("outside").exists());
}

#[test]
fn a_bad_backup_section_in_nova_yaml_is_named() {
    let ws = busy_workspace();
    ws.write("nova.yaml", "backup:\n  destination: /tmp/x\n");
    ws.run(&["backup"])
        .code(2)
        .stderr_has("nova.yaml")
        .stderr_has("destination");
}

fn audit_db(ws: &Workspace) -> rusqlite::Connection {
    rusqlite::Connection::open(ws.home().join("nova.db")).unwrap()
}

#[test]
fn a_chain_rewritten_or_cut_after_a_backup_passes_alone_but_fails_against_the_checkpoints() {
    let ws = busy_workspace();
    let to = target(&ws);
    let taken = ws.run(&["backup", "--to", &to, "--json"]).success().json();
    let pinned = taken["manifest"]["audit_head"]["seq"].as_u64().unwrap();
    assert!(
        taken["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("checkpoints/")
    );
    let note = std::fs::read_to_string(
        ws.path()
            .join("backups")
            .join(taken["checkpoint"].as_str().unwrap()),
    )
    .unwrap();
    assert!(note.starts_with("nova-audit/"), "{note}");
    assert!(note.contains(&format!("\n{pinned}\n")), "{note}");
    ws.run(&["audit", "verify", "--checkpoints", &to])
        .success()
        .stdout_has("the 1 checkpoint in");

    // A forger rewrites record 2 and re-seals every record after it: the
    // chain is consistent again.
    let conn = audit_db(&ws);
    let mut records: Vec<nova::audit::Record> = conn
        .prepare("SELECT seq, at, actor, action, target, outcome, details, controls, prev_hash, hash FROM audit_log ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok(nova::audit::Record {
                seq: r.get::<_, i64>(0)? as u64,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                outcome: r.get(5)?,
                details: serde_json::from_str(&r.get::<_, String>(6)?).unwrap(),
                controls: serde_json::from_str(&r.get::<_, String>(7)?).unwrap(),
                prev_hash: r.get(8)?,
                hash: r.get(9)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    records[1].actor = "someone-else".into();
    for i in 1..records.len() {
        records[i].prev_hash = records[i - 1].hash.clone();
        records[i].hash = records[i].expected_hash();
        conn.execute(
            "UPDATE audit_log SET actor = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![
                records[i].actor,
                records[i].prev_hash,
                records[i].hash,
                records[i].seq as i64
            ],
        )
        .unwrap();
    }
    drop(conn);
    ws.run(&["audit", "verify"])
        .success()
        .stdout_has("audit chain holds");
    ws.run(&["audit", "verify", "--checkpoints", &to])
        .code(1)
        .stderr_has("holds by itself")
        .stderr_has(&format!("record {pinned} has hash"))
        .stderr_has("rewritten");

    // Cut short instead: the records from the pinned one on are gone.
    let ws = busy_workspace();
    let to = target(&ws);
    ws.run(&["backup", "--to", &to]).success();
    audit_db(&ws)
        .execute("DELETE FROM audit_log WHERE seq >= 3", [])
        .unwrap();
    // (Checked first: every verify appends a record of its own.)
    ws.run(&["audit", "verify", "--checkpoints", &to])
        .code(1)
        .stderr_has("records were removed");
    ws.run(&["audit", "verify"]).success();
    // A checkpoint changed in the target no longer verifies.
    let dir = ws.path().join("backups/checkpoints");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("nova-audit/", "nova-audlt/", 1)).unwrap();
    ws.run(&["audit", "verify", "--checkpoints", &to])
        .code(1)
        .stderr_has("signature");
}

#[test]
fn prune_keeps_the_newest_backups_and_removes_only_unused_objects() {
    let ws = busy_workspace();
    let to = target(&ws);
    let mut ids = Vec::new();
    for i in 0..3 {
        ws.write(&format!("policies/p{i}.rego"), &format!("package p{i}\n"));
        let taken = ws.run(&["backup", "--to", &to, "--json"]).success().json();
        ids.push(taken["manifest"]["id"].as_str().unwrap().to_string());
    }
    let objects = || walkdir(&ws.path().join("backups/objects")).len();
    let before = objects();
    ws.run(&["backup", "prune", "--to", &to])
        .code(2)
        .stderr_has("--keep");
    ws.run(&["backup", "prune", "--to", &to, "--keep", "0"])
        .code(2);
    let pruned = ws
        .run(&["backup", "prune", "--to", &to, "--keep", "1", "--json"])
        .success()
        .json();
    assert_eq!(pruned["removed"], serde_json::json!([ids[0], ids[1]]));
    assert!(pruned["objects_removed"].as_u64().unwrap() >= 2, "{pruned}");
    assert!(objects() < before);
    let list = ws
        .run(&["backup", "list", "--to", &to, "--json"])
        .success()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], ids[2].as_str());
    // What is left is whole, and every checkpoint stays.
    ws.run(&["backup", "verify", &ids[2], "--to", &to])
        .success();
    assert_eq!(
        std::fs::read_dir(ws.path().join("backups/checkpoints"))
            .unwrap()
            .count(),
        3
    );
    restore(&ws, &ids[2], &ws.path().join("r")).success();

    // Retention from nova.yaml: each backup keeps the newest two.
    ws.write("nova.yaml", &format!("backup:\n  to: {to}\n  keep: 2\n"));
    ws.run(&["backup"]).success();
    ws.run(&["backup"])
        .success()
        .stdout_has("retention: removed 1");
    let list = ws.run(&["backup", "list", "--json"]).success().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let actions = ws
        .run(&["audit", "log", "--action", "backup.prune", "--json"])
        .success()
        .json();
    assert!(actions.as_array().unwrap().len() >= 2, "{actions}");
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            out.extend(walkdir(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn restore_over_a_workspace_needs_force_is_refused_while_in_use_and_keeps_what_it_replaced() {
    let ws = busy_workspace();
    let to = target(&ws);
    let id = ws.run(&["backup", "--to", &to, "--json"]).success().json()["manifest"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Work after the backup: one more task, a changed policy.
    ws.run(&["queue", "enqueue", "after"]).success();
    ws.write("policies/extra.rego", "package changed\n");
    let here = ws.path().to_str().unwrap().to_string();
    ws.run(&["restore", &id, "--from", &to, "--to", &here])
        .code(2)
        .stderr_has("--force");

    // While nova serve has the database open: refused, nothing moved.
    let (mut server, _) = ws.serve(&["--listen", "127.0.0.1:0"]);
    ws.run(&["restore", &id, "--from", &to, "--to", &here, "--force"])
        .code(1)
        .stderr_has("in use by process");
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        std::fs::read_to_string(ws.path().join("policies/extra.rego")).unwrap(),
        "package changed\n"
    );

    let done = ws
        .run(&[
            "restore", &id, "--from", &to, "--to", &here, "--force", "--json",
        ])
        .success()
        .json();
    let aside = std::path::PathBuf::from(done["replaced_into"].as_str().unwrap());
    assert!(aside.starts_with(ws.path()));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("policies/extra.rego")).unwrap(),
        "package extra\n"
    );
    assert_eq!(
        std::fs::read_to_string(aside.join("policies/extra.rego")).unwrap(),
        "package changed\n"
    );
    assert!(aside.join(".nova/nova.db").exists());
    let tasks = ws.run(&["queue", "list", "--json"]).success().json();
    assert_eq!(
        tasks.as_array().unwrap().len(),
        3,
        "the task enqueued after the backup is gone"
    );
    ws.run(&["audit", "verify"]).success();

    // Into a folder that holds none of the backup's files: nothing is
    // replaced, and no folder of replaced files is made or named.
    let other = ws.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine\n").unwrap();
    let done = ws
        .run(&[
            "restore",
            &id,
            "--from",
            &to,
            "--to",
            other.to_str().unwrap(),
            "--force",
            "--json",
        ])
        .success()
        .json();
    assert!(done["replaced_into"].is_null(), "{done}");
    let mut names: Vec<String> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        !names.iter().any(|n| n.starts_with(".nova-replaced")),
        "{names:?}"
    );
    assert!(names.contains(&"notes.txt".to_string()), "{names:?}");
}

#[test]
fn a_backup_killed_half_way_lists_nothing_and_the_next_one_succeeds() {
    let ws = busy_workspace();
    // Enough to take a while: 120 files of 256 KiB (480 pieces) in the runs folder.
    let runs = ws.home().join("runs/big");
    std::fs::create_dir_all(&runs).unwrap();
    for i in 0..120u32 {
        let bytes: Vec<u8> = (0..256 * 1024u32)
            .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8)
            .collect();
        std::fs::write(runs.join(format!("f{i}.bin")), bytes).unwrap();
    }
    let to = target(&ws);
    let mut child = ws
        .std_command()
        .args(["backup", "--to", &to, "--with-runs"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let objects = ws.path().join("backups/objects");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline
        && (!objects.exists() || walkdir(&objects).len() < 100)
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let written = walkdir(&objects).len();
    assert!(
        (100..480).contains(&written),
        "the backup was not cut half-way ({written} objects)"
    );
    let list = ws
        .run(&["backup", "list", "--to", &to, "--json"])
        .success()
        .json();
    assert_eq!(list, serde_json::json!([]), "a killed backup is listed");
    // Its lock stays behind, and is known for a dead process's.
    let unlocked = ws
        .run(&["backup", "unlock", "--to", &to, "--json"])
        .success()
        .json();
    assert_eq!(
        unlocked["removed"].as_array().unwrap().len(),
        1,
        "{unlocked}"
    );

    let taken = ws
        .run(&["backup", "--to", &to, "--with-runs", "--json"])
        .success()
        .json();
    let id = taken["manifest"]["id"].as_str().unwrap();
    ws.run(&["backup", "verify", id, "--to", &to]).success();
    // What the killed one wrote was not written again.
    let pieces: usize = taken["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["chunks"].as_array().map_or(1, Vec::len))
        .sum();
    let uploaded = taken["uploaded_objects"].as_u64().unwrap() as usize;
    // (Some slack: the database changed in between, and a file the kill
    // cut short is a temporary file, not an object.)
    assert!(
        uploaded + written <= pieces + 1 + 20,
        "{uploaded} objects written after {written}, for {pieces} pieces"
    );
}

#[test]
fn a_backup_taken_under_live_queue_load_restores_to_a_database_whose_chain_verifies() {
    use nova::queue::proto::task_queue_client::TaskQueueClient;
    use nova::queue::proto::{AckRequest, DequeueRequest, EnqueueRequest};
    let ws = busy_workspace();
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Tasks through the queue so far, read around the backup.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let mut client = TaskQueueClient::connect(url).await.unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client
                        .enqueue(EnqueueRequest {
                            r#type: "load".into(),
                            payload: format!(
                                "{{\"n\":{}}}",
                                done.load(std::sync::atomic::Ordering::Relaxed)
                            ),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    let got = client
                        .dequeue(DequeueRequest {
                            worker_id: "w".into(),
                            lease_ms: 30_000,
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    if let Some(task) = got.task {
                        client
                            .ack(AckRequest {
                                task_id: task.id,
                                success: true,
                                lease_id: task.lease_id,
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
    };
    // The load is under way before the backup starts (how fast it goes
    // depends on the machine; that it goes on during the backup does not).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while done.load(std::sync::atomic::Ordering::Relaxed) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let to = target(&ws);
    let before = done.load(std::sync::atomic::Ordering::Relaxed);
    let taken = ws.run(&["backup", "--to", &to, "--json"]).success().json();
    let during = done.load(std::sync::atomic::Ordering::Relaxed) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(during > 0, "no task went through while the backup ran");

    let id = taken["manifest"]["id"].as_str().unwrap();
    let into = ws.path().join("restored");
    restore(&ws, id, &into)
        .success()
        .stdout_has("audit chain of");
    let (code, verified) = run_in(&ws, &into, &["audit", "verify"]);
    assert_eq!(code, 0, "{verified}");
    let (code, listed) = run_in(
        &ws,
        &into,
        &["queue", "list", "--json", "--limit", "100000"],
    );
    assert_eq!(code, 0, "{listed}");
    let tasks: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        tasks.as_array().unwrap().len() > 3,
        "the snapshot holds none of the load"
    );
}

#[test]
fn nova_serve_backs_up_on_a_schedule_with_retention_and_counts_it() {
    let ws = busy_workspace();
    ws.run(&["serve", "--listen", "127.0.0.1:0", "--backup-every", "1h"])
        .code(2)
        .stderr_has("no backup target");
    ws.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--backup-every",
        "0s",
        "--backup-to",
        "b",
    ])
    .code(2)
    .stderr_has("--backup-every 0s");
    ws.write("nova.yaml", "backup:\n  keep: 2\n");
    let to = target(&ws);
    let (mut server, _) = ws.serve(&[
        "--listen",
        "127.0.0.1:0",
        "--backup-every",
        "300ms",
        "--backup-to",
        &to,
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let prunes = || {
        ws.run(&["audit", "log", "--action", "backup.prune", "--json"])
            .success()
            .json()
            .as_array()
            .unwrap()
            .len()
    };
    while prunes() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = nix::unistd::Pid::from_raw(server.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    server.wait().unwrap();
    let created = ws
        .run(&["audit", "log", "--action", "backup.create", "--json"])
        .success()
        .json();
    let created = created.as_array().unwrap();
    assert!(created.len() >= 3, "{created:?}");
    assert!(
        created.iter().all(|r| r["outcome"] == "done"),
        "{created:?}"
    );
    let list = ws
        .run(&["backup", "list", "--to", &to, "--json"])
        .success()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 2, "retention kept {list}");
    ws.run(&["backup", "verify", "--to", &to]).success();
    let kpis = ws.run(&["kpi", "--json"]).success().stdout;
    assert!(kpis.contains("backup.created"), "{kpis}");
}

#[test]
fn a_full_disk_is_named_and_no_backup_is_listed() {
    // A 64 KiB tmpfs in a mount namespace of the backup's own: root only.
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let ws = busy_workspace();
    let full = ws.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    let nova = assert_cmd::cargo::cargo_bin("nova");
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs '{dir}' && '{nova}' backup --to '{dir}'; code=$?; '{nova}' backup list --to '{dir}' --json; exit $code",
        dir = full.display(),
        nova = nova.display()
    );
    // The harness's environment (no NOVA_*, no AWS_*, the key folder) for `unshare`.
    let harness = ws.std_command();
    let mut cmd = std::process::Command::new("unshare");
    for (key, value) in harness.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let out = cmd
        .args(["-m", "sh", "-c", &script])
        .current_dir(ws.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains(&full.display().to_string()), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "a backup was listed"
    );
    // The workspace is untouched, and the failure is on its record.
    ws.run(&["audit", "verify"]).success();
    let failed = ws
        .run(&["audit", "log", "--action", "backup.create", "--json"])
        .success()
        .json();
    assert_eq!(failed[0]["outcome"], "failed", "{failed}");
}

#[test]
fn bad_keys_urls_and_verifier_keys_are_named_and_change_nothing() {
    let ws = busy_workspace();
    let to = target(&ws);
    ws.write("not-a-key.txt", "hello\n");
    ws.run(&["backup", "--to", &to, "--encrypt", "not-a-key.txt"])
        .code(2)
        .stderr_has("not-a-key.txt")
        .stderr_has("not an age identity");
    ws.run(&["backup", "--to", &to, "--encrypt", "missing.key"])
        .code(2)
        .stderr_has("missing.key");
    ws.run(&["backup", "keygen", "k"]).success();
    ws.run(&["backup", "keygen", "k"])
        .code(2)
        .stderr_has("already exists");
    ws.run(&["backup", "--to", "s3://"])
        .code(2)
        .stderr_has("no bucket name");
    ws.run(&["backup", "--to", &to]).success();
    ws.run(&[
        "audit",
        "verify",
        "--checkpoints",
        &to,
        "--verifier-key",
        "junk",
    ])
    .code(2)
    .stderr_has("verifier key \"junk\"");
    ws.write(".config/nova/audit-signing.key", "PRIVATE+KEY+broken\n");
    ws.run(&["backup", "--to", &to])
        .code(1)
        .stderr_has("audit-signing.key")
        .stderr_has("not a signed-note signing key");
    // Nothing of it reached the target or the chain.
    assert_eq!(listed(&ws, &to), 1);
    ws.run(&["audit", "verify"]).success();
}

/// Write a lock into the target as another nova process would.
fn put_lock(ws: &Workspace, name: &str, kind: &str, host: &str, pid: u32, age_ms: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let locks = ws.path().join("backups/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let lock = serde_json::json!({
        "kind": kind, "purpose": if kind == "exclusive" { "prune" } else { "backup" }, "host": host, "pid": pid,
        "taken_at": now - age_ms, "refreshed_at": now - age_ms,
    });
    std::fs::write(locks.join(name), lock.to_string()).unwrap();
}

fn locks_left(ws: &Workspace) -> Vec<String> {
    let dir = ws.path().join("backups/locks");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Prune waits for the backups, verifies and restores running beside it
/// (their shared locks in the target), and a backup for a prune; a lock
/// whose process is gone (on this host at once, elsewhere after 30
/// minutes) is ignored and `nova backup unlock` removes it; a file in the
/// locks folder that is not a lock stops prune, named.
#[test]
fn prune_and_backups_keep_out_of_each_others_way_through_the_targets_locks() {
    let ws = busy_workspace();
    let to = target(&ws);
    ws.run(&["backup", "--to", &to]).success();
    ws.run(&["backup", "--to", &to]).success();
    assert_eq!(
        locks_left(&ws),
        Vec::<String>::new(),
        "a backup left its lock"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();

    // A backup running on this host (a live process holds its lock).
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    put_lock(&ws, "a.json", "shared", &host, holder.id(), 0);
    ws.run(&["backup", "prune", "--to", &to, "--keep", "1"])
        .code(1)
        .stderr_has("is locked: backup by")
        .stderr_has("a.json");
    assert_eq!(listed(&ws, &to), 2, "a refused prune removed a backup");
    // Shared locks do not keep each other out.
    ws.run(&["backup", "--to", &to]).success();
    ws.run(&["backup", "verify", "--to", &to]).success();
    ws.run(&["backup", "unlock", "--to", &to])
        .success()
        .stdout_has("removed 0 stale locks")
        .stdout_has("still held");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let unlocked = ws
        .run(&["backup", "unlock", "--to", &to, "--json"])
        .success()
        .json();
    assert_eq!(unlocked["removed"], serde_json::json!(["locks/a.json"]));

    // A prune elsewhere keeps backups out while it is fresh, not after.
    put_lock(&ws, "b.json", "exclusive", "elsewhere.example", 1, 60_000);
    ws.run(&["backup", "--to", &to])
        .code(1)
        .stderr_has("prune")
        .stderr_has("elsewhere.example");
    ws.run(&["restore", &newest(&ws), "--from", &to, "--to", "r1"])
        .code(1)
        .stderr_has("is locked");
    put_lock(
        &ws,
        "b.json",
        "exclusive",
        "elsewhere.example",
        1,
        31 * 60_000,
    );
    ws.run(&["backup", "--to", &to]).success();
    ws.run(&["backup", "unlock", "--to", &to])
        .success()
        .stdout_has("removed 1 stale locks");

    // Something nova cannot read in the locks folder.
    std::fs::write(ws.path().join("backups/locks/c.json"), "not json").unwrap();
    ws.run(&["backup", "prune", "--to", &to, "--keep", "1"])
        .code(1)
        .stderr_has("c.json is not a lock nova can read");
    std::fs::remove_file(ws.path().join("backups/locks/c.json")).unwrap();
    ws.run(&["backup", "prune", "--to", &to, "--keep", "1"])
        .success();
    assert_eq!(locks_left(&ws), Vec::<String>::new());

    // A target this process cannot write a lock to (a file where the
    // locks folder goes, as root cannot be kept out by permissions): what
    // only reads goes on without a lock, what writes does not.
    std::fs::remove_dir(ws.path().join("backups/locks")).unwrap();
    std::fs::write(ws.path().join("backups/locks"), "").unwrap();
    ws.run(&["backup", "verify", "--to", &to]).success();
    ws.run(&["restore", &newest(&ws), "--from", &to, "--to", "r2"])
        .success();
    ws.run(&["backup", "--to", &to])
        .code(1)
        .stderr_has("locks/");
}

/// `nova ARGS` with `NOVA_STORE` set, as an operator of a Redis-backed
/// workspace runs it.
fn run_with_store(ws: &Workspace, store: &str, args: &[&str]) -> Outcome {
    ws.std_command()
        .env("NOVA_STORE", store)
        .args(args)
        .output()
        .unwrap()
        .into()
}

#[test]
fn with_the_queue_on_redis_a_backup_names_what_it_lacks_and_signs_the_audit_chain_in_redis() {
    let redis = common::redis_server::RedisServer::start();
    let store = redis.url();
    let ws = Workspace::new();
    let to = target(&ws);
    run_with_store(&ws, &store, &["queue", "enqueue", "demo"]).success();

    let taken = run_with_store(&ws, &store, &["backup", "--to", &to, "--json"])
        .success()
        .json();
    let manifest = &taken["manifest"];
    assert_eq!(manifest["outside"]["store"], store.as_str(), "{manifest}");
    assert_eq!(
        manifest["outside"]["holds"],
        serde_json::json!(["queue", "audit log"])
    );
    // The head signed is Redis's: the enqueue's policy decision, record 1.
    assert_eq!(manifest["audit_head"]["seq"], 1, "{manifest}");
    let log = run_with_store(&ws, &store, &["audit", "log", "--json"])
        .success()
        .json();
    let records = log.as_array().unwrap();
    assert_eq!(records[0]["hash"], manifest["audit_head"]["hash"]);
    // The backup is recorded in the same chain, and no second chain is
    // started in a workspace database.
    assert_eq!(records[1]["action"], "backup.create", "{log}");
    assert!(!ws.home().join("nova.db").exists(), "{:?}", ws.files());

    // The text says what is not in the backup.
    run_with_store(&ws, &store, &["backup", "--to", &to])
        .success()
        .stdout_has(&format!(
            "not in it: the queue and the audit log in {store}"
        ));
    // The checkpoints name records of the chain in Redis, which they match.
    run_with_store(&ws, &store, &["audit", "verify", "--checkpoints", &to])
        .success()
        .stdout_has("all 2 checkpoints");

    // A restore has no chain to check and says where it was.
    let id = manifest["id"].as_str().unwrap();
    let into = ws.path().join("restored");
    let restored = run_with_store(
        &ws,
        &store,
        &["restore", id, "--from", &to, "--to", into.to_str().unwrap()],
    )
    .success()
    .stdout_has(&format!("its queue and audit log were in {store}"));
    assert!(restored.stdout.contains(id), "{}", restored.stdout);
    let log = run_with_store(&ws, &store, &["audit", "log", "--json"])
        .success()
        .json();
    assert_eq!(
        log.as_array().unwrap().last().unwrap()["action"],
        "backup.restore",
        "{log}"
    );

    // With Redis gone: no backup can sign its head, so none is taken; a
    // prune still prunes, and says it could not be recorded.
    drop(redis);
    run_with_store(&ws, &store, &["backup", "--to", &to])
        .code(1)
        .stderr_has("the head of the audit chain")
        .stderr_has("cannot connect");
    assert_eq!(listed(&ws, &to), 2);
    run_with_store(
        &ws,
        &store,
        &["backup", "prune", "--keep", "1", "--to", &to],
    )
    .success()
    .stderr_has("nothing this command did was recorded in the audit log");
    assert_eq!(listed(&ws, &to), 1);
}
