//! The board probe end to end: `rkllm-run probe` against the CPU runtime's synthetic engine
//! with faults a board may have (init aborts above n_batch 4, a callback's 1 crashes the
//! process), then rkserve started on the probe's report, which must change what it does.

use crate::common::{config, post_json, Server};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// n_batch 8 aborts at init, and pausing a run crashes: the probe must see both and
/// recommend n_batch 4 and cutting runs with rkllm_abort.
pub const FAULTY: &str = "[timing]\nprefill_tokens_per_second = 5000.0\ndecode_step_ms = 2.0\n\
    batch_alpha = 0.15\n\n[faults]\nabort_at_init = true\nabort_at_init_above_n_batch = 4\n\
    crash_on_pause = true\n";

fn rkllm_run() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_rkserve")).with_file_name("rkllm-run");
    assert!(
        exe.is_file(),
        "{} is missing: run `cargo build --release` before these tests",
        exe.display()
    );
    exe
}

/// The library rkserve loads by default: the CPU runtime next to its executable.
fn library() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_rkserve"));
    [
        exe.with_file_name("librkllmrt.so"),
        exe.with_file_name("deps").join("librkllmrt.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("librkllmrt.so next to rkserve: run `cargo build --release` first")
}

/// Runs the probe on `model` with the CPU runtime speaking `family`; extra flags in `args`.
/// Returns the report and the probe's printed report.
pub fn probe(model: &Path, family: &str, json: &Path, args: &[&str]) -> (Value, String) {
    let out = Command::new(rkllm_run())
        .arg("probe")
        .arg("--lib")
        .arg(library())
        .arg("--model")
        .arg(model)
        .arg("--json")
        .arg(json)
        .args(["--timeout", "60", "--curve-tokens", "8"])
        .args(args)
        .env("RKLLM_CPU_ABI", family)
        .env_remove("RKSERVE_RUNTIME_LIB")
        .output()
        .expect("run rkllm-run probe");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "probe failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("the report")).expect("JSON");
    (report, stdout)
}

fn check<'a>(report: &'a Value, name: &str, arg: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["check"] == name && c["arg"].as_str().unwrap_or("") == arg)
        })
        .unwrap_or_else(|| panic!("no check {name} {arg:?} in {report:#}"))
}

/// What the probe must find on the faulty profile, speaking `family`.
#[track_caller]
pub fn assert_faulty_findings(report: &Value, printed: &str, family: &str) {
    assert_eq!(report["schema"], 1);
    assert_eq!(report["family"], family, "{report:#}");
    assert_eq!(report["exported_family"], family);
    let other = if family == "1.2" { "1.3" } else { "1.2" };
    assert_eq!(check(report, "family", family)["status"], "ok");
    let wrong = check(report, "family", other);
    assert_ne!(wrong["status"], "ok");
    // The wrong layouts' init failure says which family the library looks like.
    let hint = format!("this looks like a v{family} library: set runtime.abi = {family}");
    assert!(wrong["detail"].as_str().unwrap().contains(&hint), "{wrong}");
    for arg in ["1", "2", "4"] {
        assert_eq!(
            check(report, "n_batch", arg)["status"],
            "ok",
            "n_batch {arg}"
        );
    }
    let eight = check(report, "n_batch", "8");
    assert_eq!(eight["status"], "crashed", "{eight}");
    let detail = eight["detail"].as_str().unwrap();
    assert!(
        detail.contains("signal 6 (SIGABRT)") && detail.contains("abort_at_init_above_n_batch"),
        "{detail}"
    );
    assert_eq!(check(report, "pause_resume", "")["status"], "crashed");
    assert_eq!(check(report, "abort_decode", "")["status"], "ok");
    let rec = &report["recommendations"];
    assert_eq!(rec["family"], family);
    assert_eq!(rec["max_n_batch"], 4, "{rec}");
    assert_eq!(rec["reform"], true);
    assert_eq!(rec["reform_via"], "abort");
    let lib_sha = report["library"]["sha256"].as_str().unwrap();
    assert_eq!(lib_sha.len(), 64);
    assert!(printed.contains("CRASHED") && printed.contains("scheduler.n_batch at most 4"));
}

/// Starts rkserve on `models` (holding the faulty profile as model `probed`) with `extra`
/// configuration, and checks it took the probe's choices: the family (the server speaks
/// only `family`, which is not the default when it is 1.2), n_batch 4 from the start rather
/// than by falling back after crashes, and reform_via abort; and that it serves.
pub async fn assert_server_takes_the_probe(models: &Path, extra: &str, family: &str) -> Server {
    let server = Server::start(models, &config(&["probed"], extra), &[]).await;
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("probe report"))
        .unwrap_or_else(|| panic!("no probe line in the log:\n{log}"));
    for part in [
        format!("took abi {family}"),
        "n_batch 4 (capped from 8)".to_string(),
        "reform_via abort".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line}");
    }
    let m = server.loaded("probed").await;
    assert_eq!(m["status"], "ready", "{m}\n{log}");
    assert_eq!(m["n_batch"], 4, "{m}");
    let i = &m["instances"][0];
    assert_eq!(i["n_batch"], 4, "{m}");
    assert!(i["n_batch_fallback"].is_null(), "no fallback: {m}");
    assert_eq!(i["restarts"], 0, "{m}");
    let r = post_json(
        &server.url("/v1/chat/completions"),
        &serde_json::json!({"model": "probed", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("rkserve_instance_n_batch{") && l.contains("model=\"probed\""))
        .unwrap_or_else(|| panic!("no rkserve_instance_n_batch for probed:\n{metrics}"));
    assert!(gauge.ends_with(" 4"), "{gauge}");
    server
}
