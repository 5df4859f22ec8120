//! The command line itself: version, help, completions, global flags, exit codes.

mod common;

use common::Workspace;

#[test]
fn version_names_the_package_version() {
    let ws = Workspace::new();
    ws.run(&["--version"])
        .success()
        .stdout_has(env!("CARGO_PKG_VERSION"));
}

#[test]
fn help_exits_zero_and_a_bad_flag_exits_two() {
    let ws = Workspace::new();
    ws.run(&["--help"]).success().stdout_has("roadmap");
    ws.run(&["--no-such-flag"])
        .code(2)
        .stderr_has("--no-such-flag");
    ws.run(&["roadmap", "--format", "pdf"])
        .code(2)
        .stderr_has("pdf");
    ws.run(&["tasks", "--status", "sleeping"])
        .code(2)
        .stderr_has("sleeping");
}

#[test]
fn completions_for_each_shell_mention_the_subcommands() {
    let ws = Workspace::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = ws.run(&["completions", shell]).success();
        for sub in ["blueprints", "roadmap", "tasks"] {
            assert!(out.stdout.contains(sub), "{shell} completions lack {sub}");
        }
    }
    ws.run(&["completions", "tcsh"]).code(2);
}

#[test]
fn json_output_is_only_json_and_no_colour_when_piped() {
    let ws = Workspace::new();
    for args in [
        &["blueprints", "--json"][..],
        &["tasks", "--json"],
        &["roadmap", "--json"],
        &["plan", "--json"],
    ] {
        let out = ws.run(args).success();
        out.json();
        assert!(
            !out.stdout.contains('\x1b'),
            "{args:?} printed escape codes"
        );
    }
    let out = ws
        .command()
        .args(["blueprints"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains('\x1b'),
        "colour on a pipe"
    );
}

#[test]
fn color_always_colours_and_quiet_prints_nothing() {
    let ws = Workspace::new();
    let out = ws.run(&["roadmap", "--color", "always"]).success();
    assert!(
        out.stdout.contains("\x1b["),
        "no escape codes with --color always"
    );
    let out = ws.run(&["roadmap", "--quiet"]).success();
    assert!(out.stdout.is_empty(), "quiet printed: {}", out.stdout);
}

#[test]
fn home_flag_beats_the_variable() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("flag")).unwrap();
    std::fs::write(ws.path().join("flag/nova.db"), "not a database at all").unwrap();
    // The variable points at a folder with nothing in it; the flag at the bad file.
    let out = ws
        .command()
        .args(["--home", "flag", "tasks"])
        .env("NOVA_HOME", ws.path().join("var"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ws
        .command()
        .args(["tasks"])
        .env("NOVA_HOME", ws.path().join("flag"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ws
        .command()
        .args(["tasks"])
        .env("NOVA_HOME", ws.path().join("var"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    use std::io::Read;
    use std::process::Stdio;
    let ws = Workspace::new();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("nova"))
        .args(["tasks", "--checklist"])
        .current_dir(ws.path())
        .env_remove("NOVA_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status:?}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_names_the_variables_but_never_shows_a_store_or_opa_url_with_its_password() {
    let ws = Workspace::new();
    for command in [
        &["queue", "--help"][..],
        &["backup", "--help"],
        &["serve", "--help"],
    ] {
        let out: common::Outcome = ws
            .std_command()
            .env("NOVA_STORE", "redis://:s3cret-store@127.0.0.1:6379/0")
            .env("NOVA_OPA_URL", "http://user:s3cret-opa@opa.internal:8181")
            .args(command)
            .output()
            .unwrap()
            .into();
        let out = out.success().stdout_has("[env: NOVA_STORE]");
        assert!(
            !out.stdout.contains("s3cret"),
            "{command:?}:\n{}",
            out.stdout
        );
    }
    // Nor does a decision that could not reach OPA.
    let input = ws.write(
        "input.json",
        r#"{"subject":{"agent":"a","role":"implementation"},"action":"enqueue","resource":"x","context":{}}"#,
    );
    let out: common::Outcome = ws
        .std_command()
        .env("NOVA_OPA_URL", "http://user:s3cret-opa@127.0.0.1:1")
        .args(["policy", "eval", "--input", input.to_str().unwrap()])
        .output()
        .unwrap()
        .into();
    let out = out
        .code(3)
        .stdout_has("cannot reach OPA at http://user:[redacted]@");
    assert!(
        !out.stdout.contains("s3cret") && !out.stderr.contains("s3cret"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn a_redis_password_is_never_shown_in_errors_or_what_a_server_announces() {
    let redis = common::redis_server::RedisServer::start();
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-right")
        .query::<()>(&mut con)
        .unwrap();
    let ws = Workspace::new();
    let wrong = format!("redis://:s3cret-wrong@127.0.0.1:{}/0", redis.port);
    let out = ws.run(&["queue", "--store", &wrong, "stats"]).code(1);
    assert!(
        out.stderr.contains("redis://:[redacted]@127.0.0.1") && !out.stderr.contains("s3cret"),
        "{}",
        out.stderr
    );
    let right = format!("redis://:s3cret-right@127.0.0.1:{}/0", redis.port);
    let (mut server, announced) = ws.serve(&["--listen", "127.0.0.1:0", "--store", &right]);
    server.kill().unwrap();
    server.wait().unwrap();
    let store = announced["store"].as_str().unwrap();
    assert_eq!(
        store,
        format!("redis://:[redacted]@127.0.0.1:{}/0", redis.port)
    );
}
