//! The built-in `delivery` plan on a real project: a small Rust crate and a
//! small Python library (whose test dependency the system Python lacks) in
//! one temporary git repository, run with `--apply` as a user would.

mod common;

use common::Workspace;
use serde_json::Value;

fn git(ws: &Workspace, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=test@nova", "-c", "user.name=nova test"])
        .args(args)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

fn project(ws: &Workspace) {
    ws.write(
        "Cargo.toml",
        "[package]\nname = \"tinycrate\"\nversion = \"0.1.0\"\nedition = \"2021\"\nlicense = \"MIT\"\ndescription = \"a test crate\"\n\n[dependencies]\n",
    );
    ws.write(
        "src/lib.rs",
        "//! A tiny crate.\n\n/// Twice `x`.\npub fn double(x: i32) -> i32 {\n    2 * x\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn doubles() {\n        assert_eq!(super::double(2), 4);\n    }\n}\n",
    );
    ws.write(
        "pyproject.toml",
        "[project]\nname = \"pyl\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\n\n[project.optional-dependencies]\ntest = [\"pytest\", \"tomli-w\"]\n\n[build-system]\nrequires = [\"setuptools>=64\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[tool.setuptools.packages.find]\nwhere = [\"py\"]\n",
    );
    ws.write("py/pyl/__init__.py", "def double(x):\n    return 2 * x\n");
    ws.write(
        "tests/test_pyl.py",
        "import tomli_w\nfrom pyl import double\n\n\ndef test_double():\n    assert double(2) == 4\n\n\ndef test_the_test_dependency_is_there():\n    assert tomli_w.dumps({\"a\": 1})\n",
    );
    ws.write("README.md", "# tiny\n");
    ws.write(".gitignore", "/target\n__pycache__/\n*.egg-info/\n");
    git(ws, &["init", "-q"]);
    // The lock file belongs to the project: make it before the first commit.
    let lock = std::process::Command::new("cargo")
        .args(["generate-lockfile", "--offline"])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(lock.status.success(), "{lock:?}");
    git(ws, &["add", "-A"]);
    git(ws, &["commit", "-qm", "a small project"]);
}

#[test]
fn the_delivery_plan_runs_a_real_projects_tests_and_leaves_its_tree_clean() {
    let ws = Workspace::new();
    project(&ws);
    let system_has_it = std::process::Command::new("python3")
        .args(["-c", "import tomli_w"])
        .output()
        .is_ok_and(|o| o.status.success());
    if system_has_it {
        eprintln!(
            "note: this host's python3 has tomli_w; the project environment is still the one used"
        );
    }
    let out = ws.run(&["orchestrate", "--plan", "delivery", "--apply", "--json"]);
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    let status = |agent: &str, task: &str| -> String {
        report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["agent"] == agent && t["task"] == task)
            .map(|t| format!("{} ({})", t["status"].as_str().unwrap(), t["detail"]))
            .unwrap_or_else(|| panic!("{agent}/{task} did not run: {report}"))
    };
    for (agent, task) in [
        ("tester", "rust-tests"),
        ("tester", "python-env"),
        ("tester", "python-tests"),
        ("integrator", "clean-tree"),
    ] {
        let s = status(agent, task);
        assert!(s.starts_with("done"), "{agent}/{task}: {s}");
    }
    // The project's own environment ran the tests, not the system's Python.
    assert!(ws.path().join(".venv/bin/python").exists());
    let tests = &report["tests"];
    assert_eq!(tests["totals"]["tests"], 3, "{tests}");
    assert_eq!(tests["totals"]["passed"], 3, "{tests}");
    let md = std::fs::read_to_string(report["report"].as_str().unwrap()).unwrap();
    assert!(md.contains("## Tests"), "{md}");
    assert!(
        md.contains("| pytest | tester/results/python-tests/pytest.xml | 2 | 2 |"),
        "{md}"
    );
    // Work that is left is a plain summary with the next step, not an error of nova.
    if out.code == 1 {
        assert!(!out.stderr.contains("error:"), "{}", out.stderr);
        assert!(out.stderr.contains("next: "), "{}", out.stderr);
    }
    let run = report["run"].as_str().unwrap();
    ws.run(&["runs", "show", run, "--tests"])
        .success()
        .stdout_has("**all passed**: 3 tests, 3 passed");
    // nova's folder keeps itself out of the repository.
    let status = std::process::Command::new("git")
        .args(["status", "--porcelain"])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "",
        "the tree is clean"
    );
}

