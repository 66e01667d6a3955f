//! Aggregate decode throughput of B = 1, 2, 4, 8 sequences decoded together, through the RKLLM
//! C API (rkserve's CPU `librkllmrt.so`) and through plain llama-cpp-2 in the same process:
//! same model, prompt tokens, context layout, thread count and greedy decoding. The ratio is
//! what the C API layering costs (worker thread, callbacks, per-step bookkeeping).
//!
//! Both paths time the same interval: from the moment the first token of the run has been
//! sampled to the moment the last one has. The first token comes from the prefill logits, so
//! the interval holds `NEW_TOKENS - 1` batched forward passes and `B * (NEW_TOKENS - 1)`
//! sampled tokens.
//!
//! The two paths never overlap. Both copies of llama.cpp use libgomp, and every thread that has
//! run a parallel region keeps its OpenMP pool until it exits; once the process holds more
//! pool threads than CPUs, libgomp cuts its barrier spin-wait to 100 iterations, and ggml, which
//! passes an OpenMP barrier after every graph node, slows down ~2.6x at B = 1. So the C API
//! path destroys its handle (joining the runtime's worker thread) before the plain path runs,
//! and the plain path runs on a thread of its own that has exited before the C API path starts.
//!
//! Environment: `RUNS` (measured runs per B, default 3; the median is reported), `BATCHES`
//! (default `1,2,4,8`), `THREADS` (default: online CPUs), `RKLLM_LIB` (default
//! `target/release/librkllmrt.so`), `RKLLM_MODEL` (default the SmolLM2-135M GGUF in `models/`).

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::LogOptions;
use rkllm::{
    AbiFamily, Flow, Handle, InferParams, Input, RunOutcome, Runtime, Sampling, StepState,
};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const NEW_TOKENS: usize = 64;
/// KV cells per sequence: the engine's `max_context_len`, ample for a prompt plus the reply.
const CONTEXT_PER_SEQ: usize = 256;
/// The engine's llama.cpp batch and micro-batch size.
const BATCH_CAPACITY: usize = 512;
/// Share of the machine's CPU time other processes may take before a row is flagged: with
/// every CPU in use and an OpenMP barrier per graph node, a little contention costs a lot.
const MAX_OTHER_LOAD: f64 = 0.05;
const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Raw text, no chat template: one distinct prompt per slot, about 20 tokens each.
const PROMPTS: [&str; 8] = [
    "The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz",
    "To bake a simple loaf of bread at home you need flour, water, salt and yeast, and the first step",
    "The planets of the solar system, in order of their distance from the Sun, are Mercury, Venus,",
    "A binary search finds an item in a sorted array by repeatedly comparing the middle element",
    "The river flows from the mountains through a long green valley before it finally reaches the",
    "In the summer of 1969 the crew of Apollo 11 became the first people to walk on the surface",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to",
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk to light the lamp and",
];

struct Config {
    runs: usize,
    batches: Vec<usize>,
    threads: usize,
    lib: PathBuf,
    model: PathBuf,
}

/// One measured run: every slot's generated tokens and the decode interval.
struct Run {
    tokens: Vec<Vec<i32>>,
    decode_secs: f64,
}

