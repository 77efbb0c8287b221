//! Test processes: the test binary run again as a child, to run one of its ignored tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Runs the ignored test `test` of this test binary in a child process with the environment
/// `envs`, its stdin piped and its stderr written to `log`. Returns the child and its stdout
/// lines, each without the test harness's `test name ... ` prefix.
pub(crate) fn spawn(
    test: &str,
    envs: &[(&str, String)],
    log: &Path,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.clone())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let line = line.rsplit("... ").next().unwrap_or("").to_string();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}
