//! `nova backup` and `nova restore` against a real S3 API (moto's server on
//! a loopback port): the round trip, credentials from a profile file, and
//! the faults an operator meets (no bucket, wrong keys, no endpoint).

mod common;

use common::s3_server::S3Server;
use common::{Outcome, Workspace};

/// `nova ARGS` with the S3 endpoint and keys in the environment.
fn run_s3(ws: &Workspace, s3: &S3Server, dir: &std::path::Path, args: &[&str]) -> Outcome {
    ws.std_command()
        .current_dir(dir)
        .env("AWS_ENDPOINT_URL", s3.endpoint())
        .env("AWS_ACCESS_KEY_ID", "nova-test")
        .env("AWS_SECRET_ACCESS_KEY", "nova-test-secret")
        .args(args)
        .output()
        .unwrap()
        .into()
}

/// A workspace with a finished run besides queue tasks and audit records.
fn busy_workspace() -> Workspace {
    let ws = Workspace::with_history();
    ws.write(
        "blueprints/hello.yaml",
        "name: hello\nrole: implementation\nphase: build\ntasks:\n  - id: greet\n    title: greets\n    run: {shell: \"echo hello\"}\n",
    );
    ws.run(&["orchestrate", "--agents", "hello", "--apply"])
        .success();
    ws
}

#[test]
fn a_workspace_backed_up_to_s3_restores_with_the_same_runs_tasks_and_audit_chain() {
    let s3 = S3Server::start();
    assert_eq!(s3.create_bucket("nova-backups"), 200);
    let ws = busy_workspace();
    let here = ws.path().to_path_buf();
    let to = "s3://nova-backups/site-a";
    let first = run_s3(&ws, &s3, &here, &["backup", "--to", to, "--json"])
        .success()
        .json();
    let id = first["manifest"]["id"].as_str().unwrap().to_string();
    let listed = run_s3(&ws, &s3, &here, &["backup", "list", "--to", to, "--json"])
        .success()
        .json();
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    run_s3(&ws, &s3, &here, &["backup", "verify", &id, "--to", to])
        .success()
        .stdout_has("match their hashes");

    let into = here.join("restored");
    run_s3(
        &ws,
        &s3,
        &here,
        &["restore", &id, "--from", to, "--to", "restored"],
    )
    .success();
    for args in [
        &["runs", "--json"][..],
        &["tasks", "--json"][..],
        &["queue", "list", "--json"][..],
    ] {
        let original = run_s3(&ws, &s3, &here, args).success().stdout;
        let restored = run_s3(&ws, &s3, &into, args).success().stdout;
        assert_eq!(original, restored, "nova {args:?} differs after restore");
    }
    run_s3(&ws, &s3, &into, &["audit", "verify"])
        .success()
        .stdout_has("audit chain holds");
}

