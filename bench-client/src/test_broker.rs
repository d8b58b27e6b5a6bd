//! Tests only: a real shardlog broker in a child process, on a fresh data dir and an ephemeral
//! port, stopped with SIGTERM when dropped; the broker must then exit 0, or the test fails.
//!
//! The bench is tested against the real broker, never a hand-written stand-in: faults a broker
//! could commit are tested by feeding crafted record sets to the verifier (see `verify.rs`).
//!
//! The binary is found as the Python end-to-end suite finds it (`tests/broker_process.py`):
//! `$SHARDLOG_BIN`, else `<target>/release/shardlog` where `<target>` is `$CARGO_TARGET_DIR`
//! (relative to the workspace root when relative) or the workspace's `target/`. There is no
//! debug fallback, so a stale debug build is never what these tests run; a missing binary
//! fails the test with how to build it, so the end-to-end tests never pass unrun.
//!
//! ```ignore
//! let broker = TestBroker::start();
//! run(&args(&broker.address, &[]), Mode::Produce)?;
//! // dropped: SIGTERM, and the test fails unless the broker exits 0
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the broker may take to print `listening on`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may take to exit after SIGTERM; past it, the test fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the broker's stderr kept for a failure message.
const LOG_LINES_MAX: usize = 200;

/// A running broker; `address` is where it listens.
pub struct TestBroker {
    child: Child,
    data_dir: PathBuf,
    log: Arc<Mutex<VecDeque<String>>>,
    pub address: String,
}

/// The broker binary to test (see the module doc); it may not exist.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SHARDLOG_BIN") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench-client lives in the workspace");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir), // an absolute `dir` replaces `workspace`
        None => workspace.join("target"),
    };
    target.join("release").join("shardlog")
}

impl TestBroker {
    /// Starts a broker with one core and returns once it listens.
    pub fn start() -> TestBroker {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let bin = binary();
        assert!(
            bin.is_file(),
            "broker binary {} not found: build it first with `cargo build --release -p shardlog` \
             (honouring CARGO_TARGET_DIR), or point SHARDLOG_BIN at one",
            bin.display()
        );
        let data_dir = std::env::temp_dir().join(format!(
            "shardlog-bench-test-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut command = Command::new(&bin);
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--cores", "1"])
            .args(["--preallocate-bytes", "1048576", "--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Settings from the caller's environment (a config file, a core count) would change
        // what these tests run: only the flags above count.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHARDLOG_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));

        // A thread drains stderr for the broker's whole life, so it never blocks on a full
        // pipe; it keeps the last lines for a failure message, and sends every line here
        // until the address is known.
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap();
                if kept.len() == LOG_LINES_MAX {
                    kept.pop_front();
                }
                kept.push_back(line.clone());
                drop(kept);
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        break rest.trim().to_string();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&data_dir);
                    panic!(
                        "broker did not print `listening on` ({e:?} within {READY_TIMEOUT:?}); \
                         stderr:\n{}",
                        lines(&log)
                    );
                }
            }
        };
        TestBroker {
            child,
            data_dir,
            log,
            address,
        }
    }

    /// SIGTERM, then the exit status, or None if the broker did not exit in time (it is
    /// killed then). Err if it was no longer running when asked to stop.
    fn terminate(&mut self) -> Result<Option<ExitStatus>, ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(status);
        }
        // SAFETY: signals our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(None)
    }
}

fn lines(log: &Mutex<VecDeque<String>>) -> String {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    log.iter().cloned().collect::<Vec<_>>().join("\n")
}

impl Drop for TestBroker {
    /// The teardown rule: a broker the test did not stop must still be running, and must
    /// exit 0 on SIGTERM within `STOP_TIMEOUT`; anything else fails the test.
    fn drop(&mut self) {
        let problem = match self.terminate() {
            Ok(Some(status)) if status.success() => None,
            Ok(Some(status)) => Some(format!("exited with {status} after SIGTERM")),
            Ok(None) => Some(format!("did not exit within {STOP_TIMEOUT:?} of SIGTERM")),
            Err(status) => Some(format!("died before the end of the test ({status})")),
        };
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(problem) = problem {
            let message = format!(
                "the broker on {} {problem}; its last stderr lines:\n{}",
                self.address,
                lines(&self.log)
            );
            // A test already failing keeps its own message (a second panic would abort).
            if std::thread::panicking() {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}
