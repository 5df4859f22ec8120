//! The audit log through the real binary: records from real commands, tamper
//! evidence, concurrent writers, export, filters and the ISO control view.

mod common;

use common::Workspace;
use common::redis_server::RedisServer;
use nova::audit::Filter;

/// Make audit records the way a user would: enqueue a task (a policy
/// decision) and cancel it, `n` times: `2n` records.
fn some_records(ws: &Workspace, n: usize) {
    for i in 0..n {
        let t = ws
            .run(&["queue", "enqueue", &format!("job{i}"), "--json"])
            .success()
            .json();
        let id = t["id"].as_str().unwrap();
        ws.run(&["queue", "cancel", id]).success();
    }
}

fn db(ws: &Workspace) -> rusqlite::Connection {
    rusqlite::Connection::open(ws.home().join("nova.db")).unwrap()
}

#[test]
fn tampering_is_caught_and_the_record_named() {
    let ws = Workspace::new();
    some_records(&ws, 6);
    ws.run(&["audit", "verify"])
        .success()
        .stdout_has("audit chain holds: 12 records");
    // verify itself leaves a record: now 13.

    // 1. One field of one record changed.
    db(&ws)
        .execute("UPDATE audit_log SET outcome = 'denied' WHERE seq = 2", [])
        .unwrap();
    ws.run(&["audit", "verify"])
        .code(1)
        .stderr_has("audit chain broken at record 2: record 2 was changed");
    db(&ws)
        .execute("UPDATE audit_log SET outcome = 'ok' WHERE seq = 2", [])
        .unwrap();
    ws.run(&["audit", "verify"]).success();

    // 2. One record deleted.
    let saved: (i64, String, String) = db(&ws)
        .query_row(
            "SELECT seq, details, hash FROM audit_log WHERE seq = 4",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let backup = ws.home().join("backup.db");
    db(&ws)
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    db(&ws)
        .execute("DELETE FROM audit_log WHERE seq = 4", [])
        .unwrap();
    ws.run(&["audit", "verify"])
        .code(1)
        .stderr_has("audit chain broken at record 4: record 4 is missing");
    assert_eq!(saved.0, 4);
    std::fs::copy(&backup, ws.home().join("nova.db")).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(ws.home().join(format!("nova.db{ext}")));
    }
    ws.run(&["audit", "verify"]).success();

    // 3. One record inserted: the ones after it renumbered, and it carries a
    //    well-formed hash of its own, as a careful forger would make it. The
    //    record after it no longer matches its hash (its number changed).
    //    (A forger who also re-seals every later record is caught at the
    //    first of them: it does not follow the inserted one; see the unit
    //    tests in src/audit/mod.rs.)
    let conn = db(&ws);
    conn.execute("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 5", [])
        .unwrap();
    conn.execute("UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1005", [])
        .unwrap();
    let prev: String = conn
        .query_row("SELECT hash FROM audit_log WHERE seq = 4", [], |r| r.get(0))
        .unwrap();
    let forged =
        nova::audit::Event::new("intruder", "queue.cancel", "task x", "ok").seal(4, &prev, 0);
    conn.execute(
        "INSERT INTO audit_log VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        rusqlite::params![
            5,
            forged.at,
            forged.actor,
            forged.action,
            forged.target,
            forged.outcome,
            forged.details.to_string(),
            serde_json::to_string(&forged.controls).unwrap(),
            forged.prev_hash,
            forged.hash
        ],
    )
    .unwrap();
    ws.run(&["audit", "verify"])
        .code(1)
        .stderr_has("audit chain broken at record 6: record 6 was changed");
    let json = ws.run(&["audit", "verify", "--json"]).code(1).json();
    assert_eq!(json["holds"], false);
    assert_eq!(json["broken"]["seq"], 6);
}

