//! The seam between the scheduler and a runtime: an [`Engine`] is one initialised model with
//! `n_batch` slots, wherever it lives (in this process, [`crate::InProcess`], or in a worker
//! process). Its parameters are family-neutral: what differs between ABI families is handled
//! below this trait.

use crate::callback::{Flow, Step};
use crate::error::Error;
use crate::handle::RunOutcome;
use crate::library::AbiFamily;
use crate::params::{InferMode, Input, PromptCache, Sampling};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What an engine is initialised with; everything not named here is the runtime's default.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSpec {
    pub lib: PathBuf,
    pub abi: AbiFamily,
    pub model_path: PathBuf,
    pub n_batch: u8,
    pub context_len: i32,
    pub max_new_tokens: i32,
    pub cpus_mask: u32,
    pub cpus_num: i8,
    /// The handle's sampling; `None`: the runtime's default.
    pub sampling: Option<Sampling>,
}

/// One run's parameters, whatever the family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunParams {
    pub mode: InferMode,
    /// `None`: the handle's. On ABI 1.2, where sampling is fixed per handle, other sampling
    /// re-initialises the handle first.
    pub sampling: Option<Sampling>,
    /// Where the family allows it (1.3); 1.2 stops at the handle's limit.
    pub max_new_tokens: Option<i32>,
    pub keep_history: bool,
    pub prompt_cache: Option<PromptCache>,
    pub release_hidden_states: Option<bool>,
}

/// The step callback of a run: called once per step, on the engine's side of the seam.
pub type OnStep<'f> = dyn FnMut(&Step<'_>) -> Flow + Send + 'f;

/// Ends the run in progress from any thread.
pub trait StopRun: Send + Sync {
    /// Asks the runtime to abort its run (`rkllm_abort`).
    fn abort(&self) -> Result<(), Error>;
    /// Ends the engine for good, however stuck: a worker process is killed (SIGKILL). An
    /// in-process runtime cannot be killed, so it is only asked to abort. Returns whether the
    /// engine is certainly gone.
    fn kill(&self) -> bool;
}

/// A cheap, cloneable handle on [`StopRun`].
#[derive(Clone)]
pub struct Stopper(Arc<dyn StopRun>);

impl Stopper {
    pub fn new(s: impl StopRun + 'static) -> Stopper {
        Stopper(Arc::new(s))
    }

    pub fn abort(&self) -> Result<(), Error> {
        self.0.abort()
    }

    pub fn kill(&self) -> bool {
        self.0.kill()
    }
}

/// Memory of the process that holds the model (bytes), where it can be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    /// Peak RSS (VmHWM).
    pub hwm: u64,
}

impl Memory {
    /// Reads VmRSS and VmHWM from a `/proc/PID/status` text.
    pub fn from_proc_status(text: &str) -> Option<Memory> {
        let kb = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|k| k * 1024)
        };
        Some(Memory {
            rss: kb("VmRSS:")?,
            hwm: kb("VmHWM:")?,
        })
    }

    pub fn of_pid(pid: u32) -> Option<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Memory::from_proc_status(&text)
    }
}

/// An initialised model with `n_batch` sequence slots.
pub trait Engine: Send {
    fn n_batch(&self) -> usize;

    /// The sampling the handle is fixed to, when the family fixes it per handle (1.2): runs
    /// with that sampling avoid a re-initialisation.
    fn handle_sampling(&self) -> Option<Sampling>;

    /// Runs one input per slot (at most `n_batch`); blocks until the run ends.
    fn run(
        &mut self,
        inputs: &[Input],
        params: &RunParams,
        on_step: &mut OnStep<'_>,
    ) -> Result<RunOutcome, Error>;

    fn stopper(&self) -> Stopper;

    /// Whether the engine can still run. False once its worker died: it must be replaced.
    fn alive(&mut self) -> bool;

    fn clear_kv_cache(
        &mut self,
        keep_system_prompt: bool,
        ranges: Option<&[(i32, i32)]>,
    ) -> Result<(), Error>;

    fn kv_cache_sizes(&mut self) -> Result<Vec<i32>, Error>;

    fn set_chat_template(&mut self, system: &str, prefix: &str, postfix: &str)
        -> Result<(), Error>;

    fn load_prompt_cache(&mut self, path: &Path) -> Result<(), Error>;

    fn release_prompt_cache(&mut self) -> Result<(), Error>;

    /// The holding process's memory, if it is the engine's own (a worker's).
    fn memory(&self) -> Option<Memory> {
        None
    }

    /// Releases the model, waiting at most `limit` (`rkllm_destroy` is known to hang).
    fn destroy(self: Box<Self>, limit: Duration) -> Result<(), Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_memory_is_read_in_bytes() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n";
        assert_eq!(
            Memory::from_proc_status(text),
            Some(Memory {
                rss: 1024 * 1024,
                hwm: 2048 * 1024
            })
        );
        assert_eq!(Memory::from_proc_status("Name:\tx\n"), None);
    }
}
