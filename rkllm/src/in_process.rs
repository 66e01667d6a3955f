//! The [`Engine`] in this process: a [`Handle`] on a [`Runtime`] loaded here. The family's
//! differences live here: per-run sampling and `max_new_tokens` exist only on 1.3, so on 1.2
//! other sampling re-initialises the handle.

use crate::callback::Flow;
use crate::engine::{Engine, EngineSpec, OnStep, RunParams, StopRun, Stopper};
use crate::error::Error;
use crate::handle::{AbortHandle, Handle, RunOutcome};
use crate::library::{AbiFamily, Runtime};
use crate::params::{InferParams, Input, Sampling};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct InProcess {
    rt: Runtime,
    spec: EngineSpec,
    handle: Option<Handle>,
    /// The handle's sampling, as initialised.
    sampling: Sampling,
    template: Option<(String, String, String)>,
    /// The prompt cache loaded into the handle, loaded again into a re-initialised one.
    prompt_cache: Option<PathBuf>,
    /// The current handle's abort handle; cleared before the handle is destroyed, under the
    /// same lock an abort holds, so no abort reaches a destroyed handle.
    abort: Arc<Mutex<Option<AbortHandle>>>,
    destroy_limit: Duration,
}

struct InProcessStop(Arc<Mutex<Option<AbortHandle>>>);

impl StopRun for InProcessStop {
    fn abort(&self) -> Result<(), Error> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(a) => a.abort(),
            None => Ok(()),
        }
    }

    fn kill(&self) -> bool {
        let _ = self.abort();
        false
    }
}

fn init(rt: &Runtime, spec: &EngineSpec, sampling: Option<Sampling>) -> Result<Handle, Error> {
    let mut p = rt.default_params();
    p.model_path = spec.model_path.clone();
    p.n_batch = spec.n_batch;
    p.max_context_len = spec.context_len;
    p.max_new_tokens = spec.max_new_tokens;
    p.enabled_cpus_mask = spec.cpus_mask;
    p.enabled_cpus_num = spec.cpus_num;
    if let Some(s) = sampling.or(spec.sampling) {
        p.sampling = s;
    }
    rt.init(&p)
}

impl InProcess {
    /// Loads the library and initialises the model.
    pub fn open(spec: &EngineSpec) -> Result<InProcess, Error> {
        let rt = Runtime::load(&spec.lib, spec.abi)?;
        let handle = init(&rt, spec, None)?;
        let sampling = spec.sampling.unwrap_or(rt.default_params().sampling);
        let abort = Arc::new(Mutex::new(Some(handle.abort_handle())));
        Ok(InProcess {
            rt,
            spec: spec.clone(),
            handle: Some(handle),
            sampling,
            template: None,
            prompt_cache: None,
            abort,
            destroy_limit: Duration::from_secs(5),
        })
    }

    /// How long a re-initialisation waits for the old handle's destroy.
    pub fn with_destroy_limit(mut self, limit: Duration) -> InProcess {
        self.destroy_limit = limit;
        self
    }

    fn handle(&mut self) -> Result<&mut Handle, Error> {
        self.handle
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("the handle is gone".into()))
    }

    fn take_handle(&mut self) -> Option<Handle> {
        let mut slot = self.abort.lock().unwrap_or_else(|p| p.into_inner());
        *slot = None;
        self.handle.take()
    }

    /// ABI 1.2 fixes sampling at init: a run with other sampling gets a new handle.
    fn reinit_for(&mut self, sampling: Sampling) -> Result<(), Error> {
        if let Some(old) = self.take_handle() {
            if let Err(e) = destroy_with_deadline(old, self.destroy_limit) {
                tracing::warn!("re-initialising for new sampling: {e}");
            }
        }
        let h = init(&self.rt, &self.spec, Some(sampling))?;
        *self.abort.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.abort_handle());
        self.handle = Some(h);
        self.sampling = sampling;
        if let Some((s, p, q)) = self.template.clone() {
            self.handle()?.set_chat_template(&s, &p, &q)?;
        }
        // The new handle starts without the prompt cache the scheduler loaded into the old
        // one, which it still counts on.
        if let Some(path) = self.prompt_cache.clone() {
            if let Err(e) = self.handle()?.load_prompt_cache(&path) {
                tracing::warn!(
                    "re-loading prompt cache {} after re-initialising: {e}",
                    path.display()
                );
                self.prompt_cache = None;
            }
        }
        Ok(())
    }
}