/// Four `nova bench audit` processes append 1,000 records each at once to
/// the chain in `store` (a SQLite file, or Redis when given), then the
/// workspace's `nova audit` finds one unbroken chain holding all of them.
fn four_writers_leave_one_chain(redis: Option<&RedisServer>) {
    let ws = Workspace::new();
    let db = ws.home().join("nova.db");
    std::fs::create_dir_all(ws.home()).unwrap();
    let target = match redis {
        Some(redis) => {
            ws.write("nova.yaml", &format!("store: {}\n", redis.url()));
            ["--redis".to_string(), redis.url()]
        }
        None => ["--db".to_string(), db.display().to_string()],
    };
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("nova"))
                .args(["bench", "audit", "--records", "1000"])
                .args(&target)
                .current_dir(ws.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let v = ws.run(&["audit", "verify", "--json"]).success().json();
    assert_eq!(v["records"], 4000);
    let records = ws.run(&["audit", "log", "--json"]).success().json();
    let records = records.as_array().unwrap();
    // 4,000 appended plus verify's own record.
    assert_eq!(records.len(), 4001);
    let mut pids: Vec<u64> = records[..4000]
        .iter()
        .map(|r| r["details"]["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "all four writers are in the one chain");
    // Every one of them found again by its action (on Redis, its index).
    let appended = ws
        .run(&["audit", "log", "--action", "bench.append", "--json"])
        .success()
        .json();
    assert_eq!(appended.as_array().unwrap().len(), 4000);
}

#[test]
fn four_processes_appending_at_once_leave_one_chain() {
    four_writers_leave_one_chain(None);
}

#[test]
fn four_processes_appending_at_once_to_redis_leave_one_chain() {
    let redis = RedisServer::start();
    four_writers_leave_one_chain(Some(&redis));
}

#[test]
fn log_filters_export_and_controls() {
    let ws = Workspace::new();
    some_records(&ws, 3);
    let all = ws.run(&["audit", "log", "--json"]).success().json();
    assert_eq!(all.as_array().unwrap().len(), 6);
    assert_eq!(all[0]["action"], "policy.decision");
    assert_eq!(all[0]["outcome"], "allowed");
    assert_eq!(all[0]["controls"], serde_json::json!(["A.5.15", "A.8.2"]));
    assert_eq!(all[1]["action"], "queue.cancel");
    assert_eq!(all[1]["controls"], serde_json::json!(["A.8.32"]));
    assert_eq!(
        ws.run(&[
            "audit", "log", "--action", "queue.*", "--limit", "2", "--json"
        ])
        .success()
        .json()
        .as_array()
        .unwrap()
        .len(),
        2
    );
    assert_eq!(
        ws.run(&["audit", "log", "--action", "serve.start", "--json"])
            .success()
            .json(),
        serde_json::json!([])
    );
    ws.run(&["audit", "log", "--since", "1h"])
        .success()
        .stdout_has("queue.cancel");
    ws.run(&["audit", "log", "--since", "2999-01-01T00:00:00Z"])
        .success()
        .stdout_has("no audit records");
    ws.run(&["audit", "log", "--since", "yesterday-ish"])
        .code(2)
        .stderr_has("--since");

    let out = ws.run(&["audit", "export"]).success();
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    ws.run(&["audit", "export", "--format", "csv", "-o", "audit.csv"])
        .success();
    let csv = std::fs::read_to_string(ws.path().join("audit.csv")).unwrap();
    let mut rows = csv.lines();
    assert!(
        rows.next()
            .unwrap()
            .starts_with("seq,time,at_ms,actor,action")
    );
    assert_eq!(rows.count(), 7, "6 records (the JSON export added a 7th)");

    let controls = ws.run(&["audit", "controls", "--json"]).success().json();
    let ids: Vec<&str> = controls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for id in [
        "A.5.15", "A.8.2", "A.8.9", "A.8.15", "A.8.16", "A.8.17", "A.8.13", "A.8.32", "A.8.8",
        "A.5.28",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let change = controls
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "A.8.32")
        .unwrap();
    assert_eq!(change["events"], 3);
    assert!(change["last_event"].is_string());
}

#[test]
fn the_chain_lives_in_redis_when_the_queue_does() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    ws.write("nova.yaml", &format!("store: {}\n", redis.url()));
    some_records(&ws, 2);
    // A second writer on the same Redis (another machine's nova) extends the same chain.
    let other = Workspace::new();
    other.write("nova.yaml", &format!("store: {}\n", redis.url()));
    other
        .run(&["bench", "audit", "--records", "50", "--redis", &redis.url()])
        .success();
    let v = other.run(&["audit", "verify", "--json"]).success().json();
    assert_eq!(v["records"], 54);
    assert!(
        !ws.home().join("nova.db").exists() || {
            let c = db(&ws);
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
                .unwrap_or(0);
            n == 0
        }
    );
}

/// An empty audit log in a SQLite file and one in a real redis-server, with
/// a runtime to drive them; all of it goes when this does.
struct BothStores {
    logs: [nova::audit::AuditLog; 2],
    rt: tokio::runtime::Runtime,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl BothStores {
    fn start() -> BothStores {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let logs = rt.block_on(async {
            [
                nova::audit::AuditLog::sqlite(&dir.path().join("nova.db")).unwrap(),
                nova::audit::AuditLog::redis(&redis.url()).await.unwrap(),
            ]
        });
        BothStores {
            logs,
            rt,
            _redis: redis,
            _dir: dir,
        }
    }
}

/// `newest` reads back from the end of the log only as far as it finds the
/// records asked for, on SQLite and on Redis (across Redis's read chunks of
/// 1,000): the newest matches, newest first, at most `limit` of them.
#[test]
fn the_newest_matching_records_come_newest_first_on_both_stores() {
    let stores = BothStores::start();
    stores.rt.block_on(async {
        let logs = &stores.logs;
        for log in logs {
            // 2,500 records: every fifth is "rare.x", the rest "common.y";
            // every tenth denied; each names a run in its details.
            let events = (0..2500)
                .map(|i| {
                    let action = if i % 5 == 0 { "rare.x" } else { "common.y" };
                    let outcome = if i % 10 == 0 { "denied" } else { "ok" };
                    nova::audit::Event::new("tester", action, format!("t{i}"), outcome)
                        .details(serde_json::json!({"run": format!("run-{}", i % 100)}))
                })
                .collect();
            log.append_all(events).await.unwrap();

            let rare = log.newest(Filter::action("rare.x"), 3).await.unwrap();
            let targets: Vec<&str> = rare.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(targets, ["t2495", "t2490", "t2485"]);
            assert!(rare.windows(2).all(|w| w[0].seq > w[1].seq));

            // More asked for than there are: every match, down to the first.
            let all = log.newest(Filter::action("rare.x"), 10_000).await.unwrap();
            assert_eq!(all.len(), 500);
            assert_eq!(all.last().unwrap().target, "t0");
            assert!(
                log.newest(Filter::action("none"), 5)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert!(log.newest(Filter::default(), 0).await.unwrap().is_empty());

            // The other filters, alone and together, the same on both stores.
            let targets = |found: Vec<nova::audit::Record>| -> Vec<String> {
                found.into_iter().map(|r| r.target).collect()
            };
            let prefix = log.newest(Filter::action("rare.*"), 2).await.unwrap();
            assert_eq!(targets(prefix), ["t2495", "t2490"]);
            let denied = Filter {
                outcome: Some("denied".into()),
                ..Filter::action("rare.x")
            };
            assert_eq!(
                targets(log.newest(denied, 3).await.unwrap()),
                ["t2490", "t2480", "t2470"]
            );
            let by_actor = Filter {
                actor: Some("test".into()),
                ..Filter::default()
            };
            assert_eq!(
                targets(log.newest(by_actor, 2).await.unwrap()),
                ["t2499", "t2498"]
            );
            let mentions = |m: &str| Filter {
                mentions: Some(m.into()),
                ..Filter::default()
            };
            assert_eq!(
                targets(log.newest(mentions("run-42"), 3).await.unwrap()),
                ["t2442", "t2342", "t2242"]
            );
            assert_eq!(
                targets(log.newest(mentions("t1234"), 5).await.unwrap()),
                ["t1234"]
            );
            assert!(log.newest(mentions("nobody"), 5).await.unwrap().is_empty());
            // A text with JSON's own characters is matched as well (on Redis,
            // by reading the records back rather than by Redis's search).
            assert_eq!(
                targets(log.newest(mentions("\"run\":\"run-42\""), 2).await.unwrap()),
                ["t2442", "t2342"]
            );
            let since = |at: i64| Filter {
                since: Some(at),
                ..Filter::action("rare.x")
            };
            let now = nova::clock::now_ms();
            assert_eq!(
                log.newest(since(now - 60_000), 1000).await.unwrap().len(),
                500
            );
            assert!(log.newest(since(now + 60_000), 5).await.unwrap().is_empty());
        }
    });
}

/// The dashboard's watch of the chain reads, after its first whole walk,
/// only the last verified record and the ones appended since, on SQLite and
/// on Redis (across Redis's read chunks of 1,000), and agrees with a whole
/// verification each time.
#[test]
fn the_watch_of_the_chain_reads_only_new_records_on_both_stores() {
    let stores = BothStores::start();
    stores.rt.block_on(async {
        let logs = &stores.logs;
        let events = |n: usize, from: usize| -> Vec<nova::audit::Event> {
            (from..from + n)
                .map(|i| nova::audit::Event::new("tester", "run.start", format!("t{i}"), "ok"))
                .collect()
        };
        for log in logs {
            let watch = nova::audit::watch::ChainWatch::default();
            log.append_all(events(1500, 0)).await.unwrap();
            let first = watch.check(log).await.unwrap();
            assert_eq!((first.read, first.verification.records), (1500, 1500));
            log.append_all(events(1200, 1500)).await.unwrap();
            let next = watch.check(log).await.unwrap();
            assert_eq!((next.read, next.verification.records), (1201, 2700));
            assert_eq!(next.verification, log.verify().await.unwrap());
            assert_eq!(next.evidence.get("A.8.32"), Some(&2700));
            let idle = watch.check(log).await.unwrap();
            assert_eq!((idle.read, idle.verification.records), (1, 2700));
        }
    });
}

/// Pointed at a SQLite queue store outside the workspace, `nova audit` says
/// that the chain it reads is the workspace's, and which file that is, so
/// "no records yet" is not taken for a verdict on the other file.
#[test]
fn audit_says_which_database_it_reads() {
    let ws = Workspace::new();
    let other = tempfile::tempdir().unwrap();
    let db = other.path().join("queue.db");
    ws.run(&[
        "bench",
        "audit",
        "--records",
        "3",
        "--db",
        db.to_str().unwrap(),
    ])
    .success();
    let store = format!("sqlite:{}", db.display());
    let here = ws.home().join("nova.db");
    ws.run(&["audit", "--store", &store, "verify"])
        .success()
        .stdout_has(&format!("no records yet (there is no {})", here.display()))
        .stderr_has(&format!(
            "the audit log is kept in the workspace's database, {}, not in the queue's store {}",
            here.display(),
            db.display()
        ));
}

/// How many times redis-server has run each command so far.
fn command_calls(con: &mut redis::Connection) -> std::collections::HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// On Redis a search for one action reads that action's records through
/// its index, not the whole list; a log written before the indexes existed
/// is indexed by its first such search; a list changed by hand, so that
/// the index no longer matches it, is read whole instead.
#[test]
fn a_search_for_one_action_reads_only_its_records_on_redis() {
    let redis = RedisServer::start();
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = nova::audit::AuditLog::redis(&redis.url()).await.unwrap();
        // 5,000 records, of which the first three are "rare.x".
        let events = (0..5000)
            .map(|i| {
                let action = if i < 3 { "rare.x" } else { "common.y" };
                nova::audit::Event::new("tester", action, format!("t{i}"), "ok")
            })
            .collect();
        log.append_all(events).await.unwrap();
        let rare = || async {
            let found = log.newest(Filter::action("rare.x"), 10).await.unwrap();
            found.into_iter().map(|r| r.target).collect::<Vec<_>>()
        };

        let before = command_calls(&mut raw);
        assert_eq!(rare().await, ["t2", "t1", "t0"]);
        let after = command_calls(&mut raw);
        let made = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
        assert_eq!(made("lindex"), 3, "one read per record found");
        assert_eq!(made("lrange"), 1, "the index alone: {after:?}");

        // As a nova from before the indexes leaves the log: no index, no count.
        let indexes: Vec<String> = redis::cmd("KEYS")
            .arg("nova:audit:action:*")
            .query(&mut raw)
            .unwrap();
        assert_eq!(indexes.len(), 2, "{indexes:?}");
        let _: () = redis::cmd("DEL").arg(&indexes).query(&mut raw).unwrap();
        let _: () = redis::cmd("HDEL")
            .arg("nova:audit:head")
            .arg("indexed")
            .query(&mut raw)
            .unwrap();
        assert_eq!(rare().await, ["t2", "t1", "t0"]);
        let indexed: u64 = redis::cmd("HGET")
            .arg("nova:audit:head")
            .arg("indexed")
            .query(&mut raw)
            .unwrap();
        assert_eq!(indexed, 5000);
        // From then on an append indexes its own record.
        log.append(nova::audit::Event::new("tester", "rare.x", "t5000", "ok"))
            .await
            .unwrap();
        let listed: u64 = redis::cmd("LLEN")
            .arg("nova:audit:action:rare.x")
            .query(&mut raw)
            .unwrap();
        assert_eq!(listed, 4);
        assert_eq!(rare().await, ["t5000", "t2", "t1", "t0"]);

        // An index, or the head's count of indexed records, changed by hand
        // into something that is not a number: appends go on, and searches
        // read the list instead.
        let _: () = redis::cmd("RPUSH")
            .arg("nova:audit:action:rare.x")
            .arg("not a number")
            .query(&mut raw)
            .unwrap();
        assert_eq!(rare().await, ["t5000", "t2", "t1", "t0"]);
        let _: () = redis::cmd("HSET")
            .arg("nova:audit:head")
            .arg("indexed")
            .arg("garbage")
            .query(&mut raw)
            .unwrap();
        log.append(nova::audit::Event::new("tester", "rare.x", "t5001", "ok"))
            .await
            .unwrap();
        assert_eq!(rare().await, ["t5001", "t5000", "t2", "t1", "t0"]);

        // The list's first record removed by hand: every number is off by one.
        let _: String = redis::cmd("LPOP")
            .arg("nova:audit:log")
            .query(&mut raw)
            .unwrap();
        assert_eq!(rare().await, ["t5001", "t5000", "t2", "t1"]);
    });
}
