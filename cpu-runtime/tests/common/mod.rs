//! Shared by the conformance suites: they load `target/<profile>/librkllmrt.so` through the
//! `rkllm` crate, the same path the server uses, with the default model.
#![allow(dead_code)]

use rkllm::{
    AbiFamily, Flow, Handle, InferParams, InitParams, Input, Runtime, Sampling, Step, StepState,
};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, Once};
use std::thread::ThreadId;

pub fn lib_path() -> PathBuf {
    std::env::var_os("RKLLM_LIB")
        .map(PathBuf::from)
        .or_else(rkllm::cpu_runtime_near_exe)
        .expect("librkllmrt.so: build the workspace (cargo build --release)")
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn model_path() -> PathBuf {
    let p = std::env::var_os("RKSERVE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.is_file(),
        "the default model {} is missing: run scripts/fetch-default-model",
        p.display()
    );
    p
}

/// The library reads RKLLM_CPU_ABI once, before its first call; each suite is its own
/// process and sets it here, before anything is loaded.
pub fn runtime(family: AbiFamily) -> Runtime {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var("RKLLM_CPU_ABI", family.to_string()));
    assert_eq!(std::env::var("RKLLM_CPU_ABI").unwrap(), family.to_string());
    Runtime::load(lib_path(), family).expect("load librkllmrt.so")
}

/// Two cores: model tests run one at a time so each gets the machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn params(rt: &Runtime, model: PathBuf, n_batch: u8, max_new: i32) -> InitParams {
    let mut p = rt.default_params();
    p.model_path = model;
    p.n_batch = n_batch;
    p.max_new_tokens = max_new;
    p.max_context_len = 1024;
    p.sampling = Sampling::greedy();
    p.enabled_cpus_num = 2;
    p
}

/// A handle on the default model with greedy sampling and verbatim prompts.
pub fn model_handle(family: AbiFamily, n_batch: u8, max_new: i32) -> Handle {
    let rt = runtime(family);
    let mut h = rt
        .init(&params(&rt, model_path(), n_batch, max_new))
        .expect("init");
    h.set_chat_template("", "", "").unwrap();
    h
}

pub fn chatml(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

#[derive(Debug, Clone)]
pub struct SlotRecord {
    pub text: Option<Vec<u8>>,
    pub token_id: i32,
    pub perf: rkllm::abi::RKLLMPerfStat,
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    pub state: StepState,
    pub slots: Vec<SlotRecord>,
    pub thread: ThreadId,
}

/// Records every step of a run and checks the API's invariants.
#[derive(Debug, Default)]
pub struct Recording {
    pub steps: Vec<StepRecord>,
}

impl Recording {
    pub fn record(&mut self, step: &Step<'_>) {
        self.steps.push(StepRecord {
            state: step.state(),
            slots: step
                .slots()
                .map(|s| SlotRecord {
                    text: s.text.map(<[u8]>::to_vec),
                    token_id: s.token_id,
                    perf: s.perf,
                })
                .collect(),
            thread: std::thread::current().id(),
        });
    }

    pub fn text(&self, slot: usize) -> String {
        let bytes: Vec<u8> = self
            .steps
            .iter()
            .filter_map(|s| s.slots.get(slot).and_then(|r| r.text.clone()))
            .flatten()
            .collect();
        String::from_utf8(bytes).expect("slot text is valid UTF-8")
    }

    /// Steps that carried a token for `slot`.
    pub fn tokens(&self, slot: usize) -> usize {
        self.steps
            .iter()
            .filter(|s| s.state != StepState::Finish && s.slots[slot].token_id >= 0)
            .count()
    }

    fn decode_steps(&self) -> impl Iterator<Item = &StepRecord> {
        self.steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Normal | StepState::Waiting))
    }

    /// A slot's perf stats as of its last decode step: FINISH carries result 0 only.
    pub fn slot_perf(&self, slot: usize) -> rkllm::abi::RKLLMPerfStat {
        self.decode_steps().last().expect("a decode step").slots[slot].perf
    }

    pub fn finish(&self) -> &StepRecord {
        self.steps
            .iter()
            .find(|s| s.state == StepState::Finish)
            .expect("a FINISH step")
    }

    pub fn count(&self, state: StepState) -> usize {
        self.steps.iter().filter(|s| s.state == state).count()
    }

    /// FINISH exactly once and last; a finished slot stays finished and silent.
    pub fn assert_well_formed(&self, n_batch: usize) {
        assert_eq!(self.count(StepState::Finish), 1, "FINISH exactly once");
        assert_eq!(
            self.steps.last().unwrap().state,
            StepState::Finish,
            "FINISH is last"
        );
        for step in self.decode_steps() {
            assert_eq!(step.slots.len(), n_batch, "every step reports every slot");
        }
        // Only result 0 (the perf stats) is read at FINISH, as the public encoding passes one.
        assert_eq!(self.finish().slots.len(), n_batch.min(1));
        // A slot stopped by max_new_tokens never reports -1 in a decode step (the last step
        // carries its last token, and FINISH ends every slot), so only "stays finished" holds.
        for slot in 0..n_batch {
            let results: Vec<&SlotRecord> = self.decode_steps().map(|s| &s.slots[slot]).collect();
            if let Some(end) = results.iter().position(|r| r.token_id < 0) {
                for r in &results[end..] {
                    assert!(
                        r.token_id < 0,
                        "slot {slot} reported a token after finishing"
                    );
                    assert!(
                        r.text.is_none(),
                        "slot {slot} reported text after finishing"
                    );
                }
            }
        }
        for r in &self.finish().slots {
            assert!(r.token_id < 0 && r.text.is_none());
        }
    }
}

