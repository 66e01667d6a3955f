//! Runs one check in a child process (this executable, `probe-check ...`) and turns however
//! it ended into a result: its result line, or its signal or exit code, or a SIGKILL after
//! the deadline.

use super::checks::{Check, RESULT_PREFIX};
use rkllm::probe_report::{CheckResult, Status};
use rkllm::AbiFamily;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Everything a check's child needs besides the check itself.
#[derive(Debug, Clone)]
pub struct Target {
    pub lib: PathBuf,
    pub model: PathBuf,
    pub context_len: i32,
    pub timeout: Duration,
    pub work_dir: PathBuf,
}

/// One check to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub check: Check,
    pub abi: AbiFamily,
    pub n_batch: u8,
    pub empty_slots: bool,
    pub max_new_tokens: i32,
    /// How the report labels this run of the check.
    pub arg: String,
}

impl Spec {
    pub fn new(check: Check, abi: AbiFamily) -> Spec {
        Spec {
            check,
            abi,
            n_batch: 1,
            empty_slots: false,
            max_new_tokens: 16,
            arg: String::new(),
        }
    }

    pub fn n_batch(mut self, n: u8) -> Spec {
        self.n_batch = n;
        self
    }

    pub fn empty_slots(mut self) -> Spec {
        self.empty_slots = true;
        self
    }

    pub fn max_new_tokens(mut self, n: i32) -> Spec {
        self.max_new_tokens = n;
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Spec {
        self.arg = arg.into();
        self
    }
}

/// How many of the child's last stderr lines a crash's detail quotes.
const TAIL: usize = 3;

fn reader<R: Read + Send + 'static>(r: R) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        BufReader::new(r)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    })
}

pub fn run(exe: &Path, t: &Target, s: &Spec) -> CheckResult {
    let started = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.arg("probe-check")
        .arg("--lib")
        .arg(&t.lib)
        .arg("--abi")
        .arg(s.abi.to_string())
        .arg("--model")
        .arg(&t.model)
        .args(["--check", s.check.arg()])
        .args(["--n-batch", &s.n_batch.to_string()])
        .args(["--max-new-tokens", &s.max_new_tokens.to_string()])
        .args(["--context-len", &t.context_len.to_string()])
        .arg("--work-dir")
        .arg(&t.work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if s.empty_slots {
        cmd.arg("--empty-slots");
    }
    let result = |status, detail: String| CheckResult {
        check: s.check.name().to_string(),
        arg: s.arg.clone(),
        status,
        detail,
        figures: Default::default(),
        vm_hwm_mb: None,
        elapsed_ms: elapsed(started),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return result(
                Status::Failed,
                format!("cannot start {}: {e}", exe.display()),
            )
        }
    };
    let out = reader(child.stdout.take().expect("piped"));
    let err = reader(child.stderr.take().expect("piped"));
    let deadline = started + t.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return result(Status::Failed, format!("waiting for the check: {e}")),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let tail = || {
        let lines: Vec<&str> = err
            .iter()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(TAIL)
            .map(String::as_str)
            .collect();
        if lines.is_empty() {
            String::new()
        } else {
            let mut lines = lines;
            lines.reverse();
            format!("; its last output: {}", lines.join(" | "))
        }
    };
    let Some(status) = status else {
        return result(
            Status::TimedOut,
            format!(
                "timed out: no result in {:?}, killed (SIGKILL){}",
                t.timeout,
                tail()
            ),
        );
    };
    let line = out.iter().rev().find_map(|l| l.strip_prefix(RESULT_PREFIX));
    match line.map(serde_json::from_str::<CheckResult>) {
        Some(Ok(mut r)) if status.success() => {
            if r.status == Status::Failed {
                // The runtime says why on stderr ("see the runtime's log").
                r.detail.push_str(&tail());
            }
            r.arg = s.arg.clone();
            r.elapsed_ms = elapsed(started);
            r
        }
        Some(Ok(r)) => {
            // It printed its result and then died (in rkllm_destroy, or at exit).
            let how = worker::describe_exit(status);
            let mut r = CheckResult {
                arg: s.arg.clone(),
                elapsed_ms: elapsed(started),
                ..r
            };
            r.status = Status::Crashed;
            r.detail = format!("{} (after its result: {}){}", crash(&how), r.detail, tail());
            r
        }
        Some(Err(e)) => result(Status::Failed, format!("unreadable result line: {e}")),
        None if status.success() => result(Status::Failed, format!("no result line{}", tail())),
        None => {
            let how = worker::describe_exit(status);
            result(Status::Crashed, format!("{}{}", crash(&how), tail()))
        }
    }
}

/// Milliseconds, to the microsecond.
fn elapsed(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// "crashed: signal 6 (SIGABRT)" from "was killed by signal 6 (SIGABRT)".
fn crash(how: &str) -> String {
    format!(
        "crashed: {}",
        how.strip_prefix("was killed by ").unwrap_or(how)
    )
}
