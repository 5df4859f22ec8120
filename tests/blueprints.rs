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
    // The original system's 22, with the host inventory, the security audit
    // and the databases split in two, and Python, its environment and
    // Node.js set up first.
    assert_eq!(tasks, 28);
}

/// The GPU inventory's check reached nvidia-smi on an H200 host as five
/// arguments (the YAML list split `--query-gpu=a,b,c` at its commas) and
/// exited 2; each comma list must stay one argument.
#[test]
fn gpu_inventory_check_keeps_its_comma_lists_whole() {
    let ws = Workspace::new();
    let shown = ws
        .run(&["blueprints", "show", "nova", "--json"])
        .success()
        .json();
    let task = shown["blueprint"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "gpu-inventory")
        .unwrap();
    assert_eq!(
        task["check"],
        serde_json::json!([
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader"
        ])
    );
}

#[test]
fn plan_filter_and_unknown_plan() {
    let ws = Workspace::new();
    let list = ws
        .run(&["blueprints", "--json", "--plan", "spark-sophia"])
        .success()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 6);
    // `list` (or `ls`) says the same as the bare command.
    for word in ["list", "ls"] {
        let listed = ws
            .run(&["blueprints", word, "--json", "--plan", "spark-sophia"])
            .success()
            .json();
        assert_eq!(
            listed,
            ws.run(&["blueprints", "--json", "--plan", "spark-sophia"])
                .success()
                .json()
        );
    }
    ws.run(&["blueprints", "list", "--plan", "nope"]).code(2);
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

    // `when: {git: ...}` takes true or false, nothing else.
    ws.write(
        "z.yaml",
        &GOOD.replace(
            "    title: Lint\n",
            "    title: Lint\n    when: {git: maybe}\n",
        ),
    );
    ws.run(&["blueprints", "validate", "z.yaml"])
        .code(2)
        .stderr_has("z.yaml:9:17: field `tasks[0].when.git`: invalid type: string \"maybe\", expected a boolean");
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

/// The states `nova blueprints assets ARGS` reported, by file.
fn asset_states(ws: &Workspace, args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["blueprints", "assets", "--json"];
    all.extend_from_slice(args);
    ws.run(&all)
        .success()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["path"].as_str().unwrap().to_string(),
                o["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const SHIPPED: [&str; 5] = [
    "dashboards/sophia-lux.json",
    "dashboards/sophia-mood.json",
    "scripts/build_knowledge_base.py",
    "workflows/agent-pipelines.json",
    "workflows/data-flywheel.json",
];

#[test]
fn plan_assets_are_written_once_and_an_edited_copy_is_left_alone() {
    let ws = Workspace::new();
    let states = |args: &[&str]| asset_states(&ws, args);
    let all = |state: &str| {
        SHIPPED
            .iter()
            .map(|p| (p.to_string(), state.to_string()))
            .collect::<Vec<_>>()
    };

    assert_eq!(
        states(&["--plan", "spark-sophia", "--dry-run"]),
        all("would write")
    );
    assert!(
        !ws.path().join("dashboards").exists(),
        "a dry run wrote files"
    );
    // A file of the user's own, there first, is theirs.
    ws.write("workflows/data-flywheel.json", "{\"name\": \"mine\"}\n");
    let mut expected = all("written");
    expected[4].1 = "kept: not nova's".into();
    assert_eq!(states(&["--plan", "spark-sophia"]), expected);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("workflows/data-flywheel.json")).unwrap(),
        "{\"name\": \"mine\"}\n"
    );
    expected = all("up to date");
    expected[4].1 = "kept: not nova's".into();
    assert_eq!(states(&[]), expected, "written once");

    // Edited after nova wrote it: kept, now and from then on.
    ws.write("dashboards/sophia-mood.json", "{\"edited\": true}\n");
    expected[1].1 = "kept: edited".into();
    assert_eq!(states(&["--plan", "spark-sophia"]), expected);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("dashboards/sophia-mood.json")).unwrap(),
        "{\"edited\": true}\n"
    );
    // Deleted: written again.
    std::fs::remove_file(ws.path().join("dashboards/sophia-lux.json")).unwrap();
    expected[0].1 = "written".into();
    assert_eq!(states(&["--plan", "spark-sophia"]), expected);

    // Plans without assets, unknown plans, a damaged record.
    ws.run(&["blueprints", "assets", "--plan", "delivery"])
        .success()
        .stdout_has("no assets");
    ws.run(&["blueprints", "assets", "--plan", "nope"])
        .code(2)
        .stderr_has("unknown plan `nope`");
    ws.write(".nova/assets.json", "not json");
    ws.run(&["blueprints", "assets"])
        .code(2)
        .stderr_has("assets.json: not nova's record");
    assert_eq!(
        std::fs::read_to_string(ws.path().join(".nova/assets.json")).unwrap(),
        "not json"
    );
}