/// Runs `inputs` and records every step.
pub fn record(
    h: &mut Handle,
    inputs: &[Input],
    infer: &InferParams,
) -> (rkllm::RunOutcome, Recording) {
    let mut rec = Recording::default();
    let outcome = h
        .run(inputs, infer, |s| {
            rec.record(s);
            Flow::Continue
        })
        .expect("run");
    (outcome, rec)
}

/// The conformance tests, generated once per ABI family.
#[macro_export]
macro_rules! conformance_suite {
    ($family:expr) => {
        const FAMILY: rkllm::AbiFamily = $family;

        #[test]
        fn batches_of_1_4_8_match_single_runs() {
            let _g = serial();
            let prompts = [
                "What is the capital of France?",
                "Name three colours.",
                "Count from one to five.",
                "What is two plus two?",
                "Say hello in Spanish.",
                "What animal says moo?",
                "Name a planet.",
                "What is water made of?",
            ];
            let max_new = 12;
            let mut single = Vec::new();
            let mut h = model_handle(FAMILY, 1, max_new);
            for p in &prompts {
                let (outcome, rec) = record(&mut h, &[Input::prompt(chatml(p))], &InferParams::default());
                assert_eq!(outcome, RunOutcome::Finished);
                rec.assert_well_formed(1);
                assert!(!rec.text(0).is_empty(), "no text for {p}");
                single.push(rec.text(0));
            }
            h.destroy().unwrap();
            for n in [4usize, 8] {
                let mut h = model_handle(FAMILY, n as u8, max_new);
                let inputs: Vec<Input> = prompts[..n].iter().map(|p| Input::prompt(chatml(p))).collect();
                let (outcome, rec) = record(&mut h, &inputs, &InferParams::default());
                assert_eq!(outcome, RunOutcome::Finished);
                rec.assert_well_formed(n);
                for i in 0..n {
                    assert_eq!(rec.text(i), single[i], "n_batch {n}, slot {i}: batched greedy output differs from batch 1");
                }
                // All slots' callbacks are delivered together, on one thread that is not ours.
                assert!(rec.steps.iter().all(|s| s.thread != std::thread::current().id()));
            }
            // Different prompts give different answers: slots are not mixed up.
            assert!(single.iter().collect::<std::collections::HashSet<_>>().len() > 4);
        }

        #[test]
        fn a_slot_that_ends_early_reports_negative_tokens_until_the_run_ends() {
            let _g = serial();
            let mut h = model_handle(FAMILY, 2, 40);
            let inputs = [
                Input::prompt(chatml("What is the capital of France?")),
                Input::prompt(chatml("Write a long story about a dragon who loves books.")),
            ];
            let (_, rec) = record(&mut h, &inputs, &InferParams::default());
            rec.assert_well_formed(2);
            let short = rec.tokens(0);
            let long = rec.tokens(1);
            assert!(short < long, "slot 0 ({short} tokens) should end before slot 1 ({long})");
            assert_eq!(long, 40, "slot 1 runs to max_new_tokens");
            let finish = rec.finish();
            assert_eq!(rec.slot_perf(1).generate_tokens, 40);
            assert!(finish.slots[0].perf.generate_tokens < 40);
            assert_eq!(finish.slots[0].perf.generate_tokens, rec.slot_perf(0).generate_tokens);
            assert!(finish.slots[0].perf.prefill_tokens > 5);
            assert!(finish.slots[0].perf.memory_usage_mb > 10.0);
            assert!(finish.slots[0].perf.prefill_time_ms > 0.0);
        }

        #[test]
        fn characters_split_across_tokens_arrive_whole_after_waiting() {
            let _g = serial();
            let mut h = model_handle(FAMILY, 1, 48);
            let (_, rec) = record(
                &mut h,
                &[Input::prompt(chatml("Translate to Japanese: I like green tea."))],
                &InferParams::default(),
            );
            rec.assert_well_formed(1);
            let waiting = rec.count(StepState::Waiting);
            assert!(waiting > 0, "expected WAITING steps, text was {:?}", rec.text(0));
            for s in rec.steps.iter().filter(|s| s.state == StepState::Waiting) {
                assert!(s.slots[0].text.is_none(), "a WAITING step carries no text");
            }
            // rec.text() asserts the whole stream is valid UTF-8.
            assert!(rec.text(0).chars().any(|c| c.len_utf8() > 1));
        }

        #[test]
        fn abort_from_another_thread_stops_within_a_step() {
            let _g = serial();
            let mut h = model_handle(FAMILY, 2, 400);
            let abort = h.abort_handle();
            let inputs = [
                Input::prompt(chatml("Write a long story about a dragon.")),
                Input::prompt(chatml("Write a long poem about the sea.")),
            ];
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let aborter = std::thread::spawn(move || {
                rx.recv().unwrap();
                abort.abort().unwrap();
            });
            let mut steps_after_abort = 0;
            let mut signalled = false;
            let mut rec = Recording::default();
            let outcome = h
                .run(&inputs, &InferParams::default(), |s| {
                    rec.record(s);
                    if signalled {
                        steps_after_abort += 1;
                    } else if rec.steps.len() == 5 {
                        signalled = true;
                        tx.send(()).unwrap();
                        // Let the other thread's abort land before this step returns.
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Flow::Continue
                })
                .unwrap();
            aborter.join().unwrap();
            assert_eq!(outcome, RunOutcome::Aborted);
            assert!(rec.tokens(0) < 20, "the run went on after abort");
            assert!(steps_after_abort <= 2, "{steps_after_abort} steps after abort");
            assert_eq!(rec.count(StepState::Finish), 1);
            assert!(!h.is_running());
            // The handle takes new work at once.
            let (outcome, rec) = record(&mut h, &[Input::prompt(chatml("Hi"))], &InferParams::default());
            assert_eq!(outcome, RunOutcome::Finished);
            assert!(!rec.text(0).is_empty());
            h.destroy().unwrap();
        }

        #[test]
        fn keep_history_continues_the_conversation() {
            let _g = serial();
            let mut h = model_handle(FAMILY, 1, 16);
            let keep = InferParams { keep_history: true, ..Default::default() };
            let (_, r1) = record(&mut h, &[Input::prompt(chatml("My name is Ana."))], &keep);
            let p1 = r1.finish().slots[0].perf;
            let kv1 = h.kv_cache_sizes().unwrap()[0];
            assert_eq!(kv1, p1.prefill_tokens + p1.generate_tokens, "prompt and reply stay in the cache");
            let (_, r2) = record(&mut h, &[Input::prompt(format!("\n{}", chatml("What is my name?")))], &keep);
            let p2 = r2.finish().slots[0].perf;
            let kv2 = h.kv_cache_sizes().unwrap()[0];
            assert_eq!(kv2, kv1 + p2.prefill_tokens + p2.generate_tokens, "the second turn appends");
            // Without keep_history the run starts fresh and leaves nothing behind.
            let (_, r3) = record(&mut h, &[Input::prompt(chatml("What is my name?"))], &InferParams::default());
            assert!(!r3.text(0).is_empty());
            assert_eq!(h.kv_cache_sizes().unwrap()[0], 0);
            // clear_kv_cache empties a kept history.
            record(&mut h, &[Input::prompt(chatml("Hello"))], &keep);
            assert!(h.kv_cache_sizes().unwrap()[0] > 0);
            h.clear_kv_cache(false, None).unwrap();
            assert_eq!(h.kv_cache_sizes().unwrap()[0], 0);
        }

        #[test]
        fn kv_cache_ranges_are_cleared_per_slot() {
            let _g = serial();
            let mut h = model_handle(FAMILY, 2, 8);
            let keep = InferParams { keep_history: true, ..Default::default() };
            record(&mut h, &[Input::prompt(chatml("One")), Input::prompt(chatml("Two"))], &keep);
            let before = h.kv_cache_sizes().unwrap();
            assert!(before.iter().all(|&n| n > 5));
            h.clear_kv_cache(false, Some(&[(0, 5), (0, 0)])).unwrap();
            let after = h.kv_cache_sizes().unwrap();
            assert_eq!(after, vec![before[0] - 5, before[1]]);
        }

        #[test]
        fn prompt_cache_skips_the_shared_prefix_and_changes_nothing_else() {
            let _g = serial();
            let dir = tempdir();
            let cache = dir.join("prefix.cache");
            let system = "<|im_start|>system\nYou are a terse assistant who answers in one short sentence about geography and nothing else.<|im_end|>\n";
            let p1 = format!("{system}{}", chatml("What is the capital of Italy?"));
            let p2 = format!("{system}{}", chatml("What is the capital of Spain?"));
            let mut h = model_handle(FAMILY, 1, 10);
            let (_, plain) = record(&mut h, &[Input::prompt(p2.clone())], &InferParams::default());
            let full = plain.finish().slots[0].perf.prefill_tokens;
            let save = InferParams {
                prompt_cache: Some(rkllm::PromptCache { path: cache.clone(), save: true }),
                ..Default::default()
            };
            record(&mut h, &[Input::prompt(p1)], &save);
            assert!(cache.is_file(), "the prompt cache was saved");
            h.load_prompt_cache(&cache).unwrap();
            let (_, cached) = record(&mut h, &[Input::prompt(p2.clone())], &InferParams::default());
            let reduced = cached.finish().slots[0].perf.prefill_tokens;
            assert!(reduced < full / 2, "prefilled {reduced} of {full} tokens with the cache loaded");
            assert_eq!(cached.text(0), plain.text(0), "the cache must not change the answer");
            h.release_prompt_cache().unwrap();
            // Cleared, so the slot's own leftovers cannot stand in for the released cache.
            h.clear_kv_cache(false, None).unwrap();
            let (_, again) = record(&mut h, &[Input::prompt(p2)], &InferParams::default());
            assert_eq!(again.finish().slots[0].perf.prefill_tokens, full);
            assert!(h.load_prompt_cache(&dir.join("missing.cache")).is_err());
        }

        #[test]
        fn each_slot_reuses_the_prefix_its_last_run_left_and_answers_the_same() {
            let _g = serial();
            let system = "<|im_start|>system\nYou are a terse assistant who answers in one short sentence about geography and nothing else.<|im_end|>\n";
            let ask = |q: &str| Input::prompt(format!("{system}{}", chatml(q)));
            let (italy, spain) = ("What is the capital of Italy?", "What is the capital of Spain?");
            // Cold answers, each from a fresh handle.
            let cold = |q: &str| {
                let mut h = model_handle(FAMILY, 1, 10);
                let (_, r) = record(&mut h, &[ask(q)], &InferParams::default());
                (r.text(0), r.finish().slots[0].perf.prefill_tokens)
            };
            let ((spain_text, full), (italy_text, _)) = (cold(spain), cold(italy));

            let mut h = model_handle(FAMILY, 2, 10);
            record(&mut h, &[ask(italy), ask(spain)], &InferParams::default());
            assert_eq!(h.kv_cache_sizes().unwrap(), vec![0, 0], "no history is kept");
            // Swapped: each slot shares only the system message with its last prompt.
            let (_, warm) = record(&mut h, &[ask(spain), ask(italy)], &InferParams::default());
            let perf = (0..2).map(|i| warm.slot_perf(i).prefill_tokens).collect::<Vec<_>>();
            assert!(perf.iter().all(|&p| p > 1 && p < full / 2), "prefilled {perf:?} of {full}");
            assert_eq!((warm.text(0), warm.text(1)), (spain_text.clone(), italy_text));
            // The same prompt again prefills only its last token.
            let (_, same) = record(&mut h, &[ask(spain), Input::tokens(vec![])], &InferParams::default());
            assert_eq!(same.finish().slots[0].perf.prefill_tokens, 1);
            assert_eq!(same.text(0), spain_text);
            // clear_kv_cache forgets it.
            h.clear_kv_cache(false, None).unwrap();
            let (_, cleared) = record(&mut h, &[ask(spain), Input::tokens(vec![])], &InferParams::default());
            assert_eq!(cleared.finish().slots[0].perf.prefill_tokens, full);
        }

        #[test]
        fn prompts_longer_than_the_context_fail_cleanly_and_generation_stops_at_its_end() {
            let _g = serial();
            let rt = runtime(FAMILY);
            let mut p = params(&rt, model_path(), 2, 500);
            p.max_context_len = 64;
            let mut h = rt.init(&p).unwrap();
            h.set_chat_template("", "", "").unwrap();
            let long = "word ".repeat(100);
            let err = h.run(&[Input::prompt(long.clone()), Input::prompt("Hi".to_string())], &InferParams::default(), |_| Flow::Continue);
            assert!(matches!(err, Ok(RunOutcome::Failed) | Err(_)), "got {err:?}");
            // The handle still works, and a reply stops where the context ends.
            let (outcome, rec) = record(&mut h, &[Input::prompt(chatml("Tell me a very long story.")), Input::prompt(chatml("Hi"))], &InferParams::default());
            assert_eq!(outcome, RunOutcome::Finished);
            let perf = rec.finish().slots[0].perf;
            assert!(perf.prefill_tokens + perf.generate_tokens <= 64);
            assert!(perf.generate_tokens > 10);
        }

        #[test]
        fn is_running_follows_the_family_convention_during_an_async_run() {
            let _g = serial();
            let mut h = model_handle(FAMILY, 1, 64);
            assert!(!h.is_running());
            let (tx, rx) = std::sync::mpsc::channel();
            let caller = std::thread::current().id();
            h.run_async(&[Input::prompt(chatml("Write a poem."))], &InferParams::default(), move |s| {
                let _ = tx.send((s.state(), std::thread::current().id()));
                Flow::Continue
            })
            .unwrap();
            let (_, thread) = rx.recv().unwrap();
            assert_ne!(thread, caller, "async callbacks arrive on the runtime's thread");
            assert!(h.is_running());
            // A second run while one is in progress is refused, not queued or crashed.
            assert!(h.run(&[Input::prompt("x".to_string())], &InferParams::default(), |_| Flow::Continue).is_err());
            let mut finish = 0;
            while let Ok((state, _)) = rx.recv() {
                if state == StepState::Finish {
                    finish += 1;
                    break;
                }
            }
            assert_eq!(finish, 1);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while h.is_running() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(!h.is_running());
            raw_is_running_convention(&h, FAMILY);
        }

        #[test]
        fn the_model_template_wraps_prompts_unless_told_to_pass_them_verbatim() {
            let _g = serial();
            let rt = runtime(FAMILY);
            let mut h = rt.init(&params(&rt, model_path(), 1, 4)).unwrap();
            let (_, templated) = record(&mut h, &[Input::prompt("Hello")], &InferParams::default());
            h.set_chat_template("", "", "").unwrap();
            let (_, verbatim) = record(&mut h, &[Input::prompt("Hello")], &InferParams::default());
            let (t, v) = (templated.finish().slots[0].perf.prefill_tokens, verbatim.finish().slots[0].perf.prefill_tokens);
            assert!(v <= 2, "verbatim 'Hello' is one or two tokens, got {v}");
            // The GGUF's template adds the default system message and the turn markers.
            assert!(t > v + 20, "templated {t} vs verbatim {v}");
            h.set_chat_template("<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n").unwrap();
            let (_, custom) = record(&mut h, &[Input::prompt("Hello")], &InferParams::default());
            let c = custom.finish().slots[0].perf.prefill_tokens;
            assert!(c > v && c < t, "custom template {c} between {v} and {t}");
        }

        #[test]
        fn token_input_and_idle_slots() {
            let _g = serial();
            let mut h = model_handle(FAMILY, 2, 6);
            // 1 = <|im_start|>, then "user", newline ... tokens of a short prompt.
            let (outcome, rec) = record(&mut h, &[Input::tokens(vec![1, 4093, 198, 19556, 2, 198, 1, 520, 9531, 198]), Input::tokens(vec![])], &InferParams::default());
            assert_eq!(outcome, RunOutcome::Finished);
            rec.assert_well_formed(2);
            assert!(rec.tokens(0) > 0);
            assert_eq!(rec.tokens(1), 0, "an empty slot is idle");
            assert_eq!(rec.slot_perf(1).prefill_tokens, 0);
            let bad = h.run(&[Input::tokens(vec![1, 999_999])], &InferParams::default(), |_| Flow::Continue);
            assert!(matches!(bad, Ok(RunOutcome::Failed) | Err(_)), "out-of-vocabulary token: {bad:?}");
        }

        #[test]
        fn per_run_sampling_and_max_new_tokens_are_v1_3_only() {
            let _g = serial();
            let rt = runtime(FAMILY);
            let mut p = params(&rt, model_path(), 1, 24);
            p.sampling.temperature = 1.5;
            p.sampling.top_k = 0;
            let mut h = rt.init(&p).unwrap();
            h.set_chat_template("", "", "").unwrap();
            let prompt = [Input::prompt(chatml("Name a fruit."))];
            let greedy = InferParams { sampling: Some(rkllm::Sampling::greedy()), ..Default::default() };
            let short = InferParams { max_new_tokens: Some(3), ..Default::default() };
            match FAMILY {
                rkllm::AbiFamily::V1_3 => {
                    let mut g = model_handle(FAMILY, 1, 24);
                    let (_, reference) = record(&mut g, &prompt, &InferParams::default());
                    let (_, a) = record(&mut h, &prompt, &greedy);
                    let (_, b) = record(&mut h, &prompt, &greedy);
                    assert_eq!(a.text(0), reference.text(0), "a greedy override equals greedy init");
                    assert_eq!(b.text(0), reference.text(0));
                    let (_, r) = record(&mut h, &prompt, &short);
                    assert_eq!(r.tokens(0), 3);
                    assert_eq!(r.finish().slots[0].perf.generate_tokens, 3);
                }
                rkllm::AbiFamily::V1_2 => {
                    assert!(matches!(h.run(&prompt, &greedy, |_| Flow::Continue), Err(rkllm::Error::Unsupported { .. })));
                    assert!(matches!(h.run(&prompt, &short, |_| Flow::Continue), Err(rkllm::Error::Unsupported { .. })));
                }
            }
        }

        #[test]
        fn ignore_eos_token_generates_to_the_limit() {
            let _g = serial();
            let rt = runtime(FAMILY);
            let mut p = params(&rt, model_path(), 1, 30);
            p.ignore_eos_token = true;
            let mut h = rt.init(&p).unwrap();
            h.set_chat_template("", "", "").unwrap();
            let (_, rec) = record(&mut h, &[Input::prompt(chatml("What is the capital of France?"))], &InferParams::default());
            match FAMILY {
                // The answer ends after about 8 tokens; ignoring EOS runs on to 30.
                rkllm::AbiFamily::V1_3 => assert_eq!(rec.tokens(0), 30),
                // v1.2 has no ignore_eos_token field: EOS still ends the reply.
                rkllm::AbiFamily::V1_2 => assert!(rec.tokens(0) < 30),
            }
        }

        #[test]
        fn bad_input_is_refused_without_crashing() {
            let _g = serial();
            raw_bad_input(FAMILY);
        }

        #[test]
        fn the_library_says_its_abi_family_and_refuses_the_other() {
            let rt = runtime(FAMILY);
            let other = match FAMILY {
                rkllm::AbiFamily::V1_2 => rkllm::AbiFamily::V1_3,
                rkllm::AbiFamily::V1_3 => rkllm::AbiFamily::V1_2,
            };
            match rkllm::Runtime::load(rt.path(), other) {
                Err(e @ rkllm::LoadError::AbiMismatch { requested, library, .. }) => {
                    assert_eq!((requested, library), (other, FAMILY));
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("--runtime-abi {FAMILY}")), "{msg}");
                    assert!(msg.contains("runtime.abi"), "{msg}");
                }
                other => panic!("expected AbiMismatch, got {:?}", other.map(|_| ())),
            }
            assert!(rkllm::Runtime::load(rt.path(), FAMILY).is_ok());
            assert_eq!(raw_abi_family(), FAMILY.code());
        }

        #[test]
        fn the_other_familys_layouts_fail_init_with_a_hint_naming_this_family() {
            // As with Rockchip's library, which cannot say: the wrong layouts get past
            // loading, and the symptoms of the failed init name the right family.
            let rt = runtime(FAMILY);
            let other = match FAMILY {
                rkllm::AbiFamily::V1_2 => rkllm::AbiFamily::V1_3,
                rkllm::AbiFamily::V1_3 => rkllm::AbiFamily::V1_2,
            };
            let wrong = rkllm::Runtime::load_unverified(rt.path(), other).unwrap();
            assert!(wrong.implausible_defaults().is_some());
            assert_eq!(wrong.other_family_fits(), Some(FAMILY));
            let mut p = rkllm::InitParams::default();
            p.model_path = model_path();
            match wrong.init(&p) {
                Err(e @ rkllm::Error::InitFailed { hint: Some(h), .. }) => {
                    assert_eq!(h, FAMILY);
                    let msg = e.to_string();
                    let want = format!("this looks like a v{FAMILY} library: set runtime.abi = {FAMILY}");
                    assert!(msg.contains(&want), "{msg}");
                }
                other => panic!("expected InitFailed with a hint, got {:?}", other.map(|_| ())),
            }
            assert_eq!(rt.other_family_fits(), None, "the right family gets no hint");
        }

        #[test]
        fn create_default_param_returns_the_sdk_defaults_in_the_family_layout() {
            // A struct of the wrong family would put these fields at other offsets.
            let p = runtime(FAMILY).default_params();
            assert_eq!(p.sampling, rkllm::Sampling::default());
            assert_eq!((p.n_batch, p.enabled_cpus_num, p.enabled_cpus_mask), (1, 4, 0));
            assert_eq!((p.max_context_len, p.max_new_tokens), (4096, -1));
            assert!(p.skip_special_token && !p.ignore_eos_token);
        }

        #[test]
        fn loading_errors_are_typed_and_clear() {
            let rt = runtime(FAMILY);
            let dir = tempdir();
            // Model files the runtime must refuse.
            let missing = dir.join("missing.gguf");
            let broken = dir.join("broken.gguf");
            std::fs::write(&broken, b"GGUF this is not a model").unwrap();
            let not_gguf = dir.join("text.gguf");
            std::fs::write(&not_gguf, b"hello").unwrap();
            let npu = dir.join("model.rkllm");
            std::fs::write(&npu, b"RKLLM").unwrap();
            let bad_profile = dir.join("bad.toml");
            std::fs::write(&bad_profile, "[timing]\nno_such_field = 1\n").unwrap();
            for path in [missing, broken, not_gguf, npu, bad_profile] {
                let mut p = rt.default_params();
                p.model_path = path.clone();
                match rt.init(&p) {
                    Err(rkllm::Error::InitFailed { model, .. }) => assert!(model.contains(path.file_name().unwrap().to_str().unwrap())),
                    other => panic!("{}: expected InitFailed, got {:?}", path.display(), other.map(|_| ())),
                }
            }
            let mut p = rt.default_params();
            p.model_path = model_path();
            p.n_batch = 9;
            assert!(matches!(rt.init(&p), Err(rkllm::Error::InvalidArgument(_))));
        }
    };
}

