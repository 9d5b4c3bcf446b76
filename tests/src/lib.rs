//! # onecard-tests
//!
//! End-to-end tests: a real `onecard serve` process on loopback, real sockets, real
//! RocksDB. This library is the harness; the scenarios are in `tests/e2e/`.
//!
//! The harness runs the `onecard` binary from the same target directory as the test
//! executable. `cargo test --workspace` builds it first (onecard-ops has integration
//! tests of its own, which makes cargo build the binary before any test runs).

pub mod browser;
pub mod cell;
pub mod proxy;
pub mod webhook;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A purchase of `amount_fen` at lunch, without a PIN: the request most scenarios
/// and benchmarks send.
#[must_use]
pub const fn purchase(card_number: u64, amount_fen: u32) -> onecard_protocol::Request {
    purchase_at(card_number, amount_fen, onecard_protocol::MealPeriod::Lunch)
}

/// A purchase of `amount_fen` without a PIN, for meal period `meal`
/// (`Unspecified`: the server places it by the time).
#[must_use]
pub const fn purchase_at(
    card_number: u64,
    amount_fen: u32,
    meal_period: onecard_protocol::MealPeriod,
) -> onecard_protocol::Request {
    onecard_protocol::Request::Purchase(onecard_protocol::message::Purchase {
        card_number,
        amount_fen,
        meal_period,
        item_code: 0,
        pin_block: None,
    })
}

/// How long a server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `onecard` binary of the running executable's target directory: a test's
/// (`target/<profile>/deps/<test>`) or a benchmark binary's (`target/<profile>/<bin>`).
///
/// # Panics
/// If the binary has not been built.
#[must_use]
pub fn onecard_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let name = format!("onecard{}", std::env::consts::EXE_SUFFIX);
    let beside = exe.parent().expect("target/<profile>");
    let profile_dir = if beside.ends_with("deps") {
        beside.parent().expect("target/<profile>/deps")
    } else {
        beside
    };
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: run the suite with `cargo test --workspace`",
        binary.display()
    );
    binary
}

/// A fresh, empty directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `onecard-<label>-<pid>-<n>`.
    ///
    /// # Panics
    /// If the directory cannot be created.
    #[must_use]
    pub fn new(label: &str) -> Self {
        Self::try_new(label).expect("create a temp dir")
    }

    /// Creates `onecard-<label>-<pid>-<n>`, or says why it cannot.
    ///
    /// # Errors
    /// If the directory cannot be created.
    pub fn try_new(label: &str) -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("onecard-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `onecard serve`, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    terminal_addr: SocketAddr,
    admin_addr: SocketAddr,
    data_dir: PathBuf,
}

/// Parses the ready line, `onecard ready: terminals on A admin on B`.
fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("onecard ready: terminals on ")?;
    let (terminals, admin) = rest.split_once(" admin on ")?;
    Some((terminals.trim().parse().ok()?, admin.trim().parse().ok()?))
}

