//! The synthetic engine under continuous batching: replies cut at step boundaries and resumed
//! (prompt followed by the reply so far, keep_history 0) read exactly as uninterrupted ones;
//! `[timing] prefix_reuse` decides what a resumed or repeated prompt prefills; the cost of
//! stopping a run (`abort_ms`, `pause_ms`); the process crash of `faults.crash_on_pause`.

mod common;
mod resume;
use common::*;
use resume::{run_cut, Cut, Segment};
use rkllm::{AbiFamily, Handle, InferParams, Input, RunOutcome};
use std::time::{Duration, Instant};

fn profile(body: &str) -> std::path::PathBuf {
    let p = tempdir().join("profile.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn handle(body: &str, n_batch: u8, max_new: i32) -> Handle {
    let rt = runtime(AbiFamily::V1_3);
    rt.init(&params(&rt, profile(body), n_batch, max_new))
        .expect("init")
}

const INSTANT: &str = "[timing]\ndecode_step_ms = 0.0\n";

#[derive(Debug, Clone)]
enum Prompt {
    Text(String),
    Ids(Vec<i32>),
}

impl Prompt {
    /// The input that resumes this prompt after `text` and `ids` were received.
    fn resumed(&self, text: &[u8], ids: &[i32]) -> Input {
        match self {
            Prompt::Text(p) => {
                let reply = std::str::from_utf8(text).expect("reported text is valid UTF-8");
                Input::prompt(format!("{p}{reply}"))
            }
            Prompt::Ids(p) => Input::tokens([p.as_slice(), ids].concat()),
        }
    }

    fn input(&self) -> Input {
        self.resumed(b"", &[])
    }
}

/// Each slot's text and ids over a reply cut after each of `cuts` steps (then resumed in the
/// same slot), and stopped once it has `total` tokens or ended.
fn cut_and_resume(
    h: &mut Handle,
    prompts: &[Prompt],
    how: Cut,
    cuts: &[usize],
    total: usize,
) -> (Vec<Vec<u8>>, Vec<Vec<i32>>, Vec<Segment>) {
    let n = prompts.len();
    let (mut text, mut ids) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut finished = vec![false; n];
    let mut segments = Vec::new();
    let mut inputs: Vec<Input> = prompts.iter().map(Prompt::input).collect();
    for cut in cuts.iter().map(|&k| Some((how, k))).chain([None]) {
        let seg = run_cut(h, &inputs, cut);
        for slot in 0..n {
            if finished[slot] {
                continue;
            }
            text[slot].extend(&seg.text[slot]);
            ids[slot].extend(&seg.ids[slot]);
            finished[slot] = seg.finished[slot] || ids[slot].len() >= total;
        }
        segments.push(seg);
        if finished.iter().all(|&f| f) {
            break;
        }
        inputs = (0..n)
            .map(|s| {
                if finished[s] {
                    Input::tokens(vec![])
                } else {
                    prompts[s].resumed(&text[s], &ids[s])
                }
            })
            .collect();
    }
    (text, ids, segments)
}

/// Every single cut point of a `total`-token reply, and a few multi-cut sequences, with pause
/// and abort, give the uninterrupted text and ids.
fn assert_exact_everywhere(body: &str, prompts: &[Prompt], total: usize) {
    let mut h = handle(body, prompts.len() as u8, total as i32);
    let (want_text, want_ids, _) = cut_and_resume(&mut h, prompts, Cut::Pause, &[], total);
    let mut plans: Vec<Vec<usize>> = (1..total).map(|k| vec![k]).collect();
    plans.extend([vec![1, 1, 1, 1], vec![6, 1, 6], vec![3, 7, 2, 5]]);
    for how in [Cut::Pause, Cut::Abort] {
        for cuts in &plans {
            let (text, ids, segs) = cut_and_resume(&mut h, prompts, how, cuts, total);
            for slot in 0..prompts.len() {
                let label = format!("{how:?} at {cuts:?}, slot {slot} ({:?})", prompts[slot]);
                assert_eq!(
                    &ids[slot][..want_ids[slot].len()],
                    &want_ids[slot][..],
                    "{label}: ids"
                );
                let got = String::from_utf8_lossy(&text[slot]);
                let want = String::from_utf8_lossy(&want_text[slot]);
                assert!(
                    got.starts_with(&*want),
                    "{label}:\n got {got:?}\nwant {want:?}"
                );
            }
            // The runs were cut where asked.
            assert_eq!(segs[0].ids[0].len(), cuts[0].min(want_ids[0].len()));
        }
    }
}

fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::Text("prompt number 0".into()),
        Prompt::Ids(vec![5, 6, 7, 8, 9]),
    ]
}

