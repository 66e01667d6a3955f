//! The synthetic engine through the C API: deterministic text, its timing model, and every
//! fault it can inject. No model file needed.

mod common;
use common::*;
use rkllm::{AbiFamily, Flow, Handle, InferParams, Input, RunOutcome, StepState};
use std::time::{Duration, Instant};

fn profile(body: &str) -> std::path::PathBuf {
    let p = tempdir().join("profile.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn handle(body: &str, n_batch: u8, max_new: i32) -> Result<Handle, rkllm::Error> {
    let rt = runtime(AbiFamily::V1_3);
    rt.init(&params(&rt, profile(body), n_batch, max_new))
}

const INSTANT: &str = "[timing]\ndecode_step_ms = 0.0\n";

fn prompts(n: usize) -> Vec<Input> {
    (0..n)
        .map(|i| Input::prompt(format!("prompt number {i}")))
        .collect()
}

#[test]
fn text_is_deterministic_per_prompt_and_independent_of_batching() {
    let mut single = handle(INSTANT, 1, 12).unwrap();
    let mut texts = Vec::new();
    for input in prompts(4) {
        let (_, rec) = record(
            &mut single,
            std::slice::from_ref(&input),
            &InferParams::default(),
        );
        let (_, again) = record(&mut single, &[input], &InferParams::default());
        assert_eq!(rec.text(0), again.text(0));
        assert_eq!(rec.tokens(0), 12);
        texts.push(rec.text(0));
    }
    assert_eq!(
        texts.iter().collect::<std::collections::HashSet<_>>().len(),
        4
    );
    let mut batch = handle(INSTANT, 4, 12).unwrap();
    let (outcome, rec) = record(&mut batch, &prompts(4), &InferParams::default());
    assert_eq!(outcome, RunOutcome::Finished);
    rec.assert_well_formed(4);
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(&rec.text(i), t);
    }
}

#[test]
fn decode_time_follows_the_batch_model_and_idle_slots_cost_nothing() {
    let body = "[timing]\ndecode_step_ms = 20.0\nbatch_alpha = 0.5\n";
    let gen_ms = |n_batch: u8, busy: usize| {
        let mut h = handle(body, n_batch, 10).unwrap();
        let (_, rec) = record(&mut h, &prompts(busy), &InferParams::default());
        rec.finish().slots[0].perf.generate_time_ms
    };
    // 10 tokens take 9 decode steps (the first token comes from prefill).
    let one = gen_ms(1, 1);
    let four = gen_ms(4, 4);
    let one_of_four = gen_ms(4, 1);
    assert!(one >= 9.0 * 20.0, "1 slot: {one} ms");
    assert!(
        four >= 9.0 * 20.0 * 2.5,
        "4 slots: {four} ms, model says 9 x 50"
    );
    let ratio = four / one;
    assert!(
        (2.0..3.5).contains(&ratio),
        "4 slots / 1 slot = {ratio}, model says 2.5"
    );
    assert!(
        one_of_four < four / 1.5,
        "3 idle slots cost time: {one_of_four} ms vs {four} ms"
    );
}

#[test]
fn prefill_time_follows_the_prompt_length() {
    let mut h = handle("[timing]\nprefill_tokens_per_second = 100.0\n", 1, 2).unwrap();
    // 40 bytes at 4 bytes per token: 10 tokens at 100 tokens/s.
    let (_, rec) = record(
        &mut h,
        &[Input::prompt("x".repeat(40))],
        &InferParams::default(),
    );
    let perf = rec.finish().slots[0].perf;
    assert_eq!(perf.prefill_tokens, 10);
    assert!(perf.prefill_time_ms >= 100.0, "{}", perf.prefill_time_ms);
}

#[test]
fn the_profile_memory_figure_is_reported() {
    let mut h = handle("[model]\nmemory_mb = 791.0\n", 1, 2).unwrap();
    let (_, rec) = record(&mut h, &prompts(1), &InferParams::default());
    assert_eq!(rec.finish().slots[0].perf.memory_usage_mb, 791.0);
}