#[test]
fn credentials_and_region_come_from_the_aws_profile_files() {
    let s3 = S3Server::start();
    assert_eq!(s3.create_bucket("profiled"), 200);
    let ws = busy_workspace();
    ws.write(
        ".aws/credentials",
        "[backup]\naws_access_key_id = from-profile\naws_secret_access_key = s3cret\n",
    );
    ws.write(
        ".aws/config",
        &format!(
            "[profile backup]\nregion = eu-west-1\nendpoint_url = {}\n",
            s3.endpoint()
        ),
    );
    let run = |args: &[&str]| {
        let out = ws
            .std_command()
            .env("AWS_PROFILE", "backup")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["backup", "--to", "s3://profiled/x"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = run(&["backup", "verify", "--to", "s3://profiled/x"]);
    assert_eq!(code, Some(0), "{stderr}");

    let out = ws
        .std_command()
        .env("AWS_PROFILE", "nosuch")
        .args(["backup", "--to", "s3://profiled/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWS_PROFILE=nosuch"));
}

#[test]
fn a_missing_bucket_wrong_keys_and_a_dead_endpoint_are_named_and_list_nothing() {
    let s3 = S3Server::start();
    let ws = busy_workspace();
    let here = ws.path().to_path_buf();
    run_s3(
        &ws,
        &s3,
        &here,
        &["backup", "--to", "s3://no-such-bucket/p"],
    )
    .code(1)
    .stderr_has("s3://no-such-bucket/p")
    .stderr_has("NoSuchBucket");

    // A server that checks credentials, and keys it does not know.
    let strict = S3Server::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    run_s3(&ws, &strict, &here, &["backup", "--to", "s3://any/p"])
        .code(1)
        .stderr_has("s3://any/p")
        .stderr_has("InvalidAccessKeyId");

    // Nothing listens on the port of a server that stopped.
    let port = s3.port;
    drop(s3);
    let out = ws
        .std_command()
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .args(["backup", "--to", "s3://nova-backups/p"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    // The workspace is untouched: its audit chain still verifies.
    ws.run(&["audit", "verify"]).success();
}

#[test]
fn an_encrypted_backup_leaves_no_plaintext_in_the_bucket_and_needs_its_key() {
    let s3 = S3Server::start();
    assert_eq!(s3.create_bucket("sealed"), 200);
    let ws = busy_workspace();
    let marker = "MARKER-5f1e-plaintext";
    ws.write(
        "policies/extra.rego",
        &format!("package extra\n# {marker}\n"),
    );
    ws.run(&[
        "queue",
        "enqueue",
        "demo",
        "--payload",
        &format!("{{\"secret\":\"{marker}\"}}"),
    ])
    .success();
    let here = ws.path().to_path_buf();
    run_s3(&ws, &s3, &here, &["backup", "keygen", "backup.key"])
        .success()
        .stdout_has("age1");
    let to = "s3://sealed/nova";
    let taken = run_s3(
        &ws,
        &s3,
        &here,
        &["backup", "--to", to, "--encrypt", "backup.key", "--json"],
    )
    .success()
    .json();
    let id = taken["manifest"]["id"].as_str().unwrap().to_string();

    let keys = s3.keys("sealed");
    assert!(
        keys.iter().any(|k| k.starts_with("nova/objects/")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("nova/backups/{id}.json.age")),
        "{keys:?}"
    );
    let sha_of_policy = taken["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "policies/extra.rego")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    for key in &keys {
        if key.starts_with("nova/checkpoints/") {
            continue; // a record count and a hash, signed: public by design
        }
        assert!(
            !key.contains(&sha_of_policy),
            "{key} names its content's hash"
        );
        let raw = s3.get("sealed", key);
        for needle in [
            marker.as_bytes(),
            b"package extra",
            b"nova-backup/1",
            b"execution_mode",
            b"SQLite format",
        ] {
            assert!(
                !raw.windows(needle.len()).any(|w| w == needle),
                "{key} holds {:?} in plaintext",
                String::from_utf8_lossy(needle)
            );
        }
        assert!(
            raw.starts_with(b"age-encryption.org/v1"),
            "{key} is not an age file: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        );
    }

    // Without the key: named, nothing restored; with it: the same workspace.
    run_s3(
        &ws,
        &s3,
        &here,
        &["restore", &id, "--from", to, "--to", "r"],
    )
    .code(2)
    .stderr_has("is encrypted");
    assert!(!here.join("r").exists());
    run_s3(
        &ws,
        &s3,
        &here,
        &["backup", "verify", &id, "--to", to, "--key", "backup.key"],
    )
    .success();
    run_s3(
        &ws,
        &s3,
        &here,
        &[
            "restore",
            &id,
            "--from",
            to,
            "--key",
            "backup.key",
            "--to",
            "r",
        ],
    )
    .success();
    assert!(
        std::fs::read_to_string(here.join("r/policies/extra.rego"))
            .unwrap()
            .contains(marker)
    );
    // A key that is not the one: named.
    run_s3(&ws, &s3, &here, &["backup", "keygen", "other.key"]).success();
    run_s3(
        &ws,
        &s3,
        &here,
        &["backup", "verify", &id, "--to", to, "--key", "other.key"],
    )
    .code(1)
    .stderr_has("cannot decrypt");
}

#[test]
fn a_second_backup_of_an_unchanged_workspace_uploads_its_manifest_and_only_the_changed_database_pieces()
 {
    let s3 = S3Server::start();
    assert_eq!(s3.create_bucket("again"), 200);
    let ws = busy_workspace();
    // A database of many 64 KiB pieces.
    let big = "x".repeat(60_000);
    for _ in 0..30 {
        ws.run(&[
            "queue",
            "enqueue",
            "bulk",
            "--payload",
            &format!("{{\"blob\":\"{big}\"}}"),
        ])
        .success();
    }
    let here = ws.path().to_path_buf();
    let to = "s3://again/p";
    let first = run_s3(&ws, &s3, &here, &["backup", "--to", to, "--json"])
        .success()
        .json();
    let second = run_s3(&ws, &s3, &here, &["backup", "--to", to, "--json"])
        .success()
        .json();
    let db = |b: &serde_json::Value| {
        b["manifest"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == ".nova/nova.db")
            .unwrap()
            .clone()
    };
    let pieces = db(&second)["chunks"].as_array().unwrap().len();
    assert!(pieces >= 6, "{}", db(&second));
    let objects_before = s3.keys("again").len();
    let first_up = first["uploaded_objects"].as_u64().unwrap();
    let second_up = second["uploaded_objects"].as_u64().unwrap();
    // The manifest, and the database pieces the first backup's own audit
    // record changed (the header page's and the audit table's): nothing else.
    assert!(first_up as usize > pieces, "{first}");
    assert!(
        (2..=6).contains(&second_up),
        "second backup wrote {second_up} objects: {second}"
    );
    let manifest_bytes = second["uploaded_bytes"].as_u64().unwrap();
    assert!(manifest_bytes < 6 * 64 * 1024 + 16 * 1024, "{second}");
    // Every file other than the database kept its objects.
    let same = |b: &serde_json::Value| -> Vec<(String, String)> {
        b["manifest"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                f["path"] != ".nova/nova.db"
                    && !f["path"].as_str().unwrap().starts_with(".nova/logs")
            })
            .map(|f| {
                (
                    f["path"].as_str().unwrap().into(),
                    f["sha256"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(same(&first), same(&second));
    assert!(objects_before > 0);
}
