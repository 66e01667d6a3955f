//! Engines behind the C API. An engine implements [`Backend`]: the model-specific steps
//! (prepare, prefill, sample, decode); [`crate::generate`] drives them the same way for both.

pub mod llama;
pub mod synthetic;

use crate::generate::RunEnd;
use crate::report::FinishResults;
use crate::request::RunRequest;
use std::path::Path;
use std::sync::atomic::AtomicBool;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error(
        "slot {slot}: the prompt needs {needed} tokens of context but max_context_len is {limit}"
    )]
    ContextOverflow {
        slot: usize,
        needed: usize,
        limit: usize,
    },
    #[error("cannot load model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("prompt cache: {0}")]
    PromptCache(String),
    #[error("injected fault: {0}")]
    Injected(String),
}

/// A sampled token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampled {
    pub token: i32,
    /// End of generation (EOS, EOT, ...).
    pub eog: bool,
}

/// The last hidden layer of one slot's input: `num_tokens` rows of `embd_size` floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Hidden {
    pub states: Vec<f32>,
    pub embd_size: usize,
    pub num_tokens: usize,
}

/// The model-specific half of a run. Slot indices are 0..n_slots.
pub trait Backend {
    fn n_slots(&self) -> usize;

    /// Checks and tokenizes the inputs, applies history and the prompt cache. Returns the
    /// number of prompt tokens each slot will prefill, `None` for an idle slot. Nothing is
    /// computed yet, so an error here leaves every slot as it was.
    fn prepare(&mut self, req: &RunRequest) -> Result<Vec<Option<usize>>, EngineError>;

    /// The first bytes of an unfinished UTF-8 character that end `slot`'s input (a reply cut
    /// mid-character and resumed as token ids): the run holds them back as if it had just
    /// generated them, so its first piece completes the character instead of starting with
    /// stray continuation bytes.
    fn held_bytes(&self, _slot: usize) -> &[u8] {
        &[]
    }

    /// Runs the prompts of every busy slot through the model, together.
    fn prefill(&mut self, abort: &AtomicBool) -> Result<(), EngineError>;

    /// Samples the next token of `slot`, writing its text to `piece`.
    fn sample(&mut self, slot: usize, piece: &mut Vec<u8>) -> Result<Sampled, EngineError>;

    /// Whether `slot` has room in its context for one more token.
    fn has_room(&self, slot: usize) -> bool;

    /// One forward pass over the given `(slot, token)` pairs.
    fn decode(&mut self, tokens: &[(usize, i32)]) -> Result<(), EngineError>;

    /// Called once when a run was stopped early (`Aborted` or `Paused`), before
    /// [`Backend::end_run`]: the synthetic engine spends the time a board takes to stop there.
    fn stopping(&mut self, _how: RunEnd) {}

    /// Ends the run: with `keep_history` the last sampled tokens join the KV cache, otherwise
    /// the busy slots are cleared.
    fn end_run(&mut self, keep_history: bool, last: &[(usize, i32)]) -> Result<(), EngineError>;

    /// The memory figure reported in perf stats, in MB.
    fn memory_mb(&self) -> f32;

    fn clear_kv_cache(
        &mut self,
        keep_system_prompt: bool,
        ranges: Option<&[(i32, i32)]>,
    ) -> Result<(), EngineError>;

    fn kv_cache_sizes(&self) -> Vec<i32>;

    fn set_chat_template(&mut self, system: &str, prefix: &str, postfix: &str);

    fn load_prompt_cache(&mut self, path: &Path) -> Result<(), EngineError>;

    fn release_prompt_cache(&mut self);

    /// What the FINISH and ERROR callbacks pass (a synthetic profile can choose).
    fn finish_results(&self) -> FinishResults {
        FinishResults::All
    }

    /// `GET_LAST_HIDDEN_LAYER`: runs every busy slot's input through the model and returns
    /// the last hidden layer of each of its tokens (`None` for an idle slot). It touches no
    /// slot's KV cache or history: an embedding run between two generation runs changes
    /// nothing for them.
    fn hidden_states(
        &mut self,
        _req: &RunRequest,
        _abort: &AtomicBool,
    ) -> Result<Vec<Option<Hidden>>, EngineError> {
        Err(EngineError::InvalidInput(
            "this engine has no hidden states (GET_LAST_HIDDEN_LAYER)".into(),
        ))
    }

    /// Called once by `rkllm_destroy` (the synthetic engine can be told to hang here).
    fn shutdown(&mut self) {}
}