#[test]
fn filler_cut_anywhere_reads_as_uninterrupted() {
    assert_exact_everywhere(INSTANT, &prompts(), 30);
}

#[test]
fn split_characters_cut_between_their_bytes_are_sent_whole_on_resumption() {
    let body = format!("{INSTANT}[output]\nsplit_utf8 = true\n");
    // Characters split at tokens 6-7, 13-14, 20-21, 27-28: every cut point is tried.
    assert_exact_everywhere(&body, &prompts(), 30);
    // The held-back byte comes first in the resumed run's first piece.
    let mut h = handle(&body, 1, 30);
    let p = Prompt::Text("hello".into());
    let seg = run_cut(&mut h, &[p.input()], Some((Cut::Pause, 7)));
    assert!(!String::from_utf8(seg.text[0].clone())
        .unwrap()
        .contains('é'));
    let resumed = run_cut(&mut h, &[p.resumed(&seg.text[0], &seg.ids[0])], None);
    assert!(String::from_utf8(resumed.text[0].clone())
        .unwrap()
        .starts_with('é'));
}

#[test]
fn held_back_bytes_survive_a_resumption_aborted_during_prefill() {
    // 20 tokens/s: the resumed prompt (about 12 tokens) takes over half a second to prefill.
    let body = "[timing]\nprefill_tokens_per_second = 20.0\n[output]\nsplit_utf8 = true\n";
    let mut h = handle(body, 1, 30);
    let p = Prompt::Text("hello".into());
    let seg = run_cut(&mut h, &[p.input()], Some((Cut::Pause, 7)));
    let resumed = p.resumed(&seg.text[0], &seg.ids[0]);
    let abort = h.abort_handle();
    let aborter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        abort.abort().unwrap();
    });
    let stopped = run_cut(&mut h, std::slice::from_ref(&resumed), None);
    aborter.join().unwrap();
    assert_eq!(stopped.outcome, Some(RunOutcome::Aborted));
    assert!(stopped.ids[0].is_empty(), "aborted before its first token");
    // The same input again: the character is still owed.
    let rest = run_cut(&mut h, &[resumed], None);
    let text = String::from_utf8(rest.text[0].clone()).unwrap();
    assert!(text.starts_with('é'), "{text:?}");
}

#[test]
fn scripted_replies_with_awkward_splits_resume_exactly_and_keep_their_rule() {
    // Once "sunny" is in the reply, the resumed prompt matches the first rule too: a
    // continuation must keep the rule its sequence started with.
    let body = format!(
        "{INSTANT}[output]\nsplit = [1, 3, 2, 5]\nscript = \"fallback é\"\n\
         [[output.replies]]\nwhen = \"sunny\"\ntext = \"WRONG\"\n\
         [[output.replies]]\nwhen = \"weather\"\n\
         text = \"<think>é?</think> It is sunny 🦀 22 °C, <tool_call>{{}}</tool_call> ok\"\n"
    );
    let prompts = vec![
        Prompt::Text("the weather?".into()),
        Prompt::Ids(vec![1, 2, 3]),
    ];
    let mut h = handle(&body, 2, 100);
    let (text, _, _) = cut_and_resume(&mut h, &prompts, Cut::Pause, &[], 100);
    assert_eq!(
        String::from_utf8(text[0].clone()).unwrap(),
        "<think>é?</think> It is sunny 🦀 22 °C, <tool_call>{}</tool_call> ok"
    );
    assert_eq!(String::from_utf8(text[1].clone()).unwrap(), "fallback é");
    assert_exact_everywhere(&body, &prompts, 100);
}

