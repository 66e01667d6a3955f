//! The probe's checks, each run in a child process (`rkllm-run probe-check`) that loads the
//! library, does one thing with it, and prints one result line: a check that crashes or
//! hangs the library takes only its own process down.

use clap::Args;
use rkllm::probe_report::{CheckResult, Status};
use rkllm::{
    AbiFamily, Flow, Handle, InferParams, InitParams, Input, Memory, PromptCache, RunOutcome,
    Runtime, Sampling, StepState,
};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The prefix of the one stdout line that carries a check's result: the library may print
/// on stdout too.
pub const RESULT_PREFIX: &str = "PROBE-RESULT ";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Family,
    NBatch,
    PauseResume,
    AbortPrefill,
    AbortDecode,
    KeepHistory,
    ClearKvSlot,
    PromptCache,
    Sampling,
    BatchCurve,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Family => "family",
            Check::NBatch => "n_batch",
            Check::PauseResume => "pause_resume",
            Check::AbortPrefill => "abort_prefill",
            Check::AbortDecode => "abort_decode",
            Check::KeepHistory => "keep_history",
            Check::ClearKvSlot => "clear_kv_slot",
            Check::PromptCache => "prompt_cache",
            Check::Sampling => "sampling",
            Check::BatchCurve => "batch_curve",
        }
    }

    /// The command-line spelling (clap's value name).
    pub fn arg(self) -> &'static str {
        match self {
            Check::Family => "family",
            Check::NBatch => "n-batch",
            Check::PauseResume => "pause-resume",
            Check::AbortPrefill => "abort-prefill",
            Check::AbortDecode => "abort-decode",
            Check::KeepHistory => "keep-history",
            Check::ClearKvSlot => "clear-kv-slot",
            Check::PromptCache => "prompt-cache",
            Check::Sampling => "sampling",
            Check::BatchCurve => "batch-curve",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[arg(long)]
    pub lib: PathBuf,
    #[arg(long)]
    pub abi: AbiFamily,
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum)]
    pub check: Check,
    #[arg(long, default_value_t = 1)]
    pub n_batch: u8,
    /// Give the run one input and leave the other slots empty.
    #[arg(long)]
    pub empty_slots: bool,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: i32,
    #[arg(long, default_value_t = 1024)]
    pub context_len: i32,
    /// Where the check may write files (the prompt cache).
    #[arg(long)]
    pub work_dir: PathBuf,
}

/// What a check found, before the process's memory and time are added.
struct Found {
    status: Status,
    detail: String,
    figures: Map<String, Value>,
}

impl Found {
    fn new(status: Status, detail: impl Into<String>) -> Found {
        Found {
            status,
            detail: detail.into(),
            figures: Map::new(),
        }
    }

    fn ok(detail: impl Into<String>) -> Found {
        Found::new(Status::Ok, detail)
    }

    fn failed(detail: impl Into<String>) -> Found {
        Found::new(Status::Failed, detail)
    }

    fn with(mut self, key: &str, v: impl Into<Value>) -> Found {
        self.figures.insert(key.to_string(), v.into());
        self
    }
}

/// The child's entry point: runs the check and prints its result line.
pub fn run_check(a: CheckArgs) {
    let started = Instant::now();
    let found = match check(&a) {
        Ok(f) => f,
        Err(e) => Found::failed(e),
    };
    let result = CheckResult {
        check: a.check.name().to_string(),
        arg: String::new(),
        status: found.status,
        detail: found.detail,
        figures: found.figures,
        vm_hwm_mb: Memory::of_pid(std::process::id())
            .map(|m| (m.hwm as f64 / (1 << 20) as f64 * 10.0).round() / 10.0),
        elapsed_ms: ms(started.elapsed()),
    };
    println!(
        "{RESULT_PREFIX}{}",
        serde_json::to_string(&result).expect("a result serialises")
    );
}

fn check(a: &CheckArgs) -> Result<Found, String> {
    match a.check {
        Check::Family => family(a),
        Check::NBatch => n_batch(a),
        Check::PauseResume => pause_resume(a),
        Check::AbortPrefill => abort(a, true),
        Check::AbortDecode => abort(a, false),
        Check::KeepHistory => keep_history(a),
        Check::ClearKvSlot => clear_kv_slot(a),
        Check::PromptCache => prompt_cache(a),
        Check::Sampling => sampling(a),
        Check::BatchCurve => batch_curve(a),
    }
}

