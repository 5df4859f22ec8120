//! `nova blueprints`: the built-in catalog, show, new, validate, and the
//! errors a broken blueprint gets.

mod common;

use common::Workspace;

const GOOD: &str = "name: lint-bot\nrole: linting\nplan: delivery\nphase: verify\nskills: [lint]\ntasks:\n  - id: lint\n    title: Lint\n    check: [\"true\"]\n";

#[test]
fn the_catalog_holds_20_to_30_blueprints_in_both_plans() {
    let ws = Workspace::new();
    let list = ws.run(&["blueprints", "--json"]).success().json();
    let list = list.as_array().unwrap();
    assert!((20..=30).contains(&list.len()), "{} blueprints", list.len());
    let plans: std::collections::BTreeSet<&str> =
        list.iter().map(|b| b["plan"].as_str().unwrap()).collect();
    assert_eq!(
        plans.into_iter().collect::<Vec<_>>(),
        ["delivery", "spark-sophia"]
    );
    for b in list {
        for key in [
            "name",
            "role",
            "phase",
            "skills",
            "tasks",
            "depends_on",
            "source",
        ] {
            assert!(b.get(key).is_some(), "{key} missing in {b}");
        }
    }
    let names: Vec<&str> = list.iter().map(|b| b["name"].as_str().unwrap()).collect();
    for specialist in ["nova", "orion", "chronos", "lumina", "echo", "aura"] {
        assert!(names.contains(&specialist), "{specialist} missing");
    }
    for role in [
        "planner",
        "architect",
        "coder",
        "tester",
        "reviewer",
        "security",
        "ops",
        "docs",
        "release",
    ] {
        assert!(names.contains(&role), "{role} missing");
    }
}

#[test]
fn every_spark_sophia_task_has_a_check_and_a_run() {
    let ws = Workspace::new();
    let list = ws
        .run(&["blueprints", "--json", "--plan", "spark-sophia"])
        .success()
        .json();
    let mut tasks = 0;
    for b in list.as_array().unwrap() {
        let shown = ws
            .run(&["blueprints", "show", b["name"].as_str().unwrap(), "--json"])
            .success()
            .json();
        for task in shown["blueprint"]["tasks"].as_array().unwrap() {
            assert!(
                task.get("check").is_some() && task.get("run").is_some(),
                "{task}"
            );
            tasks += 1;
        }
    }
    assert_eq!(tasks, 22, "the original system has 22 tasks");
}

#[test]
fn plan_filter_and_unknown_plan() {
    let ws = Workspace::new();
    let list = ws
        .run(&["blueprints", "--json", "--plan", "spark-sophia"])
        .success()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 6);
    ws.run(&["blueprints", "--plan", "nope"])
        .code(2)
        .stderr_has("unknown plan `nope`")
        .stderr_has("delivery, spark-sophia");
}

#[test]
fn show_prints_the_yaml_by_name_or_role_in_any_case() {
    let ws = Workspace::new();
    let by_name = ws.run(&["blueprints", "show", "Orion"]).success();
    assert!(
        by_name.stdout.starts_with("name: orion\n"),
        "{}",
        by_name.stdout
    );
    let by_role = ws.run(&["blueprints", "show", "ai-software"]).success();
    assert_eq!(by_name.stdout, by_role.stdout);
    ws.run(&["blueprints", "show", "nobody"])
        .code(2)
        .stderr_has("known agents:")
        .stderr_has("orion (ai-software)");
}

#[test]
fn new_writes_a_valid_template_and_refuses_to_overwrite() {
    let ws = Workspace::new();
    let out = ws
        .run(&[
            "blueprints",
            "new",
            "testing",
            "--name",
            "qa-bot",
            "--plan",
            "delivery",
            "--phase",
            "verify",
        ])
        .success();
    out.stdout_has("blueprints/qa-bot.yaml");
    let text = std::fs::read_to_string(ws.path().join("blueprints/qa-bot.yaml")).unwrap();
    assert!(text.contains("# "), "template has comments");
    assert!(
        text.contains("unit-testing"),
        "skills come from the built-in tester:\n{text}"
    );
    ws.run(&["blueprints", "validate"])
        .success()
        .stdout_has("22 agents");
    let listed = ws
        .run(&["blueprints", "--json", "--plan", "delivery"])
        .success()
        .json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "qa-bot")
    );

    let before = std::fs::read(ws.path().join("blueprints/qa-bot.yaml")).unwrap();
    ws.run(&["blueprints", "new", "other", "--name", "qa-bot"])
        .code(2)
        .stderr_has("already");
    assert_eq!(
        before,
        std::fs::read(ws.path().join("blueprints/qa-bot.yaml")).unwrap()
    );
}