#[test]
fn a_continuation_may_arrive_in_another_slot() {
    let mut h = handle(INSTANT, 2, 20);
    let (a, b) = (Prompt::Text("first".into()), Prompt::Text("second".into()));
    let (want, _, _) = cut_and_resume(&mut h, &[a.clone(), b.clone()], Cut::Pause, &[], 20);
    let seg = run_cut(&mut h, &[a.input(), b.input()], Some((Cut::Pause, 8)));
    // Swapped: each slot gets the other's continuation.
    let swapped = [
        b.resumed(&seg.text[1], &seg.ids[1]),
        a.resumed(&seg.text[0], &seg.ids[0]),
    ];
    let rest = run_cut(&mut h, &swapped, None);
    let join = |x: &[u8], y: &[u8]| String::from_utf8([x, y].concat()).unwrap();
    let whole = String::from_utf8_lossy(&want[0]);
    assert!(join(&seg.text[0], &rest.text[1]).starts_with(&*whole));
    let whole = String::from_utf8_lossy(&want[1]);
    assert!(join(&seg.text[1], &rest.text[0]).starts_with(&*whole));
}

#[test]
fn a_new_prompt_is_not_mistaken_for_a_continuation() {
    let mut h = handle(INSTANT, 1, 10);
    let p = Prompt::Text("hello".into());
    let (first, _, _) = cut_and_resume(&mut h, std::slice::from_ref(&p), Cut::Pause, &[], 10);
    // The same prompt again starts the same reply from its beginning.
    let (again, _, _) = cut_and_resume(&mut h, &[p], Cut::Pause, &[], 10);
    assert_eq!(first, again);
}

/// Prefill tokens and time of one run of `input` (after what the handle already ran).
fn prefill(h: &mut Handle, input: Input) -> (i32, f32) {
    let (_, rec) = record(h, &[input], &InferParams::default());
    let perf = rec.finish().slots[0].perf;
    (perf.prefill_tokens, perf.prefill_time_ms)
}

#[test]
fn prefix_reuse_prefills_only_what_the_slot_does_not_hold() {
    // 1000 tokens/s: 1 ms a token. 4 bytes a token.
    let body = |reuse: bool| {
        format!("[timing]\nprefill_tokens_per_second = 1000.0\nprefix_reuse = {reuse}\n")
    };
    let system = "s".repeat(400); // 100 tokens
    let ask = |q: &str| Input::prompt(format!("{system}{q}"));
    let mut on = handle(&body(true), 1, 8);
    let mut off = handle(&body(false), 1, 8);
    for h in [&mut on, &mut off] {
        let (n, ms) = prefill(h, ask("Q1: what now"));
        assert_eq!(n, 103);
        assert!(ms >= 103.0, "{ms} ms");
    }
    // The same system prompt, another question: 100 tokens (401 bytes) are shared.
    let (warm, warm_ms) = prefill(&mut on, ask("Q2: what now"));
    let (cold, cold_ms) = prefill(&mut off, ask("Q2: what now"));
    assert_eq!((warm, cold), (3, 103));
    assert!(warm_ms < cold_ms / 4.0, "{warm_ms} ms vs {cold_ms} ms");
    // The same prompt again: everything but its last token.
    assert_eq!(prefill(&mut on, ask("Q2: what now")).0, 1);
    // Token input counts ids.
    let ids: Vec<i32> = (0..50).collect();
    assert_eq!(prefill(&mut on, Input::tokens(ids.clone())).0, 50);
    let longer = [ids.as_slice(), &[7, 7, 7]].concat();
    assert_eq!(prefill(&mut on, Input::tokens(longer.clone())).0, 3);
    assert_eq!(prefill(&mut off, Input::tokens(longer)).0, 53);
    // clear_kv_cache forgets what the slot held.
    on.clear_kv_cache(false, None).unwrap();
    assert_eq!(prefill(&mut on, ask("Q2: what now")).0, 103);
}