/// Destroys a handle on its own thread and waits at most `limit`: a hang must not hold the
/// caller up. A handle that does not return is abandoned on its thread.
fn destroy_with_deadline(handle: Handle, limit: Duration) -> Result<(), Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rkllm-destroy".into())
        .spawn(move || {
            let _ = tx.send(handle.destroy());
        })
        .map_err(|e| Error::InvalidArgument(format!("cannot start a destroy thread: {e}")))?;
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => Err(Error::DestroyTimedOut(limit)),
    }
}

impl Engine for InProcess {
    fn n_batch(&self) -> usize {
        self.spec.n_batch as usize
    }

    fn handle_sampling(&self) -> Option<Sampling> {
        (self.rt.family() == AbiFamily::V1_2).then_some(self.sampling)
    }

    fn run(
        &mut self,
        inputs: &[Input],
        params: &RunParams,
        on_step: &mut OnStep<'_>,
    ) -> Result<RunOutcome, Error> {
        let infer = match self.rt.family() {
            AbiFamily::V1_3 => InferParams {
                mode: params.mode,
                release_hidden_states: params.release_hidden_states,
                keep_history: params.keep_history,
                sampling: params.sampling,
                max_new_tokens: params.max_new_tokens,
                prompt_cache: params.prompt_cache.clone(),
            },
            AbiFamily::V1_2 => {
                if let Some(s) = params.sampling {
                    if s != self.sampling || self.handle.is_none() {
                        self.reinit_for(s)?;
                    }
                }
                InferParams {
                    mode: params.mode,
                    release_hidden_states: params.release_hidden_states,
                    keep_history: params.keep_history,
                    prompt_cache: params.prompt_cache.clone(),
                    ..InferParams::default()
                }
            }
        };
        self.handle()?
            .run(inputs, &infer, |s| -> Flow { on_step(s) })
    }

    fn stopper(&self) -> Stopper {
        Stopper::new(InProcessStop(self.abort.clone()))
    }

    fn alive(&mut self) -> bool {
        self.handle.is_some()
    }

    fn clear_kv_cache(
        &mut self,
        keep_system_prompt: bool,
        ranges: Option<&[(i32, i32)]>,
    ) -> Result<(), Error> {
        self.handle()?.clear_kv_cache(keep_system_prompt, ranges)
    }

    fn kv_cache_sizes(&mut self) -> Result<Vec<i32>, Error> {
        self.handle()?.kv_cache_sizes()
    }

    fn set_chat_template(
        &mut self,
        system: &str,
        prefix: &str,
        postfix: &str,
    ) -> Result<(), Error> {
        self.handle()?.set_chat_template(system, prefix, postfix)?;
        self.template = Some((system.into(), prefix.into(), postfix.into()));
        Ok(())
    }

    fn load_prompt_cache(&mut self, path: &Path) -> Result<(), Error> {
        self.prompt_cache = None;
        self.handle()?.load_prompt_cache(path)?;
        self.prompt_cache = Some(path.to_path_buf());
        Ok(())
    }

    fn release_prompt_cache(&mut self) -> Result<(), Error> {
        self.prompt_cache = None;
        self.handle()?.release_prompt_cache()
    }

    fn destroy(mut self: Box<Self>, limit: Duration) -> Result<(), Error> {
        match self.take_handle() {
            Some(h) => destroy_with_deadline(h, limit),
            None => Ok(()),
        }
    }
}