impl Run {
    fn tokens_per_sec(&self) -> f64 {
        (self.tokens.len() * (NEW_TOKENS - 1)) as f64 / self.decode_secs
    }
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("runtime_batch: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn config() -> Result<Config, String> {
    let runs: usize = env_or("RUNS", 3)?;
    if runs == 0 {
        return Err("RUNS must be at least 1".into());
    }
    let batches = match std::env::var("BATCHES") {
        Ok(v) => v
            .split(',')
            .map(|b| match b.trim().parse::<usize>() {
                Ok(n) if (1..=PROMPTS.len()).contains(&n) => Ok(n),
                _ => Err(format!("BATCHES: {b:?} is not a batch size from 1 to 8")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => vec![1, 2, 4, 8],
    };
    // The engine caps enabled_cpus_num at the online CPUs; the plain path must match.
    let threads = env_or("THREADS", online_cpus())?.clamp(1, online_cpus());

    let lib = match std::env::var_os("RKLLM_LIB") {
        Some(p) => PathBuf::from(p),
        // The bench runs as target/<profile>/deps/runtime_batch-<hash>; the cdylib sits in
        // target/<profile>.
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate the bench executable: {e}"))?
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("librkllmrt.so"))
            .ok_or("cannot derive target/<profile> from the bench executable's path")?,
    };
    if !lib.is_file() {
        return Err(format!(
            "the CPU runtime library {} does not exist: build it with \
             `cargo build --release -p rkllm-cpu-runtime`, or point RKLLM_LIB at a librkllmrt.so",
            lib.display()
        ));
    }
    let model = match std::env::var_os("RKLLM_MODEL") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DEFAULT_MODEL),
    };
    if !model.is_file() {
        return Err(format!(
            "the model {} does not exist: run scripts/fetch-default-model, or point \
             RKLLM_MODEL at a .gguf file",
            model.display()
        ));
    }
    let model = model
        .canonicalize()
        .map_err(|e| format!("{}: {e}", model.display()))?;
    Ok(Config {
        runs,
        batches,
        threads,
        lib,
        model,
    })
}

fn bench() -> Result<(), String> {
    let cfg = config()?;

    // Only this process's copy of llama.cpp; the runtime library silences its own.
    llama_cpp_2::send_logs_to_tracing(LogOptions::default().with_logs_enabled(false));
    let backend = LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))?;
    let model = LlamaModel::load_from_file(&backend, &cfg.model, &LlamaModelParams::default())
        .map_err(|e| format!("llama.cpp cannot load {}: {e}", cfg.model.display()))?;

    // Both paths get these exact ids (the C path as token input), so prompt tokenization
    // cannot differ between them.
    let vocab = model.vocab();
    let prompts: Vec<Vec<LlamaToken>> = PROMPTS
        .iter()
        .map(|p| vocab.tokenize(p.as_bytes(), vocab.should_add_bos(), true))
        .collect();

    let rt = Runtime::load(&cfg.lib, AbiFamily::V1_3)
        .map_err(|e| format!("cannot load {}: {e}", cfg.lib.display()))?;

    print_header(&cfg, &prompts);
    eprintln!(
        "runtime_batch: warm-up plus {} runs per batch size",
        cfg.runs
    );

    let mut rows = Vec::new();
    let mut mismatches = Vec::new();
    let mut noisy = Vec::new();
    for (i, &b) in cfg.batches.iter().enumerate() {
        let prompts = &prompts[..b];
        let before = CpuSample::now();
        // Alternating which path goes first keeps drift (heat, other load) from favouring one.
        let (plain, capi) = if i % 2 == 0 {
            let plain = measure_plain(&backend, &model, prompts, &cfg)?;
            (plain, measure_capi(&rt, prompts, &cfg)?)
        } else {
            let capi = measure_capi(&rt, prompts, &cfg)?;
            (measure_plain(&backend, &model, prompts, &cfg)?, capi)
        };
        let other = before
            .zip(CpuSample::now())
            .map(|(a, z)| a.others_share_until(&z));
        if let Some(share) = other.filter(|&s| s > MAX_OTHER_LOAD) {
            noisy.push((b, share));
        }
        let reference = &plain[0].tokens;
        if plain.iter().chain(&capi).any(|r| &r.tokens != reference) {
            mismatches.push(b);
        }
        // The first run of each path is its warm-up: it pages in the weights and grows
        // llama.cpp's compute buffers and thread pool.
        let mut plain_rates: Vec<f64> = plain[1..].iter().map(Run::tokens_per_sec).collect();
        let mut c_rates: Vec<f64> = capi[1..].iter().map(Run::tokens_per_sec).collect();
        eprintln!(
            "  B={b}: plain {}; C API {} tok/s",
            list(&plain_rates),
            list(&c_rates)
        );
        rows.push((b, median(&mut plain_rates), median(&mut c_rates)));
    }

    println!("| B | plain llama.cpp tok/s | C API tok/s | C API / plain |");
    println!("|--:|--:|--:|--:|");
    for (b, plain, c) in &rows {
        println!("| {b} | {plain:.1} | {c:.1} | {:.3} |", c / plain);
    }
    println!();
    if mismatches.is_empty() {
        println!("Both paths generated identical tokens at every batch size.");
    } else {
        println!(
            "WARNING: the two paths generated different tokens at B = {mismatches:?}: \
             they did not do the same work."
        );
    }
    for (b, share) in noisy {
        println!(
            "WARNING: other processes used {:.0}% of the CPUs while B = {b} ran: its figures \
             are not reliable; rerun on an idle machine.",
            share * 100.0
        );
    }
    Ok(())
}

