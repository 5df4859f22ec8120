//! The policy engine: the embedded evaluator and the OPA REST client agree,
//! faults deny with their reason and an audit record, workspace policies
//! override the built-in ones, and `nova policy test` runs Rego tests.
//!
//! The REST path runs against an HTTP server on loopback that follows OPA's
//! documented REST API (`PUT /v1/policies/{id}`, `POST /v1/data/{path}` with
//! `{"input": ...}`, `{"result": ...}` or `{}` when undefined, and
//! `{"code", "message"}` error bodies), evaluating what was pushed to it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::Workspace;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Slow,
    Error500,
    InvalidJson,
}

struct OpaState {
    policies: BTreeMap<String, String>,
    mode: Mode,
    token: Option<String>,
}

type Shared = Arc<Mutex<OpaState>>;

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({"code": code, "message": message}))
}

fn authorized(state: &OpaState, headers: &HeaderMap) -> bool {
    state.token.as_ref().is_none_or(|t| {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {t}"))
    })
}

fn engine(policies: &BTreeMap<String, String>) -> Result<regorus::Engine, String> {
    let mut engine = regorus::Engine::new();
    for (id, text) in policies {
        engine
            .add_policy(id.clone(), text.clone())
            .map_err(|e| e.to_string())?;
    }
    Ok(engine)
}

async fn put_policy(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    if !authorized(&s, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong token",
        );
    }
    let text = String::from_utf8_lossy(&body).to_string();
    let mut next = s.policies.clone();
    next.insert(id, text);
    if let Err(e) = engine(&next) {
        return error(StatusCode::BAD_REQUEST, "invalid_parameter", &e);
    }
    s.policies = next;
    json_response(StatusCode::OK, json!({}))
}

async fn post_data(
    State(state): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (mode, policies) = {
        let s = state.lock().unwrap();
        if !authorized(&s, &headers) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong token",
            );
        }
        (s.mode, s.policies.clone())
    };
    match mode {
        Mode::Slow => tokio::time::sleep(Duration::from_secs(3)).await,
        Mode::Error500 => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "boom");
        }
        Mode::InvalidJson => {
            return (StatusCode::OK, "{\"result\": {\"allow\": tru").into_response();
        }
        Mode::Normal => {}
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_parameter", &e.to_string()),
    };
    let mut engine = match engine(&policies) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", &e),
    };
    if let Some(input) = request.get("input") {
        engine.set_input(regorus::Value::from_json_str(&input.to_string()).unwrap());
    }
    let query = format!("data.{}", path.trim_matches('/').replace('/', "."));
    let results = match engine.eval_query(query, false) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                &e.to_string(),
            );
        }
    };
    match results.result.first().and_then(|r| r.expressions.first()) {
        Some(expr) if expr.value != regorus::Value::Undefined => {
            let value: Value = serde_json::from_str(&expr.value.to_json_str().unwrap()).unwrap();
            json_response(StatusCode::OK, json!({ "result": value }))
        }
        // OPA answers 200 with no `result` when the document is undefined.
        _ => json_response(StatusCode::OK, json!({})),
    }
}

struct Opa {
    url: String,
    state: Shared,
    _rt: tokio::runtime::Runtime,
}

impl Opa {
    fn start(token: Option<&str>) -> Opa {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state: Shared = Arc::new(Mutex::new(OpaState {
            policies: BTreeMap::new(),
            mode: Mode::Normal,
            token: token.map(String::from),
        }));
        let app = Router::new()
            .route("/v1/policies/{*id}", axum::routing::put(put_policy))
            .route("/v1/data/{*path}", axum::routing::post(post_data))
            .with_state(state.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Opa {
            url,
            state,
            _rt: rt,
        }
    }

    fn mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }
}

