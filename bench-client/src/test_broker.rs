//! Tests only: a real shardlog broker in a child process, on a fresh data dir and an ephemeral
//! port, stopped (SIGTERM, then wait) and its data dir removed when dropped.
//!
//! The bench is tested against the real broker, never a hand-written stand-in: faults a broker
//! could commit are tested by feeding crafted record sets to the verifier (see `verify.rs`).
//! The binary is `$SHARDLOG_BIN`, else the workspace's `target/debug/shardlog`; a missing
//! binary fails the test with how to build it, so the end-to-end tests never pass unrun.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the broker may take to print `listening on`; a debug build opens in well under 1 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running broker; `address` is where it listens.
pub struct TestBroker {
    child: Child,
    data_dir: PathBuf,
    pub address: String,
}

fn binary() -> PathBuf {
    match std::env::var_os("SHARDLOG_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/shardlog"),
    }
}

impl TestBroker {
    /// Starts a broker with one core and returns once it listens.
    pub fn start() -> TestBroker {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let bin = binary();
        assert!(
            bin.is_file(),
            "broker binary {} not found: build it first with `cargo build -p shardlog` \
             (or point SHARDLOG_BIN at one)",
            bin.display()
        );
        let data_dir = std::env::temp_dir().join(format!(
            "shardlog-bench-test-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut child = Command::new(&bin)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--cores", "1"])
            .args(["--preallocate-bytes", "1048576", "--log", "warn"])
            // A config file from the environment would override none of the above but could
            // add settings these tests do not expect.
            .env_remove("SHARDLOG_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));

        // A thread drains stderr for the broker's whole life, so it never blocks on a full
        // pipe; lines come here until the address is known.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        break rest.trim().to_string();
                    }
                    seen.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&data_dir);
                    panic!(
                        "broker did not print `listening on` ({e:?} within {READY_TIMEOUT:?}); stderr:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        TestBroker {
            child,
            data_dir,
            address,
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // SAFETY: signals our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
