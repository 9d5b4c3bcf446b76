//! # onecard-tests
//!
//! End-to-end tests: a real `onecard serve` process on loopback, real sockets, real
//! RocksDB. This library is the harness; the scenarios are in `tests/e2e/`.
//!
//! The harness runs the `onecard` binary from the same target directory as the test
//! executable. `cargo test --workspace` builds it first (onecard-ops has integration
//! tests of its own, which makes cargo build the binary before any test runs).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `onecard` binary next to the running test executable.
///
/// # Panics
/// If the binary has not been built.
#[must_use]
pub fn onecard_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test> -> target/<profile>/onecard
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let binary = profile_dir.join(format!("onecard{}", std::env::consts::EXE_SUFFIX));
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
    data_dir: PathBuf,
}

impl Server {
    /// Starts `onecard serve` on `data_dir` with the terminal port on a free loopback
    /// port, and waits for its ready line.
    ///
    /// # Panics
    /// If the process does not start or does not get ready in time.
    #[must_use]
    pub fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(onecard_binary())
            .args(["serve", "--terminal-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn onecard");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("onecard ready: terminals on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>());
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let terminal_addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                break addr.expect("the ready line carries an address");
            }
            if let Some(status) = child.try_wait().expect("poll onecard") {
                panic!("onecard exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "onecard not ready in {READY_TIMEOUT:?}");
        };
        Self { child, terminal_addr, data_dir: data_dir.to_owned() }
    }

    /// Where terminals connect.
    #[must_use]
    pub const fn terminal_addr(&self) -> SocketAddr {
        self.terminal_addr
    }

    /// The server's data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Sends SIGTERM and waits for a clean exit.
    ///
    /// # Panics
    /// If the process cannot be signalled or does not exit successfully in time.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll onecard") {
                return status;
            }
            assert!(Instant::now() < deadline, "onecard did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
