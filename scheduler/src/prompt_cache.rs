//! Prompt-cache files before a run: the prefix its new requests share, when hot, is loaded
//! into the instance's handle from its file (RKLLM reuses a loaded cache's common prefix
//! with each prompt), and saved first if it has none, by a run of that prefix alone.
//!
//! This is what makes shared system prompts cheap on a runtime that re-prefills every
//! prompt (Rockchip's with `keep_history = 0`): each request then prefills only what follows
//! the prefix. On the CPU runtime, whose slots reuse their own prefix anyway, the file serves
//! slots that have not held the prefix yet, so requests arriving together share one prefill.

use crate::config::{CutVia, ModelConfig, PromptCacheConfig};
use crate::hot_prefixes::HotPrefixes;
use crate::instance::{Instance, InstanceState};
use crate::prompt_store::file_key;
use crate::sequence::Sequence;
use crate::telemetry::{PROMPT_CACHE_ERRORS, PROMPT_CACHE_LOADS, PROMPT_CACHE_SAVES};
use parking_lot::Mutex;
use rkllm::{AbiFamily, Engine, Flow, Input, PromptCache, RunOutcome, RunParams, Sampling};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A model's prompt-cache files: the settings, the key of its model file and runtime
/// library, and which of its prefixes are hot.
#[derive(Debug)]
pub(crate) struct PromptFiles {
    cfg: PromptCacheConfig,
    files: String,
    hot: Mutex<HotPrefixes>,
    /// Set when the runtime wrote no file: it cannot save, and a prefill of the prefix per
    /// try would be paid for nothing.
    saving_off: AtomicBool,
}

impl PromptFiles {
    pub fn new(cfg: &ModelConfig) -> Option<PromptFiles> {
        let pc = cfg.prompt_cache.clone()?;
        match (file_key(&cfg.model_path), file_key(&cfg.runtime_lib)) {
            (Ok(m), Ok(l)) => {
                let files = format!("{m}-{l}");
                pc.store.register(&files, &cfg.name);
                Some(PromptFiles {
                    hot: Mutex::new(HotPrefixes::new(pc.hot_after)),
                    cfg: pc,
                    files,
                    saving_off: AtomicBool::new(false),
                })
            }
            (m, l) => {
                let e = m
                    .err()
                    .or(l.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                tracing::warn!(model = %cfg.name, "prompt-cache files are off for this model: cannot identify its model file and runtime library: {e}");
                None
            }
        }
    }
}

/// What the run is about to give the runtime: the engine, its instance, and its slots.
pub(crate) struct Before<'a> {
    pub model_name: &'a str,
    pub files: &'a PromptFiles,
    pub inst: &'a Instance,
    pub slots: &'a [Option<Sequence>],
    /// The slots of requests new to this run.
    pub fresh: &'a [usize],
    pub sampling: Sampling,
    /// How the save run is ended after its one token: see [`save`].
    pub abi: AbiFamily,
    pub cut_via: CutVia,
}

