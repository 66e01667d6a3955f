//! A run, decoded from either ABI family's structs into one form.

use rkllm::Sampling;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub enum SlotInput {
    /// An empty token input: the slot sits this run out and costs no compute.
    Idle,
    Prompt {
        text: String,
        role: String,
        enable_thinking: bool,
    },
    Tokens(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    /// One entry per slot (`n_batch`).
    pub slots: Vec<SlotInput>,
    pub keep_history: bool,
    pub sampling: Sampling,
    /// `<= 0`: until end of generation or a full context.
    pub max_new_tokens: i32,
    pub ignore_eos: bool,
    pub skip_special_token: bool,
    /// Save slot 0's prefill state to this file.
    pub save_prompt_cache: Option<PathBuf>,
    /// `RKLLM_INFER_GET_LAST_HIDDEN_LAYER`: prefill only, and report the last hidden layer
    /// of every input token (`crate::embed`).
    pub hidden_states: bool,
}
