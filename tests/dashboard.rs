//! The dashboard and the JSON API, over real HTTP and in a real browser.
//!
//! Each test starts `nova serve --http` (gRPC and HTTP on free loopback
//! ports) in a temporary workspace whose blueprints run real child
//! processes. The API tests talk to it with reqwest; the browser test drives
//! Debian's headless Chromium through chromedriver (WebDriver, fantoccini),
//! both installed by scripts/test. Screenshots of the main pages go to
//! `target/screenshots/` (or `$NOVA_SCREENSHOTS`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Workspace;
use nova::queue::client;
use nova::queue::proto::*;
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-test-token-0123456789abcdef";

/// A workspace with a two-phase plan: fetch, then build, then three checks
/// side by side, one of which (lint) fails. A local policy refuses to pause
/// the queue `protected` from the dashboard.
fn demo() -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "plan: workspace\nphases:\n  - name: prepare\n    goal: fetch and build\n  - name: verify\n    goal: check\n",
    );
    let agent = |name: &str, phase: &str, deps: &str, tasks: &str| {
        ws.write(
            &format!("blueprints/{name}.yaml"),
            &format!("name: {name}\nrole: implementation\nphase: {phase}\ndepends_on: [{deps}]\ntasks:\n{tasks}"),
        );
    };
    agent(
        "fetch",
        "prepare",
        "",
        "  - id: sources\n    title: fetch\n    run: {shell: \"echo fetching; sleep 1; echo fetched\"}\n",
    );
    agent(
        "build",
        "prepare",
        "fetch/sources",
        "  - id: compile\n    title: compile\n    run: {shell: \"echo compiling; sleep 1; echo compiled\"}\n",
    );
    agent(
        "unit",
        "verify",
        "build",
        "  - id: unit\n    title: unit tests\n    run: {shell: \"echo 42 tests; sleep 1; echo 42 passed\"}\n",
    );
    agent(
        "lint",
        "verify",
        "build",
        "  - id: lint\n    title: lint\n    run: {shell: \"echo linting; sleep 0.5; echo 'warning: unused variable'; exit 1\"}\n",
    );
    agent(
        "handbook",
        "verify",
        "build",
        "  - id: pages\n    title: pages\n    run: {shell: \"sleep 0.5; echo pages built\"}\n",
    );
    ws.write(
        "policies/local.rego",
        "package nova.authz\n\nimport rego.v1\n\n\
         deny contains \"the protected queue is never paused from the dashboard\" if {\n\
         \tinput.action == \"pause-queue\"\n\tinput.resource == \"protected\"\n\tinput.context.via == \"dashboard\"\n}\n",
    );
    ws
}

struct Server {
    child: Child,
    http: String,
    grpc: String,
    /// The workspace's database.
    db: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// `nova serve --http` on free ports, with the token when `token`.
fn serve(ws: &Workspace, token: bool) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let file;
    if token {
        file = ws.write("token", TOKEN);
        args.extend(["--token-file", file.to_str().unwrap()]);
    }
    let (child, announced) = ws.serve(&args);
    Server {
        child,
        http: announced["dashboard"]
            .as_str()
            .expect("the dashboard's URL")
            .trim_end_matches('/')
            .to_string(),
        grpc: announced["listening"].as_str().unwrap().to_string(),
        db: ws.home().join("nova.db"),
    }
}