#[test]
fn eos_ends_every_slot_after_the_configured_tokens() {
    let mut h = handle("[output]\neos_after = 5\n", 2, 50).unwrap();
    let (_, rec) = record(&mut h, &prompts(2), &InferParams::default());
    rec.assert_well_formed(2);
    assert_eq!(rec.tokens(0), 5);
    assert_eq!(rec.tokens(1), 5);
}

#[test]
fn split_characters_produce_waiting_steps() {
    let mut h = handle("[output]\nsplit_utf8 = true\n", 1, 20).unwrap();
    let (_, rec) = record(&mut h, &prompts(1), &InferParams::default());
    assert!(rec.count(StepState::Waiting) >= 2);
    for s in rec.steps.iter().filter(|s| s.state == StepState::Waiting) {
        assert!(s.slots[0].text.is_none());
    }
    assert!(rec.text(0).contains('é'));
}

#[test]
fn fault_init_fails() {
    assert!(matches!(
        handle("[faults]\ninit_fails = true\n", 1, 4),
        Err(rkllm::Error::InitFailed { .. })
    ));
}

#[test]
fn fault_error_mid_run_fails_that_run_only() {
    let mut h = handle("[faults]\nerror_after_tokens = 5\n", 1, 20).unwrap();
    let (outcome, rec) = record(&mut h, &prompts(1), &InferParams::default());
    assert_eq!(outcome, RunOutcome::Failed);
    assert_eq!(rec.tokens(0), 5);
    assert_eq!(rec.count(StepState::Error), 1);
    assert_eq!(rec.count(StepState::Finish), 0);
    // The handle is not poisoned: a run that stays under the limit finishes.
    let infer = InferParams {
        max_new_tokens: Some(3),
        ..Default::default()
    };
    let (outcome, _) = record(&mut h, &prompts(1), &infer);
    assert_eq!(outcome, RunOutcome::Finished);
}

#[test]
fn fault_stall_stops_callbacks_and_ignores_abort() {
    let mut h = handle("[faults]\nstall_after_tokens = 3\nstall_ms = 400\n", 1, 6).unwrap();
    let abort = h.abort_handle();
    let mut times = Vec::new();
    let outcome = h
        .run(&prompts(1), &InferParams::default(), |s| {
            times.push((Instant::now(), s.state()));
            if times.len() == 3 {
                let a = abort.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    a.abort().unwrap();
                });
            }
            Flow::Continue
        })
        .unwrap();
    let gap = times[3].0 - times[2].0;
    assert!(gap >= Duration::from_millis(400), "stall gap {gap:?}");
    assert_eq!(outcome, RunOutcome::Aborted);
}

#[test]
fn fault_destroy_hangs() {
    let h = handle("[faults]\ndestroy_hang_ms = 300\n", 1, 4).unwrap();
    let t = Instant::now();
    h.destroy().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn context_overflow_is_an_error() {
    let mut h = handle("[model]\ncontext_length = 16\n", 1, 4).unwrap();
    let r = h.run(
        &[Input::prompt("x".repeat(200))],
        &InferParams::default(),
        |_| Flow::Continue,
    );
    assert!(matches!(r, Ok(RunOutcome::Failed)), "{r:?}");
}

#[test]
fn shipped_profiles_load() {
    let dir = workspace().join("models/synthetic");
    let rt = runtime(AbiFamily::V1_3);
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let h = rt.init(&params(&rt, path.clone(), 1, 2));
            assert!(h.is_ok(), "{} does not load", path.display());
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn enabled_cpus_mask_pins_the_runtime_thread() {
    let rt = runtime(AbiFamily::V1_3);
    let mut p = params(&rt, profile(INSTANT), 1, 2);
    p.enabled_cpus_mask = 0b1;
    let h = rt.init(&p).unwrap();
    // The handle's worker thread (named rkllm-cpu) may run on CPU 0 only.
    let pinned = std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        comm.trim() == "rkllm-cpu"
            && status.lines().any(|l| {
                l.starts_with("Cpus_allowed_list:") && l.split_whitespace().nth(1) == Some("0")
            })
    });
    assert!(pinned, "no rkllm-cpu thread restricted to CPU 0");
    drop(h);
}