#[test]
fn shipped_plan_assets_are_valid_for_their_tools() {
    let ws = Workspace::new();
    asset_states(&ws, &["--plan", "spark-sophia"]);
    let json = |rel: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(ws.path().join(rel)).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let aura = include_str!("../blueprints/spark-sophia/aura.yaml");
    let chronos = include_str!("../blueprints/spark-sophia/chronos.yaml");

    // Grafana: what POST /api/dashboards/db takes, with the uid aura's check asks for.
    for (rel, uid) in [
        ("dashboards/sophia-lux.json", "sophia-lux"),
        ("dashboards/sophia-mood.json", "sophia-mood"),
    ] {
        let body = json(rel);
        let d = &body["dashboard"];
        assert_eq!(d["uid"], uid, "{rel}");
        assert!(aura.contains(&format!("/api/dashboards/uid/{uid}")));
        assert!(aura.contains(&format!("@{rel}")), "aura posts {rel}");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(body["overwrite"], true);
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty());
        let mut ids = std::collections::BTreeSet::new();
        for p in panels {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{rel}: panel ids repeat"
            );
            assert_eq!(p["datasource"]["type"], "prometheus", "{rel}: {p}");
            let grid = &p["gridPos"];
            assert!(grid["w"].as_u64().unwrap() <= 24 && grid["h"].as_u64().unwrap() > 0);
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                assert!(
                    !expr.trim().is_empty() && t["refId"].is_string(),
                    "{rel}: {t}"
                );
                // Balanced brackets, at least: a PromQL typo Grafana would only show as an error panel.
                for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
                    assert_eq!(
                        expr.matches(open).count(),
                        expr.matches(close).count(),
                        "{rel}: {expr}"
                    );
                }
            }
        }
    }

    // n8n: workflows `n8n import:workflow --separate --input=workflows/` takes.
    assert!(chronos.contains("--input=workflows/"));
    for rel in [
        "workflows/agent-pipelines.json",
        "workflows/data-flywheel.json",
    ] {
        let w = json(rel);
        assert!(w["name"].as_str().is_some_and(|n| !n.is_empty()), "{rel}");
        // A fixed id, as n8n writes them (16 letters and digits): importing
        // again updates the workflow, and chronos's checks look for it.
        let id = w["id"].as_str().unwrap();
        assert!(
            id.len() == 16 && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{rel}: id {id}"
        );
        assert!(chronos.contains(&format!("grep -qx {id}")), "{rel}: {id}");
        // Tags carry ids too: without them n8n makes a tag per workflow and
        // the second `sophia` breaks its unique names (seen with n8n 1.94).
        for tag in w["tags"].as_array().unwrap() {
            assert!(
                tag["id"].as_str().is_some_and(|i| i.len() == 16),
                "{rel}: {tag}"
            );
        }
        let nodes = w["nodes"].as_array().unwrap();
        let names: std::collections::BTreeSet<&str> =
            nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), nodes.len(), "{rel}: node names repeat");
        for n in nodes {
            assert!(
                n["type"].as_str().unwrap().starts_with("n8n-nodes-base."),
                "{rel}: {n}"
            );
            assert!(n["typeVersion"].is_number() && n["parameters"].is_object());
            assert_eq!(n["position"].as_array().unwrap().len(), 2);
        }
        for (from, outputs) in w["connections"].as_object().unwrap() {
            assert!(
                names.contains(from.as_str()),
                "{rel}: connection from {from}"
            );
            for to in outputs["main"][0].as_array().unwrap() {
                assert!(names.contains(to["node"].as_str().unwrap()), "{rel}: {to}");
            }
        }
    }
    // chronos's data-flywheel task activates the flywheel workflow, tagged so.
    assert!(chronos.contains("list:workflow --active=true --onlyId | grep -qx SophiaFlywheel01"));
    let tags = json("workflows/data-flywheel.json")["tags"].clone();
    assert!(
        tags.as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "flywheel"),
        "{tags}"
    );

    // The knowledge-base builder compiles, answers --help, and refuses an empty corpus by name.
    let script = ws.path().join("scripts/build_knowledge_base.py");
    let compiled = std::process::Command::new("python3")
        .args(["-B", "-m", "py_compile"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let help = std::process::Command::new("python3")
        .arg(&script)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--out"));
    let empty = std::process::Command::new("python3")
        .arg(&script)
        .args(["--docs", "no-such-folder", "--out", "kb/index.faiss"])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no documents"));
}

/// Words of a command that look like relative file paths (`dir/file`,
/// `name.json`), with the prefixes curl and n8n put before them removed.
fn relative_paths(command: &serde_yaml::Value) -> Vec<String> {
    let words: Vec<String> = match command {
        serde_yaml::Value::Sequence(argv) => argv
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect(),
        serde_yaml::Value::Mapping(m) => m["shell"]
            .as_str()
            .unwrap()
            .split(|c: char| c.is_whitespace() || ";&|()<>".contains(c))
            .map(str::to_string)
            .collect(),
        other => panic!("not a command: {other:?}"),
    };
    words
        .into_iter()
        .map(|w| {
            let w = w.trim_matches(|c| c == '"' || c == '\'');
            let w = ["@", "--input=", "--out=", "--file="]
                .iter()
                .fold(w, |w, p| w.strip_prefix(p).unwrap_or(w));
            w.to_string()
        })
        .filter(|w| {
            let pathlike = w.contains('/')
                || [".json", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt"]
                    .iter()
                    .any(|e| w.ends_with(e));
            pathlike
                && !w.starts_with(['/', '$', '~', '-', '.'])
                && !w.contains("://")
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
        })
        .collect()
}

#[test]
fn no_fix_of_a_built_in_plan_uses_a_file_nova_does_not_ship_or_the_task_does_not_require() {
    let ws = Workspace::new();
    let shipped: Vec<String> = asset_states(&ws, &["--dry-run"])
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    // Words that look like paths and are not files the fix reads, each with why.
    let not_files = [
        ("grafana/grafana-oss", "a container image"),
        ("application/json", "a media type"),
        ("22/tcp", "a firewall port"),
        (
            "package-lock.json",
            "tested for with [ -f ] before npm uses it",
        ),
        (
            "riva_init.sh",
            "in $RIVA_QUICKSTART, which the task requires",
        ),
        (
            "riva_start.sh",
            "in $RIVA_QUICKSTART, which the task requires",
        ),
    ];
    let mut checked = 0;
    for plan in ["delivery", "spark-sophia"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("blueprints")
            .join(plan);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let Some(tasks) = doc.get("tasks").and_then(|t| t.as_sequence()) else {
                continue;
            };
            for task in tasks {
                let Some(run) = task.get("run") else { continue };
                let declared = |key: &str| -> Vec<String> {
                    match task.get(key).and_then(|r| r.get("file")) {
                        Some(serde_yaml::Value::String(f)) => vec![f.clone()],
                        Some(serde_yaml::Value::Sequence(fs)) => {
                            fs.iter().map(|f| f.as_str().unwrap().to_string()).collect()
                        }
                        _ => Vec::new(),
                    }
                };
                let (requires, when) = (declared("requires"), declared("when"));
                for word in relative_paths(run) {
                    checked += 1;
                    let ok = shipped
                        .iter()
                        .any(|s| *s == word || (word.ends_with('/') && s.starts_with(&word)))
                        || requires.contains(&word)
                        || when.contains(&word)
                        || not_files.iter().any(|(w, _)| *w == word);
                    assert!(
                        ok,
                        "{}: task {}: its fix uses {word}, which nova does not ship and the task does not list in requires: file",
                        path.display(),
                        task["id"].as_str().unwrap()
                    );
                    // A file a fix needs from nova is declared, so the report can say it is missing.
                    if shipped.contains(&word) {
                        assert!(
                            requires.contains(&word),
                            "{}: {word} not in requires",
                            path.display()
                        );
                    }
                }
            }
        }
    }
    assert!(
        checked >= 8,
        "only {checked} path-like words seen: is the walk right?"
    );
}

/// The knowledge-base builder, run for real: a few documents embedded with
/// the model the wordllama package carries (nothing downloaded), an index
/// FAISS loads, and a query that finds the passage it is about.
#[test]
fn the_knowledge_base_builder_indexes_documents_that_faiss_then_finds() {
    let python = std::env::var("NOVA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ws = Workspace::new();
    ws.run(&["blueprints", "assets", "--plan", "spark-sophia"])
        .code(0);
    ws.write(
        "docs/gpu.md",
        "# GPU drivers\nInstall the NVIDIA driver, then check that nvidia-smi lists every GPU of the DGX host.\n\n# Power\nThe DCGM exporter publishes the power drawn by each graphics card.\n",
    );
    ws.write(
        "docs/data.txt",
        "PostgreSQL keeps Sophia's conversations; MongoDB keeps the profiles of her users.\n",
    );
    ws.write(
        "docs/voice.rst",
        "Sophia speaks through Riva's text-to-speech and listens through its speech recognition.\n",
    );
    ws.write("docs/ignored.json", "{\"not\": \"a document\"}\n");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&python)
            .arg("scripts/build_knowledge_base.py")
            .args(args)
            .current_dir(ws.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python} ({e}): scripts/test installs faiss-cpu and wordllama and names its Python in NOVA_TEST_PYTHON"));
        assert!(
            out.status.success(),
            "{args:?}: {} (with {python}; scripts/test installs faiss-cpu and wordllama and names its Python in NOVA_TEST_PYTHON)",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Searching before building names the missing index and exits 2.
    let early = std::process::Command::new(&python)
        .args([
            "scripts/build_knowledge_base.py",
            "--out",
            "data/kb.faiss",
            "--query",
            "x",
        ])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert_eq!(early.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&early.stderr).contains("no index at data/kb.faiss"));
    let built = run(&["--docs", "docs", "--out", "data/kb.faiss", "--chunk", "100"]);
    assert!(
        built.contains("4 passages from 3 documents -> data/kb.faiss"),
        "{built}"
    );

    // FAISS itself loads the index: one unit vector a passage.
    let loaded = std::process::Command::new(&python)
        .args([
            "-c",
            "import faiss, json; i = faiss.read_index('data/kb.faiss'); m = json.load(open('data/kb.faiss.json')); \
             v = i.reconstruct(0); print(i.ntotal, i.d, len(m['passages']), m['model'], round(float((v * v).sum()), 3))",
        ])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&loaded.stdout).trim(),
        "4 256 4 wordllama 1.0"
    );

    // The nearest passage to a question is the one that answers it.
    for (question, source) in [
        ("which graphics card driver to install", "docs/gpu.md#0"),
        ("where are the conversations stored", "docs/data.txt#0"),
        ("speech recognition", "docs/voice.rst#0"),
    ] {
        let found = run(&["--out", "data/kb.faiss", "--query", question, "--top", "1"]);
        assert!(found.contains(source), "{question}: {found}");
    }
}
