//! `nova orchestrate` end to end: real child processes, real queue, real
//! store, in temporary workspaces with blueprints written by each test.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Workspace;
use serde_json::Value;

/// A workspace plan with phases `one` and `two`.
fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "plan: workspace\nphases:\n  - name: one\n    goal: first\n  - name: two\n    goal: second\n",
    );
    ws
}

fn agent(ws: &Workspace, name: &str, role: &str, phase: &str, deps: &[&str], tasks: &str) {
    ws.write(
        &format!("blueprints/{name}.yaml"),
        &format!(
            "name: {name}\nrole: {role}\nphase: {phase}\ndepends_on: [{}]\ntasks:\n{tasks}",
            deps.join(", ")
        ),
    );
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The process id a task wrote into `name`.
fn pid_in(ws: &Workspace, name: &str) -> i32 {
    std::fs::read_to_string(ws.path().join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn run_json(ws: &Workspace, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["orchestrate", "--json"];
    all.extend_from_slice(args);
    let out = ws.run(&all);
    let json = if out.stdout.trim().is_empty() {
        Value::Null
    } else {
        out.json()
    };
    (out.code, json)
}

/// `n` runs, one after another, of an agent `echoer` whose one task says
/// hello; their ids, oldest first.
fn runs_of_one_echo(ws: &Workspace, n: usize) -> Vec<String> {
    agent(
        ws,
        "echoer",
        "implementation",
        "one",
        &[],
        "  - id: hello\n    title: says hello\n    run: [echo, hello]\n",
    );
    (0..n)
        .map(|_| {
            let (code, report) = run_json(ws, &["--apply"]);
            assert_eq!(code, 0, "{report}");
            report["run"].as_str().unwrap().to_string()
        })
        .collect()
}

fn task<'a>(report: &'a Value, agent: &str, task: &str) -> &'a Value {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["agent"] == agent && t["task"] == task)
        .unwrap_or_else(|| panic!("{agent}/{task} not in {report}"))
}

#[test]
fn built_in_plans_run_end_to_end_in_a_fresh_workspace() {
    let ws = Workspace::new();
    // Only checks run, and in a fresh folder the planner's checks fail: exit 1, a report.
    let out = ws.run(&["orchestrate", "--agents", "planner", "coder"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.contains("planner"), "{}", out.stdout);
    let reports: Vec<_> = std::fs::read_dir(ws.home().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(reports.len(), 1);
    let md = std::fs::read_to_string(&reports[0]).unwrap();
    for section in [
        "## Phase plan",
        "## Phase build",
        "## Failures",
        "## Messages",
        "## KPIs",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    let (code, report) = run_json(&ws, &["--plan", "spark-sophia"]);
    assert_eq!(code, 1);
    assert_eq!(report["tasks"].as_array().unwrap().len(), 28);
    let runs = ws.run(&["runs", "--json"]).success().json();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    // nova tasks shows what the runs verified.
    ws.run(&["tasks", "--agent", "planner"])
        .success()
        .stdout_has("pending");
}

#[test]
fn a_task_that_fails_twice_then_succeeds_is_done_after_three_attempts() {
    let ws = workspace();
    agent(
        &ws,
        "flaky",
        "implementation",
        "one",
        &[],
        "  - id: third-time\n    title: works on the third try\n    retries: 2\n    run: {shell: \"n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo attempt $n; [ $n -ge 3 ]\"}\n",
    );
    let (code, report) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 0, "{report}");
    let t = task(&report, "flaky", "third-time");
    assert_eq!(t["status"], "done");
    assert_eq!(t["attempts"], 3);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("count"))
            .unwrap()
            .trim(),
        "3"
    );
    let run = report["run"].as_str().unwrap();
    let log = std::fs::read_to_string(ws.home().join(format!("runs/{run}/flaky/third-time.log")))
        .unwrap();
    assert!(
        log.contains("attempt 1") && log.contains("attempt 3"),
        "{log}"
    );

    // With too few retries it fails, and the exit status says so.
    std::fs::remove_file(ws.path().join("count")).unwrap();
    agent(
        &ws,
        "flaky",
        "implementation",
        "one",
        &[],
        "  - id: third-time\n    title: works on the third try\n    retries: 1\n    run: {shell: \"n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; [ $n -ge 3 ]\"}\n",
    );
    let (code, report) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 1);
    assert_eq!(report["status"], "failed");
    let t = task(&report, "flaky", "third-time");
    assert_eq!(
        (t["status"].as_str(), t["attempts"].as_u64()),
        (Some("failed"), Some(2))
    );
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let ws = workspace();
    agent(
        &ws,
        "sleepy",
        "implementation",
        "one",
        &[],
        "  - id: hang\n    title: never ends\n    timeout: 1s\n    run: {shell: \"sleep 300 & echo $! > grandchild.pid; wait\"}\n",
    );
    let started = Instant::now();
    let (code, report) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(60));
    let t = task(&report, "sleepy", "hang");
    assert_eq!(t["status"], "failed");
    assert!(
        t["detail"]
            .as_str()
            .unwrap()
            .contains("killed after its timeout of 1s"),
        "{t}"
    );
    let pid = pid_in(&ws, "grandchild.pid");
    assert!(!alive(pid), "the grandchild {pid} survived");
}

fn timing_agents(ws: &Workspace) {
    for name in ["left", "right"] {
        agent(
            ws,
            name,
            "implementation",
            "one",
            &[],
            "  - id: work\n    title: takes a while\n    run: {shell: \"date +%s%N > $NOVA_AGENT.start; sleep 0.4; date +%s%N > $NOVA_AGENT.end\"}\n",
        );
    }
    agent(
        ws,
        "after",
        "implementation",
        "two",
        &["left"],
        "  - id: check\n    title: sees both\n    check: {shell: \"test -f left.end && test -f right.end\"}\n",
    );
}

