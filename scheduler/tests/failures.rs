//! How requests fail, end to end on the CPU runtime's synthetic engine: each failure keeps
//! its kind, is counted once, one request's bad input never fails its batch, concurrent
//! loads of one model start it once, and a burst that fits an idle instance is admitted.

mod common;

use common::{model, start};
use rkllm::Sampling;
use scheduler::stats::ModelSummary;
use scheduler::{
    Event, FailKind, Failure, FinishReason, Request, RequestStream, Scheduler, SubmitError,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn req(model: &str, prompt: &str, max_tokens: u32) -> Request {
    Request {
        model: model.into(),
        prompt: prompt.into(),
        prompt_ids: None,
        prompt_tokens: prompt.len().div_ceil(4).max(1),
        sampling: Sampling::greedy(),
        max_tokens,
        stop: vec![],
        arrival: Instant::now(),
        prefix: None,
    }
}

fn end(mut s: RequestStream) -> (FinishReason, u32) {
    while let Some(e) = s.blocking_next() {
        if let Event::End {
            reason,
            completion_tokens,
            ..
        } = e
        {
            return (reason, completion_tokens);
        }
    }
    panic!("stream ended without an End event");
}

fn failure(s: RequestStream) -> Failure {
    match end(s).0 {
        FinishReason::Error(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Waits until the telemetry thread has recorded `settled` requests for `model`, then
/// returns its counts; a moment longer, so that a count recorded twice would show.
fn counts(s: &Scheduler, model: &str, settled: u64) -> (u64, BTreeMap<FailKind, u64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let get =
        || -> Option<ModelSummary> { s.latency_stats().into_iter().find(|m| m.model == model) };
    loop {
        if let Some(m) = get() {
            if m.since_start.requests + m.since_start.failed >= settled {
                break;
            }
        }
        assert!(Instant::now() < deadline, "stats never settled");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let m = get().unwrap().since_start;
    (m.requests, m.failures)
}

#[test]
fn a_queue_timeout_is_a_timeout_counted_once() {
    let mut m = model("m", "[timing]\ndecode_step_ms = 20.0\n", 1);
    m.max_queue_wait = Duration::from_millis(200);
    let s = start(vec![m]);
    let busy = s.submit(req("m", "busy", 40)).unwrap();
    let late = s.submit(req("m", "late", 1)).unwrap();
    let f = failure(late);
    assert_eq!(f.kind, FailKind::Timeout, "{f:?}");
    assert_eq!(end(busy).0, FinishReason::Length);
    let (ok, failures) = counts(&s, "m", 2);
    assert_eq!(ok, 1);
    assert_eq!(failures, BTreeMap::from([(FailKind::Timeout, 1)]));
}

#[test]
fn a_runtime_error_is_runtime_and_each_request_counts_once() {
    let s = start(vec![model(
        "m",
        "[faults]\nerror_after_tokens = 3\n[timing]\ndecode_step_ms = 2.0\n",
        4,
    )]);
    // Four requests, and one request of four choices: each request counts once.
    let streams: Vec<_> = (0..4)
        .map(|i| s.submit(req("m", &format!("p{i}"), 10)).unwrap())
        .collect();
    for st in streams {
        assert_eq!(failure(st).kind, FailKind::RuntimeError);
    }
    let (_, failures) = counts(&s, "m", 4);
    assert_eq!(failures, BTreeMap::from([(FailKind::RuntimeError, 4)]));
    let choices = s
        .submit_all((0..4).map(|i| req("m", &format!("c{i}"), 10)).collect())
        .unwrap();
    for st in choices {
        assert_eq!(failure(st).kind, FailKind::RuntimeError);
    }
    let (_, failures) = counts(&s, "m", 5);
    assert_eq!(failures, BTreeMap::from([(FailKind::RuntimeError, 5)]));
}

#[test]
fn replacing_or_unloading_a_model_fails_its_waiting_requests_as_unavailable() {
    let s = start(vec![model("m", "[timing]\ndecode_step_ms = 20.0\n", 1)]);
    let busy = s.submit(req("m", "busy", 1000)).unwrap();
    let waiting = s.submit(req("m", "waiting", 1)).unwrap();
    // The replacement is slow too, so that its request is still going when it is removed
    // (a 1-token reply on a zero-delay model could finish first on a loaded machine).
    s.add_model(model("m", "[timing]\ndecode_step_ms = 20.0\n", 1));
    assert_eq!(failure(waiting).kind, FailKind::Unavailable);
    assert_eq!(failure(busy).kind, FailKind::Unavailable);
    assert!(s.wait_loaded(Duration::from_secs(30)));
    let waiting = s.submit(req("m", "w", 1000)).unwrap();
    assert!(s.remove_model("m"));
    assert_eq!(failure(waiting).kind, FailKind::Unavailable);
}

#[test]
fn a_refused_group_leaves_nothing_behind_to_count() {
    let mut m = model("m", "[timing]\ndecode_step_ms = 20.0\n", 1);
    m.max_queue = 2;
    let s = start(vec![m]);
    let mut busy = s.submit(req("m", "busy", 30)).unwrap();
    // Running: the instance has no free slot, so only max_queue may wait.
    busy.blocking_next();
    match s.submit_all((0..4).map(|i| req("m", &format!("n{i}"), 1)).collect()) {
        Err(SubmitError::Overloaded { .. }) => {}
        other => panic!("expected Overloaded, got {:?}", other.map(|v| v.len())),
    }
    assert_eq!(end(busy).0, FinishReason::Length);
    let (ok, failures) = counts(&s, "m", 1);
    assert_eq!(ok, 1);
    assert!(
        failures.is_empty(),
        "a refusal is the caller's to count once, not cancellations: {failures:?}"
    );
    assert_eq!(s.snapshot()[0].waiting, 0);
}

#[test]
fn a_prompt_with_nul_fails_alone_and_its_batch_runs() {
    let s = start(vec![model("m", "[timing]\ndecode_step_ms = 5.0\n", 4)]);
    let mut reqs: Vec<Request> = (0..4).map(|i| req("m", &format!("ok {i}"), 3)).collect();
    reqs[1].prompt = "bad \u{0} prompt".into();
    // Separate requests (the choices of one request would count as one).
    let mut streams = reqs
        .into_iter()
        .map(|r| s.submit(r).unwrap())
        .collect::<Vec<_>>()
        .into_iter();
    let a = streams.next().unwrap();
    let bad = streams.next().unwrap();
    let rest: Vec<_> = streams.collect();
    let f = failure(bad);
    assert_eq!(f.kind, FailKind::BadRequest, "{f:?}");
    assert!(f.message.contains("NUL"), "{f:?}");
    assert_eq!(end(a), (FinishReason::Length, 3));
    for st in rest {
        assert_eq!(end(st), (FinishReason::Length, 3));
    }
    let (ok, failures) = counts(&s, "m", 4);
    assert_eq!(ok, 3);
    assert_eq!(failures, BTreeMap::from([(FailKind::BadRequest, 1)]));
}

#[test]
fn a_batch_of_only_bad_prompts_leaves_the_instance_serving() {
    let s = start(vec![model("m", "", 2)]);
    let bad = s.submit(req("m", "\u{0}", 3)).unwrap();
    assert_eq!(failure(bad).kind, FailKind::BadRequest);
    assert_eq!(
        end(s.submit(req("m", "fine", 2)).unwrap()),
        (FinishReason::Length, 2)
    );
}

#[test]
fn racing_loads_of_one_model_start_it_once_and_fail_nobody() {
    let s = Arc::new(Scheduler::new(vec![]));
    let slow_init = "[timing]\ndecode_step_ms = 1.0\n";
    let cfg = model("m", slow_init, 8);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (s, cfg) = (s.clone(), cfg.clone());
            std::thread::spawn(move || {
                let added = s.add_model_if_absent(cfg);
                // Each racer queues at once, as a first request does after loading.
                (added, s.submit(req("m", &format!("r{i}"), 2)))
            })
        })
        .collect();
    let mut added = 0;
    for t in threads {
        let (a, stream) = t.join().unwrap();
        added += usize::from(a);
        let stream = stream.expect("the model is known to every racer");
        assert_eq!(end(stream), (FinishReason::Length, 2));
    }
    assert_eq!(added, 1, "exactly one racer starts the model");
    assert_eq!(s.snapshot()[0].instances.len(), 1);
}

#[test]
fn a_burst_that_fits_an_idle_instance_is_admitted_whatever_max_queue() {
    let mut m = model("m", "[timing]\ndecode_step_ms = 2.0\n", 4);
    m.max_queue = 1;
    m.batch_window = Duration::from_millis(100);
    let s = start(vec![m]);
    // One by one, as concurrent HTTP requests arrive.
    let streams: Vec<_> = (0..4)
        .map(|i| {
            s.submit(req("m", &format!("b{i}"), 2))
                .unwrap_or_else(|e| panic!("request {i} of a burst of n_batch refused: {e}"))
        })
        .collect();
    for st in streams {
        assert_eq!(end(st), (FinishReason::Length, 2));
    }
    // The last End is sent just before the instance is marked idle again.
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.snapshot()[0].busy_slots() > 0 {
        assert!(Instant::now() < deadline, "the instance never went idle");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Together, as the choices of one request.
    let streams = s
        .submit_all((0..4).map(|i| req("m", &format!("c{i}"), 2)).collect())
        .expect("a group that fits the idle instance");
    for st in streams {
        assert_eq!(end(st), (FinishReason::Length, 2));
    }
}
