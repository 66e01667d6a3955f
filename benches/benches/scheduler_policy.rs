//! Criterion: the admission policy over a realistic queue, and demultiplexing one step of
//! 8 slots (the work done inside the runtime's callback).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rkllm::abi::RKLLMResult;
use rkllm::{Sampling, Step, StepState};
use scheduler::demux::Demux;
use scheduler::policy::{Policy, Waiting};
use scheduler::sequence::Sequence;
use scheduler::{BatchKey, Request};
use std::ffi::CString;
use std::time::{Duration, Instant};

fn policy(c: &mut Criterion) {
    let p = Policy {
        batch_window: Duration::from_millis(5),
        starvation_bound: Duration::from_secs(2),
    };
    let t = Instant::now();
    // 64 waiting requests over 4 sampling settings, the oldest first.
    let queue: Vec<Waiting> = (0..64)
        .map(|i| Waiting {
            key: BatchKey::of(&Sampling {
                temperature: (i % 4) as f32 * 0.25,
                ..Sampling::default()
            }),
            arrival: t + Duration::from_micros(i),
        })
        .collect();
    c.bench_function("policy: pick a batch of 8 from 64 waiting", |b| {
        b.iter(|| {
            p.decide(
                black_box(&queue),
                8,
                t + Duration::from_millis(10),
                None,
                None,
            )
        })
    });
}

fn demux(c: &mut Criterion) {
    let texts: Vec<CString> = (0..8)
        .map(|i| CString::new(format!(" word{i}")).unwrap())
        .collect();
    let results: Vec<RKLLMResult> = texts
        .iter()
        .map(|t| RKLLMResult {
            text: t.as_ptr(),
            token_id: 42,
            ..RKLLMResult::EMPTY
        })
        .collect();
    let mut receivers = Vec::new();
    let slots: Vec<Option<Sequence>> = (0..8)
        .map(|i| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            receivers.push(rx);
            let req = Request {
                model: "m".into(),
                prompt: "p".into(),
                prompt_ids: None,
                prompt_tokens: 10,
                sampling: Sampling::default(),
                max_tokens: u32::MAX,
                stop: vec!["\n\nUser:".into()],
                arrival: Instant::now(),
                prefix: None,
            };
            // Output is not recorded for resuming: over millions of iterations it would
            // measure the allocator, and in a run it is one push per token.
            Some(Sequence::new(i, req, tx, Instant::now(), false, false))
        })
        .collect();
    let mut d = Demux::new(slots, vec![false; 8], Instant::now(), usize::MAX);
    c.bench_function("demux: one step of 8 slots (with a stop sequence)", |b| {
        b.iter(|| {
            d.step(
                &Step::from_results(StepState::Normal, black_box(&results)),
                Instant::now(),
            );
            for rx in &mut receivers {
                while rx.try_recv().is_ok() {}
            }
        })
    });
}

criterion_group!(benches, policy, demux);
criterion_main!(benches);