#[test]
fn a_resumed_reply_prefills_one_token_with_reuse_and_everything_without() {
    for reuse in [true, false] {
        let body = format!("{INSTANT}prefix_reuse = {reuse}\n");
        let p = Prompt::Text("x".repeat(40)); // 10 tokens
        let mut h = handle(&body, 1, 20);
        let (text, _, segs) = cut_and_resume(&mut h, &[p], Cut::Pause, &[6, 6], 20);
        let prefills: Vec<i32> = segs.iter().map(|s| s.prefill[0]).collect();
        assert_eq!(prefills[0], 10);
        if reuse {
            assert_eq!(&prefills[1..], &[1, 1], "reuse on");
        } else {
            // Cold: the prompt and the reply so far, 4 bytes a token.
            let after = |steps: usize| {
                let mut h = handle(&body, 1, steps as i32);
                let (t, _, _) =
                    cut_and_resume(&mut h, &[Prompt::Text("x".repeat(40))], Cut::Pause, &[], 20);
                (40 + t[0].len()).div_ceil(4) as i32
            };
            assert_eq!(&prefills[1..], &[after(6), after(12)], "reuse off");
        }
        assert!(!text[0].is_empty());
    }
}

#[test]
fn stopping_a_run_costs_abort_ms_or_pause_ms() {
    let timed = |body: &str, how: Cut| {
        let mut h = handle(body, 1, 50);
        let t = Instant::now();
        let seg = run_cut(&mut h, &[Input::prompt("hello")], Some((how, 2)));
        assert_eq!(seg.ids[0].len(), 2, "no token after the cut");
        let expected = match how {
            Cut::Pause => RunOutcome::Stopped,
            Cut::Abort => RunOutcome::Aborted,
        };
        assert_eq!(seg.outcome, Some(expected));
        t.elapsed()
    };
    let slow_abort = format!("{INSTANT}abort_ms = 400\n");
    let slow_pause = format!("{INSTANT}pause_ms = 300\n");
    assert!(timed(&slow_abort, Cut::Abort) >= Duration::from_millis(400));
    assert!(timed(&slow_pause, Cut::Pause) >= Duration::from_millis(300));
    // Each applies to its own way of stopping only.
    assert!(timed(&slow_abort, Cut::Pause) < Duration::from_millis(300));
    assert!(timed(&slow_pause, Cut::Abort) < Duration::from_millis(250));
}

#[test]
fn the_shipped_rk3588_profiles_differ_only_in_prefix_reuse() {
    let dir = workspace().join("models/synthetic");
    let rt = runtime(AbiFamily::V1_3);
    let load = |file: &str| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let h = rt.init(&params(&rt, dir.join(file), 1, 2)).unwrap();
        (text, h)
    };
    let (off_text, mut off) = load("qwen3-0.6b-rk3588.toml");
    let (on_text, mut on) = load("qwen3-0.6b-rk3588-reuse.toml");
    assert!(off_text.contains("prefix_reuse = false") && off_text.contains("ASSUMPTION"));
    assert!(on_text.contains("prefix_reuse = true") && on_text.contains("ASSUMPTION"));
    let prompt = || Input::prompt("a".repeat(128 * 4));
    for h in [&mut on, &mut off] {
        assert_eq!(prefill(h, prompt()).0, 128);
    }
    assert_eq!(prefill(&mut on, prompt()).0, 1);
    assert_eq!(prefill(&mut off, prompt()).0, 128);
}

/// Set in the child process of the crash test.
const CRASH_CHILD: &str = "RKLLM_TEST_CRASH_ON_PAUSE_CHILD";

#[test]
fn crash_on_pause_child() {
    if std::env::var_os(CRASH_CHILD).is_none() {
        return;
    }
    let mut h = handle(
        &format!("{INSTANT}[faults]\ncrash_on_pause = true\n"),
        1,
        50,
    );
    // Aborting is safe; pausing kills the process.
    run_cut(&mut h, &[Input::prompt("hello")], Some((Cut::Abort, 2)));
    println!("aborted fine");
    run_cut(&mut h, &[Input::prompt("hello")], Some((Cut::Pause, 3)));
    println!("survived the pause");
}

#[test]
fn fault_crash_on_pause_aborts_the_process_when_a_callback_returns_1() {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_on_pause_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("aborted fine") && !stdout.contains("survived"),
        "{stdout}"
    );
    assert!(
        stderr.contains("synthetic: abort when a callback returned 1 (faults.crash_on_pause)"),
        "{stderr}"
    );
}