fn stamp(ws: &Workspace, file: &str) -> u128 {
    std::fs::read_to_string(ws.path().join(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sequential_and_parallel_reach_the_same_states_and_parallel_overlaps() {
    let seq = workspace();
    timing_agents(&seq);
    let (code, s) = run_json(&seq, &["--apply", "--mode", "sequential", "--jobs", "2"]);
    assert_eq!(code, 0, "{s}");
    assert!(
        stamp(&seq, "left.end") <= stamp(&seq, "right.start")
            || stamp(&seq, "right.end") <= stamp(&seq, "left.start"),
        "sequential runs do not overlap"
    );

    let par = workspace();
    timing_agents(&par);
    let (code, p) = run_json(&par, &["--apply", "--mode", "parallel", "--jobs", "2"]);
    assert_eq!(code, 0, "{p}");
    assert!(
        stamp(&par, "left.start") < stamp(&par, "right.end")
            && stamp(&par, "right.start") < stamp(&par, "left.end"),
        "independent agents overlap in parallel mode"
    );
    let states = |r: &Value| {
        let mut v: Vec<(String, String, String)> = r["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["agent"].as_str().unwrap().to_string(),
                    t["task"].as_str().unwrap().to_string(),
                    t["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(states(&s), states(&p));
    // NOVA_EXECUTION_MODE picks the mode when the flag is absent.
    let env = workspace();
    timing_agents(&env);
    let out = env
        .command()
        .args(["orchestrate", "--apply", "--jobs", "2", "--json"])
        .env("NOVA_EXECUTION_MODE", "parallel")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        stamp(&env, "left.start") < stamp(&env, "right.end")
            && stamp(&env, "right.start") < stamp(&env, "left.end")
    );
}

#[test]
fn a_policy_that_denies_run_stops_that_agent_with_exit_3() {
    let ws = workspace();
    agent(
        &ws,
        "prober",
        "testing",
        "one",
        &[],
        "  - id: probe\n    title: would run\n    check: [\"true\"]\n",
    );
    agent(
        &ws,
        "dependent",
        "implementation",
        "two",
        &["prober"],
        "  - id: later\n    title: needs the prober\n    check: [\"true\"]\n",
    );
    ws.write(
        "policies/no-testers.rego",
        "package nova.authz\nimport rego.v1\ndeny contains \"testers are frozen today\" if input.subject.role == \"testing\"\n",
    );
    let (code, report) = run_json(&ws, &[]);
    assert_eq!(code, 3, "{report}");
    let t = task(&report, "prober", "probe");
    assert_eq!(t["status"], "denied");
    assert!(
        t["detail"]
            .as_str()
            .unwrap()
            .contains("testers are frozen today")
    );
    let agents = report["agents"].as_array().unwrap();
    let dependent = agents.iter().find(|a| a["agent"] == "dependent").unwrap();
    assert_eq!(dependent["outcome"], "skipped");
    // The last words count every task of the run, the one never started too.
    ws.run(&["orchestrate"]).code(3).stderr_has(
        "2 tasks: 0 done, 0 not done, 0 failed, 0 skipped, 1 denied by policy, 1 not run; \
         1 agent not started",
    );
    let md = std::fs::read_to_string(report["report"].as_str().unwrap()).unwrap();
    assert!(md.contains("## Policy denials\n\n- prober/probe:"), "{md}");
    // The task of the agent that never started is in the report too.
    assert!(
        md.contains("| dependent | skipped | later | not run | 0 |"),
        "{md}"
    );
    assert!(md.contains("testers are frozen today"));
    let denials = ws
        .run(&["audit", "log", "--action", "policy.decision", "--json"])
        .success()
        .json();
    assert!(
        denials
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "denied")
    );
}

#[test]
fn dry_run_runs_nothing_and_bad_input_exits_2() {
    let ws = workspace();
    agent(
        &ws,
        "solo",
        "implementation",
        "one",
        &[],
        "  - id: make\n    title: makes a file\n    check: {shell: \"test -f made\"}\n    run: [touch, made]\n",
    );
    ws.write(
        "blueprints/trainer.yaml",
        "name: trainer\nrole: implementation\nphase: one\nresources:\n  gpus: 2\n  memory: 2GiB\n  wall_time: 30m\ntasks:\n  - id: train\n    title: trains\n    run: [touch, trained]\n",
    );
    ws.run(&["orchestrate", "--dry-run", "--apply"])
        .success()
        .stdout_has("dry run: nothing will be run")
        .stdout_has("make: check sh -c \"test -f made\"; if it fails: run touch made, check again")
        .stdout_has("trainer (implementation); each task: 2 GPUs, memory 2.0 GiB, wall time 30m");
    std::fs::remove_file(ws.path().join("blueprints/trainer.yaml")).unwrap();
    assert!(!ws.path().join("made").exists());
    assert!(!ws.home().exists(), "a dry run creates nothing");
    ws.run(&["orchestrate", "--agents", "nobody"]).code(2);
    ws.run(&["orchestrate", "--mode", "sideways"]).code(2);
    ws.run(&["orchestrate", "--phase", "zero"])
        .code(2)
        .stderr_has("zero");
    ws.command()
        .args(["orchestrate"])
        .env("NOVA_EXECUTION_MODE", "diagonal")
        .assert()
        .code(2);
    // Without --apply the check fails and nothing is made; with it, the file appears.
    ws.run(&["orchestrate"]).code(1);
    assert!(!ws.path().join("made").exists());
    ws.run(&["orchestrate", "--apply"]).success();
    assert!(ws.path().join("made").exists());
}

/// Start `nova orchestrate --apply` on one agent, `steps`, whose `tasks`
/// YAML holds a task in `sleep` (writing `sleeper.pid`) while the file
/// `slow` exists; returns once that task is asleep.
fn start_held_run(ws: &Workspace, tasks: &str) -> std::process::Child {
    agent(ws, "steps", "implementation", "one", &[], tasks);
    ws.write("slow", "");
    let child = spawn_quiet(ws, &["orchestrate", "--apply", "--json"]);
    wait_for_file(ws, "sleeper.pid");
    child
}

#[test]
fn ctrl_c_leaves_no_child_and_resume_finishes_only_what_was_left() {
    let ws = workspace();
    let mut child = start_held_run(
        &ws,
        "  - id: first\n    title: quick\n    run: {shell: \"echo x >> first.count\"}\n  - id: second\n    title: slow while the flag is there\n    run: {shell: \"if [ -f slow ]; then sleep 300 & echo $! > sleeper.pid; wait; fi; echo x >> second.count\"}\n  - id: third\n    title: after the slow one\n    run: {shell: \"echo x >> third.count\"}\n",
    );
    std::thread::sleep(Duration::from_millis(100));
    // A run's view lists the tasks it has not started yet, in the plan's order.
    let statuses = |ws: &Workspace| {
        let runs = ws.run(&["runs", "--json"]).success().json();
        let id = runs[0]["id"].as_str().unwrap().to_string();
        let shown = ws.run(&["runs", "show", &id, "--json"]).success().json();
        shown["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["task"].as_str().unwrap(),
                    t["status"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    let during = statuses(&ws);
    assert_eq!(during.len(), 3, "{during:?}");
    assert_eq!(during[0], "first:done", "{during:?}");
    assert!(during[1].starts_with("second:"), "{during:?}");
    assert_eq!(during[2], "third:waiting", "{during:?}");
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let sleeper: i32 = std::fs::read_to_string(ws.path().join("sleeper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !alive(sleeper),
        "the task's process {sleeper} outlived the run"
    );
    let runs = ws.run(&["runs", "--json"]).success().json();
    assert_eq!(runs[0]["status"], "interrupted");
    let after = statuses(&ws);
    assert_eq!(after[2], "third:not run", "{after:?}");
    // The task that was running stopped with the run: it says so, with
    // when, rather than running on in the run's view.
    assert_eq!(after[1], "second:interrupted", "{after:?}");
    let shown = ws
        .run(&["runs", "show", runs[0]["id"].as_str().unwrap(), "--json"])
        .success()
        .json();
    let second = &shown["tasks"][1];
    assert!(second["finished_at"].as_i64().is_some(), "{second}");
    assert!(
        second["detail"]
            .as_str()
            .unwrap()
            .contains("stopped before it finished"),
        "{second}"
    );

    std::fs::remove_file(ws.path().join("slow")).unwrap();
    let (code, report) = run_json(&ws, &["--apply", "--resume"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["run"], runs[0]["id"], "the same run resumed");
    let count = |f: &str| {
        std::fs::read_to_string(ws.path().join(f))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(
        count("first.count"),
        1,
        "the finished task did not run again"
    );
    assert_eq!(count("second.count"), 1);
    assert_eq!(count("third.count"), 1);
    assert_eq!(
        statuses(&ws),
        ["first:done", "second:done", "third:done"],
        "a resumed run's tasks that had not run ran"
    );
    ws.run(&["runs"]).success().stdout_has("done");
}

#[test]
fn runs_are_listed_newest_first_up_to_a_limit() {
    let ws = workspace();
    let started = runs_of_one_echo(&ws, 3);
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["runs", "--json"];
        all.extend_from_slice(args);
        ws.run(&all)
            .success()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let newest_first: Vec<String> = started.iter().rev().cloned().collect();
    assert_eq!(ids(&[]), newest_first);
    assert_eq!(ids(&["--limit", "2"]), newest_first[..2]);
    assert_eq!(ids(&["--limit", "0"]), newest_first);
    ws.run(&["runs", "--limit", "1"])
        .success()
        .stdout_has(&started[2])
        .stdout_has("the newest 1 of 3 runs; --limit 0 lists them all");
    let all = ws.run(&["runs"]).success();
    assert!(!all.stdout.contains("the newest"), "{}", all.stdout);
    ws.run(&["runs", "--limit", "many"])
        .code(2)
        .stderr_has("--limit");
}

/// `nova runs show` without a run shows the newest, as `--resume` takes
/// the last; in a workspace without runs it fails and says so.
#[test]
fn runs_show_without_a_run_shows_the_newest() {
    let empty = workspace();
    empty
        .run(&["runs", "show"])
        .code(1)
        .stderr_has("no runs yet: nova orchestrate starts one");
    empty
        .run(&["runs", "show", "2026"])
        .code(2)
        .stderr_has("no run \"2026\": there are no runs yet");

    let ws = workspace();
    let started = runs_of_one_echo(&ws, 2);
    let shown = ws.run(&["runs", "show", "--json"]).success().json();
    assert_eq!(shown["run"]["id"], started[1].as_str());
    ws.run(&["runs", "show"])
        .success()
        .stdout_has(&format!("run {}:", started[1]));
}

// `orchestrate --agents slow --only`, interrupted, then `--resume` ran all
// 22 spark-sophia checks under the interrupted run's id.
#[test]
fn a_resumed_run_runs_its_own_selection_and_refuses_flags_that_contradict_it() {
    let ws = workspace();
    agent(
        &ws,
        "base",
        "implementation",
        "one",
        &[],
        "  - id: mark\n    title: marks\n    check: {shell: \"echo x >> base.count\"}\n",
    );
    agent(
        &ws,
        "slow",
        "implementation",
        "one",
        &["base"],
        "  - id: wait\n    title: waits while the flag is there\n    check: {shell: \"while [ -f slow ]; do sleep 0.05; done; echo x >> slow.count\"}\n",
    );
    ws.write("slow", "");
    let mut child = ws
        .std_command()
        .args(["orchestrate", "--agents", "slow", "--only"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_ne!(child.wait().unwrap().code(), Some(0));
    let runs = ws.run(&["runs", "--json"]).success().json();
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");

    ws.run(&["orchestrate", "--resume", "--apply"])
        .code(2)
        .stderr_has("--apply (the run ran checks only)");
    ws.run(&["orchestrate", "--resume", "--agents", "base"])
        .code(2)
        .stderr_has("--agents base (the run's: slow)");
    std::fs::remove_file(ws.path().join("slow")).unwrap();
    let (code, report) = run_json(&ws, &["--resume"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["run"], runs[0]["id"]);
    let agents: Vec<&str> = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["agent"].as_str().unwrap())
        .collect();
    assert_eq!(
        agents,
        ["slow"],
        "only the run's own agent, not its dependency"
    );
    assert!(!ws.path().join("base.count").exists(), "--only held");
}

#[test]
fn a_worker_killed_mid_task_loses_it_to_another_worker() {
    let ws = workspace();
    agent(
        &ws,
        "slow",
        "implementation",
        "one",
        &[],
        "  - id: once-slow\n    title: slow the first time\n    run: {shell: \"if [ ! -f once ]; then touch once; sleep 300 & echo $! > grandchild.pid; echo $$ > child.pid; fi; echo $NOVA_RUN_ID >> ran.txt; wait\"}\n",
    );
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    // A task of someone else's, in another queue: workers leave it alone.
    let unrelated = ws
        .run(&["queue", "--server", &url, "enqueue", "unrelated", "--json"])
        .success()
        .json();
    // The run has no local workers: it waits for remote ones.
    let run = ws
        .std_command()
        .args([
            "orchestrate",
            "--apply",
            "--server",
            &url,
            "--jobs",
            "0",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = spawn_worker(&ws, &url, &["--lease", "1s"]);
    wait_for_file(&ws, "ran.txt");
    first.kill().unwrap(); // SIGKILL: no ack, no goodbye
    first.wait().unwrap();
    // Its task dies with it, the grandchild too (they ran on as orphans before).
    let (child, grandchild) = (pid_in(&ws, "child.pid"), pid_in(&ws, "grandchild.pid"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while (alive(child) || alive(grandchild)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(child), "the task {child} outlived its worker");
    assert!(
        !alive(grandchild),
        "the task's grandchild {grandchild} outlived its worker"
    );
    let mut second = spawn_worker(&ws, &url, &["--lease", "1s"]);
    let out = run.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = task(&report, "slow", "once-slow");
    assert_eq!(t["status"], "done");
    assert_eq!(t["attempts"], 2, "handed out twice: {t}");
    let ran = std::fs::read_to_string(ws.path().join("ran.txt")).unwrap();
    assert_eq!(ran.lines().count(), 2, "it ran again on the second worker");
    let still = ws
        .run(&[
            "queue",
            "--server",
            &url,
            "get",
            unrelated["id"].as_str().unwrap(),
            "--json",
        ])
        .success()
        .json();
    assert_eq!(still["status"], "PENDING", "{still}");
    for child in [&mut second, &mut server] {
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
    }
}

/// On a shared server a task that needs GPUs waits in the queue of its GPU
/// count: a worker whose host has too few leaves it there and works the
/// rest; a worker that takes that queue gets it.
#[test]
fn a_shared_servers_gpu_task_waits_in_its_own_queue() {
    let ws = workspace();
    agent(
        &ws,
        "writer",
        "implementation",
        "one",
        &[],
        "  - id: note\n    title: notes\n    run: {shell: \"touch noted\"}\n",
    );
    ws.write(
        "blueprints/trainer.yaml",
        "name: trainer\nrole: implementation\nphase: one\nresources:\n  gpus: 64\ntasks:\n  - id: train\n    title: trains\n    run: {shell: \"touch trained\"}\n",
    );
    let (server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    let mut run = ws
        .std_command()
        .args([
            "orchestrate",
            "--apply",
            "--mode",
            "parallel",
            "--server",
            &url,
        ])
        .args(["--jobs", "0", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let said = lines_of(run.stderr.take().unwrap());
    let plain = spawn_worker(&ws, &url, &[]);
    wait_for_file(&ws, "noted");
    // Enqueued beside writer's task in parallel mode, and still waiting
    // after the plain worker has gone idle.
    std::thread::sleep(Duration::from_millis(500));
    let waiting = queue_tasks(&ws, &url, "nova-jobs-gpus-64");
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["status"], "PENDING", "{waiting:?}");
    // The run says where its task waits, and who would take it.
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| {
        l.contains(&format!("1 task waits in queue nova-jobs-gpus-64, which no connected worker takes: start `nova worker --server {url}` on a host with 64 or more GPUs"))
    }) {
        match said.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the run never said that its task waits untaken: {seen:?}"),
        }
    }
    assert!(
        !seen.iter().any(|l| l.contains("queue nova-jobs,")),
        "the plain worker takes nova-jobs: {seen:?}"
    );
    let gpus = spawn_worker(&ws, &url, &["--queues", "nova-jobs-gpus-64"]);
    let out = run.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(task(&report, "writer", "note")["status"], "done");
    let t = task(&report, "trainer", "train");
    assert_eq!(t["status"], "pending", "{t}");
    assert!(
        t["detail"]
            .as_str()
            .unwrap()
            .starts_with("not done: needs 64 GPUs, this host has "),
        "{t}"
    );
    assert!(!ws.path().join("trained").exists());
    for mut child in [plain, gpus, server] {
        sigterm(&child);
        child.wait().unwrap();
    }
}

/// The lines `from` gives, as they come.
fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(from)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `nova worker` on the server at `url`, with `args` after it; silent.
fn spawn_worker(ws: &Workspace, url: &str, args: &[&str]) -> std::process::Child {
    ws.std_command()
        .args(["worker", "--server", url])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The queue's tasks of `queue` on the server at `url`, as JSON.
fn queue_tasks(ws: &Workspace, url: &str, queue: &str) -> Vec<Value> {
    ws.run(&["queue", "--server", url, "list", "--queue", queue, "--json"])
        .success()
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn sigterm(p: &std::process::Child) {
    std::process::Command::new("kill")
        .args(["-TERM", &p.id().to_string()])
        .status()
        .unwrap();
}

/// `nova ARGS...` in `ws` as a child whose output nobody reads.
fn spawn_quiet(ws: &Workspace, args: &[&str]) -> std::process::Child {
    ws.std_command()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait up to 30 s for the task to create `file` in the workspace.
fn wait_for_file(ws: &Workspace, file: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ws.path().join(file).exists() {
        assert!(
            Instant::now() < deadline,
            "the task never wrote {file}: it never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_stopped_with_sigterm_ends_its_tasks_groups_and_hands_the_task_back() {
    let ws = workspace();
    agent(
        &ws,
        "slow",
        "implementation",
        "one",
        &[],
        "  - id: hang\n    title: hangs\n    run: {shell: \"sleep 300 & echo $! > grandchild.pid; echo $$ > child.pid; wait\"}\n",
    );
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    let mut run = spawn_quiet(
        &ws,
        &["orchestrate", "--apply", "--server", &url, "--jobs", "0"],
    );
    let mut worker = spawn_quiet(&ws, &["worker", "--server", &url, "--grace", "0s"]);
    wait_for_file(&ws, "child.pid");
    std::thread::sleep(Duration::from_millis(100));
    let (child, grandchild) = (pid_in(&ws, "child.pid"), pid_in(&ws, "grandchild.pid"));
    sigterm(&worker);
    let status = worker.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a worker told to stop exits 0");
    // Gone by the time the worker has exited, not later.
    assert!(!alive(child), "the task {child} outlived its worker");
    assert!(
        !alive(grandchild),
        "the grandchild {grandchild} outlived its worker"
    );
    // Handed back at once, its attempt not spent: not left to its 30 s lease.
    let tasks = queue_tasks(&ws, &url, "nova-jobs");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["status"], "PENDING", "{:?}", tasks[0]);
    assert_eq!(tasks[0]["attempts"], 0, "{:?}", tasks[0]);
    for p in [&mut run, &mut server] {
        sigterm(p);
        p.wait().unwrap();
    }
}

#[test]
fn a_worker_told_to_stop_finishes_its_task_within_the_grace() {
    let ws = workspace();
    agent(
        &ws,
        "steady",
        "implementation",
        "one",
        &[],
        "  - id: finish\n    title: finishes\n    run: {shell: \"touch started; sleep 1; touch finished\"}\n",
    );
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    let run = ws
        .std_command()
        .args([
            "orchestrate",
            "--apply",
            "--server",
            &url,
            "--jobs",
            "0",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = spawn_quiet(&ws, &["worker", "--server", &url, "--grace", "20s"]);
    wait_for_file(&ws, "started");
    sigterm(&worker);
    let stopping = Instant::now();
    let status = worker.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "the worker waited for more than its task"
    );
    assert!(
        ws.path().join("finished").exists(),
        "the task was cut short"
    );
    let tasks = queue_tasks(&ws, &url, "nova-jobs");
    assert_eq!(tasks[0]["status"], "COMPLETED", "{:?}", tasks[0]);
    // The run saw its task finish.
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    sigterm(&server);
    server.wait().unwrap();
}

/// A writer agent that sends the reader a message (and then runs `also`),
/// and a reader whose check finds it, and the phase's start, in its inbox.
fn talking_agents(ws: &Workspace, also: &str) {
    agent(
        ws,
        "writer",
        "implementation",
        "one",
        &[],
        &format!(
            "  - id: say\n    title: says hello\n    run: {{shell: \"echo '::nova:: {{\\\"to\\\": \\\"reader\\\", \\\"note\\\": \\\"hello reader\\\"}}'{also}\"}}\n"
        ),
    );
    agent(
        ws,
        "reader",
        "implementation",
        "two",
        &["writer"],
        "  - id: listen\n    title: reads its inbox\n    check: {shell: \"grep -q 'hello reader' \\\"$NOVA_INBOX\\\" && grep -q phase-start \\\"$NOVA_INBOX\\\"\"}\n",
    );
}

#[test]
fn agents_get_their_environment_and_messages_reach_the_hub_and_inboxes() {
    let ws = workspace();
    talking_agents(&ws, "; env | grep ^NOVA_ | sort > env.txt");
    let (code, report) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 0, "{report}");
    let run = report["run"].as_str().unwrap();
    let env = std::fs::read_to_string(ws.path().join("env.txt")).unwrap();
    for var in [
        format!("NOVA_RUN_ID={run}"),
        "NOVA_AGENT=writer".into(),
        "NOVA_TASK=say".into(),
        "NOVA_PHASE=one".into(),
        format!("NOVA_HOME={}", ws.home().display()),
        "NOVA_INBOX=".into(),
    ] {
        assert!(env.contains(&var), "{var} missing from\n{env}");
    }
    let shown = ws.run(&["runs", "show", run, "--json"]).success().json();
    let kinds: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    for kind in ["phase-start", "agent-start", "agent", "agent-done"] {
        assert!(kinds.contains(&kind), "{kind} not in {kinds:?}");
    }
    ws.run(&["runs", "show", &run[..10], "--messages"])
        .success()
        .stdout_has("hello reader");
    ws.run(&["runs", "show", "no-such-run"]).code(2);
    // The run's queue was in its own process: its jobs left the messages
    // to the run's workers instead of carrying them through the store.
    let db = rusqlite::Connection::open(ws.home().join("nova.db")).unwrap();
    let carried: i64 = db
        .query_row(
            "SELECT count(*) FROM queue_payloads WHERE payload LIKE '%phase-start%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(carried, 0);
}

/// Jobs on a shared server carry their agent's messages: a worker of
/// another process writes the inbox from the job alone.
#[test]
fn a_remote_worker_writes_the_inbox_its_job_carries() {
    let ws = workspace();
    talking_agents(&ws, "");
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    let mut worker = spawn_quiet(&ws, &["worker", "--server", &url]);
    let (code, report) = run_json(&ws, &["--apply", "--server", &url, "--jobs", "0"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        task(&report, "reader", "listen")["status"],
        "done",
        "{report}"
    );
    for p in [&mut worker, &mut server] {
        sigterm(p);
        p.wait().unwrap();
    }
}

/// `nova orchestrate --apply` on one agent of one task, its blueprint
/// `yaml`: the exit code, the report and that task's row.
fn apply_one_task(ws: &Workspace, yaml: &str) -> (i32, Value, Value) {
    ws.write("blueprints/only.yaml", yaml);
    let (code, report) = run_json(ws, &["--apply"]);
    let only = report["tasks"].as_array().map_or(0, |t| t.len());
    assert_eq!(only, 1, "{report}");
    let t = report["tasks"][0].clone();
    (code, report, t)
}

/// An agent's `resources.gpus` is what each of its tasks needs: on a host
/// with fewer GPUs the tasks do not run, and the report says what is missing.
#[test]
fn an_agent_needing_more_gpus_than_the_host_has_does_not_run() {
    let ws = workspace();
    let (code, report, t) = apply_one_task(
        &ws,
        "name: trainer\nrole: implementation\nphase: one\nresources:\n  gpus: 64\ntasks:\n  - id: train\n    title: trains\n    run: {shell: \"touch trained\"}\n",
    );
    assert_eq!(code, 1, "{report}");
    assert_eq!(t["status"], "pending", "{t}");
    let detail = t["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("not done: needs 64 GPUs, this host has "),
        "{detail}"
    );
    assert!(!ws.path().join("trained").exists());
    // As with `requires`, the check still runs: a task already done is done.
    ws.write("trained", "");
    let (code, report, t) = apply_one_task(
        &ws,
        "name: trainer\nrole: implementation\nphase: one\nresources:\n  gpus: 64\ntasks:\n  - id: train\n    title: trains\n    check: [test, -f, trained]\n    run: {shell: \"touch trained\"}\n",
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(t["status"], "done", "{t}");
    std::fs::remove_file(ws.path().join("trained")).unwrap();
    let (_, _, t) = apply_one_task(
        &ws,
        "name: trainer\nrole: implementation\nphase: one\nresources:\n  gpus: 64\ntasks:\n  - id: train\n    title: trains\n    check: [test, -f, trained]\n    run: {shell: \"touch trained\"}\n",
    );
    assert_eq!(t["status"], "pending", "{t}");
    let detail = t["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("check fails (exit 1); not done: needs 64 GPUs, this host has "),
        "{detail}"
    );
    assert!(!ws.path().join("trained").exists(), "the fix did not run");
}

/// A process's threads share its memory: counting each thread as a process
/// of the tree multiplied a PyTorch task's 0.7 GiB into 12.5 GiB on a GPU
/// host, and would stop a threaded task far below its memory limit.
#[test]
fn a_threaded_task_counts_its_memory_once() {
    let ws = workspace();
    let (code, report, t) = apply_one_task(
        &ws,
        "name: threaded\nrole: implementation\nphase: one\nresources:\n  memory: 150MB\ntasks:\n  - id: spin\n    title: 16 threads beside 30 MB\n    run: [python3, -c, \"import threading, time\\nheld = bytearray(30_000_000)\\nts = [threading.Thread(target=time.sleep, args=(1.5,)) for _ in range(16)]\\n[t.start() for t in ts]\\n[t.join() for t in ts]\"]\n",
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(t["status"], "done", "{t}");
    let peak = t["peak_rss"].as_u64().unwrap();
    assert!((30_000_000..100_000_000).contains(&peak), "{t}");
}

#[test]
fn a_task_past_its_memory_limit_is_stopped_and_kills_and_retries_are_audited() {
    let ws = workspace();
    ws.write(
        "blueprints/hungry.yaml",
        "name: hungry\nrole: implementation\nphase: one\nresources:\n  memory: 64MB\ntasks:\n  - id: hog\n    title: holds 400 MB\n    retries: 1\n    run: {shell: \"head -c 400000000 /dev/zero | tail > /dev/null\"}\n",
    );
    let (code, report) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 1, "{report}");
    let t = task(&report, "hungry", "hog");
    assert_eq!(t["status"], "failed");
    assert!(
        t["detail"]
            .as_str()
            .unwrap()
            .contains("passed its limit of 61.0 MiB"),
        "{t}"
    );
    assert!(t["peak_rss"].as_u64().unwrap() > 64_000_000, "{t}");
    let log = ws
        .run(&["audit", "log", "--action", "task.*", "--json"])
        .success()
        .json();
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for action in ["task.start", "task.kill", "task.retry", "task.finish"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    let runs = ws
        .run(&["audit", "log", "--action", "run.*", "--json"])
        .success()
        .json();
    assert_eq!(
        runs.as_array().unwrap().len(),
        2,
        "run.start and run.finish"
    );
}

#[test]
fn fail_fast_stops_starting_agents_and_keep_going_runs_the_independent_ones() {
    let ws = workspace();
    agent(
        &ws,
        "a-bad",
        "implementation",
        "one",
        &[],
        "  - id: fail\n    title: fails\n    run: [\"false\"]\n",
    );
    agent(
        &ws,
        "b-independent",
        "implementation",
        "one",
        &[],
        "  - id: ok\n    title: works\n    run: [touch, independent-ran]\n",
    );
    agent(
        &ws,
        "c-dependent",
        "implementation",
        "one",
        &["a-bad"],
        "  - id: ok\n    title: works\n    run: [touch, dependent-ran]\n",
    );
    let outcomes = |r: &Value| -> Vec<(String, String)> {
        r["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["agent"].as_str().unwrap().to_string(),
                    a["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (code, fast) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 1);
    assert_eq!(
        outcomes(&fast),
        [
            ("a-bad".into(), "failed".into()),
            ("b-independent".into(), "skipped".into()),
            ("c-dependent".into(), "skipped".into())
        ]
    );
    assert!(!ws.path().join("independent-ran").exists());
    let (code, going) = run_json(&ws, &["--apply", "--keep-going"]);
    assert_eq!(code, 1);
    assert_eq!(
        outcomes(&going),
        [
            ("a-bad".into(), "failed".into()),
            ("b-independent".into(), "done".into()),
            ("c-dependent".into(), "skipped".into())
        ]
    );
    assert!(ws.path().join("independent-ran").exists());
    assert!(!ws.path().join("dependent-ran").exists());
    ws.run(&["orchestrate", "--fail-fast", "--keep-going"])
        .code(2);
}

#[test]
fn a_run_goes_through_a_redis_queue_when_the_store_is_redis() {
    let redis = common::redis_server::RedisServer::start();
    let ws = workspace();
    ws.write(
        "nova.yaml",
        &format!(
            "plan: workspace\nstore: {}\nphases:\n  - name: one\n    goal: first\n",
            redis.url()
        ),
    );
    agent(
        &ws,
        "solo",
        "implementation",
        "one",
        &[],
        "  - id: make\n    title: makes a file\n    run: [touch, made]\n",
    );
    let (code, report) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 0, "{report}");
    assert!(ws.path().join("made").exists());
    // The task went through Redis, and the chain of records lives there too.
    ws.run(&["queue", "stats"])
        .success()
        .stdout_has("COMPLETED");
    let log = ws
        .run(&["audit", "log", "--action", "task.*", "--json"])
        .success()
        .json();
    assert_eq!(
        log.as_array().unwrap().len(),
        2,
        "task.start and task.finish"
    );
    ws.run(&["audit", "verify"]).success();

    // Pruning the run purges its queue in Redis too.
    let dry = ws
        .run(&["runs", "prune", "--keep", "0", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(dry["pruned"][0]["queue_tasks"], 1, "{dry}");
    ws.run(&["runs", "prune", "--keep", "0"]).success();
    let left = ws.run(&["queue", "list", "--json"]).success().json();
    assert_eq!(left, serde_json::json!([]));
    ws.run(&["audit", "verify"]).success();
}

#[test]
fn verbose_runs_echo_task_output_with_the_agent_in_front_and_kpis_count_outcomes() {
    let ws = workspace();
    agent(
        &ws,
        "talker",
        "implementation",
        "one",
        &[],
        "  - id: say\n    title: says hello\n    run: {shell: \"echo hello from the task\"}\n",
    );
    let out = ws.run(&["orchestrate", "--apply", "-v"]).success();
    assert!(
        out.stderr.contains("[talker/say] hello from the task"),
        "{}",
        out.stderr
    );
    let quiet = ws.run(&["orchestrate", "--apply"]).success();
    assert!(
        !quiet.stderr.contains("hello from the task"),
        "{}",
        quiet.stderr
    );
    let kpis = ws.run(&["kpi", "--json"]).success().json();
    let run = kpis
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "orchestrate")
        .unwrap();
    let counters = run["snapshot"]["counters"].as_array().unwrap();
    assert!(
        counters.contains(&serde_json::json!(["orchestrate.tasks.done", 1])),
        "{counters:?}"
    );
}

#[test]
fn a_malformed_job_is_failed_with_its_reason_and_bad_worker_input_exits_2() {
    let ws = workspace();
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0"]);
    let url = announced["listening"].as_str().unwrap().to_string();
    let bad = ws
        .run(&[
            "queue",
            "--server",
            &url,
            "enqueue",
            "nova.task",
            "--queue",
            "nova-jobs",
            "--payload",
            "{\"not\": \"a job\"}",
            "--json",
        ])
        .success()
        .json();
    let other = ws
        .run(&[
            "queue",
            "--server",
            &url,
            "enqueue",
            "nova.task",
            "--queue",
            "elsewhere",
            "--json",
        ])
        .success()
        .json();
    let mut worker = ws
        .std_command()
        .args(["worker", "--server", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |id: &Value| {
        ws.run(&[
            "queue",
            "--server",
            &url,
            "get",
            id.as_str().unwrap(),
            "--json",
        ])
        .success()
        .json()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let t = get(&bad["id"]);
        if t["status"] == "FAILED" {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never answered the bad job: {t}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("not a nova job"),
        "{failed}"
    );
    assert_eq!(
        get(&other["id"])["status"],
        "PENDING",
        "another queue's task is untouched"
    );
    for child in [&mut worker, &mut server] {
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
    }

    ws.run(&["worker", "--server", "not-a-url"])
        .code(2)
        .stderr_has("bad server URL \"not-a-url\"");
    ws.run(&["worker", "--server", &url, "--lease", "soon"])
        .code(2)
        .stderr_has("--lease");
    ws.run(&["worker", "--server", &url, "--grace", "a while"])
        .code(2)
        .stderr_has("--grace");
    // Requests the server would refuse for ever are refused before any
    // (the worker used to retry them silently, never ending).
    ws.run(&["worker", "--server", &url, "--queues", "no spaces"])
        .code(2)
        .stderr_has("--queues: queue name \"no spaces\" must match");
    ws.run(&["worker", "--server", &url, "--lease", "2days"])
        .code(2)
        .stderr_has("--lease: 2days is longer than the server allows (1day)");
    // A server that wants a token the worker lacks: it stops, saying so.
    ws.write("token", "tok-456\n");
    let (mut guarded, announced) = ws.serve(&["--listen", "127.0.0.1:0", "--token-file", "token"]);
    let guarded_url = announced["listening"].as_str().unwrap().to_string();
    ws.run(&["worker", "--server", &guarded_url])
        .code(3)
        .stderr_has("bearer token");
    std::process::Command::new("kill")
        .args(["-TERM", &guarded.id().to_string()])
        .status()
        .unwrap();
    guarded.wait().unwrap();
    ws.run(&["orchestrate", "--resume", "no-such-run"])
        .code(2)
        .stderr_has("--resume: no run \"no-such-run\" (see nova runs)");
    ws.run(&["orchestrate", "--server", "ftp://x:1", "--jobs", "0"])
        .code(2)
        .stderr_has("bad server URL");
}

#[test]
fn prune_removes_old_runs_whole_and_keeps_the_newest() {
    let ws = workspace();
    let ids = runs_of_one_echo(&ws, 3);
    let queue_tasks = |id: &str| -> i64 {
        let db = rusqlite::Connection::open(ws.home().join("nova.db")).unwrap();
        db.query_row(
            "SELECT COUNT(*) FROM queue_tasks WHERE queue = ?1",
            [format!("run-{id}")],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(queue_tasks(&ids[0]), 1);
    let report_of = |id: &str| ws.home().join(format!("reports/run-{id}.md"));
    assert!(report_of(&ids[0]).exists());

    ws.run(&["runs", "prune"]).code(2).stderr_has("--keep N");
    ws.run(&["runs", "prune", "--keep", "x"]).code(2);
    ws.run(&["runs", "prune", "--older-than", "soon"])
        .code(2)
        .stderr_has("--older-than");

    let dry = ws
        .run(&["runs", "prune", "--keep", "1", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(dry["dry_run"], true);
    let listed: Vec<&str> = dry["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["run"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(dry["pruned"][0]["queue_tasks"], 1);
    assert!(dry["pruned"][0]["file_bytes"].as_u64().unwrap() > 0);
    assert!(
        ws.home().join("runs").join(&ids[0]).exists(),
        "a dry run removes nothing"
    );

    let text = ws.run(&["runs", "prune", "--keep", "1"]).success();
    assert!(text.stdout.contains("pruned 2 runs"), "{}", text.stdout);
    for gone in &ids[..2] {
        assert!(!ws.home().join("runs").join(gone).exists());
        assert!(!report_of(gone).exists());
        assert_eq!(queue_tasks(gone), 0);
        ws.run(&["runs", "show", gone]).code(2);
    }
    let left = ws.run(&["runs", "--json"]).success().json();
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["id"], ids[2].as_str());
    assert_eq!(queue_tasks(&ids[2]), 1);
    ws.run(&["runs", "show", &ids[2]]).success();
    // The tasks' last states and the audit chain stay, with the prune in it.
    let tasks = ws.run(&["tasks", "--json"]).success().stdout;
    assert!(tasks.contains("\"done\""), "{tasks}");
    let pruned = ws
        .run(&["audit", "log", "--action", "runs.prune", "--json"])
        .success()
        .json();
    assert_eq!(pruned[0]["details"]["runs"][0], ids[0].as_str());
    assert_eq!(pruned[0]["controls"][0], "A.8.10", "{pruned}");
    ws.run(&["audit", "verify"]).success();

    let nothing = ws.run(&["runs", "prune", "--older-than", "30d"]).success();
    assert!(
        nothing.stdout.contains("nothing to prune"),
        "{}",
        nothing.stdout
    );
}

// Workers claimed as_root: false for every task while tasks ran as whatever
// user nova ran as, so the policy's deny-root rule never fired.
#[test]
fn as_root_tasks_run_as_the_service_user_unless_their_blueprint_needs_root_and_policy_allows_it() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let user = "nova-test-agent";
    let ws = workspace();
    ws.write(
        "nova.yaml",
        &format!(
            "plan: workspace\nphases:\n  - name: one\n    goal: first\nservice_user: {user}\nsetup:\n  min_disk_free: 1MB\n  min_memory: 1MB\n"
        ),
    );
    // The service user reaches the workspace folder (a temporary folder is root's alone).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nova = |args: &[&str]| {
        let out = ws
            .std_command()
            .env_remove("NOVA_SERVICE_USER")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // nova setup creates the service user it names.
    let (code, stdout, stderr) = nova(&["setup", "--apply"]);
    assert!(code == 0 || code == 1, "{stdout}{stderr}");
    let uid = String::from_utf8(
        std::process::Command::new("id")
            .args(["-u", user])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(
        !uid.is_empty() && uid != "0",
        "{user} was created: {stdout}{stderr}"
    );

    let who = "    run: {shell: \"echo uid=$(id -u) home=$HOME; test -r \\\"$NOVA_INBOX\\\" && test -w \\\"$NOVA_RESULTS\\\"\"}\n";
    agent(
        &ws,
        "worker-bee",
        "implementation",
        "one",
        &[],
        &format!("  - id: plain\n    title: plain\n{who}"),
    );
    agent(
        &ws,
        "admin",
        "infrastructure",
        "one",
        &[],
        &format!("  - id: needs-root\n    title: needs root\n    run_as_root: true\n{who}"),
    );
    let (code, stdout, stderr) = nova(&["orchestrate", "--apply", "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let tail = |agent: &str, t: &str| task(&report, agent, t)["log_tail"].to_string();
    assert!(
        tail("worker-bee", "plain").contains(&format!("uid={uid} home=/var/lib/{user}")),
        "{}",
        tail("worker-bee", "plain")
    );
    assert!(
        tail("admin", "needs-root").contains("uid=0 "),
        "{}",
        tail("admin", "needs-root")
    );
    let starts = ws
        .run(&["audit", "log", "--action", "task.start", "--json"])
        .success()
        .json();
    let user_of = |target: &str| {
        starts
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["target"] == target)
            .map(|e| e["details"]["user"].clone())
            .unwrap_or_else(|| panic!("no task.start for {target}: {starts}"))
    };
    assert_eq!(user_of("worker-bee/plain"), user);
    assert_eq!(user_of("admin/needs-root"), "root");

    // A role that may not have root is refused, with the policy's reason.
    agent(
        &ws,
        "admin",
        "implementation",
        "one",
        &[],
        &format!("  - id: needs-root\n    title: needs root\n    run_as_root: true\n{who}"),
    );
    let (code, stdout, stderr) = nova(&[
        "orchestrate",
        "--apply",
        "--json",
        "--agents",
        "admin",
        "--only",
    ]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let t = task(&report, "admin", "needs-root");
    assert_eq!(t["status"], "denied");
    assert!(
        t["detail"]
            .as_str()
            .unwrap()
            .contains("role \"implementation\" may not run commands as root"),
        "{t}"
    );
    let decisions = ws
        .run(&["audit", "log", "--action", "policy.decision", "--json"])
        .success()
        .json();
    assert!(
        decisions.as_array().unwrap().iter().any(
            |d| d["outcome"] == "denied" && d["details"]["input"]["context"]["as_root"] == true
        ),
        "the denial and its as_root are in the audit log: {decisions}"
    );

    // A service user that does not exist stops the run before it starts.
    ws.write("nova.yaml", "plan: workspace\nphases:\n  - name: one\n    goal: first\nservice_user: nova-no-such-user\n");
    let (code, _, stderr) = nova(&["orchestrate", "--apply"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the service user nova-no-such-user does not exist on this host; nova setup --apply creates it"),
        "{stderr}"
    );
}

// `--server garbage` or an unreachable server left a run `running` for ever
// (run.start without run.finish); `--report` into a missing folder was
// noticed only after every task ran.
#[test]
fn a_run_that_cannot_start_is_never_recorded_as_running() {
    let ws = workspace();
    agent(
        &ws,
        "tiny",
        "implementation",
        "one",
        &[],
        "  - id: t\n    title: t\n    check: [\"true\"]\n",
    );
    ws.run(&[
        "orchestrate",
        "--agents",
        "tiny",
        "--only",
        "--server",
        "garbage",
    ])
    .code(2)
    .stderr_has("bad server URL \"garbage\"");
    ws.run(&["orchestrate", "--server", "http://127.0.0.1:99999"])
        .code(2)
        .stderr_has("99999 is not a port");
    ws.run(&["orchestrate", "--server", "http://127.0.0.1:1"])
        .code(1)
        .stderr_has("cannot connect to http://127.0.0.1:1")
        .stderr_has("Connection refused");
    ws.run(&["orchestrate", "--report", "no/such/folder/run.md"])
        .code(2)
        .stderr_has("--report no/such/folder/run.md: the folder no/such/folder does not exist");
    ws.run(&["runs"]).success().stdout_has("no runs yet");
    let starts = ws.run(&["audit", "log", "--action", "run.start", "--json"]);
    if starts.code == 0 {
        assert_eq!(starts.json().as_array().map_or(0, |a| a.len()), 0);
    }
}

#[test]
fn the_guard_ends_marked_tasks_it_was_never_told_about() {
    use std::os::unix::process::CommandExt;
    let ws = Workspace::new();
    let token = "0123456789abcdef0123456789abcdef";
    // A task the worker spawned but did not get to register before it died,
    // with a grandchild in a session of its own, and someone else's task.
    let spawn = |marker: &str| {
        std::process::Command::new("sh")
            .args(["-c", "setsid sleep 300 & echo $! > \"$PIDFILE\"; wait"])
            .env("NOVA_GUARD", marker)
            .env("PIDFILE", ws.path().join(format!("{}.pid", &marker[..4])))
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let mut mine = spawn(token);
    let mut theirs = spawn("ffffffffffffffffffffffffffffffff");
    let mut guard = std::process::Command::new(assert_cmd::cargo::cargo_bin("nova"))
        .args(["__guard", token])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(ws.path().join("0123.pid").exists() && ws.path().join("ffff.pid").exists()) {
        assert!(Instant::now() < deadline, "the tasks did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let (my_grandchild, their_grandchild) = (pid_in(&ws, "0123.pid"), pid_in(&ws, "ffff.pid"));
    // The worker dies: the guard's pipe ends.
    drop(guard.stdin.take());
    guard.wait().unwrap();
    mine.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(my_grandchild) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(my_grandchild),
        "a marked grandchild in its own session outlived the guard"
    );
    assert!(
        alive(their_grandchild),
        "the guard ended another worker's task"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(their_grandchild),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = theirs.kill();
    let _ = theirs.wait();
}

#[test]
fn a_worker_comes_back_by_itself_when_its_server_restarts() {
    let ws = workspace();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}");
    let (mut server, _) = ws.serve(&["--listen", &addr]);
    let mut worker = spawn_quiet(&ws, &["worker", "--server", &url, "--grace", "0s"]);
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&server);
    server.wait().unwrap();
    // The worker keeps trying, backing off, while no server answers.
    std::thread::sleep(Duration::from_secs(2));
    assert!(worker.try_wait().unwrap().is_none(), "the worker gave up");
    let (mut server, _) = ws.serve(&["--listen", &addr]);
    let queued = ws
        .run(&[
            "queue",
            "--server",
            &url,
            "enqueue",
            "not-a-job",
            "--queue",
            "nova-jobs",
            "--json",
        ])
        .success()
        .json();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = ws
            .run(&[
                "queue",
                "--server",
                &url,
                "get",
                queued["id"].as_str().unwrap(),
                "--json",
            ])
            .success()
            .json();
        if task["status"] == "FAILED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never came back to the restarted server: {task}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in [&mut worker, &mut server] {
        sigterm(p);
        p.wait().unwrap();
    }
}

#[test]
fn an_agent_that_depends_on_one_task_of_another_runs_when_that_task_ended_well() {
    let ws = workspace();
    agent(
        &ws,
        "base",
        "implementation",
        "one",
        &[],
        "  - id: Ready\n    title: works\n    run: [\"true\"]\n  - id: broken\n    title: fails\n    run: [\"false\"]\n",
    );
    for (name, dep) in [
        ("needs-ready", "base/Ready"),
        ("needs-broken", "base/broken"),
        ("needs-base", "base"),
    ] {
        agent(
            &ws,
            name,
            "implementation",
            "two",
            &[dep],
            &format!("  - id: go\n    title: runs\n    run: [touch, {name}-ran]\n"),
        );
    }
    let (code, report) = run_json(&ws, &["--apply", "--keep-going"]);
    assert_eq!(code, 1, "{report}");
    let outcome = |name: &str| {
        report["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent"] == name)
            .unwrap()["outcome"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(outcome("base"), "failed");
    assert_eq!(outcome("needs-ready"), "done");
    assert_eq!(outcome("needs-broken"), "skipped");
    assert_eq!(outcome("needs-base"), "skipped");
    assert!(ws.path().join("needs-ready-ran").exists());
    assert!(!ws.path().join("needs-broken-ran").exists());
    assert!(!ws.path().join("needs-base-ran").exists());

    // A task that is not there is named, with the tasks that are.
    agent(
        &ws,
        "needs-ready",
        "implementation",
        "two",
        &["base/ready"],
        "  - id: go\n    title: runs\n    run: [\"true\"]\n",
    );
    ws.run(&["blueprints", "validate"])
        .code(2)
        .stderr_has("agent `base` has no task `ready`; its tasks: Ready, broken");
}

#[test]
fn a_fix_that_lacks_what_it_requires_is_not_run_and_says_what_it_needs() {
    let ws = workspace();
    let needy = |tasks: &str| agent(&ws, "needy", "implementation", "one", &[], tasks);
    needy(
        "  - id: build\n    title: needs things\n    requires:\n      env: NOVA_TEST_NEEDED\n      command: nova-no-such-program\n      file: [inputs/data.txt]\n    check: {shell: \"test -f built\"}\n    run: {shell: \"touch built ran\"}\n",
    );
    let (code, report) = run_json(&ws, &["--apply"]);
    assert_eq!(code, 1, "{report}");
    // Work left, nothing failed: the run says so, and not `failed`.
    assert_eq!(report["status"], "unfinished", "{report}");
    assert_eq!(
        ws.run(&["runs", "--json"]).success().json()[0]["status"],
        "unfinished"
    );
    let t = task(&report, "needy", "build");
    assert_eq!(t["status"], "pending", "{t}");
    assert_eq!(
        t["detail"],
        "check fails (exit 1); not done: needs NOVA_TEST_NEEDED set, nova-no-such-program on PATH, the file inputs/data.txt",
    );
    assert!(
        !ws.path().join("ran").exists(),
        "the fix ran without what it needs"
    );
    // A dry run says the same: no --apply would help.
    let (_, report) = run_json(&ws, &[]);
    assert_eq!(
        task(&report, "needy", "build")["detail"],
        "check fails (exit 1); not done: needs NOVA_TEST_NEEDED set, nova-no-such-program on PATH, the file inputs/data.txt",
    );

    // Given what it needs, the fix runs and the task is done.
    ws.write("inputs/data.txt", "x");
    ws.write("bin/nova-no-such-program", "#!/bin/sh\n");
    let bin = ws.path().join("bin");
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(bin.join("nova-no-such-program"))
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = ws
        .command()
        .args(["orchestrate", "--json", "--apply"])
        .env("NOVA_TEST_NEEDED", "yes")
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task(&report, "needy", "build")["status"], "done");
    assert!(ws.path().join("ran").exists());

    // A GPU and systemd, as this host has them or not.
    needy(
        "  - id: build\n    title: x\n    requires: {gpu: true, systemd: true}\n    check: {shell: \"test -f built\"}\n    run: {shell: \"touch built\"}\n",
    );
    std::fs::remove_file(ws.path().join("built")).ok();
    let nvidia = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| {
            d.flatten().any(|d| {
                let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
                read("vendor").trim() == "0x10de" && read("class").starts_with("0x03")
            })
        })
        .unwrap_or(false);
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    let lacking: Vec<&str> = [
        (!nvidia).then_some("an NVIDIA GPU"),
        (!systemd).then_some("systemd running as the service manager"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (_, report) = run_json(&ws, &["--apply"]);
    let t = task(&report, "needy", "build");
    if lacking.is_empty() {
        assert_eq!(t["status"], "done", "{t}");
    } else {
        assert_eq!(
            t["detail"],
            format!(
                "check fails (exit 1); not done: needs {}",
                lacking.join(", ")
            ),
        );
        assert!(!ws.path().join("built").exists());
    }

    // A check whose program is not installed says the task is not done.
    needy("  - id: build\n    title: x\n    check: [nova-no-such-program, --version]\n");
    let (_, report) = run_json(&ws, &[]);
    let t = task(&report, "needy", "build");
    assert_eq!(t["status"], "pending", "{t}");
    assert_eq!(
        t["detail"],
        "check fails (exit 127); no fix available (the task has no run step)"
    );

    // A requirement of a kind nova does not know is refused by name.
    needy(
        "  - id: build\n    title: x\n    requires:\n      service: grafana\n    run: [\"true\"]\n",
    );
    ws.run(&["blueprints", "validate"])
        .code(2)
        .stderr_has("unknown field `service`");
    // A service is HOST:PORT.
    needy(
        "  - id: build\n    title: x\n    requires:\n      tcp: [grafana, \"127.0.0.1:3000\"]\n    run: [\"true\"]\n",
    );
    ws.run(&["blueprints", "validate"])
        .code(2)
        .stderr_has("field `tasks[0].requires.tcp[0]`: `grafana` is not HOST:PORT");
    // gpu and systemd are yes or no.
    needy(
        "  - id: build\n    title: x\n    requires: {gpu: \"yes please\"}\n    run: [\"true\"]\n",
    );
    ws.run(&["blueprints", "validate"]).code(2).stderr_has(
        "field `tasks[0].requires.gpu`: invalid type: string \"yes please\", expected a boolean",
    );
}

/// A run whose database can no longer be synced (here its WAL file is
/// removed under it, as when the workspace is deleted mid-run) stops with
/// an error that says so, instead of going on for ever with every write
/// failing.
#[test]
fn a_run_whose_database_cannot_be_synced_stops_and_says_why() {
    let ws = workspace();
    agent(
        &ws,
        "steps",
        "implementation",
        "one",
        &[],
        "  - id: first\n    title: waits for the flag to go\n    run: {shell: \"touch started; i=0; while [ -f hold ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\"}\n  - id: second\n    title: quick\n    run: {shell: \"true\"}\n  - id: third\n    title: quick\n    run: {shell: \"true\"}\n",
    );
    ws.write("hold", "");
    let logs = tempfile::tempdir().unwrap();
    let stderr = std::fs::File::create(logs.path().join("stderr")).unwrap();
    let mut child = ws
        .std_command()
        .args(["orchestrate", "--apply"])
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_for_file(&ws, "started");
    std::fs::remove_file(ws.home().join("nova.db-wal")).unwrap();
    std::fs::remove_file(ws.path().join("hold")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run went on with a database it cannot sync");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(logs.path().join("stderr")).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("the run stops") && said.contains("nova.db-wal"),
        "{said}"
    );
}

/// A run whose process was killed outright (no Ctrl-C to end it) still
/// reads `running` in the store; `nova runs` and `nova runs show` say its
/// process is gone and how to finish it, and `--resume` does.
#[test]
fn a_run_whose_process_was_killed_says_so_and_resumes() {
    let ws = workspace();
    let mut child = start_held_run(
        &ws,
        "  - id: slow\n    title: slow while the flag is there\n    run: {shell: \"if [ -f slow ]; then sleep 300 & echo $! > sleeper.pid; wait; fi; echo x >> slow.count\"}\n",
    );
    let runs = ws.run(&["runs", "--json"]).success().json();
    let id = runs[0]["id"].as_str().unwrap().to_string();
    let listed = ws.run(&["runs"]).success();
    assert!(!listed.stdout.contains("process gone"), "{}", listed.stdout);

    child.kill().unwrap(); // SIGKILL: the run cannot record its end
    child.wait().unwrap();
    let sleeper = pid_in(&ws, "sleeper.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(sleeper) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(sleeper), "the task {sleeper} outlived its run");
    ws.run(&["runs"])
        .success()
        .stdout_has("running, process gone");
    ws.run(&["runs", "show", &id])
        .success()
        .stdout_has(&format!(
            "its process is gone (killed, or the machine restarted): nova orchestrate --resume {id} finishes it"
        ));

    std::fs::remove_file(ws.path().join("slow")).unwrap();
    let (code, report) = run_json(&ws, &["--apply", "--resume"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["run"], id.as_str(), "the same run resumed");
    let listed = ws.run(&["runs"]).success();
    assert!(!listed.stdout.contains("process gone"), "{}", listed.stdout);
    assert_eq!(
        ws.run(&["runs", "--json"]).success().json()[0]["status"],
        "done"
    );
}