/// Each of the plan's git checks: its status and detail in `report`.
fn git_checks(report: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            ["conflict-markers", "clean-tree", "secrets", "version-tag"]
                .contains(&t["task"].as_str().unwrap())
        })
        .map(|t| {
            (
                format!(
                    "{}/{}",
                    t["agent"].as_str().unwrap(),
                    t["task"].as_str().unwrap()
                ),
                format!("{}: {}", t["status"].as_str().unwrap(), t["detail"]),
            )
        })
        .collect();
    found.sort();
    found
}

/// The status and detail of `task` among `checks`.
fn outcome_of<'a>(checks: &'a [(String, String)], task: &str) -> &'a str {
    &checks.iter().find(|(t, _)| t == task).unwrap().1
}

/// Outside a git work tree the git checks do not apply (they once passed
/// there, `! git grep` turning git's own failure into a pass); in a
/// repository before its first commit they check the work tree (no 'bad
/// revision HEAD'); a conflict marker or an uncommitted file fails them.
#[test]
fn the_delivery_plans_git_checks_apply_only_in_a_work_tree_and_fail_on_what_they_find() {
    let ws = Workspace::new();
    ws.write("notes.txt", "plain\n");
    let plan = [
        "orchestrate",
        "--plan",
        "delivery",
        "--agents",
        "integrator,release",
        "--json",
    ];
    let report = ws.run(&plan).json();
    for (task, outcome) in git_checks(&report) {
        assert!(
            outcome.starts_with("skipped") && outcome.contains("not in a git work tree"),
            "{task}: {outcome}"
        );
    }
    assert_eq!(git_checks(&report).len(), 4, "{report}");

    // A repository without a commit, run from a folder inside it.
    git(&ws, &["init", "-q"]);
    ws.write("sub/.keep", "");
    let report = ws
        .command()
        .args(plan)
        .current_dir(ws.path().join("sub"))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let checks = git_checks(&report);
    let outcome = |task: &str| outcome_of(&checks, task);
    assert!(
        outcome("integrator/conflict-markers").starts_with("done"),
        "{checks:?}"
    );
    assert!(
        outcome("security/secrets").starts_with("done"),
        "{checks:?}"
    );
    // notes.txt is not committed: the tree is not clean (git's answer, not its failure).
    assert!(
        outcome("integrator/clean-tree").starts_with("pending")
            && outcome("integrator/clean-tree").contains("exit 1)"),
        "{checks:?}"
    );

    // Committed: clean; a conflict marker then fails its check.
    git(&ws, &["add", "-A"]);
    git(&ws, &["commit", "-qm", "first"]);
    let report = ws.run(&plan).json();
    let checks = git_checks(&report);
    let outcome = |task: &str| outcome_of(&checks, task);
    assert!(
        outcome("integrator/clean-tree").starts_with("done"),
        "{checks:?}"
    );
    assert!(
        outcome("integrator/conflict-markers").starts_with("done"),
        "{checks:?}"
    );
    ws.write(
        "notes.txt",
        "<<<<<<< HEAD\nplain\n=======\nother\n>>>>>>> theirs\n",
    );
    git(&ws, &["commit", "-qam", "a bad merge"]);
    let report = ws.run(&plan).json();
    let checks = git_checks(&report);
    let outcome = |task: &str| outcome_of(&checks, task);
    assert!(
        outcome("integrator/conflict-markers").starts_with("pending"),
        "{checks:?}"
    );
}
