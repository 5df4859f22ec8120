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
