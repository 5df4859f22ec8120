//! Property tests of the inputs nova parses: blueprint YAML, nova.yaml, a
//! policy input, and gRPC requests through the queue service on a real
//! SQLite file. For any input: no panic, an error from the contract (bad
//! input is exit 2 or INVALID_ARGUMENT), and a refused request stores
//! nothing. The number of cases is bounded (PROPTEST_CASES, 256 by default
//! here) so the suite's time stays fixed.

use std::sync::Arc;

use nova::blueprints::catalog::{Catalog, Input, Layer};
use nova::config::Config;
use nova::queue::proto::task_queue_server::TaskQueue;
use nova::queue::proto::*;
use nova::queue::service::QueueService;
use nova::queue::sqlite::SqliteQueue;
use proptest::prelude::*;
use serde_json::Value;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

/// YAML that is often almost a blueprint: known keys with values of every
/// shape, and sometimes plain noise.
fn blueprint_text() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just("".to_string()),
        Just("~".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[true]".to_string()),
        Just("{shell: \"true\"}".to_string()),
        Just("10m".to_string()),
        Just("-1".to_string()),
        "[a-z]{1,8}",
        "[ -~]{0,20}",
        any::<u32>().prop_map(|n| n.to_string()),
    ];
    let key = prop_oneof![
        Just("name"),
        Just("role"),
        Just("phase"),
        Just("plan"),
        Just("depends_on"),
        Just("skills"),
        Just("description"),
        Just("resources"),
        Just("definition_of_done"),
        Just("unknown_key"),
    ];
    let task_key = prop_oneof![
        Just("id"),
        Just("title"),
        Just("run"),
        Just("check"),
        Just("when"),
        Just("env"),
        Just("cwd"),
        Just("timeout"),
        Just("retries"),
        Just("run_as_root"),
    ];
    let task = prop::collection::vec((task_key, scalar.clone()), 0..6).prop_map(|fields| {
        let mut text = String::from("  -");
        for (i, (k, v)) in fields.iter().enumerate() {
            text.push_str(if i == 0 { " " } else { "    " });
            text.push_str(&format!("{k}: {v}\n"));
        }
        if fields.is_empty() {
            text.push_str(" {}\n");
        }
        text
    });
    let structured = (
        prop::collection::vec((key, scalar), 0..8),
        prop::collection::vec(task, 0..4),
    )
        .prop_map(|(fields, tasks)| {
            let mut text: String = fields.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            if !tasks.is_empty() {
                text.push_str("tasks:\n");
                text.extend(tasks);
            }
            text
        });
    prop_oneof![3 => structured, 1 => "\\PC{0,200}"]
}

fn config_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("plan: delivery".to_string()),
        Just("execution_mode: sideways".to_string()),
        Just("store: sqlite:x.db".to_string()),
        Just("service_user: root".to_string()),
        Just("packages:\n  docker: \">=24\"".to_string()),
        Just("packages:\n  docker: [1]".to_string()),
        Just("setup:\n  min_disk_free: lots".to_string()),
        Just("setup:\n  endpoints: [nowhere]".to_string()),
        Just("setup:\n  catalog:\n    x: {commands: [a/b]}".to_string()),
        Just("monitor:\n  cpu_percent: 1e9".to_string()),
        Just("monitor:\n  history: 0".to_string()),
        Just("phases:\n  - name: a".to_string()),
        "[a-z_]{1,10}: [ -~]{0,12}",
    ];
    prop_oneof![
        3 => prop::collection::vec(line, 0..6).prop_map(|l| l.join("\n")),
        1 => "\\PC{0,200}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("run"),
            Just("install"),
            Just("serve"),
            Just("operator"),
            Just("infrastructure")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("subject".to_string()),
                    Just("agent".to_string()),
                    Just("role".to_string()),
                    Just("action".to_string()),
                    Just("resource".to_string()),
                    Just("context".to_string()),
                    Just("as_root".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_blueprint_is_taken_or_refused_as_bad_input(text in blueprint_text()) {
        let input = Input { label: "fuzz.yaml".into(), text, layer: Layer::Workspace };
        if let Err(e) = Catalog::assemble(vec![input], &Config::default(), None) {
            prop_assert_eq!(e.exit_code(), 2, "{}", e);
            prop_assert!(e.to_string().contains("fuzz.yaml"), "the file is named: {}", e);
        }
    }

    #[test]
    fn any_nova_yaml_is_taken_or_refused_as_bad_input(text in config_text()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nova.yaml"), &text).unwrap();
        if let Err(e) = Config::load(dir.path()) {
            prop_assert_eq!(e.exit_code(), 2, "{}", e);
            prop_assert!(e.to_string().contains("nova.yaml"), "the file is named: {}", e);
        }
        prop_assert_eq!(std::fs::read_to_string(dir.path().join("nova.yaml")).unwrap(), text);
    }
}

#[test]
fn any_policy_input_gets_a_decision_with_reasons_or_a_denial() {
    let files = nova::policy::embedded::policy_files(std::path::Path::new("/nonexistent")).unwrap();
    let engine = nova::policy::embedded::Embedded::new(&files).unwrap();
    let policy = nova::policy::Policy::new(nova::policy::Evaluator::Embedded(Arc::new(engine)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&json_value(), |input| {
            let decision = rt.block_on(policy.decide(&input));
            // Anything that is not a well-formed request of a known role is denied.
            let known = input["subject"]["role"].is_string() && input["action"].is_string();
            prop_assert!(known || !decision.allow, "{input} was allowed");
            Ok(())
        })
        .unwrap();
}

/// Requests with fields of every size and shape; the service either takes
/// them or answers INVALID_ARGUMENT and stores nothing.
fn enqueue_request() -> impl Strategy<Value = EnqueueRequest> {
    (
        "\\PC{0,140}",
        prop_oneof![
            "\\PC{0,40}",
            Just(String::new()),
            Just("x".repeat(1024 * 1024 + 1))
        ],
        prop::collection::vec(("\\PC{0,140}", "\\PC{0,20}"), 0..3),
        prop_oneof!["[a-z0-9-]{0,10}", "\\PC{0,10}"],
        any::<i32>(),
        prop_oneof![Just(0u32), Just(1), Just(1001), any::<u32>()],
        any::<u64>(),
    )
        .prop_map(
            |(kind, payload, metadata, queue, priority, max_attempts, delay)| EnqueueRequest {
                r#type: kind,
                payload,
                metadata: metadata
                    .into_iter()
                    .map(|(key, value)| TaskMetadataEntry { key, value })
                    .collect(),
                queue,
                priority,
                max_attempts,
                delay_ms: delay,
                ..Default::default()
            },
        )
}

#[test]
fn any_enqueue_request_is_taken_or_refused_and_a_refusal_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteQueue::open(&dir.path().join("nova.db")).unwrap();
    let service = QueueService::new(Arc::new(backend));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let count = |service: &QueueService<SqliteQueue>| -> usize {
        rt.block_on(service.list_tasks(tonic::Request::new(ListTasksRequest::default())))
            .unwrap()
            .into_inner()
            .tasks
            .len()
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&enqueue_request(), |request| {
            let before = count(&service);
            match rt.block_on(service.enqueue(tonic::Request::new(request))) {
                Ok(_) => prop_assert_eq!(count(&service), before + 1),
                Err(status) => {
                    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument, "{:?}", status);
                    prop_assert_eq!(count(&service), before, "a refused request stored a task");
                }
            }
            Ok(())
        })
        .unwrap();
}