/// The library in the family under test, whatever it says of itself: which family works is
/// what the probe is finding out.
fn load(a: &CheckArgs) -> Result<Runtime, String> {
    Runtime::load_unverified(&a.lib, a.abi).map_err(|e| e.to_string())
}

fn init(rt: &Runtime, a: &CheckArgs, n_batch: u8) -> Result<Handle, String> {
    // Defaults read in the wrong layout are nonsense; the SDK manual's then stand in, so
    // that init tests the family's layout and not garbage sampling values.
    let mut p = if rt.implausible_defaults().is_none() {
        rt.default_params()
    } else {
        InitParams::default()
    };
    p.model_path = a.model.clone();
    p.n_batch = n_batch;
    p.max_context_len = a.context_len;
    p.max_new_tokens = a.max_new_tokens;
    rt.init(&p)
        .map_err(|e| format!("rkllm_init with n_batch {n_batch}: {e}"))
}

fn open(a: &CheckArgs, n_batch: u8) -> Result<Handle, String> {
    init(&load(a)?, a, n_batch)
}

fn prompt(i: usize) -> Input {
    const TOPICS: [&str; 8] = [
        "the sea",
        "a lighthouse",
        "bread",
        "the moon",
        "a fox",
        "rain",
        "a clock",
        "snow",
    ];
    Input::prompt(format!(
        "Write a few sentences about {}.",
        TOPICS[i % TOPICS.len()]
    ))
}

fn prompts(n: usize) -> Vec<Input> {
    (0..n).map(prompt).collect()
}

/// What one run produced, per slot, and when.
struct Ran {
    outcome: RunOutcome,
    tokens: Vec<usize>,
    texts: Vec<String>,
    /// Each step that produced a token: when, and how many slots produced one.
    steps: Vec<(Instant, usize)>,
    ended: Instant,
    prefill_tokens: Vec<i32>,
}

impl Ran {
    fn total(&self) -> usize {
        self.tokens.iter().sum()
    }

    fn first_token(&self) -> Option<Instant> {
        self.steps.first().map(|s| s.0)
    }
}

/// Runs `inputs`, counting tokens per slot; `control` sees the tokens so far after each step
/// and says whether to go on.
fn run(
    h: &mut Handle,
    inputs: &[Input],
    infer: &InferParams,
    mut control: impl FnMut(usize) -> Flow + Send,
) -> Result<Ran, String> {
    let n = h.n_batch();
    let mut tokens = vec![0usize; n];
    let mut texts = vec![Vec::<u8>::new(); n];
    let mut steps = Vec::new();
    let mut prefill_tokens = vec![0; n];
    let outcome = h
        .run(inputs, infer, |step| {
            if matches!(step.state(), StepState::Finish | StepState::Error) {
                return Flow::Continue;
            }
            let mut produced = 0;
            for (i, s) in step.slots().enumerate() {
                prefill_tokens[i] = s.perf.prefill_tokens;
                if !s.finished() {
                    tokens[i] += 1;
                    produced += 1;
                }
                if let Some(t) = s.text {
                    texts[i].extend_from_slice(t);
                }
            }
            if produced > 0 {
                steps.push((Instant::now(), produced));
            }
            control(tokens.iter().sum())
        })
        .map_err(|e| format!("rkllm_run: {e}"))?;
    Ok(Ran {
        outcome,
        tokens,
        texts: texts
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect(),
        steps,
        ended: Instant::now(),
        prefill_tokens,
    })
}

/// Steps a runtime may still take after being asked to stop (the step in flight and a
/// little more) before the probe calls the stop ignored.
const MAX_OVERRUN_STEPS: usize = 3;

