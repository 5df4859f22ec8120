//! `nova backup` and `nova restore` against a folder target: a restored
//! workspace matches the original, objects are written once, and damage is
//! named and refused.

mod common;

use common::Workspace;

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

/// A workspace with queue tasks, audit records, a policy and nova.yaml.
fn busy_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("policies/extra.rego", "package extra\n");
    ws.write("nova.yaml", "execution_mode: parallel\n");
    for i in 0..3 {
        ws.run(&[
            "queue",
            "enqueue",
            "demo",
            "--payload",
            &format!("{{\"n\":{i}}}"),
        ])
        .success();
    }
    ws
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
    ws.run(&[
        "restore",
        &id,
        "--from",
        &to,
        "--to",
        restored_dir.to_str().unwrap(),
    ])
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
    ws.run(&[
        "restore",
        &id,
        "--from",
        &to,
        "--to",
        restored_dir.to_str().unwrap(),
    ])
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
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ws.path().join(format!("backups/backups/{id}.json"))).unwrap(),
    )
    .unwrap();
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
    ws.run(&[
        "restore",
        &id,
        "--from",
        &to,
        "--to",
        into.to_str().unwrap(),
    ])
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
