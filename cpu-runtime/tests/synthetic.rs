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

/// The text each NORMAL step carried for `slot`, in order.
fn pieces(rec: &Recording, slot: usize) -> Vec<String> {
    rec.steps
        .iter()
        .filter(|s| s.state == StepState::Normal)
        .filter_map(|s| s.slots[slot].text.clone())
        .map(|t| String::from_utf8(t).unwrap())
        .collect()
}

const TOOL_CALL: &str = "<think>\nLet me see.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

#[test]
fn a_script_streams_in_the_split_pattern_extended_to_whole_characters() {
    let body = format!(
        "{INSTANT}[output]\nscript = {}\nsplit = [1, 3, 2, 5]\n",
        toml_str("<tool_call>é!")
    );
    let mut h = handle(&body, 1, 50).unwrap();
    let (outcome, rec) = record(&mut h, &prompts(1), &InferParams::default());
    assert_eq!(outcome, RunOutcome::Finished);
    rec.assert_well_formed(1);
    // The fifth piece (1 byte) would cut é in half, so it takes both bytes.
    assert_eq!(pieces(&rec, 0), ["<", "too", "l_", "call>", "é", "!"]);
    // Then the slot ends as at EOS: the next step reports -1 and no text.
    let last = rec
        .steps
        .iter()
        .rev()
        .find(|s| s.state == StepState::Normal);
    let last = &last.unwrap().slots[0];
    assert_eq!((last.token_id, last.text.is_none()), (-1, true));
    assert_eq!(rec.tokens(0), 6);
}

#[test]
fn a_tool_call_arrives_cut_across_callbacks_and_whole_in_sum() {
    let body = format!(
        "{INSTANT}[output]\nscript = {}\nsplit = [1, 3, 2, 5]\n",
        toml_str(TOOL_CALL)
    );
    let mut h = handle(&body, 1, 500).unwrap();
    let (_, rec) = record(&mut h, &prompts(1), &InferParams::default());
    rec.assert_well_formed(1);
    assert_eq!(rec.text(0), TOOL_CALL);
    let p = pieces(&rec, 0);
    for marker in ["<think>", "</think>", "<tool_call>", "</tool_call>"] {
        assert!(
            p.iter().all(|piece| !piece.contains(marker)),
            "{marker} arrived in one piece"
        );
    }
    // Each piece is one token.
    assert_eq!(rec.tokens(0), p.len());
}

#[test]
fn reply_rules_pick_the_first_match_then_the_script_then_the_filler() {
    let rules = "[[output.replies]]\nwhen = \"weather\"\ntext = \"WEATHER\"\n\
                 [[output.replies]]\nwhen = \"tool_response\"\ntext = \"RESPONSE\"\n";
    let with_script = format!("{INSTANT}[output]\nscript = \"FALLBACK\"\n{rules}");
    let inputs = [
        Input::prompt("what is the weather in Paris?"),
        // Both rules match: the first listed wins.
        Input::prompt("<tool_response>weather: sunny</tool_response>"),
        Input::prompt("<tool_response>22 C</tool_response>"),
        Input::prompt("hello"),
    ];
    let mut h = handle(&with_script, 4, 50).unwrap();
    let (_, rec) = record(&mut h, &inputs, &InferParams::default());
    rec.assert_well_formed(4);
    let texts: Vec<String> = (0..4).map(|i| rec.text(i)).collect();
    assert_eq!(texts, ["WEATHER", "WEATHER", "RESPONSE", "FALLBACK"]);
    // Default pieces: bytes_per_token (4) bytes each.
    assert_eq!(pieces(&rec, 3), ["FALL", "BACK"]);

    // Without a script, an unmatched prompt gets the usual deterministic filler.
    let mut rules_only = handle(&format!("{INSTANT}[output]\n{rules}"), 1, 5).unwrap();
    let mut plain = handle(INSTANT, 1, 5).unwrap();
    let hello = [Input::prompt("hello")];
    let (_, a) = record(&mut rules_only, &hello, &InferParams::default());
    let (_, b) = record(&mut plain, &hello, &InferParams::default());
    assert_eq!(a.text(0), b.text(0));
    assert_eq!(a.tokens(0), 5);
}

#[test]
fn max_new_tokens_cuts_a_script_short() {
    let body = format!("{INSTANT}[output]\nscript = \"one two three four\"\nsplit = [4]\n");
    let mut h = handle(&body, 1, 2).unwrap();
    let (_, rec) = record(&mut h, &prompts(1), &InferParams::default());
    rec.assert_well_formed(1);
    assert_eq!(rec.text(0), "one two ");
    assert_eq!(rec.tokens(0), 2);
}

