//! Embedding requests through the scheduler on the synthetic engine (16-float token states,
//! a hash of each token's bytes): they wait in the model's queue, share runs with each other
//! and never with generation, and come back pooled and normalised.

mod common;

use common::{model, start};
use scheduler::{Event, FinishReason, Request, RequestStream};
use std::time::Instant;

fn req(prompt: &str, max_tokens: u32) -> Request {
    common::request("m", prompt, max_tokens)
}

/// The vector, and when the request ended.
fn vector(mut s: RequestStream) -> (Vec<f32>, Instant) {
    let mut v = None;
    while let Some(e) = s.blocking_next() {
        match e {
            Event::Embedding { vector, .. } => v = Some(vector),
            Event::Text { .. } => panic!("an embedding request got text"),
            Event::End { reason, .. } => {
                assert_eq!(reason, FinishReason::Stop);
                return (v.expect("an embedding before End"), Instant::now());
            }
        }
    }
    panic!("no End")
}

#[test]
fn embeddings_wait_for_generation_and_come_back_normalised() {
    let s = start(vec![model("m", "[timing]\ndecode_step_ms = 20.0\n", 4)]);
    let gen: Vec<RequestStream> = s
        .submit_all(vec![req("write a story", 30), req("write a poem", 30)])
        .unwrap();
    // Let the generation run start first.
    std::thread::sleep(std::time::Duration::from_millis(60));
    let texts = [
        "The cat sat on the mat.",
        "The cat sat on the mat.",
        "Something else entirely.",
    ];
    let emb = s
        .submit_embeddings(texts.iter().map(|t| req(t, 0)).collect())
        .unwrap();
    let mut gen_end = None;
    for g in gen {
        let r = common::collect(g);
        assert_eq!(
            r.reason,
            FinishReason::Length,
            "generation is not disturbed"
        );
        assert_eq!(r.tokens, 30);
        gen_end = Some(Instant::now());
    }
    let got: Vec<(Vec<f32>, Instant)> = emb.into_iter().map(vector).collect();
    for (v, end) in &got {
        assert_eq!(v.len(), 16);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        // Never in the generation run: they ran after it ended.
        assert!(*end >= gen_end.unwrap());
    }
    assert_eq!(got[0].0, got[1].0, "equal inputs, equal vectors");
    assert_ne!(got[0].0, got[2].0);
    // The instance serves generation again afterwards.
    let r = common::collect(s.submit(req("again", 5)).unwrap());
    assert_eq!(r.tokens, 5);
}

#[test]
fn a_generation_stream_of_re_formed_runs_does_not_starve_embeddings() {
    let mut m = model("m", "[timing]\ndecode_step_ms = 10.0\n", 2);
    m.starvation_bound = std::time::Duration::from_millis(200);
    let s = std::sync::Arc::new(start(vec![m]));
    // Generation keeps arriving, younger than the embedding too, so the run keeps re-forming
    // with carried sequences and new requests joining it.
    let feeder = {
        let s = s.clone();
        std::thread::spawn(move || {
            let streams: Vec<RequestStream> = (0..30)
                .map(|i| {
                    std::thread::sleep(std::time::Duration::from_millis(40));
                    s.submit(req(&format!("request {i}"), 20)).unwrap()
                })
                .collect();
            streams
                .into_iter()
                .map(|g| common::collect(g).tokens)
                .collect::<Vec<_>>()
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(150));
    let submitted = Instant::now();
    let e = s.submit_embeddings(vec![req("embed me", 0)]).unwrap();
    let (v, end) = vector(e.into_iter().next().unwrap());
    assert_eq!(v.len(), 16);
    // It goes once it has waited the starvation bound and the carried run has drained
    // (at most 20 steps of 10 ms), not after the whole stream (30 x 40 ms).
    let waited = end - submitted;
    assert!(waited.as_millis() < 700, "the embedding waited {waited:?}");
    assert!(feeder.join().unwrap().iter().all(|&t| t == 20));
}
