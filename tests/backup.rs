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
