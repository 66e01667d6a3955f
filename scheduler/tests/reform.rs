//! Continuous batching end to end on the CPU runtime's synthetic engine: runs cut at a step
//! boundary and re-formed with waiting requests, the requests still generating continuing in
//! their slots.

mod common;

use common::{collect, model, start, Reply};
use scheduler::{CutVia, FinishReason, Reform, Request};
use std::time::{Duration, Instant};

fn req(prompt: &str, max_tokens: u32) -> Request {
    common::request("m", prompt, max_tokens)
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

/// Cuts `long` by sending short requests beside it every `gap`, and returns its reply.
fn cut_repeatedly(s: &scheduler::Scheduler, long: Request, gap: Duration, shorts: usize) -> Reply {
    let stream = s.submit(long).unwrap();
    for i in 0..shorts {
        std::thread::sleep(gap);
        let r = collect(s.submit(req(&format!("title {i}"), 2)).unwrap());
        assert_eq!(r.tokens, 2);
    }
    collect(stream)
}

#[test]
fn a_reply_cut_any_number_of_times_reads_as_an_uninterrupted_one() {
    // Split characters and scripted pieces of awkward sizes: cuts land mid-character too.
    let profile = format!("{STEPS}\n[output]\nsplit_utf8 = true\n");
    for via in [CutVia::Pause, CutVia::Abort] {
        let mut m = model("m", &profile, 4);
        m.cut_via = via;
        let s = start(vec![m]);
        let alone = collect(s.submit(req("a long essay", 120)).unwrap());
        let mut long = req("a long essay", 120);
        long.arrival = Instant::now();
        let cut = cut_repeatedly(&s, long, Duration::from_millis(150), 6);
        assert!(cut.timings.resumes >= 3, "{via}: {:?}", cut.timings);
        assert_eq!(cut.text, alone.text, "{via}");
        assert_eq!(
            (cut.tokens, &cut.reason),
            (alone.tokens, &alone.reason),
            "{via}"
        );
    }
}

#[test]
fn a_resumed_request_keeps_its_slot_and_prefills_almost_nothing() {
    for (reuse, most) in [(true, 2), (false, u32::MAX)] {
        let profile = format!("{STEPS}prefix_reuse = {reuse}\n");
        let s = start(vec![model("m", &profile, 4)]);
        let prompt = "a long essay about rivers and the sea ".repeat(8);
        let cut = cut_repeatedly(&s, req(&prompt, 100), Duration::from_millis(200), 4);
        let t = &cut.timings;
        assert!(t.resumes >= 2, "{t:?}");
        let per_resume = t.resume_prefill_tokens / t.resumes;
        if reuse {
            // Its slot's cache holds its whole context: only the last sampled token again.
            assert!(per_resume <= most, "{t:?}");
        } else {
            // A runtime without reuse prefills the whole context again, prompt included.
            assert!(per_resume as usize > prompt.len() / 4, "{t:?}");
        }
    }
}

#[test]
fn stop_strings_end_requests_across_re_forms() {
    let s = start(vec![model("m", STEPS, 4)]);
    // The synthetic engine's filler words repeat; "the" comes up within a few dozen tokens.
    let mut long = req("a long essay", 400);
    long.stop = vec!["the".into()];
    let solo = collect(s.submit(long.clone()).unwrap());
    assert_eq!(solo.reason, FinishReason::Stop);
    long.arrival = Instant::now();
    let cut = cut_repeatedly(&s, long, Duration::from_millis(60), 3);
    assert!(cut.timings.resumes >= 1, "{:?}", cut.timings);
    assert_eq!((cut.text, cut.reason), (solo.text, solo.reason));
}