pub fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "rkllm-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[allow(unused_imports)]
pub use raw::{raw_abi_family, raw_bad_input, raw_is_running_convention};

/// Calls into the library's C symbols directly, to check what the safe wrapper never sends.
mod raw {
    use rkllm::abi::{self, input_type, v1_2, v1_3, LLMHandle};
    use rkllm::AbiFamily;
    use std::ffi::{c_int, c_void};
    use std::ptr;

    fn lib() -> libloading::Library {
        // SAFETY: the library under test; already loaded by the suite, so no new initialisers.
        unsafe { libloading::Library::new(super::lib_path()).unwrap() }
    }

    fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> T {
        // SAFETY: T is the abi fn type matching rkllm.h for that symbol.
        unsafe { *lib.get::<T>(name.as_bytes()).unwrap() }
    }

    /// What `rkllm_cpu_abi_family` returns.
    pub fn raw_abi_family() -> c_int {
        let lib = lib();
        let f: unsafe extern "C" fn() -> c_int = sym(&lib, "rkllm_cpu_abi_family");
        // SAFETY: `int rkllm_cpu_abi_family(void)`, exported by the library under test.
        unsafe { f() }
    }

    /// `rkllm_is_running` of an idle handle: 1 in v1.2 (non-zero means idle), 0 in v1.3.
    pub fn raw_is_running_convention(h: &rkllm::Handle, family: AbiFamily) {
        let _ = h;
        let lib = lib();
        let is_running: abi::IsRunningFn = sym(&lib, "rkllm_is_running");
        let init_and_check = |expected_idle: c_int| {
            let mut handle: LLMHandle = ptr::null_mut();
            let code = init_synthetic(&lib, family, &mut handle, 1);
            assert_eq!(code, 0);
            // SAFETY: a live handle from rkllm_init.
            assert_eq!(unsafe { is_running(handle) }, expected_idle);
            let destroy: abi::DestroyFn = sym(&lib, "rkllm_destroy");
            // SAFETY: as above; not used afterwards.
            assert_eq!(unsafe { destroy(handle) }, 0);
        };
        match family {
            AbiFamily::V1_2 => init_and_check(1),
            AbiFamily::V1_3 => init_and_check(0),
        }
    }