fn print_header(cfg: &Config, prompts: &[Vec<LlamaToken>]) {
    let model_mb = std::fs::metadata(&cfg.model).map_or(0.0, |m| m.len() as f64 / 1e6);
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let overrides: String = ["RUNS", "BATCHES", "THREADS", "RKLLM_LIB", "RKLLM_MODEL"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
        .collect();
    println!("## Batched decode: plain llama-cpp-2 vs the RKLLM C API (CPU runtime)");
    println!();
    println!("- machine: {} ({} online CPUs)", cpu_model(), online_cpus());
    println!(
        "- model: {} ({model_mb:.0} MB)",
        cfg.model.file_name().unwrap_or_default().to_string_lossy()
    );
    println!("- runtime library: {}", cfg.lib.display());
    println!(
        "- work per sequence: {} prompt tokens (raw text, per slot {lengths:?}), {NEW_TOKENS} \
         new tokens, greedy, EOS ignored; {CONTEXT_PER_SEQ} KV cells per sequence; {} threads",
        lengths
            .iter()
            .min()
            .zip(lengths.iter().max())
            .map_or_else(|| "?".to_string(), |(lo, hi)| format!("{lo}-{hi}")),
        cfg.threads
    );
    println!(
        "- tok/s = B x {} tokens / time from the first sampled token to the last (prefill \
         excluded); median of {} runs after a warm-up",
        NEW_TOKENS - 1,
        cfg.runs
    );
    println!("- command: `{overrides}cargo bench -p rkserve-benches --bench runtime_batch`");
    println!();
}

/// A warm-up run and `cfg.runs` measured runs of plain llama.cpp, on a thread that exits
/// afterwards so that its OpenMP pool is gone (see the module docs).
fn measure_plain(
    backend: &LlamaBackend,
    model: &LlamaModel,
    prompts: &[Vec<LlamaToken>],
    cfg: &Config,
) -> Result<Vec<Run>, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut plain = Plain::new(backend, model, prompts.len(), cfg.threads)?;
                (0..=cfg.runs).map(|_| plain.run(prompts)).collect()
            })
            .join()
            .map_err(|_| "the plain llama.cpp thread panicked".to_string())?
    })
}

/// A warm-up run and `cfg.runs` measured runs through the C API, on a handle destroyed
/// afterwards so that the runtime's worker thread and its OpenMP pool are gone.
fn measure_capi(
    rt: &Runtime,
    prompts: &[Vec<LlamaToken>],
    cfg: &Config,
) -> Result<Vec<Run>, String> {
    let mut capi = CApi::new(rt, cfg, prompts.len())?;
    let runs = (0..=cfg.runs)
        .map(|_| capi.run(prompts))
        .collect::<Result<Vec<_>, _>>()?;
    capi.handle
        .destroy()
        .map_err(|e| format!("rkllm_destroy: {e}"))?;
    Ok(runs)
}

/// System-wide and own CPU time, in clock ticks.
struct CpuSample {
    busy: u64,
    total: u64,
    own: u64,
}

impl CpuSample {
    fn now() -> Option<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // user nice system idle iowait irq softirq steal; guest time is already in user.
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        let total: u64 = ticks.iter().sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // utime and stime, fields 14 and 15, counted after the parenthesised command name.
        let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let own = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(CpuSample {
            busy: total - idle,
            total,
            own,
        })
    }

    fn others_share_until(&self, later: &CpuSample) -> f64 {
        let others = (later.busy - self.busy).saturating_sub(later.own - self.own);
        others as f64 / (later.total - self.total).max(1) as f64
    }
}

