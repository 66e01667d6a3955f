//! deploy/nginx.conf (only its three board addresses and its port replaced) in front of three
//! rkserve processes on 127.0.0.1, synthetic engines with the RK3588's timing: least_conn
//! spreads 24 streaming clients, a killed board fails only the streams it had started (the
//! next requests are retried elsewhere), and a drained board fails nothing (its 503s are
//! retried on another board before any byte reaches the client).
//!
//! Needs `nginx` (Debian's nginx or nginx-light).

mod common;

use common::load::{Load, Outcome};
use common::{free_port, Server};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROFILE: &str = include_str!("../models/synthetic/qwen3-0.6b-rk3588.toml");
const MODEL: &str = "qwen3-0.6b-rk3588-synthetic";
const BOARD_HEADER: &str = "x-rkserve-board";

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(boards: &[&Server]) -> Nginx {
        let recipe = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
        )
        .unwrap();
        let port = free_port();
        let mut cfg = recipe.replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        for (i, b) in boards.iter().enumerate() {
            let from = format!("server 192.168.1.10{}:8080 ", i + 1);
            assert!(cfg.contains(&from), "deploy/nginx.conf lists {from}");
            cfg = cfg.replace(&from, &format!("server 127.0.0.1:{} ", b.port));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("nginx.log")).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nginx: install Debian's nginx-light");
        let n = Nginx {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx is not listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master stops its workers on the way out, and workers of a
    /// killed master would go on listening.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The board that answered: the last address nginx tried.
fn answered_by(o: &Outcome) -> Option<(Instant, String)> {
    o.answered.as_ref().map(|(t, h)| {
        let last = h.rsplit(',').next().unwrap_or(h).trim().to_string();
        (*t, last)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_least_conn_rides_out_a_kill_and_a_drain() {
    let config = common::config(&[MODEL], "");
    let mut boards = Vec::new();
    for _ in 0..3 {
        boards.push(Server::start_synthetic(&[("qwen3", PROFILE)], &config, &[]).await);
    }
    let addrs: Vec<String> = boards
        .iter()
        .map(|b| format!("127.0.0.1:{}", b.port))
        .collect();
    let refs: Vec<&Server> = boards.iter().collect();
    let nginx = Nginx::start(&refs).await;

    let fleet = Load::start(
        nginx.url("/v1/chat/completions"),
        MODEL,
        32,
        24,
        BOARD_HEADER,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tokens_per_s = fleet.measure(Duration::from_secs(8)).await;
    println!("nginx least_conn, 24 clients over three boards: {tokens_per_s:.1} tokens/s");

    // Between `signal_at` and `killed_at` board2 may still start streams, and bytes it wrote
    // before dying may reach the client after the kill.
    let signal_at = Instant::now();
    boards[1].signal("KILL");
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Mid-run: board3 has streams generating when it is told to drain.
    let deadline = Instant::now() + Duration::from_secs(10);
    while boards[2].loaded(MODEL).await["busy_slots"].as_u64() < Some(4) {
        assert!(Instant::now() < deadline, "board3 never got 4 streams");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained_at = Instant::now();
    boards[2].signal("TERM");
    let status = boards[2]
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("board3 exits once drained");
    assert_eq!(status.code(), Some(0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = fleet.stop().await;

    let failed = |from: Instant, to: Instant| -> Vec<&Outcome> {
        outcomes
            .iter()
            .filter(|o| o.failure.is_some() && o.ended >= from && o.ended < to)
            .collect()
    };
    let kill = failed(signal_at, drained_at);
    for f in &kill {
        let (_, board) = answered_by(f).expect("failed before any answer");
        assert!(
            board == addrs[1] && f.sent < killed_at,
            "only streams board2 had started may fail: {f:?}"
        );
    }
    let drain = failed(drained_at, Instant::now());
    let after_drain = outcomes.iter().filter(|o| o.sent >= drained_at).count();
    println!(
        "kill -9: {} failed (streams board2 had started); drain: {} failed of {after_drain} sent since",
        kill.len(),
        drain.len()
    );
    assert!(drain.is_empty(), "{drain:?}");
    assert!(after_drain > 0);
    assert!(
        outcomes
            .iter()
            .all(|o| o.failure.is_none() || o.ended >= signal_at),
        "nothing failed before the kill"
    );
}