    fn zero_delay_profile() -> std::path::PathBuf {
        super::workspace().join("models/synthetic/zero-delay.toml")
    }

    fn init_synthetic(
        lib: &libloading::Library,
        family: AbiFamily,
        handle: *mut LLMHandle,
        n_batch: u8,
    ) -> c_int {
        let path = std::ffi::CString::new(zero_delay_profile().to_str().unwrap()).unwrap();
        let mut p = rkllm::InitParams {
            n_batch,
            ..Default::default()
        };
        p.model_path = zero_delay_profile();
        match family {
            AbiFamily::V1_2 => {
                let init: v1_2::InitFn = sym(lib, "rkllm_init");
                let mut c = p.to_v1_2(&path);
                // SAFETY: valid pointers for the call; no callback.
                unsafe { init(handle, &mut c, None) }
            }
            AbiFamily::V1_3 => {
                let init: v1_3::InitFn = sym(lib, "rkllm_init");
                let mut c = p.to_v1_3(&path);
                // SAFETY: valid pointers; a NULL callback struct means no callbacks.
                unsafe { init(handle, &mut c, ptr::null_mut()) }
            }
        }
    }

    /// Each call must return -1 (and print why), never crash or abort the process.
    pub fn raw_bad_input(family: AbiFamily) {
        let lib = lib();
        let mut handle: LLMHandle = ptr::null_mut();
        assert_eq!(
            init_synthetic(&lib, family, &mut handle, 0),
            -1,
            "n_batch 0"
        );
        assert_eq!(
            init_synthetic(&lib, family, &mut handle, 9),
            -1,
            "n_batch 9"
        );
        assert_eq!(
            init_synthetic(&lib, family, ptr::null_mut(), 1),
            -1,
            "NULL handle pointer"
        );
        let init13: v1_3::InitFn = sym(&lib, "rkllm_init");
        // SAFETY: the library must reject NULL params; the pointers are otherwise valid.
        assert_eq!(
            unsafe { init13(&mut handle, ptr::null_mut(), ptr::null_mut()) },
            -1,
            "NULL param"
        );

        assert_eq!(init_synthetic(&lib, family, &mut handle, 2), 0);
        let run: v1_3::RunFn = sym(&lib, "rkllm_run");
        let null = ptr::null_mut::<c_void>();
        // SAFETY: NULL input must be refused.
        assert_eq!(
            unsafe { run(handle, ptr::null_mut(), ptr::null_mut(), null) },
            -1,
            "NULL input"
        );

        // Inputs of the family's layout with a bad input_type / NULL prompt / EMBED.
        let run_with = |kind: c_int, prompt: *const std::ffi::c_char| -> c_int {
            match family {
                AbiFamily::V1_2 => {
                    let input = v1_2::RKLLMInput {
                        role: ptr::null(),
                        enable_thinking: false,
                        input_type: kind,
                        input: v1_2::RKLLMInputUnion {
                            prompt_input: prompt,
                        },
                    };
                    let mut inputs = [input, input];
                    let run: v1_2::RunFn = sym(&lib, "rkllm_run");
                    // SAFETY: two inputs for n_batch 2, valid for the call.
                    unsafe { run(handle, inputs.as_mut_ptr(), ptr::null_mut(), null) }
                }
                AbiFamily::V1_3 => {
                    let mut input = v1_3::RKLLMInput {
                        role: ptr::null(),
                        enable_thinking: false,
                        input_type: kind,
                        input: v1_3::RKLLMInputUnion {
                            multimodal_input: v1_3::RKLLMMultiModalInput { opaque: [0; 18] },
                        },
                    };
                    input.input.prompt_input = prompt;
                    let mut inputs = [input, input];
                    // SAFETY: two inputs for n_batch 2, valid for the call.
                    unsafe { run(handle, inputs.as_mut_ptr(), ptr::null_mut(), null) }
                }
            }
        };
        let hello = c"hello".as_ptr();
        assert_eq!(run_with(7, hello), -1, "unknown input type");
        assert_eq!(run_with(input_type::PROMPT, ptr::null()), -1, "NULL prompt");
        assert_eq!(run_with(input_type::EMBED, hello), -1, "EMBED input");
        assert_eq!(
            run_with(input_type::MULTIMODAL, hello),
            -1,
            "MULTIMODAL input"
        );
        assert_eq!(
            run_with(input_type::PROMPT, hello),
            0,
            "a good run still works"
        );

        let get_kv: abi::GetKvCacheSizeFn = sym(&lib, "rkllm_get_kv_cache_size");
        // SAFETY: NULL sizes must be refused.
        assert_eq!(unsafe { get_kv(handle, ptr::null_mut()) }, -1, "NULL sizes");
        let clear: abi::ClearKvCacheFn = sym(&lib, "rkllm_clear_kv_cache");
        let mut start = [0 as c_int; 2];
        // SAFETY: one range array without the other must be refused.
        assert_eq!(
            unsafe { clear(handle, 0, start.as_mut_ptr(), ptr::null_mut()) },
            -1
        );

        let destroy: abi::DestroyFn = sym(&lib, "rkllm_destroy");
        let abort: abi::AbortFn = sym(&lib, "rkllm_abort");
        // SAFETY: a live handle, destroyed once.
        assert_eq!(unsafe { destroy(handle) }, 0);
        // A destroyed or forged handle is an error, not a crash.
        for h in [handle, 0xdead_beef as LLMHandle, ptr::null_mut()] {
            // SAFETY: the library must reject unknown handles without dereferencing them.
            unsafe {
                assert_eq!(destroy(h), -1);
                assert_eq!(abort(h), -1);
                assert_eq!(run(h, ptr::null_mut(), ptr::null_mut(), null), -1);
            }
        }
    }
}