/// At least 30 inputs across roles, actions and contexts, allowed and denied.
fn table() -> Vec<Value> {
    let mut inputs = Vec::new();
    let roles = [
        "operator",
        "infrastructure",
        "security",
        "operations",
        "implementation",
        "data-storage",
        "stranger",
    ];
    let actions = [
        "run",
        "install",
        "enqueue",
        "configure-firewall",
        "create-user",
        "serve",
    ];
    for role in roles {
        for action in actions {
            inputs.push(json!({
                "subject": {"agent": format!("{role}-agent"), "role": role},
                "action": action,
                "resource": if action == "install" { json!("tree") } else { json!("x") },
                "context": {},
            }));
        }
    }
    for (role, root, allowed_by_blueprint) in [
        ("infrastructure", true, true),
        ("infrastructure", true, false),
        ("implementation", true, true),
        ("operator", false, false),
    ] {
        inputs.push(json!({
            "subject": {"agent": "a", "role": role},
            "action": "run",
            "resource": "setup.sh",
            "context": {"as_root": root, "blueprint_allows_root": allowed_by_blueprint},
        }));
    }
    for (loopback, auth, insecure) in [
        (false, false, false),
        (false, true, false),
        (false, false, true),
        (true, false, false),
    ] {
        inputs.push(json!({
            "subject": {"agent": "me", "role": "operator"},
            "action": "serve",
            "resource": "0.0.0.0:6682",
            "context": {"loopback": loopback, "auth": auth, "insecure": insecure},
        }));
    }
    inputs.push(json!({"subject": {"agent": "me", "role": "operator"}, "action": "launch", "resource": "x"}));
    inputs.push(json!({"subject": {"agent": "me", "role": "operator"}, "action": "install", "resource": 42}));
    inputs.push(json!({"action": "run"}));
    inputs
}

fn eval(ws: &Workspace, opa: Option<&str>, input: &Value) -> (i32, Value) {
    let path = ws.write("input.json", &input.to_string());
    let mut args = vec!["policy", "eval", "--json", "--input"];
    let path = path.to_str().unwrap().to_string();
    args.push(&path);
    if let Some(url) = opa {
        args.extend(["--opa-url", url]);
    }
    let out = ws.run(&args);
    let json = if out.stdout.trim().is_empty() {
        Value::Null
    } else {
        out.json()
    };
    (out.code, json)
}

fn sorted(reasons: &Value) -> Vec<String> {
    let mut r: Vec<String> = reasons
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    r.sort();
    r
}

#[test]
fn embedded_and_rest_give_the_same_decisions() {
    let opa = Opa::start(None);
    let ws = Workspace::new();

    // Before the policies are pushed, the document is undefined: deny.
    let probe = &table()[0];
    let (code, d) = eval(&ws, Some(&opa.url), probe);
    assert_eq!(code, 3);
    assert!(
        d["reasons"][0].as_str().unwrap().contains("undefined"),
        "{d}"
    );

    ws.run(&["policy", "push", "--opa-url", &opa.url])
        .success()
        .stdout_has("pushed nova/authorization");
    let inputs = table();
    assert!(inputs.len() >= 30);
    let (mut allowed, mut denied) = (0, 0);
    for input in &inputs {
        let (code_e, embedded) = eval(&ws, None, input);
        let (code_r, rest) = eval(&ws, Some(&opa.url), input);
        assert_eq!(embedded["evaluator"], "embedded");
        assert_eq!(rest["evaluator"], "opa");
        assert_eq!(embedded["allow"], rest["allow"], "{input}");
        assert_eq!(
            sorted(&embedded["reasons"]),
            sorted(&rest["reasons"]),
            "{input}"
        );
        assert_eq!(code_e, code_r);
        assert_eq!(code_e, if embedded["allow"] == true { 0 } else { 3 });
        if embedded["allow"] == true {
            allowed += 1
        } else {
            denied += 1
        }
    }
    assert!(
        allowed >= 10 && denied >= 10,
        "{allowed} allowed, {denied} denied"
    );

    // The push and every decision are in the audit log.
    let log = ws
        .run(&["audit", "log", "--action", "policy.push", "--json"])
        .success()
        .json();
    assert_eq!(log.as_array().unwrap().len(), 2);
}

