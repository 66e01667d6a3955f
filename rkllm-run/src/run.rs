//! The plain use: one prompt, or a batch of prompts in one multi-batch run, streamed to
//! stdout with the runtime's perf stats on stderr.

use clap::Args;
use rkllm::{AbiFamily, Flow, InferParams, Input, Runtime, Sampling, StepState};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The runtime library. Default: librkllmrt.so next to this executable (the CPU runtime).
    #[arg(long, env = "RKSERVE_RUNTIME_LIB")]
    lib: Option<PathBuf>,
    /// ABI family of the library: 1.3 (runtime 1.3.0) or 1.2 (runtime 1.2.x).
    #[arg(long, default_value = "1.3", env = "RKSERVE_RUNTIME_ABI")]
    abi: AbiFamily,
    /// A .rkllm model (NPU), a .gguf model or a synthetic .toml profile (CPU runtime).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// A prompt; repeat for a batch (one slot each).
    #[arg(short, long = "prompt", required = true)]
    prompts: Vec<String>,
    /// Slots per run; default: the number of prompts.
    #[arg(long)]
    n_batch: Option<u8>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: i32,
    #[arg(long, default_value_t = 2048)]
    max_context_len: i32,
    /// Always take the most likely token.
    #[arg(long)]
    greedy: bool,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_k: Option<i32>,
    #[arg(long)]
    top_p: Option<f32>,
    /// Pass prompts to the model verbatim instead of wrapping them in its chat template.
    #[arg(long)]
    raw: bool,
    /// Run the batch this many times on one handle and print each run's perf stats: the
    /// first run of a process pays for warming caches, so timings come from the later ones.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Run the prompts one after another, each alone in a run, on one handle (n_batch 1
    /// unless given): how a server with one client sends them, and what a runtime's prefix
    /// reuse sees.
    #[arg(long)]
    one_at_a_time: bool,
}

pub fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let lib = args.lib.or_else(rkllm::cpu_runtime_near_exe).ok_or(
        "no --lib given and no librkllmrt.so next to rkllm-run (run cargo build --release)",
    )?;
    let rt = Runtime::load(&lib, args.abi)?;
    let n_prompts = args.prompts.len();
    let per_run = if args.one_at_a_time { 1 } else { n_prompts };
    let n_batch = args.n_batch.unwrap_or(per_run.min(8) as u8);
    if per_run > n_batch as usize {
        return Err(
            format!("{n_prompts} prompts do not fit in n_batch {n_batch} (at most 8)").into(),
        );
    }
    let mut sampling = if args.greedy {
        Sampling::greedy()
    } else {
        rt.default_params().sampling
    };
    if let Some(t) = args.temperature {
        sampling.temperature = t;
    }
    if let Some(k) = args.top_k {
        sampling.top_k = k;
    }
    if let Some(p) = args.top_p {
        sampling.top_p = p;
    }
    let mut params = rt.default_params();
    params.model_path = args.model.clone();
    params.n_batch = n_batch;
    params.max_new_tokens = args.max_new_tokens;
    params.max_context_len = args.max_context_len;
    params.sampling = sampling;
    eprintln!(
        "loading {} with {} (ABI {}), n_batch {n_batch}",
        args.model.display(),
        lib.display(),
        args.abi
    );
    let mut handle = rt.init(&params)?;
    if args.raw {
        handle.set_chat_template("", "", "")?;
    }
    let batches: Vec<(usize, Vec<Input>)> = if args.one_at_a_time {
        (0..n_prompts)
            .map(|i| (i, vec![Input::prompt(&args.prompts[i])]))
            .collect()
    } else {
        vec![(0, args.prompts.iter().map(Input::prompt).collect())]
    };
    let total = args.runs as usize * batches.len();
    for (run, (first_prompt, inputs)) in (1..=total).zip(batches.iter().cycle()) {
        let (first_prompt, n_prompts) = (*first_prompt, inputs.len());
        // Only the first pass is shown; the others are for their timings.
        let show = run <= batches.len();
        let stream = show && n_prompts == 1;
        if stream && batches.len() > 1 {
            println!("--- {}", args.prompts[first_prompt]);
        }
        let mut texts = vec![Vec::<u8>::new(); n_batch as usize];
        let mut perf = Vec::new();
        let outcome = handle.run(inputs, &InferParams::default(), |step| {
            if step.state() == StepState::Finish {
                // FINISH carries result 0 only; per-slot stats are those of the last step.
                return Flow::Continue;
            }
            perf = step.slots().map(|s| s.perf).collect();
            for (i, slot) in step.slots().enumerate() {
                if let Some(t) = slot.text {
                    texts[i].extend_from_slice(t);
                    if stream && i == 0 {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(t);
                        let _ = out.flush();
                    }
                }
            }
            Flow::Continue
        })?;
        if stream {
            println!();
        } else if show {
            for (i, t) in texts.iter().enumerate().take(n_prompts) {
                println!("--- slot {i}: {}", args.prompts[first_prompt + i]);
                println!("{}", String::from_utf8_lossy(t));
            }
        }
        let label = if total > 1 {
            format!("run {run}/{total}")
        } else {
            "run".to_string()
        };
        eprintln!("{label}: {outcome:?}");
        for (i, p) in perf.iter().enumerate().take(n_prompts) {
            let tps = if p.generate_time_ms > 0.0 {
                p.generate_tokens as f32 * 1000.0 / p.generate_time_ms
            } else {
                0.0
            };
            eprintln!(
                "slot {i}: prefill {} tokens in {:.1} ms, generated {} tokens in {:.1} ms ({tps:.1} tok/s), peak memory {:.0} MB",
                p.prefill_tokens, p.prefill_time_ms, p.generate_tokens, p.generate_time_ms, p.memory_usage_mb
            );
        }
    }
    handle.destroy()?;
    Ok(())
}
