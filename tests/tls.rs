//! TLS between `nova serve` and its clients, over real loopback connections
//! with certificates made for each test (a CA, server and client
//! certificates, one expired): the right CA connects; a wrong CA, an expired
//! certificate, a plain-text client and a client without a certificate under
//! mutual TLS are refused with an error that says why; bad TLS input is a
//! usage error naming the file.

mod common;

use std::process::Child;

use common::Workspace;
use common::pki::{TOKEN, pki};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(ws: &Workspace, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--token-file", "token"];
    args.extend(extra);
    let (child, announced) = ws.serve(&args);
    let url = announced["listening"].as_str().unwrap().to_string();
    Server { child, url }
}

/// `nova queue --server URL --token-file token ARGS... stats`.
fn stats(ws: &Workspace, url: &str, args: &[&str]) -> common::Outcome {
    let mut all = vec!["queue", "--server", url, "--token-file", "token"];
    all.extend(args);
    all.push("stats");
    ws.run(&all)
}

/// `nova queue ACTION...` against `url` with the token, trusting `ca.pem`.
fn trusting_queue(ws: &Workspace, url: &str, action: &[&str]) -> common::Outcome {
    let mut all = vec![
        "queue",
        "--server",
        url,
        "--token-file",
        "token",
        "--ca",
        "ca.pem",
    ];
    all.extend(action);
    ws.run(&all)
}

#[test]
fn a_client_trusting_the_servers_ca_connects_and_others_are_refused() {
    let ws = Workspace::new();
    pki(&ws);
    let server = serve(
        &ws,
        &["--tls-cert", "server.pem", "--tls-key", "server.key"],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    stats(&ws, &server.url, &["--ca", "ca.pem"]).success();
    let wrong = stats(&ws, &server.url, &["--ca", "other-ca.pem"]).code(1);
    assert!(
        wrong.stderr.contains("certificate") && wrong.stderr.contains("UnknownIssuer"),
        "{}",
        wrong.stderr
    );
    // The system's roots do not know a private CA either.
    stats(&ws, &server.url, &[])
        .code(1)
        .stderr_has("certificate");
    // A plain-text client against the TLS port.
    let plain = server.url.replace("https://", "http://");
    let refused = stats(&ws, &plain, &[]).code(1);
    assert!(
        refused.stderr.contains("TLS"),
        "a plain-text client should hear that the server speaks TLS: {}",
        refused.stderr
    );

    // A worker over TLS takes a task and answers it.
    let queued = trusting_queue(
        &ws,
        &server.url,
        &["enqueue", "not-a-job", "--queue", "nova-jobs", "--json"],
    )
    .success()
    .json();
    let mut worker = ws
        .std_command()
        .args([
            "worker",
            "--server",
            &server.url,
            "--token-file",
            "token",
            "--ca",
            "ca.pem",
            "--grace",
            "0s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = queued["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let task = trusting_queue(&ws, &server.url, &["get", id, "--json"])
            .success()
            .json();
        if task["status"] == "FAILED" {
            assert!(
                task["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("not a nova job")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker over TLS never answered: {task}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn an_expired_server_certificate_is_refused() {
    let ws = Workspace::new();
    pki(&ws);
    let server = serve(
        &ws,
        &["--tls-cert", "expired.pem", "--tls-key", "expired.key"],
    );
    let refused = stats(&ws, &server.url, &["--ca", "ca.pem"]).code(1);
    assert!(
        refused.stderr.contains("certificate expired"),
        "{}",
        refused.stderr
    );
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let ws = Workspace::new();
    pki(&ws);
    let server = serve(
        &ws,
        &[
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-ca",
            "ca.pem",
        ],
    );
    stats(
        &ws,
        &server.url,
        &[
            "--ca",
            "ca.pem",
            "--client-cert",
            "client.pem",
            "--client-key",
            "client.key",
        ],
    )
    .success();
    let refused = stats(&ws, &server.url, &["--ca", "ca.pem"]).code(1);
    assert!(
        refused.stderr.to_lowercase().contains("certificate"),
        "{}",
        refused.stderr
    );
    let refused = stats(
        &ws,
        &server.url,
        &[
            "--ca",
            "ca.pem",
            "--client-cert",
            "stranger.pem",
            "--client-key",
            "stranger.key",
        ],
    )
    .code(1);
    assert!(
        refused.stderr.to_lowercase().contains("certificate"),
        "{}",
        refused.stderr
    );
}

#[test]
fn bad_tls_input_is_a_usage_error_naming_the_file() {
    let ws = Workspace::new();
    pki(&ws);
    ws.write("garbage.pem", "not a certificate\n");
    let serve_with = |args: &[&str]| {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend(args);
        ws.run(&all)
    };
    serve_with(&["--tls-cert", "server.pem"])
        .code(2)
        .stderr_has("--tls-key");
    serve_with(&["--tls-key", "server.key"])
        .code(2)
        .stderr_has("--tls-cert");
    serve_with(&["--tls-cert", "missing.pem", "--tls-key", "server.key"])
        .code(2)
        .stderr_has("missing.pem");
    serve_with(&["--tls-cert", "garbage.pem", "--tls-key", "server.key"])
        .code(2)
        .stderr_has("garbage.pem: no certificate");
    serve_with(&["--tls-cert", "server.pem", "--tls-key", "client.key"])
        .code(2)
        .stderr_has("does not match the certificate");
    // Beyond loopback, TLS or an explicit --insecure.
    ws.run(&["serve", "--listen", "0.0.0.0:0", "--token-file", "token"])
        .code(2)
        .stderr_has("needs TLS");
    ws.run(&["serve", "--token-file", "token", "--http", "0.0.0.0:0"])
        .code(2)
        .stderr_has("--http 0.0.0.0:0: a dashboard off loopback needs TLS");
    // Client side.
    stats(&ws, "http://127.0.0.1:1", &["--ca", "ca.pem"])
        .code(2)
        .stderr_has("https://");
    stats(&ws, "https://127.0.0.1:1", &["--ca", "garbage.pem"])
        .code(2)
        .stderr_has("garbage.pem");
    stats(&ws, "https://127.0.0.1:1", &["--client-cert", "client.pem"])
        .code(2)
        .stderr_has("--client-key");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_over_tls_with_a_secure_cookie() {
    let ws = Workspace::new();
    pki(&ws);
    let (child, announced) = ws.serve(&[
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        "token",
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        "server.pem",
        "--tls-key",
        "server.key",
    ]);
    let _server = Server {
        child,
        url: String::new(),
    };
    let page = announced["dashboard"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    assert!(page.starts_with("https://127.0.0.1:"), "{page}");
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(ws.path().join("ca.pem")).unwrap()).unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let signed = trusting
        .post(format!("{page}/api/v1/session"))
        .json(&serde_json::json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert!(signed.status().is_success(), "{}", signed.status());
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let queues = trusting
        .get(format!("{page}/api/v1/queues"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(queues.status(), 200);
    // Neither a client that does not trust the CA nor plain HTTP gets an answer.
    assert!(
        reqwest::get(format!("{page}/api/v1/session"))
            .await
            .is_err()
    );
    let plain = page.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/api/v1/session"))
            .await
            .and_then(|r| r.error_for_status())
            .is_err()
    );
}