#[test]
fn new_without_a_plan_joins_the_workspace_plan() {
    let ws = Workspace::new();
    ws.run(&["blueprints", "new", "custom-role", "--name", "helper"])
        .success();
    let text = std::fs::read_to_string(ws.path().join("blueprints/helper.yaml")).unwrap();
    assert!(!text.contains("\nplan:"), "{text}");
    let list = ws
        .run(&["blueprints", "--json", "--plan", "workspace"])
        .success()
        .json();
    assert_eq!(list[0]["name"], "helper");
    ws.run(&["blueprints", "new", "x", "--name", "bad name"])
        .code(2)
        .stderr_has("--name");
    ws.run(&[
        "blueprints",
        "new",
        "x",
        "--name",
        "y",
        "--phase",
        "nowhere",
    ])
    .code(2)
    .stderr_has("unknown phase `nowhere`");
}

#[test]
fn validate_the_builtin_catalog() {
    let ws = Workspace::new();
    let report = ws
        .run(&["blueprints", "validate", "--json"])
        .success()
        .json();
    assert_eq!(report["valid"], true);
    assert_eq!(report["agents"], 21);
}

#[test]
fn validate_rejects_a_cycle_with_file_and_line() {
    let ws = Workspace::new();
    ws.write(
        "bp/a.yaml",
        "name: alpha\nrole: r\nplan: delivery\nphase: build\ndepends_on:\n  - beta\ntasks: []\n",
    );
    ws.write(
        "bp/b.yaml",
        "name: beta\nrole: r\nplan: delivery\nphase: build\ndepends_on: [alpha]\ntasks: []\n",
    );
    let out = ws.run(&["blueprints", "validate", "bp"]).code(2);
    out.stderr_has("bp/a.yaml:6: field `depends_on[0]`: dependency cycle: alpha -> beta -> alpha");
}

#[test]
fn validate_rejects_an_unknown_key_with_file_line_and_column() {
    let ws = Workspace::new();
    ws.write("x.yaml", &format!("{GOOD}colour: blue\n"));
    ws.run(&["blueprints", "validate", "x.yaml"])
        .code(2)
        .stderr_has("x.yaml:10:1:")
        .stderr_has("unknown field `colour`");

    ws.write(
        "y.yaml",
        &GOOD.replace("    title: Lint\n", "    title: Lint\n    retry: 3\n"),
    );
    ws.run(&["blueprints", "validate", "y.yaml"])
        .code(2)
        .stderr_has("y.yaml:9:5: field `tasks[0].retry`: unknown field `retry`")
        .stderr_has("unknown field `retry`");
}

