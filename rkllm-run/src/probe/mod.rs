//! `rkllm-run probe`: finds out what a runtime library and a model can do (ABI family, the
//! largest working n_batch, pausing, aborting, the KV cache functions, the decode batching
//! curve, memory), each check in its own child process, and writes the report rkserve reads
//! to choose its mechanisms (docs/probe.md).

pub mod checks;
mod child;
mod recommend;
mod report;

use checks::Check;
use child::{Spec, Target};
use clap::Args;
use rkllm::probe_report::{CheckResult, FileId, ProbeReport, SCHEMA};
use rkllm::AbiFamily;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The runtime library. Default: librkllmrt.so next to this executable (the CPU runtime).
    #[arg(long, env = "RKSERVE_RUNTIME_LIB")]
    lib: Option<PathBuf>,
    /// A .rkllm model (NPU), a .gguf model or a synthetic .toml profile (CPU runtime).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the report into this directory under the name rkserve looks for
    /// (`<library sha256>-<model sha256>.json`): rkserve's runtime.probe_dir, by default
    /// `probe/` in its models directory.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Try only this ABI family instead of both.
    #[arg(long)]
    abi: Option<AbiFamily>,
    /// The longest a check may take before its process is killed, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[arg(long, default_value_t = 1024)]
    context_len: i32,
    /// Tokens per sequence in the batching-curve runs.
    #[arg(long, default_value_t = 32)]
    curve_tokens: i32,
}

/// The n_batch values the probe tries: Rockchip's documented range, in powers of two.
pub const N_BATCHES: [u8; 4] = [1, 2, 4, 8];

/// The checks run so far; each new one is printed as it ends.
struct Checks {
    exe: PathBuf,
    target: Target,
    done: Vec<CheckResult>,
}

impl Checks {
    fn run(&mut self, spec: Spec) -> CheckResult {
        let r = child::run(&self.exe, &self.target, &spec);
        report::line(&r);
        self.done.push(r.clone());
        r
    }
}

pub fn probe(args: ProbeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let lib = args.lib.or_else(rkllm::cpu_runtime_near_exe).ok_or(
        "no --lib given and no librkllmrt.so next to rkllm-run (run cargo build --release)",
    )?;
    let exe = std::env::current_exe()?;
    let library =
        FileId::of(&lib).map_err(|e| format!("cannot read library {}: {e}", lib.display()))?;
    let model = FileId::of(&args.model)
        .map_err(|e| format!("cannot read model {}: {e}", args.model.display()))?;
    let work_dir = std::env::temp_dir().join(format!("rkllm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let target = Target {
        lib: lib.clone(),
        model: args.model.clone(),
        context_len: args.context_len,
        timeout: Duration::from_secs(args.timeout),
        work_dir: work_dir.clone(),
    };
    report::header(&library, &model);
    let mut checks = Checks {
        exe,
        target,
        done: Vec::new(),
    };
    let mut run = |spec: Spec| checks.run(spec);

    let families = match args.abi {
        Some(f) => vec![f],
        None => vec![AbiFamily::V1_3, AbiFamily::V1_2],
    };
    let tried: Vec<(AbiFamily, CheckResult)> = families
        .iter()
        .map(|&f| (f, run(Spec::new(Check::Family, f).arg(f.to_string()))))
        .collect();
    let exported = recommend::exported_family(&tried);
    let family = recommend::family(&tried, exported.as_deref());

    if let Some(f) = family {
        for n in N_BATCHES {
            run(Spec::new(Check::NBatch, f).n_batch(n).arg(n.to_string()));
            if n > 1 {
                run(Spec::new(Check::NBatch, f)
                    .n_batch(n)
                    .empty_slots()
                    .arg(format!("{n}, 1 prompt + {} empty slots", n - 1)));
            }
        }
        let max_n_batch = recommend::max_n_batch(&checks.done);
        let mut run = |spec: Spec| checks.run(spec);
        run(Spec::new(Check::PauseResume, f));
        run(Spec::new(Check::AbortPrefill, f));
        run(Spec::new(Check::AbortDecode, f).max_new_tokens(64));
        run(Spec::new(Check::KeepHistory, f));
        if max_n_batch >= 2 {
            run(Spec::new(Check::ClearKvSlot, f).n_batch(2).arg("2"));
        }
        run(Spec::new(Check::PromptCache, f));
        run(Spec::new(Check::Sampling, f));
        for n in N_BATCHES.into_iter().filter(|&n| n <= max_n_batch) {
            run(Spec::new(Check::BatchCurve, f)
                .n_batch(n)
                .max_new_tokens(args.curve_tokens)
                .arg(n.to_string()));
        }
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    let checks = checks.done;

    let curve = recommend::batch_curve(&checks);
    let report = ProbeReport {
        schema: SCHEMA,
        library,
        model,
        family: family.map(|f| f.to_string()),
        exported_family: exported,
        recommendations: recommend::recommendations(family, &checks),
        batch_alpha: recommend::batch_alpha(&curve),
        batch_curve: curve,
        peak_vm_hwm_mb: checks.iter().filter_map(|c| c.vm_hwm_mb).reduce(f64::max),
        checks,
        probed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        tool: format!("rkllm-run {}", env!("CARGO_PKG_VERSION")),
    };
    report::summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(dir) = &args.cache {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(ProbeReport::cache_name(
            &report.library.sha256,
            &report.model.sha256,
        ));
        std::fs::write(&path, report.to_json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("report cached as {}", path.display());
    }
    Ok(())
}
