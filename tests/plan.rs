//! `nova plan`: phases, agents and dependencies, in a deterministic order.

mod common;

use common::Workspace;

fn agent_names(json: &serde_json::Value) -> Vec<Vec<String>> {
    json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["agents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn the_spark_sophia_plan_in_five_phases() {
    let ws = Workspace::new();
    let json = ws.run(&["plan", "--json"]).success().json();
    assert_eq!(json["plan"], "spark-sophia");
    let phases: Vec<&str> = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "foundation",
            "model-operations",
            "data-services",
            "experience",
            "observability"
        ]
    );
    assert_eq!(
        agent_names(&json),
        [
            vec!["nova"],
            vec!["chronos", "orion"],
            vec!["lumina"],
            vec!["echo"],
            vec!["aura"]
        ]
    );
    assert!(json["phases"][0]["goal"].as_str().unwrap().len() > 10);
    assert_eq!(
        json["phases"][3]["agents"][0]["depends_on"],
        serde_json::json!(["orion", "lumina"])
    );
}

#[test]
fn agents_bring_their_dependencies_unless_only() {
    let ws = Workspace::new();
    let json = ws
        .run(&["plan", "--agents", "coder", "--json"])
        .success()
        .json();
    assert_eq!(json["plan"], "delivery");
    assert_eq!(
        agent_names(&json),
        [vec!["planner", "architect"], vec!["coder"]]
    );
    assert_eq!(json["phases"][0]["agents"][0]["requested"], false);
    assert_eq!(json["phases"][1]["agents"][0]["requested"], true);

    let only = ws
        .run(&["plan", "--agents", "coder", "tester", "--only", "--json"])
        .success()
        .json();
    assert_eq!(agent_names(&only), [vec!["coder"], vec!["tester"]]);
    // A list may also be written as one word with commas, as in many tools.
    let commas = ws
        .run(&["plan", "--agents", "coder,tester", "--only", "--json"])
        .success()
        .json();
    assert_eq!(commas, only);
    let phases = ws
        .run(&[
            "orchestrate",
            "--dry-run",
            "--json",
            "--plan",
            "delivery",
            "--phase",
            "plan,build",
        ])
        .success()
        .json();
    let names: Vec<&str> = phases["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plan", "build"], "{phases}");
}

#[test]
fn dependency_order_within_a_phase_is_stable() {
    let ws = Workspace::new();
    let first = ws
        .run(&["plan", "--plan", "delivery", "--json"])
        .success()
        .stdout;
    for _ in 0..3 {
        assert_eq!(
            ws.run(&["plan", "--plan", "delivery", "--json"])
                .success()
                .stdout,
            first
        );
    }
    let json: serde_json::Value = serde_json::from_str(&first).unwrap();
    // architect depends on planner: both in `plan`, planner first.
    assert_eq!(agent_names(&json)[0], ["planner", "architect"]);
}

#[test]
fn bad_plan_input() {
    let ws = Workspace::new();
    ws.run(&["plan", "--agents", "coder", "nova"])
        .code(2)
        .stderr_has("belong to different plans");
    ws.run(&["plan", "--agents", "ghost"])
        .code(2)
        .stderr_has("unknown agent `ghost`");
    ws.run(&["plan", "--plan", "nope"])
        .code(2)
        .stderr_has("unknown plan `nope`");
    ws.run(&["plan", "--only"]).code(2);
}
