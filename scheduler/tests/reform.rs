//! Continuous batching end to end on the CPU runtime's synthetic engine: runs cut at a step
//! boundary and re-formed with waiting requests, the requests still generating continuing in
//! their slots.

mod common;

use common::{model, start};
use rkllm::Sampling;
use scheduler::{CutVia, Event, FinishReason, Reform, Request, RequestStream, Timings};
use std::time::{Duration, Instant};

fn req(prompt: &str, max_tokens: u32) -> Request {
    Request {
        model: "m".into(),
        prompt: prompt.into(),
        prompt_ids: None,
        prompt_tokens: prompt.len().div_ceil(4),
        sampling: Sampling::greedy(),
        max_tokens,
        stop: vec![],
        arrival: Instant::now(),
    }
}

struct Reply {
    text: String,
    reason: FinishReason,
    tokens: u32,
    first: Option<Instant>,
    timings: Timings,
}

fn collect(mut s: RequestStream) -> Reply {
    let (mut text, mut first) = (String::new(), None);
    while let Some(e) = s.blocking_next() {
        match e {
            Event::Text { text: t, at } => {
                first.get_or_insert(at);
                text.push_str(&t);
            }
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

/// 20 ms decode steps, prefill at 2,000 tokens/s.
const STEPS: &str = "[timing]\ndecode_step_ms = 20.0\nprefill_tokens_per_second = 2000.0\n";

fn run_short_during_long(reform: Reform, via: CutVia) -> (Reply, Reply, Duration) {
    let mut m = model("m", STEPS, 4);
    m.reform = reform;
    m.cut_via = via;
    let s = start(vec![m]);
    let long = s.submit(req("a long essay", 150)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let short = s.submit(req("a title", 5)).unwrap();
    let short = collect(short);
    let ttft = short.first.expect("text").saturating_duration_since(sent);
    (collect(long), short, ttft)
}

#[test]
fn a_short_request_arriving_during_a_long_run_starts_within_a_step_or_two() {
    for via in [CutVia::Pause, CutVia::Abort] {
        let (long, short, ttft) = run_short_during_long(Reform::Auto, via);
        assert_eq!(short.reason, FinishReason::Length);
        assert_eq!(short.tokens, 5);
        // One step to notice, the cut, its own prefill: far from the 3 s the long run has left.
        assert!(
            ttft < Duration::from_millis(400),
            "{via}: the short request waited {ttft:?}"
        );
        // The long request went on in a re-formed run and still got all it asked for.
        assert_eq!(long.reason, FinishReason::Length, "{via}");
        assert_eq!(long.tokens, 150, "{via}");
        assert!(long.timings.resumes >= 1, "{via}: {:?}", long.timings);
        assert_eq!(short.timings.resumes, 0);
    }
}

#[test]
fn with_reform_off_runs_are_static() {
    let (long, _short, ttft) = run_short_during_long(Reform::Off, CutVia::Pause);
    assert_eq!(long.timings.resumes, 0);
    // The short request waited for the long run to end: about 150 steps of 20 ms.
    assert!(ttft > Duration::from_millis(2000), "{ttft:?}");
}

#[test]
fn a_request_cut_and_resumed_can_still_be_cancelled_and_the_run_stops() {
    let mut m = model("m", STEPS, 4);
    m.reform = Reform::Auto;
    let s = start(vec![m]);
    let long = s.submit(req("a long essay", 1000)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let short = collect(s.submit(req("a title", 3)).unwrap());
    assert_eq!(short.tokens, 3);
    // The long one has been resumed in a re-formed run by now; its client leaves.
    std::thread::sleep(Duration::from_millis(100));
    drop(long);
    let sent = Instant::now();
    let next = collect(s.submit(req("next", 2)).unwrap());
    let ttft = next.first.unwrap().saturating_duration_since(sent);
    assert!(ttft < Duration::from_millis(400), "{ttft:?}");
    // Nothing is left running for the client that went away.
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.snapshot()[0].busy_slots() > 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled request still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn stop_strings_end_requests_across_re_forms() {
    let mut m = model("m", STEPS, 4);
    m.reform = Reform::Auto;
    let s = start(vec![m]);
    // The synthetic engine's filler text is made of a small set of words; "slot" is one.
    let mut long = req("a long essay", 400);
    long.stop = vec!["the".into()];
    let solo = collect(s.submit(long.clone()).unwrap());
    long.arrival = Instant::now();
    let cut = s.submit(long).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let _ = collect(s.submit(req("a title", 2)).unwrap());
    let cut = collect(cut);
    assert_eq!(cut.reason, solo.reason);
    assert!(!cut.text.contains("the"), "{}", cut.text);
}