#[test]
fn validate_reports_each_kind_of_problem() {
    let ws = Workspace::new();
    let cases: &[(&str, &str, &str)] = &[
        ("broken.yaml", "name: x\nrole: [unclosed\n", "broken.yaml:"),
        (
            "type.yaml",
            &GOOD.replace("skills: [lint]", "skills: 5"),
            "field `skills`: invalid type",
        ),
        (
            "empty-name.yaml",
            &GOOD.replace("name: lint-bot", "name: \"\""),
            "field `name`: must not be empty",
        ),
        (
            "phase.yaml",
            &GOOD.replace("phase: verify", "phase: party"),
            "phase.yaml:4: field `phase`: unknown phase `party` for plan `delivery`; its phases are: plan, build, verify, document, release",
        ),
        (
            "dup.yaml",
            &format!("{GOOD}  - id: lint\n    title: Again\n    check: [\"true\"]\n"),
            "dup.yaml:10: field `tasks[1].id`: task id `lint` is used twice",
        ),
        (
            "dep.yaml",
            &GOOD.replace("skills: [lint]", "skills: [lint]\ndepends_on: [ghost]"),
            "dep.yaml:6: field `depends_on[0]`: unknown agent `ghost`",
        ),
        (
            "later.yaml",
            &GOOD.replace("skills: [lint]", "skills: [lint]\ndepends_on: [release]"),
            "runs in phase `release`, after this agent's phase `verify`",
        ),
        (
            "cross.yaml",
            &GOOD.replace("skills: [lint]", "skills: [lint]\ndepends_on: [nova]"),
            "belongs to plan `spark-sophia`",
        ),
        (
            "plain.yaml",
            &GOOD.replace("check: [\"true\"]", "check: cargo test"),
            "a command must be an argv list",
        ),
        (
            "none.yaml",
            &GOOD.replace("    check: [\"true\"]\n", ""),
            "has neither `run` nor `check`",
        ),
        (
            "time.yaml",
            &GOOD.replace("    title: Lint\n", "    title: Lint\n    timeout: soon\n"),
            "time.yaml:9: field `tasks[0].timeout`: \"soon\" is not a duration",
        ),
        (
            "plan.yaml",
            "name: p\nphases: []\n",
            "plan `p` has no phases",
        ),
        (
            "noplan.yaml",
            &GOOD.replace("plan: delivery", "plan: moonshot"),
            "unknown plan `moonshot`",
        ),
        ("blank.yaml", "# nothing here\n", "holds no YAML document"),
    ];
    for (file, text, expected) in cases {
        let dir = format!("case-{file}");
        ws.write(&format!("{dir}/{file}"), text);
        let out = ws.run(&["blueprints", "validate", &dir]);
        assert_eq!(
            out.code, 2,
            "{file}: expected exit 2, stderr: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(expected),
            "{file}: stderr lacks {expected:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn validate_json_lists_problems() {
    let ws = Workspace::new();
    ws.write("bad/x.yaml", &GOOD.replace("phase: verify", "phase: party"));
    let out = ws.run(&["blueprints", "validate", "bad", "--json"]).code(2);
    let report = out.json();
    assert_eq!(report["valid"], false);
    assert_eq!(report["problems"][0]["line"], 4);
    assert_eq!(report["problems"][0]["field"], "phase");
    ws.run(&["blueprints", "validate", "missing-folder"])
        .code(2)
        .stderr_has("missing-folder: no such file or folder");
}

#[test]
fn a_workspace_blueprint_overrides_a_builtin_by_name() {
    let ws = Workspace::new();
    ws.write("blueprints/coder.yaml", "name: Coder\nrole: implementation\nplan: delivery\nphase: build\ntasks:\n  - id: only\n    title: Only task\n    check: [\"true\"]\n");
    let list = ws.run(&["blueprints", "--json"]).success().json();
    let coders: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["name"].as_str().unwrap().eq_ignore_ascii_case("coder"))
        .collect();
    assert_eq!(coders.len(), 1);
    assert_eq!(coders[0]["tasks"], 1);
    assert!(
        coders[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("blueprints/coder.yaml")
    );

    // Without `plan:` the override stays in the built-in's plan, so the
    // built-in agents that depend on it still resolve.
    ws.write("blueprints/coder.yaml", "name: coder\nrole: implementation\nphase: build\ntasks:\n  - id: only\n    title: Only task\n    check: [\"true\"]\n");
    let plan = ws
        .run(&["plan", "--plan", "delivery", "--json"])
        .success()
        .json()
        .to_string();
    assert!(plan.contains("\"coder\""), "{plan}");
    let coder = ws.run(&["blueprints", "--json"]).success().json();
    let coder = coder
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "coder")
        .unwrap();
    assert_eq!(coder["plan"], "delivery", "{coder}");

    // Two workspace files with one name clash.
    ws.write(
        "blueprints/coder2.yaml",
        "name: coder\nrole: x\nplan: delivery\nphase: build\n",
    );
    ws.run(&["blueprints"])
        .code(2)
        .stderr_has("agent `coder` is already defined in");
}

#[test]
fn nova_yaml_can_name_the_blueprint_folder() {
    let ws = Workspace::new();
    ws.write("nova.yaml", "blueprints: agents\n");
    ws.write("agents/lint-bot.yaml", GOOD);
    let list = ws
        .run(&["blueprints", "--json", "--plan", "delivery"])
        .success()
        .json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "lint-bot")
    );
}
