//! The workspace database: created on first write only, refused when it is not
//! SQLite or is too new, and never damaged by a refusal.

mod common;

use common::Workspace;
use nova::store::{SCHEMA_VERSION, Store, TaskState, TaskStatus};

#[test]
fn read_only_commands_create_nothing() {
    let ws = Workspace::new();
    for args in [
        &["roadmap", "--phase", "foundation"][..],
        &["tasks", "--checklist"],
        &["tasks", "--json"],
        &["blueprints"],
        &["blueprints", "validate"],
        &["plan"],
        &["roadmap", "--format", "markdown"],
    ] {
        ws.run(args).success();
    }
    assert!(ws.files().is_empty(), "created: {:?}", ws.files());
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let ws = Workspace::new();
    let bytes = b"hello, this is definitely not a database\n\x00\x01\x02 and some binary".to_vec();
    let db = ws.home().join("nova.db");
    std::fs::create_dir_all(ws.home()).unwrap();
    std::fs::write(&db, &bytes).unwrap();
    for args in [&["tasks"][..], &["roadmap"], &["tasks", "--json"]] {
        ws.run(args)
            .code(2)
            .stderr_has("is not a SQLite database")
            .stderr_has("nova.db");
    }
    assert!(std::fs::read(&db).unwrap() == bytes, "nova.db changed");
    assert_eq!(
        ws.files(),
        [".nova", ".nova/nova.db"],
        "nova added files next to it"
    );

    // The library's write path refuses it too.
    let err = Store::open(&db).err().expect("refused");
    assert!(err.is_bad_input(), "{err}");
    assert!(
        std::fs::read(&db).unwrap() == bytes,
        "nova.db changed by Store::open"
    );
}

#[test]
fn a_database_from_a_newer_nova_is_refused_naming_both_versions() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.home()).unwrap();
    let db = ws.home().join("nova.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 7)
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let newer = (SCHEMA_VERSION + 7).to_string();
    ws.run(&["tasks"])
        .code(2)
        .stderr_has("written by a newer nova")
        .stderr_has(&format!("schema version is {newer}"))
        .stderr_has(&format!("knows versions up to {SCHEMA_VERSION}"));
    assert!(Store::open(&db).is_err());
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the newer database was changed"
    );
    assert!(!ws.home().join("nova.db-wal").exists());
}

#[test]
fn the_store_migrates_once_and_keeps_states() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nova.db");
    let store = Store::open(&db).unwrap();
    assert_eq!(store.version(), SCHEMA_VERSION);
    let state = TaskState {
        agent: "Orion".into(),
        task: "nemo".into(),
        status: TaskStatus::Done,
        run_id: Some("r1".into()),
        updated_at: 1_700_000_000_000,
        detail: None,
    };
    store.record_task_state(&state).unwrap();
    drop(store);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    let again = Store::open(&db).unwrap();
    let states = again.task_states().unwrap();
    assert_eq!(
        states[&("orion".to_string(), "nemo".to_string())].status,
        TaskStatus::Done
    );
    let read_only = Store::open_read_only(&db).unwrap();
    assert_eq!(read_only.task_states().unwrap().len(), 1);
}

#[test]
fn tasks_and_roadmap_show_recorded_states() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.home()).unwrap();
    let store = Store::open(&ws.home().join("nova.db")).unwrap();
    for (task, status) in [
        ("host-inventory", TaskStatus::Done),
        ("containers", TaskStatus::Failed),
        ("vpn", TaskStatus::Done),
    ] {
        store
            .record_task_state(&TaskState {
                agent: "nova".into(),
                task: task.into(),
                status,
                run_id: Some("run-1".into()),
                updated_at: 1_700_000_000_000,
                detail: None,
            })
            .unwrap();
    }
    drop(store);

    let done = ws
        .run(&["tasks", "--status", "done", "--json"])
        .success()
        .json();
    let ids: Vec<&str> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["host-inventory", "vpn"]);
    assert_eq!(done[0]["checked_at"], "2023-11-14T22:13:20Z");

    let checklist = ws
        .run(&["tasks", "--checklist", "--agent", "infrastructure"])
        .success()
        .stdout;
    assert!(checklist.contains("- [x] `host-inventory`"), "{checklist}");
    assert!(
        checklist.contains("- [ ] `containers` Install Docker and a Kubernetes cluster (failed)"),
        "{checklist}"
    );

    let roadmap = ws.run(&["roadmap", "--json"]).success().json();
    assert_eq!(roadmap["phases"][0]["name"], "foundation");
    assert_eq!(roadmap["phases"][0]["progress"]["done"], 2);
    assert_eq!(roadmap["phases"][0]["progress"]["percent"], 20);
    assert_eq!(roadmap["progress"]["done"], 2);
    assert_eq!(roadmap["progress"]["total"], 28);
}
