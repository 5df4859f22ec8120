//! `nova tasks` and `nova roadmap` on a fresh workspace: filters, formats and
//! the errors for unknown agents and phases.

mod common;

use common::Workspace;

#[test]
fn roadmap_markdown_is_a_shareable_document() {
    let ws = Workspace::new();
    let md = ws
        .run(&["roadmap", "--format", "markdown"])
        .success()
        .stdout;
    insta::assert_snapshot!("roadmap_spark_sophia_markdown", md);
}

#[test]
fn roadmap_for_one_phase() {
    let ws = Workspace::new();
    let out = ws.run(&["roadmap", "--phase", "foundation"]).success();
    let out = out.stdout_has("foundation").stdout_has("0/10");
    assert!(!out.stdout.contains("observability"), "{}", out.stdout);

    let json = ws
        .run(&[
            "roadmap",
            "--phase",
            "foundation",
            "observability",
            "--json",
        ])
        .success()
        .json();
    let phases: Vec<&str> = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["foundation", "observability"]);
    assert_eq!(json["progress"]["total"], 14);
    let nova = &json["phases"][0]["agents"][0];
    assert_eq!(nova["name"], "nova");
    assert_eq!(nova["remaining"].as_array().unwrap().len(), 10);
    assert!(!nova["definition_of_done"].as_array().unwrap().is_empty());
}

#[test]
fn roadmap_infers_the_plan_from_the_phase() {
    let ws = Workspace::new();
    let json = ws
        .run(&["roadmap", "--phase", "verify", "--format", "json"])
        .success()
        .json();
    assert_eq!(json["plan"], "delivery");
}

#[test]
fn roadmap_unknown_phase_lists_the_valid_ones() {
    let ws = Workspace::new();
    ws.run(&["roadmap", "--phase", "moon"])
        .code(2)
        .stderr_has("unknown phase `moon`")
        .stderr_has("foundation, model-operations");
    ws.run(&["roadmap", "--plan", "spark-sophia", "--phase", "verify"])
        .code(2)
        .stderr_has("unknown phase `verify` in plan `spark-sophia`; valid phases: foundation, model-operations, data-services, experience, observability");
}

#[test]
fn tasks_checklist_groups_by_agent() {
    let ws = Workspace::new();
    let out = ws
        .run(&["tasks", "--checklist", "--plan", "spark-sophia"])
        .success()
        .stdout;
    insta::assert_snapshot!("tasks_spark_sophia_checklist", out);
}

#[test]
fn tasks_match_agents_by_name_case_and_role() {
    let ws = Workspace::new();
    let a = ws
        .run(&["tasks", "--agent", "orion", "--json"])
        .success()
        .json();
    let b = ws
        .run(&["tasks", "--agent", "Orion", "--json"])
        .success()
        .json();
    let c = ws
        .run(&["tasks", "--agent", "ai-software", "--json"])
        .success()
        .json();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.as_array().unwrap().len(), 4);
    assert_eq!(a[0]["status"], "pending");
    assert_eq!(a[0]["checked_at"], serde_json::Value::Null);
}

#[test]
fn tasks_unknown_agent_names_the_known_ones() {
    let ws = Workspace::new();
    ws.run(&["tasks", "--agent", "nobody"])
        .code(2)
        .stderr_has("unknown agent `nobody`")
        .stderr_has("known agents:")
        .stderr_has("orion (ai-software)")
        .stderr_has("planner (planning)");
    ws.run(&["tasks", "--phase", "moon"])
        .code(2)
        .stderr_has("unknown phase `moon`");
}

#[test]
fn tasks_filter_by_phase_and_status() {
    let ws = Workspace::new();
    let rows = ws
        .run(&["tasks", "--phase", "data-services", "--json"])
        .success()
        .json();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["agent"] == "lumina")
    );
    let done = ws
        .run(&["tasks", "--status", "done", "--json"])
        .success()
        .json();
    assert!(done.as_array().unwrap().is_empty());
    let table = ws.run(&["tasks"]).success().stdout;
    assert!(table.starts_with("AGENT"), "{table}");
}