#[test]
fn opa_faults_deny_with_their_reason_and_an_audit_record() {
    let opa = Opa::start(Some("opa-token"));
    let ws = Workspace::new();
    ws.write("opa.token", "opa-token\n");
    let input =
        json!({"subject": {"agent": "me", "role": "operator"}, "action": "run", "resource": "x"});
    ws.write("input.json", &input.to_string());
    let run = |extra: &[&str]| {
        let mut args = vec!["policy", "eval", "--input", "input.json", "--opa-url"];
        args.push(&opa.url);
        args.extend_from_slice(extra);
        ws.run(&args)
    };
    // Without the token OPA says 401.
    run(&[]).code(3).stdout_has("OPA answered 401");
    ws.run(&[
        "policy",
        "push",
        "--opa-url",
        &opa.url,
        "--opa-token-file",
        "opa.token",
    ])
    .success();
    run(&["--opa-token-file", "opa.token"])
        .success()
        .stdout_has("allowed (opa)");

    opa.mode(Mode::Slow);
    let started = std::time::Instant::now();
    run(&["--opa-token-file", "opa.token", "--opa-timeout", "200ms"])
        .code(3)
        .stdout_has("did not answer within 200 ms");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout held"
    );
    opa.mode(Mode::Error500);
    run(&["--opa-token-file", "opa.token"])
        .code(3)
        .stdout_has("OPA answered 500 Internal Server Error: internal_error: boom");
    opa.mode(Mode::InvalidJson);
    run(&["--opa-token-file", "opa.token"])
        .code(3)
        .stdout_has("OPA's answer is not valid JSON");
    // OPA stopped: nothing listens on this port any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    ws.run(&[
        "policy",
        "eval",
        "--input",
        "input.json",
        "--opa-url",
        &closed,
    ])
    .code(3)
    .stdout_has("cannot reach OPA");

    let denials = ws
        .run(&["audit", "log", "--action", "policy.decision", "--json"])
        .success()
        .json();
    let reasons: Vec<String> = denials
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "denied")
        .map(|r| r["details"]["reasons"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    for needle in [
        "401",
        "did not answer",
        "500",
        "not valid JSON",
        "cannot reach",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle}: {reasons:?}"
        );
    }
    // The token never entered the log.
    let all = ws.run(&["audit", "export"]).success();
    assert!(!all.stdout.contains("opa-token"));
}

#[test]
fn a_workspace_policy_can_deny_and_the_action_stops_with_exit_3() {
    let ws = Workspace::new();
    ws.write(
        "policies/authorization.rego",
        "package nova.authz\nimport rego.v1\ndefault allow := false\nreasons contains \"enqueue is frozen\" if input.action == \"enqueue\"\n",
    );
    ws.run(&["queue", "enqueue", "build"])
        .code(3)
        .stderr_has("enqueue build denied by policy: enqueue is frozen");
    let listed = ws.run(&["queue", "list", "--json"]).success().json();
    assert_eq!(listed, json!([]), "nothing was enqueued");
    ws.run(&["serve", "--listen", "127.0.0.1:0"])
        .code(3)
        .stderr_has("serve 127.0.0.1:0 denied by policy");
    ws.run(&["policy", "list"])
        .success()
        .stdout_has("policies/authorization.rego");
    // Its tests no longer hold against the replaced policy.
    ws.run(&["policy", "test"])
        .code(1)
        .stdout_has("FAIL data.nova.authz_test.test_the_operator_may_install");
}

#[test]
fn policy_tests_pass_and_bad_policies_or_inputs_are_named() {
    let ws = Workspace::new();
    ws.run(&["policy", "test"])
        .success()
        .stdout_has("10 tests, 10 passed, 0 failed");
    ws.write("policies/broken.rego", "package nova.broken\nallow if {\n");
    ws.run(&["policy", "test"])
        .code(2)
        .stderr_has("policies/broken.rego");
    std::fs::remove_file(ws.path().join("policies/broken.rego")).unwrap();

    ws.write("bad.json", "{\"action\": ");
    ws.run(&["policy", "eval", "--input", "bad.json"])
        .code(2)
        .stderr_has("--input bad.json: not valid JSON (line 1");
    ws.write("list.json", "[1, 2]");
    ws.run(&["policy", "eval", "--input", "list.json"])
        .code(2)
        .stderr_has("must be a JSON object");
    ws.run(&["policy", "push"])
        .code(2)
        .stderr_has("needs an OPA server");
    ws.write("ok.json", "{\"action\": \"run\"}");
    ws.run(&[
        "policy",
        "eval",
        "--input",
        "ok.json",
        "--opa-url",
        "ftp://x",
    ])
    .code(2)
    .stderr_has("--opa-url");
}

#[test]
fn nova_yaml_can_name_the_opa_server_and_the_flag_wins() {
    let ws = Workspace::new();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    ws.write("nova.yaml", &format!("opa_url: {closed}\n"));
    ws.write(
        "input.json",
        r#"{"subject": {"agent": "me", "role": "operator"}, "action": "run"}"#,
    );
    ws.run(&["policy", "eval", "--input", "input.json"])
        .code(3)
        .stdout_has(&format!("cannot reach OPA at {closed}"));
    let opa = Opa::start(None);
    ws.run(&["policy", "push", "--opa-url", &opa.url]).success();
    ws.run(&[
        "policy",
        "eval",
        "--input",
        "input.json",
        "--opa-url",
        &opa.url,
    ])
    .success()
    .stdout_has("allowed (opa)");
}
