//! A small harness for running the real `nova` binary in a temporary workspace.
//!
//! Each [`Workspace`] is a fresh folder used as the current directory, with
//! `NOVA_HOME` and colour settings cleared so the host's environment cannot
//! leak into a test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Outcome {
    fn from(output: std::process::Output) -> Outcome {
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Outcome {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.stdout
        );
        self
    }
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.path().join(".nova")
    }

    /// Write `text` to `rel` under the workspace, creating folders.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn command(&self) -> Command {
        Command::from_std(self.std_command())
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        self.command()
            .args(args)
            .output()
            .expect("nova runs")
            .into()
    }

    /// Every path under the workspace, relative, sorted.
    pub fn files(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                out.push(path.strip_prefix(base).unwrap().display().to_string());
                if path.is_dir() {
                    walk(base, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out);
        out.sort();
        out
    }
}
pub mod netns;
pub mod pki;
pub mod redis_server;
pub mod s3_server;

impl Workspace {
    /// Start `nova --json serve ARGS...` in this workspace; the child and the
    /// line it announced itself with (`listening`, `store`, `metrics`...).
    pub fn serve(&self, args: &[&str]) -> (std::process::Child, serde_json::Value) {
        use std::io::BufRead;
        let mut child = self
            .std_command()
            .args(["--json", "serve"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nova serve starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("nova serve announces itself");
        let announced = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("nova serve announced {line:?}: {e}"));
        (child, announced)
    }
}

impl Workspace {
    /// The same as [`Workspace::command`], as a plain `std::process::Command`
    /// (for a child the test signals or waits on itself).
    pub fn std_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("nova"));
        cmd.current_dir(self.path())
            .env_remove("NOVA_HOME")
            .env_remove("NOVA_LOG")
            .env_remove("NOVA_STORE")
            .env_remove("NOVA_OPA_URL")
            .env_remove("NOVA_EXECUTION_MODE")
            .env_remove("NOVA_SERVICE_USER")
            .env("NO_COLOR", "1");
        // No AWS settings from the host: a test sets those it wants.
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        // The audit checkpoint signing key goes under the workspace, not ~/.config.
        cmd.env("XDG_CONFIG_HOME", self.path().join(".config"));
        cmd.env("AWS_CONFIG_FILE", self.path().join(".aws/config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path().join(".aws/credentials"),
            );
        // As root (CI, containers) tests run their tasks as root on purpose,
        // as a host with no other user would; tests of the service user
        // remove this.
        if nix::unistd::Uid::effective().is_root() {
            cmd.env("NOVA_SERVICE_USER", "root");
        }
        cmd
    }
}

impl Workspace {
    /// A workspace with something to back up: a policy, nova.yaml, three
    /// queue tasks (`demo`) and the audit records they left.
    pub fn with_history() -> Workspace {
        let ws = Workspace::new();
        ws.write("policies/extra.rego", "package extra\n");
        ws.write("nova.yaml", "execution_mode: parallel\n");
        for i in 0..3 {
            ws.run(&[
                "queue",
                "enqueue",
                "demo",
                "--payload",
                &format!("{{\"n\":{i}}}"),
            ])
            .success();
        }
        ws
    }
}