#[test]
fn script_file_is_read_next_to_the_profile() {
    let path = profile(&format!("{INSTANT}[output]\nscript_file = \"reply.txt\"\n"));
    std::fs::write(path.with_file_name("reply.txt"), "from the sidecar").unwrap();
    let rt = runtime(AbiFamily::V1_3);
    let mut h = rt.init(&params(&rt, path.clone(), 1, 50)).unwrap();
    let (_, rec) = record(&mut h, &prompts(1), &InferParams::default());
    assert_eq!(rec.text(0), "from the sidecar");
    // Both at once is a profile error, not a silent choice.
    let both = profile("[output]\nscript = \"a\"\nscript_file = \"reply.txt\"\n");
    assert!(rt.init(&params(&rt, both, 1, 4)).is_err());
}

#[test]
fn scripted_tokens_keep_the_timing_model() {
    let body =
        "[timing]\ndecode_step_ms = 20.0\n[output]\nscript = \"abcdefghijkl\"\nsplit = [2]\n";
    let mut h = handle(body, 1, 50).unwrap();
    let (_, rec) = record(&mut h, &prompts(1), &InferParams::default());
    assert_eq!(rec.tokens(0), 6);
    // Six pieces and the EOS step: six decode steps after the first token.
    let ms = rec.slot_perf(0).generate_time_ms;
    assert!(ms >= 6.0 * 20.0, "{ms} ms");
}

#[test]
fn finish_with_a_single_result_at_n_batch_8() {
    let run = |finish: &str| {
        let body = format!("{INSTANT}[output]\nfinish_results = \"{finish}\"\n");
        let mut h = handle(&body, 8, 6).unwrap();
        let inputs: Vec<Input> = (0..8)
            .map(|i| Input::prompt("x".repeat(4 * (i + 1))))
            .collect();
        let (outcome, rec) = record(&mut h, &inputs, &InferParams::default());
        assert_eq!(outcome, RunOutcome::Finished);
        rec.assert_well_formed(8);
        rec
    };
    let (all, single) = (run("all"), run("single"));
    for i in 0..8 {
        assert_eq!(single.text(i), all.text(i), "slot {i}");
        assert_eq!(single.tokens(i), 6);
    }
    // "all" puts slot 0's stats first; the single result carries the batch's totals.
    let per_slot: Vec<_> = (0..8).map(|i| single.slot_perf(i)).collect();
    let total = single.finish().slots[0].perf;
    assert_eq!(all.finish().slots[0].perf.generate_tokens, 6);
    assert_eq!(total.generate_tokens, 8 * 6);
    assert_eq!(
        total.prefill_tokens,
        per_slot.iter().map(|p| p.prefill_tokens).sum::<i32>()
    );
    assert_eq!(total.prefill_tokens, (1..=8).sum::<i32>());

    // ERROR takes the same encoding, and the handle goes on working.
    let body = "[output]\nfinish_results = \"single\"\n[faults]\nerror_after_tokens = 20\n";
    let mut h = handle(body, 8, 6).unwrap();
    let (outcome, rec) = record(&mut h, &prompts(8), &InferParams::default());
    assert_eq!(outcome, RunOutcome::Failed);
    assert_eq!(rec.count(StepState::Error), 1);
    let (outcome, _) = record(&mut h, &prompts(2), &InferParams::default());
    assert_eq!(outcome, RunOutcome::Finished);
}

#[test]
fn crash_faults_parse_and_stay_quiet_until_their_moment() {
    // The crashes themselves are tested in rkllm-run/tests/faults.rs, in a child process.
    let body = "[faults]\nabort_at_init = true\nabort_at_init_above_n_batch = 4\n\
                abort_after_tokens = 100\nsegfault_after_tokens = 100\n";
    let mut h = handle(body, 4, 5).unwrap();
    let (outcome, _) = record(&mut h, &prompts(4), &InferParams::default());
    assert_eq!(outcome, RunOutcome::Finished);
    // A modifier without its fault would silently test nothing.
    assert!(handle("[faults]\nabort_at_init_above_n_batch = 2\n", 1, 4).is_err());
}

#[test]
fn the_shipped_scripted_tools_profile_calls_the_tool_then_answers() {
    let rt = runtime(AbiFamily::V1_3);
    let path = workspace().join("models/synthetic/scripted-tools.toml");
    let mut h = rt.init(&params(&rt, path, 3, 500)).unwrap();
    let tools = "<tools>{\"name\": \"get_weather\"}</tools>\nuser: weather in Paris?";
    let inputs = [
        Input::prompt(tools),
        Input::prompt(format!("{tools}\n<tool_response>sunny</tool_response>")),
        Input::prompt("hello"),
    ];
    let (_, rec) = record(&mut h, &inputs, &InferParams::default());
    rec.assert_well_formed(3);
    assert!(rec
        .text(0)
        .starts_with("<think>\nLet me see.\n</think>\n\n<tool_call>\n"));
    assert!(rec.text(0).ends_with("}}\n</tool_call>"));
    assert!(rec.text(1).ends_with("It is sunny in Paris, 22 °C."));
    assert!(rec.text(2).starts_with("<think>\nNothing to look up."));
    assert!(pieces(&rec, 0).iter().all(|p| !p.contains("<tool_call>")));
}
