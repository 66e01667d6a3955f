//! The probe's own handling of checks that never answer: a runtime whose run stalls for
//! good is killed at the deadline and reported `timed_out`, and with no working family the
//! probe recommends nothing and runs no further check. (Crashes, both families and the
//! recommendations rkserve takes are tested end to end in tests/server_probe*.rs.)

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn lib() -> PathBuf {
    rkllm::cpu_runtime_near_exe().expect("librkllmrt.so next to the test executable")
}

#[test]
fn a_check_that_hangs_is_killed_at_the_deadline_and_recorded_as_timed_out() {
    let dir = std::env::temp_dir().join(format!("rkllm-run-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("stalls.toml");
    // The run stops making progress after two tokens and never resumes.
    std::fs::write(&model, "[faults]\nstall_after_tokens = 2\n").unwrap();
    let json = dir.join("report.json");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rkllm-run"))
        .arg("probe")
        .arg("--lib")
        .arg(lib())
        .arg("--model")
        .arg(&model)
        .arg("--json")
        .arg(&json)
        .args(["--abi", "1.3", "--timeout", "2"])
        .env("RKLLM_CPU_ABI", "1.3")
        .output()
        .expect("run rkllm-run probe");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took >= Duration::from_secs(2),
        "the deadline was not waited for: {took:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "the hung check was not killed: {took:?}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "nothing runs without a family: {report:#}");
    assert_eq!(checks[0]["check"], "family");
    assert_eq!(checks[0]["status"], "timed_out", "{report:#}");
    assert!(checks[0]["detail"]
        .as_str()
        .unwrap()
        .contains("killed (SIGKILL)"));
    assert!(report["family"].is_null());
    assert_eq!(report["recommendations"]["max_n_batch"], 0);
    assert_eq!(report["recommendations"]["reform"], false);
    assert!(stdout.contains("TIMED OUT"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
