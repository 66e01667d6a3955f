//! ABI 1.2 fixes sampling per handle: an instance re-initialises its handle for a batch of
//! different sampling, and prefers batches matching its handle. Its own process, because
//! the CPU runtime reads RKLLM_CPU_ABI once.

mod common;

use rkllm::{AbiFamily, Sampling};
use scheduler::{FinishReason, ModelConfig, Request, Scheduler};
use std::time::{Duration, Instant};

fn collect(s: scheduler::RequestStream) -> (String, FinishReason, Instant) {
    let r = common::collect(s);
    (r.text, r.reason, r.first.expect("some text"))
}

#[test]
fn sampling_changes_reinitialise_the_handle_and_every_request_is_served() {
    std::env::set_var("RKLLM_CPU_ABI", "1.2");
    let dir = std::env::temp_dir().join(format!("rkserve-abi12-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("p.toml");
    std::fs::write(&profile, "[timing]\ndecode_step_ms = 5.0\n").unwrap();
    let mut m = ModelConfig::new("m", profile, rkllm::cpu_runtime_near_exe().unwrap());
    m.abi = AbiFamily::V1_2;
    m.n_batch = 2;
    m.cpus = Some(vec![]);
    m.batch_window = Duration::from_millis(30);
    let s = Scheduler::new(vec![m]);
    assert!(s.wait_loaded(Duration::from_secs(10)));
    let hot = Sampling {
        temperature: 0.9,
        ..Sampling::greedy()
    };
    let submit = |prompt: &str, sampling: Sampling| {
        s.submit(Request {
            model: "m".into(),
            prompt: prompt.into(),
            prompt_ids: None,
            prompt_tokens: 2,
            sampling,
            max_tokens: 6,
            stop: vec![],
            arrival: Instant::now(),
            prefix: None,
        })
        .unwrap()
    };
    let a = submit("a", Sampling::greedy());
    let b = submit("b", hot);
    let c = submit("c", Sampling::greedy());
    let d = submit("d", hot);
    let results: Vec<_> = [a, b, c, d].into_iter().map(collect).collect();
    for (text, reason, _) in &results {
        assert_eq!(*reason, FinishReason::Length);
        assert!(!text.is_empty());
    }
    // Same sampling shares a run; different sampling never does.
    assert_eq!(results[0].2, results[2].2);
    assert_eq!(results[1].2, results[3].2);
    assert_ne!(results[0].2, results[1].2);
}