/// Makes the handle hold the file of the hot prefix most of the run's new requests share,
/// saving it first if needed. `loaded` is the prefix key the handle holds, with the prefix's
/// text (which the re-forming decision counts as reused). Failures are
/// logged and counted; the run goes on without the file.
pub(crate) fn prepare(
    b: &Before<'_>,
    engine: &mut dyn Engine,
    loaded: &mut Option<(String, Vec<u8>)>,
) {
    let pf = b.files;
    let store = &pf.cfg.store;
    // Prefixes worth their file: hot ones, and any with a file already (saved when it was
    // hot, perhaps before a restart).
    let mut worth: Vec<(String, usize, Input, usize)> = Vec::new();
    {
        let mut counts = pf.hot.lock();
        for &i in b.fresh {
            let Some(s) = &b.slots[i] else { continue };
            let Some(p) = s.prefix.filter(|p| p.tokens >= pf.cfg.min_tokens) else {
                continue;
            };
            let Some((input, key)) = s.prefix_input() else {
                continue;
            };
            if counts.observe(&key, p.pinned) || store.path(&pf.files, &key).is_file() {
                worth.push((key, i, input, p.bytes));
            }
        }
    }
    // The prefix most new requests share; the first of them among equals.
    let Some((key, slot, input, bytes)) = worth
        .iter()
        .max_by_key(|(k, i, _, _)| {
            let n = worth.iter().filter(|(o, _, _, _)| o == k).count();
            (n, std::cmp::Reverse(*i))
        })
        .cloned()
    else {
        return;
    };
    if loaded.as_ref().is_some_and(|(k, _)| *k == key) {
        return;
    }
    let path = match store.lookup(&pf.files, &key) {
        Some(p) => p,
        None if pf.saving_off.load(Ordering::Relaxed) => return,
        None => match save(b, engine, slot, input, &key) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(PROMPT_CACHE_ERRORS, "model" => b.model_name.to_string())
                    .increment(1);
                pf.saving_off.store(true, Ordering::Relaxed);
                tracing::warn!(model = %b.model_name, instance = b.inst.index, "prompt cache: saving a shared prefix failed, so no more are saved for this model: {e} (a board must confirm that its runtime saves with save_prompt_cache; set prompt_cache.enabled = false to stop trying)");
                return;
            }
        },
    };
    match engine.load_prompt_cache(&path) {
        Ok(()) => {
            metrics::counter!(PROMPT_CACHE_LOADS, "model" => b.model_name.to_string()).increment(1);
            tracing::debug!(model = %b.model_name, instance = b.inst.index, "prompt cache: loaded {}", path.display());
            let text = b.slots[slot].as_ref().map_or(&[][..], |s| {
                &s.prompt_bytes()[..bytes.min(s.prompt_bytes().len())]
            });
            *loaded = Some((key, text.to_vec()));
        }
        Err(e) => {
            metrics::counter!(PROMPT_CACHE_ERRORS, "model" => b.model_name.to_string())
                .increment(1);
            tracing::warn!(model = %b.model_name, instance = b.inst.index, "prompt cache: the runtime could not load {}: {e}; the file is removed and will be saved again", path.display());
            store.discard(&path);
            *loaded = None;
        }
    }
}

/// Prefills the prefix alone in `slot` (the slot its request goes to, so that a runtime with
/// per-slot reuse wastes nothing) with `save_prompt_cache` on, and stops after one token.
/// *A board must confirm* that the file is complete when the run is ended so (ABI 1.3: by
/// `max_new_tokens`; 1.2: by pause or abort, as `reform_via` says).
fn save(
    b: &Before<'_>,
    engine: &mut dyn Engine,
    slot: usize,
    input: Input,
    key: &str,
) -> Result<PathBuf, String> {
    let pf = b.files;
    let store = &pf.cfg.store;
    let tmp = store.temporary(&pf.files, key);
    let mut inputs = vec![Input::tokens(Vec::new()); engine.n_batch()];
    inputs[slot] = input;
    let params = RunParams {
        sampling: Some(b.sampling),
        max_new_tokens: Some(1),
        prompt_cache: Some(PromptCache {
            path: tmp.clone(),
            save: true,
        }),
        ..RunParams::default()
    };
    let started = Instant::now();
    // Watched like any run: a save that hangs is a stall.
    b.inst.touch();
    *b.inst.state.lock() = InstanceState::Running { slots: 1 };
    let inst = b.inst;
    // ABI 1.3 ends the run at `max_new_tokens`. 1.2 has no per-run limit: the run is cut the
    // way runs are cut here, never by a pause where pause was ruled out (a field report has
    // Rockchip's library crash when a callback returned 1).
    let stopper = engine.stopper();
    let (abi, via) = (b.abi, b.cut_via);
    let mut asked = false;
    let outcome = engine.run(&inputs, &params, &mut |_| {
        inst.touch();
        match (abi, via) {
            (AbiFamily::V1_3, _) => Flow::Continue,
            (_, CutVia::Pause) => Flow::Pause,
            (_, CutVia::Abort) => {
                // From another thread, as the cutter does: an abort may wait for the run,
                // which waits for this callback.
                if !std::mem::replace(&mut asked, true) {
                    let s = stopper.clone();
                    let _ = std::thread::Builder::new()
                        .name("rkserve-save-abort".into())
                        .spawn(move || s.abort());
                }
                Flow::Continue
            }
        }
    });
    *b.inst.state.lock() = InstanceState::Idle;
    let failed = match outcome {
        Ok(RunOutcome::Failed) => Some("the runtime reported an error".to_string()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    if let Some(e) = failed {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("the save run failed: {e}"));
    }
    let path = store
        .commit(&tmp, &pf.files, key)
        .map_err(|e| e.to_string())?;
    metrics::counter!(PROMPT_CACHE_SAVES, "model" => b.model_name.to_string()).increment(1);
    tracing::info!(
        model = %b.model_name,
        instance = b.inst.index,
        "prompt cache: saved a shared prefix to {} ({} bytes) in {:.0} ms",
        path.display(),
        std::fs::metadata(&path).map_or(0, |m| m.len()),
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(path)
}
