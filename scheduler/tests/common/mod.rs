//! Shared by the scheduler's integration tests: models on the CPU runtime's synthetic engine,
//! each profile in a directory of its own.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use rkllm::Sampling;
use scheduler::{Event, FinishReason, ModelConfig, Request, RequestStream, Scheduler, Timings};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn lib() -> PathBuf {
    rkllm::cpu_runtime_near_exe().expect("librkllmrt.so is built with the workspace")
}

pub fn profile(body: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rkserve-sched-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("profile.toml");
    std::fs::write(&p, body).unwrap();
    p
}

pub fn model(name: &str, body: &str, n_batch: u8) -> ModelConfig {
    let mut m = ModelConfig::new(name, profile(body), lib());
    m.n_batch = n_batch;
    m.batch_window = Duration::from_millis(20);
    m.cpus = Some(vec![]);
    m
}

pub fn start(models: Vec<ModelConfig>) -> Scheduler {
    let s = Scheduler::new(models);
    assert!(s.wait_loaded(Duration::from_secs(30)));
    s
}

/// A stream read to its end.
pub struct Reply {
    pub text: String,
    pub reason: FinishReason,
    pub tokens: u32,
    /// When the first text arrived.
    pub first: Option<Instant>,
    pub timings: Timings,
}

pub fn collect(mut s: RequestStream) -> Reply {
    let (mut text, mut first) = (String::new(), None);
    while let Some(e) = s.blocking_next() {
        match e {
            Event::Text { text: t, at } => {
                first.get_or_insert(at);
                text.push_str(&t);
            }
            Event::Embedding { .. } => {}
            Event::End {
                reason,
                completion_tokens,
                timings,
                ..
            } => {
                return Reply {
                    text,
                    reason,
                    tokens: completion_tokens,
                    first,
                    timings,
                }
            }
        }
    }
    panic!("stream ended without an End event");
}

/// A greedy request for `model`, its prompt counted as the synthetic engine counts (4 bytes a
/// token).
pub fn request(model: &str, prompt: &str, max_tokens: u32) -> Request {
    Request {
        model: model.into(),
        prompt: prompt.into(),
        prompt_ids: None,
        prompt_tokens: prompt.len().div_ceil(4),
        sampling: Sampling::greedy(),
        max_tokens,
        stop: vec![],
        arrival: Instant::now(),
        prefix: None,
    }
}