impl Server {
    /// GET `path` with the bearer token, as JSON.
    async fn get(&self, c: &reqwest::Client, path: &str) -> Value {
        c.get(format!("{}{path}", self.http))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POST `path` with the bearer token and no body.
    async fn post(&self, c: &reqwest::Client, path: &str) -> reqwest::Response {
        c.post(format!("{}{path}", self.http))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn enqueue(grpc: &str, token: Option<&str>, queue: &str, max_attempts: u32) -> Task {
    let mut c = client::connect(grpc, token).await.unwrap();
    c.enqueue(EnqueueRequest {
        queue: queue.into(),
        r#type: "job".into(),
        payload: "{\"n\": 1}".into(),
        max_attempts,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .task
    .unwrap()
}

/// Take one task of `queue` and ack it (`success`), as a worker would.
async fn work_one(grpc: &str, token: Option<&str>, queue: &str, success: bool) -> Option<String> {
    let mut c = client::connect(grpc, token).await.unwrap();
    let task = c
        .dequeue(DequeueRequest {
            worker_id: "test-worker".into(),
            queues: vec![queue.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task?;
    c.ack(AckRequest {
        task_id: task.id.clone(),
        success,
        error: if success {
            String::new()
        } else {
            "it broke".into()
        },
        lease_id: task.lease_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    Some(task.id)
}

// ---- the API over real HTTP ----

/// A value for each path parameter, from what the test made.
fn fill(path: &str, ids: &Value) -> String {
    path.replace("{id}", ids["id"].as_str().unwrap_or("x"))
        .replace("{queue}", "jobs")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_answers_as_documented() {
    let ws = demo();
    let server = serve(&ws, true);
    let task = enqueue(&server.grpc, Some(TOKEN), "jobs", 1).await;
    let c = http();
    let doc: Value = c
        .get(format!("{}/api/v1/openapi.json", server.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 19, "{:?}", paths.keys());
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            if path == "/api/v1/events" {
                continue; // A stream: checked by the browser test.
            }
            // Routes on tasks use the task; routes on runs use a run that does not exist.
            let ids = if path.contains("/tasks/{id}") {
                json!({"id": task.id})
            } else {
                json!({"id": "no-such-run"})
            };
            let url = format!("{}{}", server.http, fill(path, &ids));
            let url = if path == "/api/v1/runs/{id}/log" {
                format!("{url}?agent=a&task=b")
            } else {
                url
            };
            let req = match method.as_str() {
                "get" => c.get(&url),
                "post" => c.post(&url).json(&json!({})),
                "delete" => c.delete(&url),
                other => panic!("unexpected method {other}"),
            };
            let resp = req.bearer_auth(TOKEN).send().await.unwrap();
            let status = resp.status().as_u16().to_string();
            let documented = op["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status),
                "{method} {path} answered {status}, documented: {:?}",
                documented.keys()
            );
            if status != "204" {
                let body: Value = resp
                    .json()
                    .await
                    .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
                if !status.starts_with('2') {
                    assert!(body["error"].is_string(), "{method} {path}: {body}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "checked {checked}");
    // POST /runs started a real run: let it end before the workspace goes.
    wait_for(
        "the started run to end",
        Duration::from_secs(60),
        || async {
            let runs: Value = c
                .get(format!("{}/api/v1/runs", server.http))
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            runs.as_array()?
                .iter()
                .all(|r| r["status"] != "running")
                .then_some(())
        },
    )
    .await;
}

async fn run_status(c: &reqwest::Client, server: &Server, id: &str) -> Value {
    server.get(c, &format!("/api/v1/runs/{id}")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_started_over_the_api_is_cancelled_and_resumed() {
    let ws = demo();
    // fetch takes long enough to be cancelled while it runs.
    ws.write(
        "blueprints/fetch.yaml",
        "name: fetch\nrole: implementation\nphase: prepare\ntasks:\n  - id: sources\n    title: fetch\n    run: {shell: \"test -f resumed || sleep 60; echo fetched\"}\n",
    );
    let server = serve(&ws, true);
    let c = http();
    let started: Value = c
        .post(format!("{}/api/v1/runs", server.http))
        .bearer_auth(TOKEN)
        .json(&json!({"agents": ["build"], "apply": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    wait_for("fetch to run", Duration::from_secs(30), || async {
        let v = run_status(&c, &server, &id).await;
        (v["run"]["live"] == true
            && v["tasks"]
                .as_array()?
                .iter()
                .any(|t| t["status"] == "running"))
        .then_some(())
    })
    .await;
    // Resuming a live run is refused; cancelling it stops it as Ctrl-C would.
    let r = server.post(&c, &format!("/api/v1/runs/{id}/resume")).await;
    assert_eq!(r.status(), 409);
    let r = server.post(&c, &format!("/api/v1/runs/{id}/cancel")).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    wait_for(
        "the run to end interrupted",
        Duration::from_secs(30),
        || async {
            let v = run_status(&c, &server, &id).await;
            (v["run"]["status"] == "interrupted" && v["run"]["live"] == false).then_some(())
        },
    )
    .await;
    // The run's view lists the tasks it never started.
    let interrupted = run_status(&c, &server, &id).await;
    let build: Vec<&str> = interrupted["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["agent"] == "build")
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert!(
        !build.is_empty() && build.iter().all(|s| *s == "not run"),
        "{interrupted}"
    );
    let r = server.post(&c, &format!("/api/v1/runs/{id}/cancel")).await;
    assert_eq!(
        r.status(),
        409,
        "an interrupted run cannot be cancelled again"
    );
    // Resumed, it finishes what it selected, under the same id.
    ws.write("resumed", "");
    let r = server.post(&c, &format!("/api/v1/runs/{id}/resume")).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let done = wait_for(
        "the resumed run to finish",
        Duration::from_secs(60),
        || async {
            let v = run_status(&c, &server, &id).await;
            (v["run"]["status"] == "done").then_some(v)
        },
    )
    .await;
    let tasks: Vec<(String, String)> = done["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["agent"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        tasks.contains(&("fetch".into(), "done".into()))
            && tasks.contains(&("build".into(), "done".into())),
        "{tasks:?}"
    );
    let audit: Value = server.get(&c, &format!("/api/v1/audit?run={id}")).await;
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "run.start.request",
        "run.cancel",
        "run.resume.request",
        "run.start",
    ] {
        assert!(actions.contains(&wanted), "{wanted} not in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_routes_refuse_strangers_and_cross_site_requests() {
    let ws = demo();
    let server = serve(&ws, true);
    let c = http();
    let pause = format!("{}/api/v1/queues/jobs/pause", server.http);
    // No credentials at all.
    let r = c.post(&pause).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "Authorization");
    // A wrong bearer token.
    assert_eq!(
        c.post(&pause)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Reads need credentials too.
    assert_eq!(
        c.get(format!("{}/api/v1/runs", server.http))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // A wrong token does not sign in; the right one sets an HttpOnly, SameSite=Strict cookie.
    let wrong = c
        .post(format!("{}/api/v1/session", server.http))
        .json(&json!({"token": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let signed = c
        .post(format!("{}/api/v1/session", server.http))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session: Value = signed.json().await.unwrap();
    let csrf = session["csrf_token"].as_str().unwrap().to_string();
    let cookie = cookie.split(';').next().unwrap().to_string();

    // The cookie alone reads, but changes nothing without the CSRF token.
    let r = c
        .get(format!("{}/api/v1/queues", server.http))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(&pause)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "X-CSRF-Token");
    // From another site, even with the token: refused.
    let r = c
        .post(&pause)
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "Origin");
    let stats: Value = server.get(&c, "/api/v1/queues").await;
    assert!(
        stats["queues"].as_array().unwrap().is_empty(),
        "nothing was paused: {stats}"
    );
    // Same site, cookie and token: done, and audited as the session.
    let r = c
        .post(&pause)
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", &server.http)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let audit: Value = server.get(&c, "/api/v1/audit?action=queue.pause").await;
    assert_eq!(
        audit["records"][0]["actor"], "operator:token-session@127.0.0.1",
        "{audit}"
    );
    assert_eq!(audit["chain"]["ok"], true);
    // Signed out, the cookie is worth nothing.
    let r = c
        .delete(format!("{}/api/v1/session", server.http))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{}/api/v1/runs", server.http))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Prometheus needs the token too.
    assert_eq!(
        c.get(format!("{}/metrics", server.http))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let metrics = c
        .get(format!("{}/metrics", server.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("queue_tasks"));
    // Every answer carries the CSP: no inline script.
    let page = c.get(format!("{}/", server.http)).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!page.text().await.unwrap().contains("<script>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_dashboard_answers_only_to_a_loopback_host() {
    let ws = demo();
    let server = serve(&ws, false);
    let c = http();
    let r = c
        .get(format!("{}/api/v1/session", server.http))
        .send()
        .await
        .unwrap();
    let session: Value = r.json().await.unwrap();
    assert_eq!(session["mode"], "loopback");
    assert_eq!(session["signed_in"], true);
    // DNS rebinding: a page of evil.example whose name now points at 127.0.0.1.
    let r = c
        .get(format!("{}/api/v1/session", server.http))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "Host");
    // Off loopback without a token, the server does not start.
    let out = ws.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "0.0.0.0:0",
        "--insecure",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--http 0.0.0.0:0") && out.stderr.contains("--token-file"),
        "{}",
        out.stderr
    );
}

/// Tasks enqueued by another process on the same store (as every run that
/// `nova dashboard` starts is) move the queue page's throughput series, not
/// only calls through this server.
#[tokio::test(flavor = "multi_thread")]
async fn queue_throughput_counts_other_processes_on_the_store() {
    let ws = demo();
    let server = serve(&ws, false);
    let c = http();
    let busy = |series: &Value| {
        series
            .as_array()
            .is_some_and(|s| s.iter().any(|p| p["enqueued_per_s"].as_f64() > Some(0.0)))
    };
    let series = server.get(&c, "/api/v1/queues").await["series"].clone();
    assert!(!busy(&series), "nothing was enqueued yet: {series}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ws.run(&["queue", "enqueue", "elsewhere", "--queue", "side"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let series = server.get(&c, "/api/v1/queues").await["series"].clone();
        if busy(&series) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the series never moved: {series}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The governance page's chain state follows new records (between whole
/// walks only they and the last verified record are read), agrees with the
/// store, and a change to the last verified record shows at the next look.
#[tokio::test(flavor = "multi_thread")]
async fn the_chain_state_follows_new_records_and_finds_a_changed_one() {
    let ws = demo();
    let server = serve(&ws, true);
    let c = http();
    let newest = |db: &rusqlite::Connection| -> (u64, String) {
        db.query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .unwrap()
    };
    let db = rusqlite::Connection::open(ws.home().join("nova.db")).unwrap();
    let paused = server.post(&c, "/api/v1/queues/jobs/pause").await;
    assert_eq!(paused.status(), 200);
    let first = server.get(&c, "/api/v1/audit").await["chain"].clone();
    let (seq, hash) = newest(&db);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["records"], seq, "{first}");
    assert_eq!(first["head"], hash.as_str(), "{first}");
    let walked = first["whole_walk_at"]
        .as_i64()
        .expect("when the chain was walked");

    let resumed = server.post(&c, "/api/v1/queues/jobs/resume").await;
    assert_eq!(resumed.status(), 200);
    let next = server.get(&c, "/api/v1/audit").await["chain"].clone();
    let (seq2, hash2) = newest(&db);
    assert!(seq2 > seq, "resuming was recorded");
    assert_eq!(next["ok"], true, "{next}");
    assert_eq!(next["records"], seq2, "{next}");
    assert_eq!(next["head"], hash2.as_str(), "{next}");
    assert_eq!(next["whole_walk_at"], walked, "no second whole walk yet");

    // Each control's evidence, as `nova audit controls` counts it.
    let api: Value = server.get(&c, "/api/v1/controls").await;
    let cli = ws.run(&["audit", "controls", "--json"]).success().json();
    let counts = |v: &Value, field: &str| -> Vec<(String, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c[field].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // `nova audit controls` appends a record of its own, after counting.
    assert_eq!(counts(&api, "evidence"), counts(&cli, "events"));

    // Change the record the chain was last verified up to.
    let head = server.get(&c, "/api/v1/audit").await["chain"].clone();
    let last = head["records"].as_u64().unwrap();
    assert_eq!(newest(&db).0, last, "{head}");
    db.execute(
        "UPDATE audit_log SET outcome = 'denied' WHERE seq = ?1",
        [last as i64],
    )
    .unwrap();
    let broken = server.get(&c, "/api/v1/audit").await["chain"].clone();
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["broken_at"], last, "{broken}");
    assert!(
        broken["reason"].as_str().unwrap().contains("was changed"),
        "{broken}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_get_a_4xx_naming_the_field_and_change_nothing() {
    let ws = demo();
    let server = serve(&ws, true);
    let c = http();
    let runs = format!("{}/api/v1/runs", server.http);
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"jobs": "many"}), 422, "jobs"),
        (json!({"jobs": 0}), 400, "jobs"),
        (json!({"mode": "sideways"}), 400, "mode"),
        (json!({"plan": "no-such-plan"}), 400, "plan"),
        (json!({"agents": ["no-such-agent"]}), 400, "agents"),
        (json!({"agents": "fetch"}), 422, "agents"),
        (json!({"phases": ["nope"]}), 400, "phases"),
        (json!({"agents": [""]}), 400, "agents[0]"),
        (json!({"colour": "blue"}), 422, "colour"),
    ];
    for (body, status, field) in cases {
        let r = c
            .post(&runs)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().len() > 5);
    }
    let r = c
        .post(&runs)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&runs)
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "Content-Type");
    let r = c
        .get(format!("{runs}?limit=lots"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "limit");
    let r = c
        .get(format!(
            "{}/api/v1/queues/jobs/tasks?status=DONE",
            server.http
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "status");
    let r = server.post(&c, "/api/v1/queues/bad%20name/pause").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "queue");
    // Nothing was started or recorded.
    let listed: Value = c
        .get(&runs)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
    assert!(!ws.home().join("runs").exists());
}

// ---- the browser ----

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (scripts/test installs Debian's chromium and chromium-driver)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    fantoccini::ClientBuilder::rustls()
        .expect("a WebDriver client")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

async fn attr(b: &fantoccini::Client, css: &str, name: &str) -> Option<String> {
    match b.find(fantoccini::Locator::Css(css)).await {
        Ok(el) => el.attr(name).await.ok().flatten(),
        Err(_) => None,
    }
}

async fn text(b: &fantoccini::Client, css: &str) -> Option<String> {
    match b.find(fantoccini::Locator::Css(css)).await {
        Ok(el) => el.text().await.ok(),
        Err(_) => None,
    }
}

/// Click `css` once it is there; a live update may redraw it between
/// finding and clicking, so a stale element is found again.
async fn click(b: &fantoccini::Client, css: &str) {
    wait_for(css, Duration::from_secs(20), || async {
        let el = b.find(fantoccini::Locator::Css(css)).await.ok()?;
        match el.click().await {
            Ok(_) => Some(()),
            Err(e) if e.to_string().contains("stale") => None,
            Err(e) => panic!("click {css}: {e}"),
        }
    })
    .await;
}

async fn shot(b: &fantoccini::Client, name: &str) {
    let folder = std::env::var_os("NOVA_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
        });
    std::fs::create_dir_all(&folder).unwrap();
    let png = b.screenshot().await.unwrap();
    std::fs::write(folder.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_watches_and_steers_nova_from_a_browser() {
    let ws = demo();
    ws.run(&["monitor", "--once"]).success();
    store_an_h200_sample(&ws);
    let server = serve(&ws, true);
    let driver = chromedriver();
    let b = browser(&driver).await;
    let result = steer(&b, &server).await;
    let _ = b.close().await;
    result
}

/// The sample `nova monitor` stored on an H200 host (the device machine,
/// 2026-12-04) under a PyTorch load, as the newest of the stored history:
/// the machines the tests run on have no GPU.
fn store_an_h200_sample(ws: &Workspace) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let sample = json!({"at": at, "cpu_percent": 6.2, "load": [0.22, 0.05, 0.02],
        "memory_used": 1_089_048_576u64, "memory_total": 135_129_063_424u64, "memory_percent": 0.81,
        "swap_used": 0, "swap_total": 0,
        "disks": [{"mount": "/", "free": 68_664_008_704u64, "total": 270_553_174_016u64, "free_percent": 25.4}],
        "net_rx_bytes_per_second": 0.0, "net_tx_bytes_per_second": 0.0,
        "gpus": [{"index": 0, "name": "NVIDIA H200", "utilization": 99, "memory_used": 18_374_000_640u64,
            "memory_total": 150_754_820_096u64, "temperature": 66, "power": 690.066}]});
    rusqlite::Connection::open(ws.home().join("nova.db"))
        .unwrap()
        .execute(
            "INSERT INTO monitor_samples (at, sample) VALUES (?1, ?2)",
            rusqlite::params![at, sample.to_string()],
        )
        .unwrap();
}

async fn steer(b: &fantoccini::Client, server: &Server) {
    use fantoccini::Locator::Css;
    // Sign in: a wrong token is refused, the right one lets the operator in.
    b.goto(&format!("{}/", server.http)).await.unwrap();
    wait_for("the sign-in form", Duration::from_secs(20), || async {
        b.find(Css("#token")).await.ok()
    })
    .await;
    b.find(Css("#token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    click(b, "#sign-in").await;
    let refused = wait_for("the refusal", Duration::from_secs(20), || async {
        text(b, "#toast").await.filter(|t| !t.is_empty())
    })
    .await;
    assert!(refused.contains("wrong token"), "{refused}");
    assert!(b.find(Css("#start-run")).await.is_err(), "still signed out");
    let token = b.find(Css("#token")).await.unwrap();
    token.clear().await.unwrap();
    token.send_keys(TOKEN).await.unwrap();
    click(b, "#sign-in").await;
    wait_for("the runs page", Duration::from_secs(20), || async {
        b.find(Css("#start-run #start")).await.ok()
    })
    .await;

    // Start a run from the page and watch its tasks reach their final states live.
    b.find(Css("#mode"))
        .await
        .unwrap()
        .select_by_value("parallel")
        .await
        .unwrap();
    click(b, "#apply").await;
    click(b, "#keep-going").await;
    click(b, "#start").await;
    let run_id = wait_for("the run's page", Duration::from_secs(20), || async {
        let url = b.current_url().await.ok()?;
        url.fragment()?.strip_prefix("/runs/").map(String::from)
    })
    .await;
    let seen_running = std::sync::atomic::AtomicBool::new(false);
    let final_status = wait_for("the run to end", Duration::from_secs(90), || async {
        if attr(b, "#timeline rect[data-status='running']", "data-status")
            .await
            .is_some()
        {
            seen_running.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let status = attr(b, "#run-status .badge", "data-status").await?;
        (status != "running").then_some(status)
    })
    .await;
    let seen_running = seen_running.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        seen_running,
        "the page never showed a task running: updates were not live"
    );
    assert_eq!(final_status, "failed", "lint fails; the others pass");
    // The rows as read now; none when the live page replaced a row while
    // it was being read (a stale element), so the caller looks again.
    let statuses = |css: &'static str| async move {
        let mut out = Vec::new();
        for row in b.find_all(Css(css)).await.unwrap() {
            let (Ok(Some(task)), Ok(Some(status))) =
                (row.attr("data-task").await, row.attr("data-status").await)
            else {
                return Vec::new();
            };
            out.push((task, status));
        }
        out.sort();
        out
    };
    let rows = wait_for(
        "every task's final state",
        Duration::from_secs(20),
        || async {
            let rows = statuses("#run-tasks tbody tr").await;
            (rows.len() == 5 && rows.iter().all(|(_, s)| s != "running" && s != "pending"))
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(
        rows,
        [
            ("build/compile".to_string(), "done".to_string()),
            ("fetch/sources".into(), "done".into()),
            ("handbook/pages".into(), "done".into()),
            ("lint/lint".into(), "failed".into()),
            ("unit/unit".into(), "done".into()),
        ]
    );
    assert!(b.find_all(Css("#graph .node")).await.unwrap().len() == 5);
    // One edge a dependency, build's on one task of fetch included.
    assert_eq!(b.find_all(Css("#graph .edge")).await.unwrap().len(), 4);
    b.execute("document.getElementById('graph').scrollIntoView()", vec![])
        .await
        .unwrap();
    shot(b, "run-graph").await;
    b.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    // A task's log.
    click(b, "#run-tasks tr[data-task='lint/lint'] .log-button").await;
    let log = wait_for("the log", Duration::from_secs(20), || async {
        text(b, "#log").await
    })
    .await;
    assert!(log.contains("warning: unused variable"), "{log}");
    shot(b, "run").await;
    // No GPU where the tests run, so no GPU column; a task with GPU figures
    // (those an H200 host recorded for a PyTorch task) brings one.
    let head = text(b, "#run-tasks thead").await.unwrap();
    assert!(!head.contains("GPU"), "{head}");
    rusqlite::Connection::open(&server.db)
        .unwrap()
        .execute(
            "UPDATE run_tasks SET gpu_memory = 9774825472, gpu_util = 93.9
             WHERE run_id = ?1 AND agent = 'build' AND task = 'compile'",
            [&run_id],
        )
        .unwrap();
    b.refresh().await.unwrap();
    let row = wait_for(
        "the task's GPU figures",
        Duration::from_secs(20),
        || async {
            text(b, "#run-tasks tr[data-task='build/compile'] td.gpu")
                .await
                .filter(|t| !t.is_empty())
        },
    )
    .await;
    assert_eq!(row, "9.1 GiB, 94%");
    b.goto(&format!("{}/#/runs", server.http)).await.unwrap();
    wait_for("the runs list", Duration::from_secs(20), || async {
        b.find(Css(&format!("#runs tr[data-run='{run_id}']")))
            .await
            .ok()
    })
    .await;
    shot(b, "runs").await;

    // Pause a queue: a worker takes nothing from it; resumed, it drains.
    for _ in 0..3 {
        enqueue(&server.grpc, Some(TOKEN), "jobs", 1).await;
    }
    b.goto(&format!("{}/#/queues", server.http)).await.unwrap();
    click(b, "#queues button.pause[data-queue='jobs']").await;
    wait_for("jobs to show paused", Duration::from_secs(20), || async {
        attr(b, "#queues tr[data-queue='jobs']", "data-paused")
            .await
            .filter(|p| p == "yes")
    })
    .await;
    let idle_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < idle_until {
        assert_eq!(
            work_one(&server.grpc, Some(TOKEN), "jobs", true).await,
            None,
            "a paused queue handed out a task"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        text(b, "#queues tr[data-queue='jobs'] td[data-count='PENDING']")
            .await
            .as_deref(),
        Some("3")
    );
    click(b, "#queues button.resume[data-queue='jobs']").await;
    wait_for("jobs to show active", Duration::from_secs(20), || async {
        attr(b, "#queues tr[data-queue='jobs']", "data-paused")
            .await
            .filter(|p| p == "no")
    })
    .await;
    let mut drained = 0;
    while work_one(&server.grpc, Some(TOKEN), "jobs", true)
        .await
        .is_some()
    {
        drained += 1;
    }
    assert_eq!(drained, 3);
    wait_for(
        "the page to show the queue drained",
        Duration::from_secs(20),
        || async {
            text(
                b,
                "#queues tr[data-queue='jobs'] td[data-count='COMPLETED']",
            )
            .await
            .filter(|n| n == "3")
        },
    )
    .await;

    // A policy's denial, with its reasons, in the page.
    enqueue(&server.grpc, Some(TOKEN), "protected", 1).await;
    wait_for("the protected queue", Duration::from_secs(20), || async {
        b.find(Css("#queues button.pause[data-queue='protected']"))
            .await
            .ok()
    })
    .await;
    click(b, "#queues button.pause[data-queue='protected']").await;
    let reasons = wait_for("the denial's reasons", Duration::from_secs(20), || async {
        text(b, "#toast #reasons").await
    })
    .await;
    assert!(
        reasons.contains("the protected queue is never paused from the dashboard"),
        "{reasons}"
    );
    assert!(
        text(b, "#toast")
            .await
            .unwrap()
            .contains("denied by policy")
    );
    assert_eq!(
        attr(b, "#queues tr[data-queue='protected']", "data-paused")
            .await
            .as_deref(),
        Some("no")
    );

    // A worker that says who it is shows under Workers, with the task it holds.
    let mut grpc = client::connect(&server.grpc, Some(TOKEN)).await.unwrap();
    let info = WorkerInfo {
        host: "gpu-box".into(),
        version: "1.2.3".into(),
        pid: 777,
        concurrency: 2,
    };
    let lease = DequeueRequest {
        worker_id: "gpu-box-777-0".into(),
        queues: vec!["jobs".into()],
        lease_ms: 60_000,
        ..Default::default()
    };
    let mut stream = client::WorkStream::open_as(&mut grpc, lease, 1, Some(info))
        .await
        .unwrap();
    let held = enqueue(&server.grpc, Some(TOKEN), "jobs", 1).await;
    let pushed = stream.next().await.unwrap().unwrap().tasks;
    assert_eq!(pushed[0].id, held.id);
    // So does a client that polls, as the original proto's do: the
    // address it calls from, and no pid, version or concurrency, which it
    // cannot say.
    assert_eq!(
        work_one(&server.grpc, Some(TOKEN), "jobs", true).await,
        None
    );
    b.refresh().await.unwrap();
    wait_for(
        "the worker under Workers",
        Duration::from_secs(20),
        || async {
            text(b, "#workers tr[data-pid='777'] td[data-busy]")
                .await
                .filter(|busy| busy == "1 / 2")
        },
    )
    .await;
    let row = text(b, "#workers tr[data-pid='777']").await.unwrap();
    assert!(
        row.contains("gpu-box") && row.contains("1.2.3") && row.contains("jobs"),
        "{row}"
    );
    assert!(row.contains(&held.id[..13]), "{row}");
    let poller = text(b, "#workers tr[data-pid='0']").await.unwrap();
    assert!(
        poller.contains("127.0.0.1") && poller.contains("0 / ?") && poller.contains("jobs"),
        "{poller}"
    );
    // Each queue says how many worker processes take it: jobs these two;
    // protected, a task pending and none.
    wait_for("the workers of jobs", Duration::from_secs(20), || async {
        text(b, "#queues tr[data-queue='jobs'] td[data-takers]")
            .await
            .filter(|n| n == "2")
    })
    .await;
    assert_eq!(
        text(b, "#queues tr[data-queue='protected'] td[data-takers]")
            .await
            .as_deref(),
        Some("none listed")
    );
    shot(b, "queues").await;
    drop(stream);

    // Retry a failed task.
    enqueue(&server.grpc, Some(TOKEN), "flaky", 1).await;
    let failed = work_one(&server.grpc, Some(TOKEN), "flaky", false)
        .await
        .unwrap();
    b.goto(&format!("{}/#/queues/flaky", server.http))
        .await
        .unwrap();
    let row = format!("#tasks tr[data-task='{failed}']");
    wait_for("the failed task", Duration::from_secs(20), || async {
        attr(b, &row, "data-status").await.filter(|s| s == "FAILED")
    })
    .await;
    click(b, &format!("{row} button.retry")).await;
    wait_for(
        "the task back in the queue",
        Duration::from_secs(20),
        || async {
            attr(b, &row, "data-status")
                .await
                .filter(|s| s == "PENDING")
        },
    )
    .await;

    // Host and governance pages show real figures and the decisions.
    b.goto(&format!("{}/#/host", server.http)).await.unwrap();
    wait_for("host charts", Duration::from_secs(20), || async {
        text(b, "#host-charts")
            .await
            .filter(|t| t.contains("CPU") && t.contains('%'))
    })
    .await;
    shot(b, "host").await;
    // The stored history's GPU card: busy time, memory, temperature, power.
    click(b, "button[role='tab']:nth-child(2)").await;
    let gpu = wait_for("the H200's card", Duration::from_secs(20), || async {
        text(b, "#host-charts")
            .await
            .filter(|t| t.contains("GPU 0 NVIDIA H200"))
    })
    .await;
    for figure in [
        "util 99%",
        "memory 12%",
        "17.1 GiB of 140.4 GiB",
        "66 °C",
        "690 W",
    ] {
        assert!(gpu.contains(figure), "{figure} not in {gpu}");
    }
    shot(b, "host-history").await;
    b.goto(&format!("{}/#/governance", server.http))
        .await
        .unwrap();
    let chain = wait_for("the audit chain", Duration::from_secs(20), || async {
        attr(b, "#chain [data-chain]", "data-chain").await
    })
    .await;
    assert_eq!(chain, "ok");
    wait_for("a recorded denial", Duration::from_secs(20), || async {
        b.find(Css("#decisions tr[data-allowed='false']"))
            .await
            .ok()
    })
    .await;
    shot(b, "governance").await;
    // A phone-width window still shows the page.
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&format!("{}/#/runs/{run_id}", server.http))
        .await
        .unwrap();
    wait_for("the run on a phone", Duration::from_secs(20), || async {
        b.find(Css("#timeline")).await.ok()
    })
    .await;
    shot(b, "run-phone").await;
}