fn go_on(_: usize) -> Flow {
    Flow::Continue
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Whether this family's layouts initialise the library and run one prompt to FINISH.
fn family(a: &CheckArgs) -> Result<Found, String> {
    let rt = load(a)?;
    let exported = rt.reported_family().map(|r| match r {
        Ok(f) => f.to_string(),
        Err(code) => format!("unknown code {code}"),
    });
    let defaults = rt.implausible_defaults();
    let mut h = match init(&rt, a, 1) {
        Ok(h) => h,
        Err(e) => {
            let mut f = Found::failed(e);
            if let Some(why) = &defaults {
                f = f.with("defaults_in_this_layout", format!("nonsense: {why}"));
            }
            return Ok(with_exported(f, exported));
        }
    };
    let ran = run(&mut h, &[prompt(0)], &InferParams::default(), go_on)?;
    let f = if ran.outcome == RunOutcome::Finished && ran.total() > 0 {
        Found::ok(format!(
            "initialised and ran {} tokens to FINISH",
            ran.total()
        ))
    } else {
        Found::failed(format!(
            "the run ended {:?} after {} tokens",
            ran.outcome,
            ran.total()
        ))
    };
    let f = f.with(
        "defaults_in_this_layout",
        defaults.map_or("plausible".to_string(), |w| format!("nonsense: {w}")),
    );
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    Ok(with_exported(f, exported))
}

fn with_exported(f: Found, exported: Option<String>) -> Found {
    match exported {
        Some(e) => f.with("exported_family", e),
        None => f,
    }
}

/// `n_batch` slots, each with a prompt (or one prompt and the rest empty): every slot given
/// a prompt must produce tokens, and the run must reach FINISH.
fn n_batch(a: &CheckArgs) -> Result<Found, String> {
    let t0 = Instant::now();
    let mut h = open(a, a.n_batch)?;
    let init_ms = ms(t0.elapsed());
    let given = if a.empty_slots { 1 } else { a.n_batch as usize };
    let t1 = Instant::now();
    let ran = run(&mut h, &prompts(given), &InferParams::default(), go_on)?;
    let run_ms = ms(t1.elapsed());
    let silent = ran.tokens[..given].iter().filter(|&&t| t == 0).count();
    let f = if ran.outcome != RunOutcome::Finished {
        Found::failed(format!("the run ended {:?}", ran.outcome))
    } else if silent > 0 {
        Found::failed(format!("{silent} of {given} slots produced no token"))
    } else {
        Found::ok(format!(
            "{given} prompt{} in {} slots: {} tokens, FINISH",
            if given == 1 { "" } else { "s" },
            a.n_batch,
            ran.total()
        ))
    };
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    Ok(f.with("init_ms", init_ms)
        .with("run_ms", run_ms)
        .with("tokens", ran.tokens.clone())
        .with(
            "empty_slot_tokens",
            ran.tokens[given..].iter().sum::<usize>(),
        ))
}

/// The callback returns 1 (pause) after two tokens; the run must stop, and a new run on the
/// same handle must work.
fn pause_resume(a: &CheckArgs) -> Result<Found, String> {
    let mut h = open(a, 1)?;
    let paused_at = Arc::new(Mutex::new(None::<(Instant, usize)>));
    let p = paused_at.clone();
    let first = run(&mut h, &[prompt(0)], &InferParams::default(), move |n| {
        if n >= 2 {
            let mut g = p.lock().unwrap();
            if g.is_none() {
                *g = Some((Instant::now(), n));
            }
            Flow::Pause
        } else {
            Flow::Continue
        }
    })?;
    let Some((at, n_at)) = *paused_at.lock().unwrap() else {
        return Ok(Found::failed(format!(
            "the run ended {:?} before its second token",
            first.outcome
        )));
    };
    let f = Found::new(Status::Ok, "")
        .with("stop_ms", ms(first.ended - at))
        .with("tokens_after_pause", first.total() - n_at);
    let overrun = first.steps.iter().filter(|s| s.0 > at).count();
    if overrun > MAX_OVERRUN_STEPS {
        return Ok(Found {
            status: Status::Failed,
            detail: format!(
                "the callback returned 1 and the run went on for {overrun} steps ({:?})",
                first.outcome
            ),
            ..f
        });
    }
    let second = run(&mut h, &[prompt(1)], &InferParams::default(), go_on)?;
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    Ok(
        if second.outcome == RunOutcome::Finished && second.total() > 0 {
            Found {
                detail: format!(
                    "stopped ({:?}) after the callback returned 1, then a new run ran {} tokens",
                    first.outcome,
                    second.total()
                ),
                ..f
            }
        } else {
            Found {
                status: Status::Failed,
                detail: format!(
                    "paused, but the next run ended {:?} after {} tokens",
                    second.outcome,
                    second.total()
                ),
                ..f
            }
        },
    )
}

/// `rkllm_abort` from another thread, during the prefill of a long prompt or after the first
/// token; how long until `rkllm_run` returns, and whether the handle runs again after.
fn abort(a: &CheckArgs, in_prefill: bool) -> Result<Found, String> {
    let mut h = open(a, 1)?;
    let stopper = h.abort_handle();
    let (first_tx, first_rx) = mpsc::channel::<()>();
    let aborted_at = Arc::new(Mutex::new(None::<Instant>));
    let at = aborted_at.clone();
    let long = Input::prompt(
        "Summarise this text. ".to_string()
            + &"The quick brown fox jumps over the lazy dog again and again. ".repeat(40),
    );
    let input = if in_prefill { long } else { prompt(0) };
    let aborter = std::thread::spawn(move || {
        if in_prefill {
            // Long enough for the run to have started, short of the prompt's prefill on
            // any board; if the first token comes first, the result says so.
            std::thread::sleep(Duration::from_millis(20));
        } else if first_rx.recv().is_err() {
            return Ok(());
        }
        *at.lock().unwrap() = Some(Instant::now());
        stopper.abort()
    });
    let first_tx = Mutex::new(Some(first_tx));
    let ran = run(&mut h, &[input], &InferParams::default(), move |n| {
        if n >= 1 {
            if let Some(tx) = first_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
        Flow::Continue
    })?;
    let abort_result = aborter.join().map_err(|_| "the abort thread panicked")?;
    if let Err(e) = abort_result {
        return Ok(Found::failed(format!("rkllm_abort: {e}")));
    }
    let Some(at) = *aborted_at.lock().unwrap() else {
        return Ok(Found::failed(format!(
            "the run ended {:?} before the abort",
            ran.outcome
        )));
    };
    let tokens_after = ran
        .steps
        .iter()
        .filter(|s| s.0 > at)
        .map(|s| s.1)
        .sum::<usize>();
    let mut f = Found::new(Status::Ok, "")
        .with("stop_ms", ms(ran.ended.saturating_duration_since(at)))
        .with("tokens_after_abort", tokens_after)
        .with("outcome", format!("{:?}", ran.outcome));
    if in_prefill {
        let before = ran.first_token().is_some_and(|t| t < at);
        f = f.with("prefill_over_before_abort", before);
    }
    // The binding reports any run it was asked to abort as Aborted, so whether the runtime
    // stopped is told by the steps it took after: the scheduler, too, gives up on a runtime
    // that goes on for more than 3 steps when asked to stop.
    let steps_after = ran.steps.iter().filter(|s| s.0 > at).count();
    if steps_after > MAX_OVERRUN_STEPS {
        f.status = Status::Failed;
        f.detail = format!("the run went on for {steps_after} steps after rkllm_abort");
        return Ok(f);
    }
    let next = run(&mut h, &[prompt(1)], &InferParams::default(), go_on)?;
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    let recovered = next.outcome == RunOutcome::Finished && next.total() > 0;
    f = f.with("next_run_ok", recovered);
    if recovered {
        f.detail = format!(
            "rkllm_run returned {:?} {} ms after rkllm_abort; the next run ran {} tokens",
            ran.outcome,
            f.figures["stop_ms"],
            next.total()
        );
    } else {
        f.status = Status::Failed;
        f.detail = format!(
            "aborted, but the next run ended {:?} after {} tokens",
            next.outcome,
            next.total()
        );
    }
    Ok(f)
}

fn kv(h: &Handle) -> Result<Vec<i32>, String> {
    h.kv_cache_sizes()
        .map_err(|e| format!("rkllm_get_kv_cache_size: {e}"))
}

/// Two runs with keep_history: the second continues the first, so the KV cache grows; a
/// third without it leaves the cache empty.
fn keep_history(a: &CheckArgs) -> Result<Found, String> {
    let mut h = open(a, 1)?;
    let keep = InferParams {
        keep_history: true,
        ..InferParams::default()
    };
    if let Err(e) = kv(&h) {
        return Ok(Found::new(Status::Skipped, e));
    }
    run(&mut h, &[prompt(0)], &keep, go_on)?;
    let k1 = kv(&h)?[0];
    let second = run(&mut h, &[prompt(1)], &keep, go_on)?;
    let k2 = kv(&h)?[0];
    run(&mut h, &[prompt(2)], &InferParams::default(), go_on)?;
    let k3 = kv(&h)?[0];
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    let f = if k1 > 0 && k2 > k1 {
        Found::ok(format!(
            "the KV cache held {k1} tokens after a first run and {k2} after a second; {k3} after a run without keep_history"
        ))
    } else {
        Found::failed(format!(
            "the KV cache held {k1} tokens after a first run with keep_history and {k2} after a second"
        ))
    };
    Ok(f.with("kv_after_first", k1)
        .with("kv_after_second", k2)
        .with("kv_after_no_history", k3)
        .with("second_prefill_tokens", second.prefill_tokens[0]))
}

/// Two slots kept with keep_history, then `rkllm_clear_kv_cache` with a range for slot 0
/// only: slot 0 must empty and slot 1 keep its tokens.
fn clear_kv_slot(a: &CheckArgs) -> Result<Found, String> {
    let n = a.n_batch.max(2);
    let mut h = open(a, n)?;
    if let Err(e) = kv(&h) {
        return Ok(Found::new(Status::Skipped, e));
    }
    let keep = InferParams {
        keep_history: true,
        ..InferParams::default()
    };
    run(&mut h, &prompts(n as usize), &keep, go_on)?;
    let before = kv(&h)?;
    let mut ranges = vec![(0, 0); n as usize];
    ranges[0] = (0, before[0]);
    if let Err(e) = h.clear_kv_cache(false, Some(&ranges)) {
        return Ok(Found::failed(format!("rkllm_clear_kv_cache: {e}")));
    }
    let after = kv(&h)?;
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    let f = if before[0] > 0 && after[0] == 0 && after[1..] == before[1..] {
        Found::ok(format!(
            "slot 0 went from {} tokens to 0, the others kept theirs",
            before[0]
        ))
    } else {
        Found::failed(format!(
            "KV cache sizes {before:?} became {after:?} after clearing slot 0's range"
        ))
    };
    Ok(f.with("before", before).with("after", after))
}

/// What rkserve's prompt-cache files rely on, as rkserve does it: on a handle of 2 slots, a
/// run of a prefix alone in slot 1 with `save_prompt_cache`; `rkllm_load_prompt_cache` of the
/// file; then, in the other slot, a prompt that starts with the prefix, whose prefill (perf
/// stats) is compared with the same prompt's before the load. Reuse is reported, not required: without it the file
/// costs a load and saves nothing.
fn prompt_cache(a: &CheckArgs) -> Result<Found, String> {
    let mut h = open(a, 2)?;
    let path = a.work_dir.join("prompt-cache.bin");
    let _ = std::fs::remove_file(&path);
    let prefix = "You are a careful assistant. You answer in plain words, in a few sentences, \
                  and you say so when you do not know. ";
    let idle = Input::tokens(Vec::new());
    let full = Input::prompt(format!("{prefix}Write a few sentences about the sea."));
    // Measured in slot 0, then cleared: the warm run in slot 0 can then reuse only the file,
    // not what the slot itself held (the CPU runtime's own reuse).
    let cold = run(
        &mut h,
        &[full.clone(), idle.clone()],
        &InferParams::default(),
        go_on,
    )?;
    let _ = h.clear_kv_cache(false, None);
    let save = InferParams {
        prompt_cache: Some(PromptCache {
            path: path.clone(),
            save: true,
        }),
        ..InferParams::default()
    };
    run(
        &mut h,
        &[idle.clone(), Input::prompt(prefix.to_string())],
        &save,
        go_on,
    )?;
    let Ok(meta) = std::fs::metadata(&path) else {
        return Ok(Found::failed(format!(
            "a run with save_prompt_cache (n_batch 2, slot 1 busy) wrote no {}",
            path.display()
        )));
    };
    let loading = Instant::now();
    if let Err(e) = h.load_prompt_cache(&path) {
        return Ok(Found::failed(format!("rkllm_load_prompt_cache: {e}")).with("bytes", meta.len()));
    }
    let load_ms = ms(loading.elapsed());
    let warm = run(&mut h, &[full, idle], &InferParams::default(), go_on)?;
    let released = h.release_prompt_cache();
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    let (before, after) = (cold.prefill_tokens[0], warm.prefill_tokens[0]);
    let reuse = if before <= 0 || after <= 0 {
        "the perf stats report no prefill tokens, so reuse cannot be seen".to_string()
    } else if after < before {
        format!("the prompt that starts with it prefilled {after} tokens, {before} before the load: reused")
    } else {
        format!("the prompt that starts with it prefilled {after} tokens, as before the load ({before}): not reused")
    };
    let f = match (warm.outcome, released) {
        (RunOutcome::Finished, Ok(())) => Found::ok(format!(
            "saved {} bytes from slot 1 of 2, loaded them in {load_ms} ms; {reuse}",
            meta.len()
        )),
        (o, Ok(())) => Found::failed(format!("after loading the cache, the run ended {o:?}")),
        (_, Err(e)) => Found::failed(format!("rkllm_release_prompt_cache: {e}")),
    };
    Ok(f.with("bytes", meta.len())
        .with("load_ms", load_ms)
        .with("prefill_tokens_before_load", before)
        .with("prefill_tokens_after_load", after))
}

/// Per-run sampling (1.3's `RKLLMInferParam.sampling_params`): two greedy runs of one prompt
/// on a handle initialised with random sampling must give the same text.
fn sampling(a: &CheckArgs) -> Result<Found, String> {
    if a.abi == AbiFamily::V1_2 {
        return Ok(Found::new(
            Status::Skipped,
            "ABI 1.2 has no per-run sampling: rkserve initialises a new handle for other sampling",
        ));
    }
    let mut h = open(a, 1)?;
    let greedy = InferParams {
        sampling: Some(Sampling::greedy()),
        ..InferParams::default()
    };
    let one = run(&mut h, &[prompt(3)], &greedy, go_on)?;
    let two = run(&mut h, &[prompt(3)], &greedy, go_on)?;
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    let same = one.texts[0] == two.texts[0];
    let f = if one.outcome == RunOutcome::Finished && two.outcome == RunOutcome::Finished && same {
        Found::ok(format!(
            "two greedy runs gave the same {} tokens",
            one.total()
        ))
    } else {
        Found::failed(format!(
            "two greedy runs ended {:?} and {:?}, {}",
            one.outcome,
            two.outcome,
            if same {
                "same text"
            } else {
                "with different text"
            }
        ))
    };
    Ok(f.with("same_text", same))
}

/// `n_batch` sequences decoding together: aggregate tokens per second after the first token.
fn batch_curve(a: &CheckArgs) -> Result<Found, String> {
    let mut h = open(a, a.n_batch)?;
    let n = a.n_batch as usize;
    // One warm-up run: the first run of a process pays for warming caches.
    run(&mut h, &prompts(n), &InferParams::default(), go_on)?;
    let ran = run(&mut h, &prompts(n), &InferParams::default(), go_on)?;
    h.destroy().map_err(|e| format!("rkllm_destroy: {e}"))?;
    let (Some(first), Some(last)) = (ran.steps.first(), ran.steps.last()) else {
        return Ok(Found::failed("the run produced no token"));
    };
    let decode_tokens: usize = ran.steps[1..].iter().map(|s| s.1).sum();
    let secs = (last.0 - first.0).as_secs_f64();
    if decode_tokens == 0 || secs <= 0.0 {
        return Ok(Found::failed(format!(
            "too few tokens to time ({} steps)",
            ran.steps.len()
        )));
    }
    let tps = decode_tokens as f64 / secs;
    let step_ms = secs * 1000.0 / (ran.steps.len() - 1) as f64;
    Ok(Found::ok(format!(
        "{n} sequence{}: {tps:.1} tok/s aggregate, {step_ms:.2} ms per step",
        if n == 1 { "" } else { "s" }
    ))
    .with("tok_per_s", (tps * 100.0).round() / 100.0)
    .with("step_ms", (step_ms * 1000.0).round() / 1000.0)
    .with("decode_tokens", decode_tokens))
}
