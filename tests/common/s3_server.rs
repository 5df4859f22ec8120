//! A real S3 API for a test: moto's server (`moto[server]` from PyPI, which
//! scripts/test installs) on a free loopback port, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    /// A server that accepts any credentials.
    pub fn start() -> S3Server {
        Self::start_with(&[])
    }

    /// A server started with extra environment (for example
    /// `INITIAL_NO_AUTH_ACTION_COUNT=0`, which makes it check credentials).
    pub fn start_with(env: &[(&str, &str)]) -> S3Server {
        let python = std::env::var("NOVA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(&python)
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {python} -m moto.server ({e})"));
            if wait_ready(&mut child, port) {
                return S3Server { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto's S3 server did not start with {python}; scripts/test installs moto[server] \
             and names its Python in NOVA_TEST_PYTHON"
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create `bucket` (moto takes an unsigned request); the HTTP status.
    pub fn create_bucket(&self, bucket: &str) -> u16 {
        request(self.port, "PUT", &format!("/{bucket}"))
    }

    /// Every key in `bucket`, read straight from the server.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let store = self.client(bucket);
        runtime().block_on(async {
            let all: Vec<_> = store.list(None).try_collect().await.unwrap();
            all.into_iter().map(|m| m.location.to_string()).collect()
        })
    }

    /// A plain object_store client of `bucket` (moto refuses anonymous
    /// reads of objects, so the test's own reads are signed too).
    fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }

    /// The raw bytes stored at `key` in `bucket`.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        let store = self.client(bucket);
        runtime().block_on(async {
            let found = store
                .get(&object_store::path::Path::from(key))
                .await
                .unwrap();
            found.bytes().await.unwrap().to_vec()
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send a bodiless HTTP/1.1 request; the answer's status code, 0 when
/// there was none (a server still starting may take the connection and
/// reset it).
fn request(port: u16, method: &str, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    if write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// True once the server answers HTTP; false if it exits first.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if request(port, "GET", "/") != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