fn list(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{r:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    ["model name", "Hardware", "Model"]
        .iter()
        .find_map(|key| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == *key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Plain llama-cpp-2, set up and driven as the engine drives it.
struct Plain<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
}

impl<'m> Plain<'m> {
    fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        n: usize,
        threads: usize,
    ) -> Result<Self, String> {
        let kv = rkllmrt::engine::llama::kv_type();
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new((CONTEXT_PER_SEQ * n) as u32))
            .with_n_seq_max(n as u32)
            .with_kv_unified(false)
            // The runtime's attention and cache, so that the two paths compute the same thing.
            .with_flash_attention_policy(rkllmrt::engine::llama::flash_attention())
            .with_type_k(kv)
            .with_type_v(kv)
            .with_n_batch(BATCH_CAPACITY as u32)
            .with_n_ubatch(BATCH_CAPACITY as u32)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| format!("llama.cpp context for B={n}: {e}"))?;
        Ok(Plain {
            model,
            ctx,
            batch: LlamaBatch::new(BATCH_CAPACITY, n as i32),
        })
    }

    fn decode(&mut self) -> Result<(), String> {
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| format!("llama_decode: {e}"))
    }

    fn add(
        &mut self,
        token: LlamaToken,
        pos: usize,
        seq: usize,
        logits: bool,
    ) -> Result<(), String> {
        self.batch
            .add(token, pos as i32, &[seq as i32], logits)
            .map_err(|e| format!("llama_batch_add: {e}"))
    }

    fn run(&mut self, prompts: &[Vec<LlamaToken>]) -> Result<Run, String> {
        self.ctx.clear_kv_cache();
        // The engine's prefill: every prompt but its last token, then all the last tokens in
        // one batch with logits. Identical batches keep the outputs bit-identical too.
        let work: Vec<(usize, usize)> = prompts
            .iter()
            .enumerate()
            .flat_map(|(s, p)| (0..p.len() - 1).map(move |j| (s, j)))
            .collect();
        for chunk in work.chunks(BATCH_CAPACITY) {
            self.batch.clear();
            for &(s, j) in chunk {
                self.add(prompts[s][j], j, s, false)?;
            }
            self.decode()?;
        }
        self.batch.clear();
        for (s, p) in prompts.iter().enumerate() {
            self.add(p[p.len() - 1], p.len() - 1, s, true)?;
        }
        self.decode()?;

        // The engine chains a no-op repeat penalty before greedy; plain greedy is the baseline.
        let mut samplers: Vec<LlamaSampler> =
            prompts.iter().map(|_| LlamaSampler::greedy()).collect();
        let mut tokens = vec![Vec::with_capacity(NEW_TOKENS); prompts.len()];
        let mut piece = Vec::with_capacity(64);
        let model = self.model;
        let vocab = model.vocab();
        let mut first = None;
        for step in 0..NEW_TOKENS {
            for (s, sampler) in samplers.iter_mut().enumerate() {
                let token = sampler.sample(&self.ctx, s as i32);
                // Text is part of every real generation loop, and the engine makes it too.
                piece.clear();
                vocab.token_to_piece_into(token, &mut piece, false, None);
                tokens[s].push(token.0);
            }
            let sampled = *first.get_or_insert_with(Instant::now);
            if step + 1 == NEW_TOKENS {
                return Ok(Run {
                    tokens,
                    decode_secs: sampled.elapsed().as_secs_f64(),
                });
            }
            self.batch.clear();
            for (s, p) in prompts.iter().enumerate() {
                self.add(LlamaToken(tokens[s][step]), p.len() + step, s, true)?;
            }
            self.decode()?;
        }
        unreachable!("the loop returns at its last step")
    }
}

/// The same work through `rkllm_run` on a handle with `n_batch = B`.
struct CApi {
    handle: Handle,
    infer: InferParams,
}

impl CApi {
    fn new(rt: &Runtime, cfg: &Config, n: usize) -> Result<Self, String> {
        let mut params = rt.default_params();
        params.model_path = cfg.model.clone();
        params.n_batch = n as u8;
        params.max_context_len = CONTEXT_PER_SEQ as i32;
        params.max_new_tokens = NEW_TOKENS as i32;
        params.ignore_eos_token = true;
        params.sampling = Sampling::greedy();
        params.enabled_cpus_num = cfg.threads as i8;
        // No pinning: the plain path's threads float over every CPU, so these must too.
        params.enabled_cpus_mask = 0;
        let handle = rt
            .init(&params)
            .map_err(|e| format!("rkllm_init (n_batch={n}): {e}"))?;
        Ok(CApi {
            handle,
            infer: InferParams {
                sampling: Some(Sampling::greedy()),
                max_new_tokens: Some(NEW_TOKENS as i32),
                ..InferParams::default()
            },
        })
    }

    fn run(&mut self, prompts: &[Vec<LlamaToken>]) -> Result<Run, String> {
        let inputs: Vec<Input> = prompts
            .iter()
            .map(|p| Input::tokens(p.iter().map(|t| t.0).collect()))
            .collect();
        let mut tokens = vec![Vec::with_capacity(NEW_TOKENS); prompts.len()];
        let mut first = None;
        let mut last = None;
        let outcome = self
            .handle
            .run(&inputs, &self.infer, |step| {
                if matches!(step.state(), StepState::Normal | StepState::Waiting) {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = Some(now);
                    for (s, slot) in step.slots().enumerate().take(tokens.len()) {
                        if slot.token_id >= 0 {
                            tokens[s].push(slot.token_id);
                        }
                    }
                }
                Flow::Continue
            })
            .map_err(|e| format!("rkllm_run: {e}"))?;
        if outcome != RunOutcome::Finished {
            return Err(format!(
                "rkllm_run ended with {outcome:?} instead of FINISH"
            ));
        }
        if let Some((s, t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() != NEW_TOKENS)
        {
            return Err(format!(
                "slot {s} generated {} tokens through the C API, expected {NEW_TOKENS}",
                t.len()
            ));
        }
        let (Some(first), Some(last)) = (first, last) else {
            return Err("rkllm_run reported no tokens".into());
        };
        Ok(Run {
            tokens,
            decode_secs: last.duration_since(first).as_secs_f64(),
        })
    }
}
