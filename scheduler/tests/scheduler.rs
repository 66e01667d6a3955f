//! The scheduler end to end: real runtime instances on the CPU runtime's synthetic engine
//! (and once on the default model), driven through `submit` as the server drives it.

mod common;

use common::{lib, model, start};
use rkllm::Sampling;
use scheduler::{
    Event, FailKind, FinishReason, InstanceState, ModelConfig, ModelStatus, Reform, Request,
    RequestStream, Scheduler, SubmitError,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn req(model: &str, prompt: &str, max_tokens: u32) -> Request {
    common::request(model, prompt, max_tokens)
}

/// Text, end reason, completion tokens, and when the first text arrived.
fn collect(s: RequestStream) -> (String, FinishReason, u32, Option<Instant>) {
    let r = common::collect(s);
    (r.text, r.reason, r.tokens, r.first)
}

fn first_event(s: &mut RequestStream) -> Event {
    s.blocking_next().expect("an event")
}

const SLOW: &str = "[timing]\ndecode_step_ms = 20.0\n";

#[test]
fn incompatible_sampling_never_shares_a_run() {
    let s = start(vec![model("m", SLOW, 4)]);
    let hot = Sampling {
        temperature: 0.9,
        ..Sampling::greedy()
    };
    let mut reqs = Vec::new();
    for (i, sampling) in [Sampling::greedy(), hot, Sampling::greedy(), hot]
        .into_iter()
        .enumerate()
    {
        let mut r = req("m", &format!("prompt {i}"), 5);
        r.sampling = sampling;
        reqs.push(s.submit(r).unwrap());
    }
    let firsts: Vec<Instant> = reqs.into_iter().map(|r| collect(r).3.unwrap()).collect();
    // Requests of one run receive their first token in the same step.
    assert_eq!(firsts[0], firsts[2], "the two greedy requests share a run");
    assert_eq!(firsts[1], firsts[3], "the two hot requests share a run");
    assert_ne!(firsts[0], firsts[1], "greedy and hot never share a run");
}

#[test]
fn runs_take_requests_in_arrival_order() {
    let s = start(vec![model("m", SLOW, 2)]);
    let streams: Vec<_> = (0..5)
        .map(|i| s.submit(req("m", &format!("p{i}"), 3)).unwrap())
        .collect();
    let firsts: Vec<Instant> = streams.into_iter().map(|r| collect(r).3.unwrap()).collect();
    assert_eq!(firsts[0], firsts[1]);
    assert_eq!(firsts[2], firsts[3]);
    assert!(firsts[0] < firsts[2] && firsts[2] < firsts[4]);
}

#[test]
fn the_batch_window_gathers_late_arrivals_and_is_bounded() {
    let mut m = model("m", SLOW, 4);
    m.batch_window = Duration::from_millis(300);
    let s = start(vec![m]);
    let a = s.submit(req("m", "first", 3)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let b = s.submit(req("m", "second", 3)).unwrap();
    let (ra, rb) = (collect(a), collect(b));
    assert_eq!(ra.3, rb.3, "a request within the window joins the run");

    let mut m = model("n", SLOW, 4);
    m.batch_window = Duration::ZERO;
    let s = start(vec![m]);
    let a = s.submit(req("n", "first", 3)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let b = s.submit(req("n", "second", 3)).unwrap();
    assert_ne!(
        collect(a).3,
        collect(b).3,
        "without a window the first request runs alone"
    );
}

#[test]
fn a_request_that_waited_through_a_run_starts_with_that_runs_returning_clients() {
    let mut m = model("m", SLOW, 4);
    m.batch_window = Duration::from_millis(50);
    // Static runs: with re-forming the late client would join the running batch at once.
    m.reform = Reform::Off;
    let s = start(vec![m]);
    let first: Vec<_> = (0..3)
        .map(|i| s.submit(req("m", &format!("client {i}"), 10)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // A fourth client arrives while the three run, and waits for the instance.
    let late = s.submit(req("m", "late client", 3)).unwrap();
    // The three read their replies to the end and, as closed-loop clients do, send their
    // next requests a moment later.
    let next: Vec<_> = first
        .into_iter()
        .map(|st| {
            collect(st);
            std::thread::sleep(Duration::from_millis(5));
            s.submit(req("m", "next turn", 3)).unwrap()
        })
        .collect();
    let late_first = collect(late).3;
    for st in next {
        assert_eq!(
            collect(st).3,
            late_first,
            "the waiting request and the returning clients share one run"
        );
    }
}

#[test]
fn each_request_stops_at_its_own_max_tokens_and_stop_sequence() {
    let s = start(vec![model("m", "[timing]\ndecode_step_ms = 1.0\n", 4)]);
    let (reference, _, _, _) = collect(s.submit(req("m", "shared prompt", 20)).unwrap());
    // A stop string across a token boundary: the end of one word, the space, the next word's start.
    let space = reference
        .char_indices()
        .filter(|(_, c)| *c == ' ')
        .nth(3)
        .unwrap()
        .0;
    let stop = reference[space - 1..space + 2].to_string();
    let mut stopped = req("m", "shared prompt", 20);
    stopped.stop = vec![stop.clone()];
    let short = s.submit(req("m", "shared prompt", 4)).unwrap();
    let stopped = s.submit(stopped).unwrap();
    let full = s.submit(req("m", "shared prompt", 20)).unwrap();
    let (t_short, r_short, n_short, f_short) = collect(short);
    let (t_stop, r_stop, _, f_stop) = collect(stopped);
    let (t_full, r_full, n_full, f_full) = collect(full);
    assert!(
        f_short == f_stop && f_stop == f_full,
        "all three shared one run"
    );
    assert_eq!((r_short, n_short), (FinishReason::Length, 4));
    assert!(reference.starts_with(&t_short) && t_short.split(' ').count() == 4);
    assert_eq!(r_stop, FinishReason::Stop);
    assert_eq!(
        t_stop,
        reference[..space - 1],
        "text before the stop string {stop:?}, and nothing of it"
    );
    assert_eq!(
        (t_full, r_full, n_full),
        (reference, FinishReason::Length, 20)
    );
}

#[test]
fn a_dropped_stream_leaves_the_others_running() {
    let s = start(vec![model("m", SLOW, 2)]);
    let mut gone = s.submit(req("m", "leaves", 30)).unwrap();
    let stays = s.submit(req("m", "stays", 30)).unwrap();
    assert!(matches!(first_event(&mut gone), Event::Text { .. }));
    drop(gone);
    let (_, reason, n, _) = collect(stays);
    assert_eq!((reason, n), (FinishReason::Length, 30));
}

#[test]
fn when_every_client_leaves_the_run_stops_within_a_step() {
    let s = start(vec![model("m", "[timing]\ndecode_step_ms = 50.0\n", 2)]);
    let mut a = s.submit(req("m", "a", 1000)).unwrap();
    let mut b = s.submit(req("m", "b", 1000)).unwrap();
    first_event(&mut a);
    first_event(&mut b);
    let dropped = Instant::now();
    drop((a, b));
    let next = s.submit(req("m", "next", 2)).unwrap();
    let (_, reason, _, first) = collect(next);
    assert_eq!(reason, FinishReason::Length);
    // 1000 tokens would take 50 s; the instance is free again after the step in flight.
    let waited = first.unwrap() - dropped;
    assert!(
        waited < Duration::from_millis(400),
        "next request started {waited:?} after the drop"
    );
}

#[test]
fn a_full_queue_refuses_at_once_and_a_long_wait_fails_the_request() {
    let mut m = model("m", SLOW, 1);
    m.max_queue = 2;
    m.max_queue_wait = Duration::from_millis(300);
    let s = start(vec![m]);
    let mut running = s.submit(req("m", "busy", 100)).unwrap();
    first_event(&mut running);
    let w1 = s.submit(req("m", "w1", 1)).unwrap();
    let _w2 = s.submit(req("m", "w2", 1)).unwrap();
    match s.submit(req("m", "w3", 1)) {
        Err(SubmitError::Overloaded {
            waiting,
            retry_after,
            ..
        }) => {
            assert_eq!(waiting, 2);
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("expected Overloaded, got {:?}", other.map(|_| ())),
    }
    let t = Instant::now();
    let (_, reason, _, _) = collect(w1);
    match reason {
        FinishReason::Error(f) => {
            assert_eq!(f.kind, FailKind::Timeout, "{f:?}");
            assert!(f.message.contains("waited"), "{f:?}");
        }
        other => panic!("expected a queue-wait error, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_error_mid_run_fails_only_that_run() {
    let s = start(vec![
        model(
            "faulty",
            "[faults]\nerror_after_tokens = 5\n[timing]\ndecode_step_ms = 2.0\n",
            2,
        ),
        model("healthy", "[timing]\ndecode_step_ms = 2.0\n", 2),
    ]);
    let bad1 = s.submit(req("faulty", "x", 10)).unwrap();
    let bad2 = s.submit(req("faulty", "y", 10)).unwrap();
    let good = s.submit(req("healthy", "z", 10)).unwrap();
    for bad in [bad1, bad2] {
        assert!(
            matches!(collect(bad).1, FinishReason::Error(f) if f.kind == FailKind::RuntimeError)
        );
    }
    assert_eq!(collect(good).1, FinishReason::Length);
    // The faulty model's instance takes the next run, which stays under the fault.
    let (_, reason, n, _) = collect(s.submit(req("faulty", "x", 2)).unwrap());
    assert_eq!((reason, n), (FinishReason::Length, 2));
}

#[test]
fn a_stalled_run_is_failed_and_the_instance_recreated() {
    let mut m = model(
        "m",
        "[faults]\nstall_after_tokens = 3\nstall_ms = 3000\n[timing]\ndecode_step_ms = 1.0\n",
        1,
    );
    m.stall_timeout = Duration::from_millis(300);
    let s = start(vec![m]);
    let t = Instant::now();
    let (_, reason, _, _) = collect(s.submit(req("m", "stalls", 50)).unwrap());
    match reason {
        FinishReason::Error(f) => {
            assert_eq!(f.kind, FailKind::Timeout, "{f:?}");
            assert!(f.message.contains("no progress"), "{f:?}");
        }
        other => panic!("expected a stall error, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "failed after {:?}",
        t.elapsed()
    );
    // A new handle serves the next request while the old one is still stuck.
    let (_, reason, n, _) = collect(s.submit(req("m", "after", 2)).unwrap());
    assert_eq!((reason, n), (FinishReason::Length, 2));
    assert!(
        t.elapsed() < Duration::from_millis(2900),
        "the replacement waited for the stuck run"
    );
}

#[test]
fn a_model_that_fails_to_load_is_unavailable_and_others_serve() {
    let s = Scheduler::new(vec![
        model("broken", "[faults]\ninit_fails = true\n", 1),
        model("fine", "", 1),
    ]);
    assert!(s.wait_loaded(Duration::from_secs(30)));
    let snap = s.snapshot();
    let broken = snap.iter().find(|m| m.name == "broken").unwrap();
    assert!(
        matches!(&broken.status, ModelStatus::Unavailable(r) if r.contains("rkllm_init failed")),
        "{:?}",
        broken.status
    );
    assert!(matches!(
        broken.instances[0].state,
        InstanceState::Failed(_)
    ));
    assert!(matches!(
        s.submit(req("broken", "x", 1)),
        Err(SubmitError::ModelUnavailable { .. })
    ));
    assert_eq!(
        collect(s.submit(req("fine", "x", 3)).unwrap()).1,
        FinishReason::Length
    );
}

#[test]
fn unknown_models_and_prompts_too_long_are_refused() {
    let mut m = model("m", "", 1);
    m.context_len = 100;
    let s = start(vec![m]);
    assert!(matches!(
        s.submit(req("nope", "x", 1)),
        Err(SubmitError::UnknownModel(_))
    ));
    let mut long = req("m", "x", 1);
    long.prompt_tokens = 100;
    match s.submit(long) {
        Err(SubmitError::PromptTooLong {
            prompt_tokens,
            context_len,
            ..
        }) => assert_eq!((prompt_tokens, context_len), (100, 100)),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn the_snapshot_shows_queue_and_busy_slots() {
    let s = start(vec![model("m", SLOW, 2)]);
    let mut a = s.submit(req("m", "a", 200)).unwrap();
    let _b = s.submit(req("m", "b", 200)).unwrap();
    first_event(&mut a);
    let _c = s.submit(req("m", "c", 200)).unwrap();
    let snap = &s.snapshot()[0];
    assert_eq!(snap.status, ModelStatus::Ready);
    assert_eq!(snap.busy_slots(), 2);
    assert_eq!(snap.waiting, 1);
    assert_eq!(snap.n_batch, 2);
}

#[test]
fn on_the_default_model_batched_answers_equal_single_ones() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "run scripts/fetch-default-model");
    let mut m = ModelConfig::new("smollm2", path, lib());
    m.n_batch = 4;
    m.context_len = 1024;
    m.batch_window = Duration::from_millis(50);
    m.cpus = Some(vec![]);
    let s = start(vec![m]);
    let prompts = [
        "What is the capital of France?",
        "Name three colours.",
        "What is two plus two?",
        "Say hello in Spanish.",
    ];
    let chat = |p: &str| format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n");
    let single: Vec<String> = prompts
        .iter()
        .map(|p| collect(s.submit(req("smollm2", &chat(p), 16)).unwrap()).0)
        .collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| s.submit(req("smollm2", &chat(p), 16)).unwrap())
        .collect();
    let batched: Vec<(String, FinishReason, u32, Option<Instant>)> =
        streams.into_iter().map(collect).collect();
    assert!(
        batched.iter().all(|b| b.3 == batched[0].3),
        "the four shared one run"
    );
    for (i, b) in batched.iter().enumerate() {
        assert_eq!(b.0, single[i], "prompt {i}");
        assert!(!b.0.is_empty());
    }
}

#[test]
fn unloading_a_model_ends_its_requests_and_loading_it_again_serves() {
    let s = start(vec![model("m", SLOW, 1)]);
    let mut running = s.submit(req("m", "running", 1000)).unwrap();
    first_event(&mut running);
    let waiting = s.submit(req("m", "waiting", 5)).unwrap();
    assert!(s.remove_model("m"));
    assert!(!s.has_model("m"));
    for stream in [running, waiting] {
        match collect(stream).1 {
            FinishReason::Error(f) => {
                assert_eq!(f.kind, FailKind::Unavailable, "{f:?}");
                assert!(f.message.contains("unloaded"), "{f:?}");
            }
            other => panic!("expected an unload error, got {other:?}"),
        }
    }
    assert!(matches!(
        s.submit(req("m", "x", 1)),
        Err(SubmitError::UnknownModel(_))
    ));
    s.add_model(model("m", SLOW, 1));
    assert!(s.wait_loaded(Duration::from_secs(10)));
    assert_eq!(
        collect(s.submit(req("m", "again", 2)).unwrap()).1,
        FinishReason::Length
    );
}

#[test]
fn latency_stats_count_every_token_gap_and_each_failure() {
    let s = start(vec![model("m", "[timing]\ndecode_step_ms = 5.0\n", 2)]);
    let a = s.submit(req("m", "a", 10)).unwrap();
    let b = s.submit(req("m", "b", 10)).unwrap();
    assert_eq!(collect(a).2, 10);
    assert_eq!(collect(b).2, 10);
    // A client that leaves mid-run is counted as failed (cancelled), not as a request served.
    let mut gone = s.submit(req("m", "gone", 1000)).unwrap();
    first_event(&mut gone);
    drop(gone);
    assert_eq!(collect(s.submit(req("m", "after", 1)).unwrap()).2, 1);

    // The telemetry thread records asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let all = s.latency_stats();
        if let Some(m) = all.iter().find(|m| m.model == "m") {
            if m.since_start.requests == 3 && m.since_start.failed == 1 {
                break m.clone();
            }
        }
        assert!(Instant::now() < deadline, "stats never settled: {all:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let st = &stats.since_start;
    assert_eq!(st.ttft.count, 3);
    assert_eq!(st.e2e.count, 3);
    // Ten tokens have nine gaps; one token has none.
    assert_eq!(st.itl.count, 9 + 9);
    assert!(
        st.itl.p50 >= 0.004 && st.itl.p50 < 0.05,
        "a 5 ms step gives ~5 ms gaps: {:?}",
        st.itl
    );
    assert!(st.e2e.max >= st.ttft.max);
    assert_eq!(stats.window, stats.since_start);
}
