//! Faults that kill the process, as a crash inside Rockchip's library kills the server that
//! loaded it: `rkllm-run` runs in a child process against the CPU runtime's synthetic engine,
//! and each test checks how the child died, at which point, and what it said first.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The CPU runtime cargo built for this test (a dev-dependency), next to the test executable.
fn lib() -> PathBuf {
    rkllm::cpu_runtime_near_exe().expect("librkllmrt.so next to the test executable")
}

fn profile(body: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rkllm-run-faults-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("profile.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn command(model: &Path, n_batch: u8) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rkllm-run"));
    c.arg("--lib")
        .arg(lib())
        .args(["--abi", "1.3", "--model"])
        .arg(model)
        .args(["-p", "hello", "--max-new-tokens", "50", "--n-batch"])
        .arg(n_batch.to_string())
        .env("RKLLM_CPU_ABI", "1.3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(body: &str, n_batch: u8) -> Output {
    command(&profile(body), n_batch)
        .output()
        .expect("run rkllm-run")
}

/// Ten pieces "t01 " .. "t10 ", one per token.
const SCRIPT: &str =
    "[output]\nscript = \"t01 t02 t03 t04 t05 t06 t07 t08 t09 t10 \"\nsplit = [4]\n";

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[track_caller]
fn assert_signal(out: &Output, signal: i32, stderr_line: &str) {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(signal),
        "status {:?}\nstdout: {}\nstderr: {err}",
        out.status,
        text(&out.stdout)
    );
    assert!(
        err.contains(stderr_line),
        "stderr lacks {stderr_line:?}:\n{err}"
    );
}

#[test]
fn the_script_runs_to_the_end_without_faults() {
    let out = run(SCRIPT, 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end(), SCRIPT_TEXT.trim_end());
}

const SCRIPT_TEXT: &str = "t01 t02 t03 t04 t05 t06 t07 t08 t09 t10 ";

#[test]
fn abort_at_init_kills_the_process_before_any_output() {
    let out = run("[faults]\nabort_at_init = true\n", 1);
    assert_signal(
        &out,
        libc::SIGABRT,
        "synthetic: abort at init (faults.abort_at_init)",
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn abort_at_init_above_n_batch_spares_smaller_batches() {
    let body = "[faults]\nabort_at_init = true\nabort_at_init_above_n_batch = 2\n";
    let out = run(body, 3);
    assert_signal(
        &out,
        libc::SIGABRT,
        "synthetic: abort at init with n_batch 3 > 2 (faults.abort_at_init_above_n_batch)",
    );
    let out = run(body, 2);
    assert!(out.status.success(), "n_batch 2: {}", text(&out.stderr));
}

#[test]
fn abort_mid_run_after_the_text_streamed_so_far() {
    let out = run(&format!("{SCRIPT}[faults]\nabort_after_tokens = 3\n"), 1);
    assert_signal(
        &out,
        libc::SIGABRT,
        "synthetic: abort after 3 tokens (faults.abort_after_tokens)",
    );
    assert_eq!(text(&out.stdout), "t01 t02 t03 ");
}

#[test]
fn segfault_mid_run_after_the_text_streamed_so_far() {
    let out = run(&format!("{SCRIPT}[faults]\nsegfault_after_tokens = 4\n"), 1);
    assert_signal(
        &out,
        libc::SIGSEGV,
        "synthetic: segfault after 4 tokens (faults.segfault_after_tokens)",
    );
    assert_eq!(text(&out.stdout), "t01 t02 t03 t04 ");
}

#[test]
fn abort_at_destroy_after_a_complete_run() {
    let out = run(&format!("{SCRIPT}[faults]\nabort_at_destroy = true\n"), 1);
    assert_signal(
        &out,
        libc::SIGABRT,
        "synthetic: abort at destroy (faults.abort_at_destroy)",
    );
    assert_eq!(text(&out.stdout).trim_end(), SCRIPT_TEXT.trim_end());
    assert!(text(&out.stderr).contains("run: Finished"));
}

#[test]
fn hang_at_destroy_never_exits() {
    let mut child = command(
        &profile(&format!("{SCRIPT}[faults]\nhang_at_destroy = true\n")),
        1,
    )
    .spawn()
    .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "rkllm-run exited although rkllm_destroy hangs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    assert_eq!(text(&out.stdout).trim_end(), SCRIPT_TEXT.trim_end());
    assert!(text(&out.stderr).contains("synthetic: hang at destroy (faults.hang_at_destroy)"));
}
