//! deploy/litellm.yaml, unchanged, in LiteLLM's proxy in front of three rkserve processes on
//! 127.0.0.1 (synthetic engines with the RK3588's timing): least-busy spreads 24 streaming
//! clients over the boards, a drained board fails nothing, a killed one only the streams it
//! had started.
//!
//! On demand (LiteLLM is a large PyPI install): `scripts/test-litellm` installs it into
//! target/litellm-venv and runs this test with LITELLM set to its `litellm` command.

mod common;

use common::load::{served_by, Load, Outcome};
use common::{free_port, Server};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The RK3588 profile under the name deploy/litellm.yaml routes to.
fn profile() -> String {
    include_str!("../models/synthetic/qwen3-0.6b-rk3588.toml").replace(
        "name = \"qwen3-0.6b-rk3588-synthetic\"",
        "name = \"qwen3-0.6b\"",
    )
}
const MAX_TOKENS: u32 = 32;
const MASTER_KEY: &str = "sk-rkserve-router-test";
/// LiteLLM names the deployment that answered in this header: the board's api_base.
const BOARD_HEADER: &str = "x-litellm-model-api-base";

struct Litellm {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Litellm {
    async fn start(boards: &[&Server]) -> Litellm {
        let exe = std::env::var("LITELLM")
            .expect("LITELLM: the litellm command (scripts/test-litellm sets it)");
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/litellm.yaml");
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("litellm.log")).unwrap();
        let mut cmd = Command::new(exe);
        cmd.args(["--config", cfg.to_str().unwrap(), "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--num_workers", "1"])
            .env("RKSERVE_API_KEY", "none")
            .env("LITELLM_MASTER_KEY", MASTER_KEY)
            // No telemetry, no model-cost download: everything stays on loopback.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY", "False")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (i, b) in boards.iter().enumerate() {
            cmd.env(format!("BOARD{}", i + 1), b.url("/v1"));
        }
        let mut l = Litellm {
            child: cmd.spawn().expect("start litellm"),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = l.child.try_wait().unwrap() {
                panic!("litellm exited ({status}):\n{}", l.log());
            }
            let up = reqwest::get(l.url("/health/liveliness")).await;
            if up.is_ok_and(|r| r.status() == 200) {
                return l;
            }
            assert!(Instant::now() < deadline, "litellm not up:\n{}", l.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("litellm.log")).unwrap_or_default()
    }
}

impl Drop for Litellm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn board() -> Server {
    let config = common::config(&["qwen3-0.6b"], "");
    let p = profile();
    Server::start_synthetic(&[("qwen3", p.as_str())], &config, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "on demand: scripts/test-litellm installs LiteLLM and runs it"]
async fn litellm_least_busy_spreads_load_and_rides_out_a_drain_and_a_kill() {
    let mut boards = [board().await, board().await, board().await];
    let refs: Vec<&Server> = boards.iter().collect();
    let litellm = Litellm::start(&refs).await;
    let names: Vec<String> = boards.iter().map(|b| b.url("/v1")).collect();

    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        "authorization",
        format!("Bearer {MASTER_KEY}").parse().unwrap(),
    );
    let client = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .unwrap();
    let fleet = Load::start_with(
        client,
        litellm.url("/v1/chat/completions"),
        "rkserve",
        MAX_TOKENS,
        24,
        BOARD_HEADER,
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tokens_per_s = fleet.measure(Duration::from_secs(8)).await;
    let spread: Vec<usize> = names
        .iter()
        .map(|n| served_by(&fleet.outcomes(), n, t0))
        .collect();
    println!(
        "litellm least-busy, 24 clients over three boards: {tokens_per_s:.1} tokens/s; \
         requests per board {spread:?}"
    );
    assert!(spread.iter().all(|&n| n > 0), "{spread:?}");

    let drained_at = Instant::now();
    boards[2].signal("TERM");
    let status = boards[2]
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("board3 exits once drained");
    assert_eq!(status.code(), Some(0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Between `signal_at` and `killed_at` board2 may still start streams, and bytes it wrote
    // before dying may reach the client after the kill.
    let signal_at = Instant::now();
    boards[1].signal("KILL");
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outcomes = fleet.stop().await;
    let drain: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.failure.is_some() && o.ended >= drained_at && o.ended < signal_at)
        .collect();
    let kill: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.failure.is_some() && o.ended >= signal_at)
        .collect();
    println!(
        "drain: {} failed; kill -9: {} failed ({} requests sent since the kill)",
        drain.len(),
        kill.len(),
        outcomes.iter().filter(|o| o.sent >= killed_at).count()
    );
    assert!(drain.is_empty(), "{drain:?}\n{}", litellm.log());
    for f in &kill {
        let (_, board) = f.answered.clone().expect("failed before any answer");
        assert!(
            board == names[1] && f.sent < killed_at,
            "only streams board2 had started may fail: {f:?}"
        );
    }
}
