//! `nova report tests`: QA summaries of JUnit XML that real test runners
//! wrote in the test itself (pytest with pytest-rerunfailures, and Python's
//! unittest through unittest-xml-reporting), and the refusals of files that
//! are not JUnit XML.

mod common;

use common::Workspace;

/// The Python that has pytest, pytest-rerunfailures and xmlrunner
/// (scripts/test installs them and names it in NOVA_TEST_PYTHON).
pub fn python() -> String {
    let python = std::env::var("NOVA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import pytest, pytest_rerunfailures, xmlrunner"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{python} lacks pytest, pytest-rerunfailures or unittest-xml-reporting; scripts/test installs them"
    );
    python
}

/// Results written for real: a pass, a failure, a skip and a flaky test from
/// pytest; a pass, a failure and a skip from unittest. Sleeps keep the
/// slowest tests in a fixed order.
fn produce(ws: &Workspace, broken: bool) {
    let python = python();
    ws.write(
        "test_sample.py",
        &format!(
            r#"import os, time, pytest

def test_passes():
    time.sleep(0.1)

def test_fails():
    time.sleep(0.2)
    print("some output before failing")
    assert 2 * 2 == {}, "arithmetic is broken"

@pytest.mark.skip(reason="not on this host")
def test_skipped():
    pass

@pytest.mark.flaky(reruns=2)
def test_flaky():
    if not os.path.exists("flaky.marker"):
        open("flaky.marker", "w").close()
        assert False, "first try fails"

def test_slow():
    time.sleep(0.4)
"#,
            if broken { 5 } else { 4 }
        ),
    );
    let _ = std::fs::remove_file(ws.path().join("flaky.marker"));
    let out = std::process::Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--junitxml=pytest.xml",
            "test_sample.py",
        ])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(ws.path().join("pytest.xml").exists(), "{out:?}");
    ws.write(
        "test_unit.py",
        r#"import time, unittest, xmlrunner

class Unit(unittest.TestCase):
    def test_ok(self):
        time.sleep(0.05)

    def test_bad(self):
        time.sleep(0.3)
        self.assertEqual(1, 2)

    @unittest.skip("later")
    def test_skip(self):
        pass

unittest.main(testRunner=xmlrunner.XMLTestRunner(output="unit", outsuffix=""), exit=False)
"#,
    );
    let out = std::process::Command::new(&python)
        .arg("test_unit.py")
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(ws.path().join("unit/TEST-Unit.xml").exists(), "{out:?}");
}

/// Times vary from run to run and the traceback names the temporary folder.
fn stable(ws: &Workspace, text: &str) -> String {
    let time = regex::Regex::new(r"\d+\.\d{3} s").unwrap();
    let text = text.replace(&ws.path().display().to_string(), "[WS]");
    time.replace_all(&text, "[T] s").into_owned()
}

#[test]
fn a_qa_summary_of_real_pytest_and_unittest_results() {
    let ws = Workspace::new();
    produce(&ws, true);
    let out = ws
        .run(&["report", "tests", "pytest.xml", "unit/TEST-Unit.xml"])
        .code(1);
    insta::assert_snapshot!("qa_summary", stable(&ws, &out.stdout));
    assert_eq!(out.stderr.trim(), "2 of 8 tests failed");

    let json = ws
        .run(&[
            "--json",
            "report",
            "tests",
            "pytest.xml",
            "unit/TEST-Unit.xml",
        ])
        .code(1)
        .json();
    assert_eq!(json["totals"]["tests"], 8);
    assert_eq!(json["totals"]["failed"], 2);
    assert_eq!(json["totals"]["flaky"], 1);
    assert_eq!(json["flaky"][0]["id"], "test_sample::test_flaky");
    assert_eq!(json["flaky"][0]["attempts"], 2);
    assert_eq!(json["slowest"][0]["id"], "test_sample::test_slow");

    // The same tests with the arithmetic mended, compared with the broken run.
    std::fs::rename(ws.path().join("pytest.xml"), ws.path().join("before.xml")).unwrap();
    produce(&ws, false);
    let out = ws
        .run(&[
            "report",
            "tests",
            "pytest.xml",
            "--compare",
            "before.xml",
            "--out",
            "qa.md",
        ])
        .success();
    assert!(
        out.stdout.is_empty(),
        "--out keeps stdout quiet: {}",
        out.stdout
    );
    let md = std::fs::read_to_string(ws.path().join("qa.md")).unwrap();
    insta::assert_snapshot!("qa_summary_compared", stable(&ws, &md));
    let back = ws
        .run(&[
            "--json",
            "report",
            "tests",
            "before.xml",
            "--compare",
            "pytest.xml",
        ])
        .code(1)
        .json();
    assert_eq!(
        back["comparison"]["regressed"][0],
        "pytest / test_sample::test_fails"
    );
}

#[test]
fn files_that_are_not_junit_are_refused_with_their_name_and_line() {
    let ws = Workspace::new();
    ws.write(
        "truncated.xml",
        "<?xml version=\"1.0\"?>\n<testsuites>\n<testsuite name=\"a\" tests=\"1\">\n<testcase name=\"x\">\n",
    );
    ws.run(&["report", "tests", "truncated.xml"])
        .code(2)
        .stderr_has("truncated.xml: line 4: the file ends inside <testcase>: it is truncated");
    ws.write(
        "broken.xml",
        "<testsuites>\n<testsuite name=\"a\">\n<testcase name=\"x\"></testsuite>\n</testsuites>\n",
    );
    ws.run(&["report", "tests", "broken.xml"])
        .code(2)
        .stderr_has("broken.xml: line 3: malformed XML");
    ws.write("page.xml", "<html><body>not a report</body></html>");
    ws.run(&["report", "tests", "page.xml"])
        .code(2)
        .stderr_has("page.xml: not a JUnit report: its root element is <html>");
    ws.write("empty.xml", "");
    ws.run(&["report", "tests", "empty.xml"])
        .code(2)
        .stderr_has("empty.xml: empty file");
    ws.run(&["report", "tests", "missing.xml"])
        .code(2)
        .stderr_has("missing.xml: no such file");
    std::fs::create_dir(ws.path().join("folder.xml")).unwrap();
    ws.run(&["report", "tests", "folder.xml"])
        .code(2)
        .stderr_has("folder.xml: not a regular file (a folder)");
    let fifo = ws.path().join("fifo.xml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    ws.run(&["report", "tests", "fifo.xml"])
        .code(2)
        .stderr_has("fifo.xml: not a regular file (a FIFO)");
}