impl Server {
    /// Starts `onecard serve` on `data_dir` with both ports on free loopback ports,
    /// and waits for its ready line.
    ///
    /// # Panics
    /// If the process does not start or does not get ready in time.
    #[must_use]
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// [`Server::start`] with extra `serve` arguments.
    ///
    /// # Panics
    /// If the process does not start or does not get ready in time.
    #[must_use]
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Server::start_with`] with extra environment variables.
    ///
    /// # Panics
    /// If the process does not start or does not get ready in time.
    #[must_use]
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(data_dir, extra, env, Stdio::inherit())
    }

    /// Starts `onecard serve` with its log (stderr) written to `log`, for tests that
    /// read what it logged.
    ///
    /// # Panics
    /// As [`Server::start_with_env`], or if the log file cannot be created.
    #[must_use]
    pub fn start_logging_to(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("create the log file");
        Self::spawn(data_dir, extra, env, Stdio::from(file))
    }

    fn spawn(data_dir: &Path, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        let mut args: Vec<std::ffi::OsString> =
            ["serve", "--terminal-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
                .iter()
                .map(Into::into)
                .collect();
        args.push("--data-dir".into());
        args.push(data_dir.into());
        args.extend(extra.iter().map(Into::into));
        Self::spawn_args(data_dir, &args, env, stderr)
    }

    /// Starts `onecard serve --config <config>` (a node of a cell, whose addresses
    /// are in its config), its log written to `log`, and waits for its ready line.
    ///
    /// # Panics
    /// As [`Server::start_with_env`].
    #[must_use]
    pub fn start_node(config: &Path, data_dir: &Path, env: &[(&str, &str)], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the node's log file");
        let args = ["serve".into(), "--config".into(), config.as_os_str().to_owned()];
        Self::spawn_args(data_dir, &args, env, Stdio::from(file))
    }

    fn spawn_args(
        data_dir: &Path,
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Self {
        let mut child = Command::new(onecard_binary())
            .args(args)
            .env("RUST_LOG", "warn")
            // No daily backup unless a test asks for one (`--backup-at`).
            .env("ONECARD_BACKUP_AT", "off")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn onecard");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addrs) = parse_ready(&line) {
                    let _ = tx.send(addrs);
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let (terminal_addr, admin_addr) = loop {
            if let Ok(addrs) = rx.recv_timeout(Duration::from_millis(100)) {
                break addrs;
            }
            if let Some(status) = child.try_wait().expect("poll onecard") {
                panic!("onecard exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "onecard not ready in {READY_TIMEOUT:?}");
        };
        Self { child, terminal_addr, admin_addr, data_dir: data_dir.to_owned() }
    }

    /// Where terminals connect.
    #[must_use]
    pub const fn terminal_addr(&self) -> SocketAddr {
        self.terminal_addr
    }

    /// Where the admin API listens.
    #[must_use]
    pub const fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The server's data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, from /proc.
    ///
    /// # Panics
    /// If /proc cannot be read.
    #[must_use]
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    /// An HTTP client for the admin API, not yet logged in.
    #[must_use]
    pub fn api(&self) -> Api {
        Api::new(self.admin_addr)
    }

    /// Logs in as `admin`, first changing the bootstrap password the server wrote to
    /// `initial-admin-password` (on the first call for a data directory).
    ///
    /// # Panics
    /// If the admin cannot log in.
    #[must_use]
    pub fn admin(&self) -> Api {
        admin_of(self.admin_addr, &self.data_dir)
    }

    /// Scrapes /metrics.
    ///
    /// # Panics
    /// If the scrape fails.
    #[must_use]
    pub fn metrics(&self) -> String {
        let (status, text) = self.api().get_text("/metrics");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) to the process.
    ///
    /// # Panics
    /// If `kill` cannot be run.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status =
            Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    /// If it does not exit within `timeout`.
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll onecard") {
                return status;
            }
            assert!(Instant::now() < deadline, "onecard did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    ///
    /// # Panics
    /// If the process cannot be signalled or does not exit in time.
    pub fn stop(self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(30))
    }

    /// Whether the process is still running.
    ///
    /// # Panics
    /// If its status cannot be read.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll onecard").is_none()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs in as `admin` on the API at `addr`, first changing the bootstrap password
/// written to `<data_dir>/initial-admin-password` (on the first call).
///
/// # Panics
/// If the admin cannot log in.
#[must_use]
pub fn admin_of(addr: SocketAddr, data_dir: &Path) -> Api {
    const PASSWORD: &str = "admin-password-for-tests";
    let mut api = Api::new(addr);
    if api.login("admin", PASSWORD).is_ok() {
        return api;
    }
    let initial = std::fs::read_to_string(data_dir.join("initial-admin-password"))
        .expect("the bootstrap password file");
    let (status, body) = api.post(
        "/api/auth/password",
        &serde_json::json!({
            "operator": "admin", "password": initial.trim(), "new_password": PASSWORD
        }),
    );
    assert_eq!(status, 200, "change the bootstrap password: {body}");
    api.login("admin", PASSWORD).expect("admin logs in");
    api
}

/// Runs `onecard verify` on a stopped server's data directory and returns its report.
///
/// # Panics
/// If the binary cannot run, or the ledger fails verification.
#[must_use]
pub fn verify(data_dir: &Path) -> String {
    let data_dir = data_dir.to_str().expect("a UTF-8 path");
    run_onecard(&["verify", "--data-dir", data_dir])
}

/// Runs the `onecard` binary with `args` to its end and returns what it printed.
///
/// # Panics
/// If the binary cannot run or exits non-zero (its output is in the message).
#[must_use]
pub fn run_onecard(args: &[&str]) -> String {
    let output = run_onecard_to_end(args);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "onecard {args:?} failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// Runs the `onecard` binary with `args` to its end, whatever its exit status.
///
/// # Panics
/// If the binary cannot run.
#[must_use]
pub fn run_onecard_to_end(args: &[&str]) -> std::process::Output {
    Command::new(onecard_binary()).args(args).env("RUST_LOG", "warn").output().expect("run onecard")
}

/// A value of one series in Prometheus text, `name{labels}` exactly as printed (labels
/// sorted by name), or `None` if absent.
#[must_use]
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
}

/// A blocking client of the admin API.
#[derive(Debug)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// A login that was refused: the status and the error body.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// The JSON error.
    pub body: serde_json::Value,
}

impl Api {
    /// A client of the API at `addr`.
    #[must_use]
    pub fn new(addr: SocketAddr) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            base: format!("http://{addr}"),
            token: None,
        }
    }

    /// Logs in and keeps the token.
    ///
    /// # Errors
    /// The refusal, if the server refuses.
    pub fn login(&mut self, operator: &str, password: &str) -> Result<(), Refused> {
        let (status, body) = self.post(
            "/api/auth/login",
            &serde_json::json!({ "operator": operator, "password": password }),
        );
        if status != 200 {
            return Err(Refused { status, body });
        }
        self.token = body["token"].as_str().map(str::to_owned);
        Ok(())
    }

    /// The bearer token, if logged in.
    #[must_use]
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Uses `token` (or none) from now on.
    pub fn set_token(&mut self, token: Option<&str>) {
        self.token = token.map(str::to_owned);
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    fn json(
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> (u16, serde_json::Value) {
        let mut response = response.expect("the admin API answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, body)
    }

    /// `GET path`: the status and the JSON body.
    ///
    /// # Panics
    /// If the server does not answer.
    #[must_use]
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        Self::json(self.authorize(self.agent.get(format!("{}{path}", self.base))).call())
    }

    /// `GET path`: the status and the body as text.
    ///
    /// # Panics
    /// If the server does not answer.
    #[must_use]
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let mut response =
            self.authorize(self.agent.get(format!("{}{path}", self.base))).call().expect("answers");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().expect("a body"))
    }

    /// `GET path`: the status and the body's bytes (a file).
    ///
    /// # Panics
    /// If the server does not answer.
    #[must_use]
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let mut response =
            self.authorize(self.agent.get(format!("{}{path}", self.base))).call().expect("answers");
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(64 << 20).read_to_vec().expect("a body");
        (status, body)
    }

    /// `POST path` with a JSON body.
    ///
    /// # Panics
    /// If the server does not answer.
    #[must_use]
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        Self::json(self.authorize(self.agent.post(format!("{}{path}", self.base))).send_json(body))
    }

    /// `DELETE path`: the status and the JSON body.
    ///
    /// # Panics
    /// If the server does not answer.
    #[must_use]
    pub fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        Self::json(self.authorize(self.agent.delete(format!("{}{path}", self.base))).call())
    }

    /// `POST path` with raw bytes as `content_type`.
    ///
    /// # Panics
    /// If the server does not answer.
    #[must_use]
    pub fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let request = self.authorize(self.agent.post(format!("{}{path}", self.base)));
        Self::json(request.header("Content-Type", content_type).send(body))
    }
}
