//! The synthetic engine: no model, deterministic text, a timing model of the NPU and fault
//! injection, configured by a TOML profile (`models/synthetic/*.toml`).
//!
//! Timing model: prefill takes `prefilled tokens / prefill_tokens_per_second` for all busy
//! slots together (every prompt token, or with `prefix_reuse` those the slot does not hold);
//! a decode step with `b` active slots takes `decode_step_ms * (1 + batch_alpha * (b - 1))`.
//! Idle and finished slots cost nothing.
//!
//! Scripted replies (`[output] script`, `[[output.replies]]`) replace the filler with a given
//! text, streamed in pieces of awkward sizes, so a server's tool-call and reasoning parsers can
//! be tested deterministically; a small real model cannot be relied on to call a tool.
//!
//! Continuation: an input that repeats a slot's last run (its prompt followed by its reply so
//! far, see [`context`]) goes on with that reply where it stopped, so a reply cut at step
//! boundaries and resumed any number of times reads as an uninterrupted one. With
//! `[timing] prefix_reuse`, a prompt prefills only what the slot does not already hold.

mod context;

use crate::engine::{Backend, EngineError, Hidden, Sampled};
use crate::generate::RunEnd;
use crate::report::FinishResults;
use crate::request::{RunRequest, SlotInput};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub output: Output,
    #[serde(default)]
    pub faults: Faults,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub name: String,
    pub context_length: usize,
    pub memory_mb: f32,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            name: "synthetic".into(),
            context_length: 4096,
            memory_mb: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// 0: prefill is instant.
    pub prefill_tokens_per_second: f64,
    /// `t1`: one decode step with one active slot. 0: instant.
    pub decode_step_ms: f64,
    /// Extra cost of each further active slot, as a fraction of `t1`.
    pub batch_alpha: f64,
    /// Time `rkllm_init` takes.
    pub load_ms: u64,
    /// A prompt prefills only the tokens it does not share with what its slot last held (the
    /// last run's input and reply), as the CPU runtime's llama.cpp engine does. Off: every
    /// prompt is a cold, full prefill, what Rockchip's runtime is assumed to do with
    /// `keep_history = 0`.
    pub prefix_reuse: bool,
    /// How long a run takes to stop once it sees `rkllm_abort` (milliseconds), before FINISH.
    pub abort_ms: u64,
    /// How long a run takes to return after a callback returned 1 (pause), in milliseconds.
    pub pause_ms: u64,
    /// How long `rkllm_load_prompt_cache` takes (milliseconds). A loaded file's prompt is
    /// reused by every slot's prompt that starts with it, whatever `prefix_reuse` says, as
    /// Rockchip documents for its prompt cache since 1.2.0.
    pub prompt_cache_load_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Output {
    /// End of generation after this many tokens for every slot; 0: never (runs to
    /// max_new_tokens or the context's end).
    pub eos_after: u32,
    /// Every 7th token is a two-byte character split across two tokens (exercises WAITING).
    pub split_utf8: bool,
    /// Synthetic characters per prompt token, for counting prompt tokens.
    pub bytes_per_token: usize,
    /// The reply to every prompt no rule of `replies` matches, instead of the filler.
    pub script: Option<String>,
    /// A file holding `script`, relative to the profile's directory.
    pub script_file: Option<PathBuf>,
    /// Tried in order against the prompt text; the first whose `when` it contains wins.
    pub replies: Vec<Reply>,
    /// Bytes per streamed piece of a scripted reply, cycled. A piece that would end inside a
    /// UTF-8 character runs on to its end. Empty: `bytes_per_token` bytes each.
    pub split: Vec<usize>,
    /// What the FINISH and ERROR callbacks pass: `all` (n_batch results) or `single` (one).
    pub finish_results: FinishResults,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            eos_after: 0,
            split_utf8: false,
            bytes_per_token: 4,
            script: None,
            script_file: None,
            replies: Vec::new(),
            split: Vec::new(),
            finish_results: FinishResults::All,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// A substring of the prompt.
    pub when: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// `rkllm_init` fails.
    pub init_fails: bool,
    /// The run reports ERROR after this many generated tokens (of any slot); 0: never.
    pub error_after_tokens: u32,
    /// After this many generated tokens the run stops making progress; 0: never.
    pub stall_after_tokens: u32,
    /// How long a stall lasts (milliseconds); 0: until aborted.
    pub stall_ms: u64,
    /// `rkllm_destroy` blocks this long (milliseconds).
    pub destroy_hang_ms: u64,
    /// `rkllm_init` aborts the process (SIGABRT), as a GGML_ASSERT in Rockchip's runtime does.
    pub abort_at_init: bool,
    /// With `abort_at_init`: only when n_batch is above this (0: always).
    pub abort_at_init_above_n_batch: u8,
    /// The process aborts after this many generated tokens of a run; 0: never.
    pub abort_after_tokens: u32,
    /// The process dies of SIGSEGV after this many generated tokens of a run; 0: never.
    pub segfault_after_tokens: u32,
    /// `rkllm_destroy` aborts the process.
    pub abort_at_destroy: bool,
    /// `rkllm_destroy` never returns.
    pub hang_at_destroy: bool,
    /// The process aborts when a callback returns 1 (pause), as in one field report.
    pub crash_on_pause: bool,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Load {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let invalid = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        let mut profile: Profile =
            toml::from_str(&text).map_err(|e| invalid(format!("not a synthetic profile: {e}")))?;
        let out = &mut profile.output;
        if let Some(file) = out.script_file.take() {
            if out.script.is_some() {
                return Err(invalid(
                    "set output.script or output.script_file, not both".into(),
                ));
            }
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| invalid(format!("output.script_file {}: {e}", file.display())))?;
            out.script = Some(text);
        }
        if out.split.contains(&0) {
            return Err(invalid(
                "output.split: piece sizes must be at least 1".into(),
            ));
        }
        let f = &profile.faults;
        if f.abort_at_init_above_n_batch > 0 && !f.abort_at_init {
            // Silently ignoring it would let a test pass without the crash it meant to cause.
            return Err(invalid(
                "faults.abort_at_init_above_n_batch needs faults.abort_at_init = true".into(),
            ));
        }
        Ok(profile)
    }
}

/// Says what is about to kill the process, as a real runtime's log would, then aborts.
fn crash_abort(what: &str) -> ! {
    eprintln!("synthetic: {what}");
    std::process::abort()
}

const WORDS: [&str; 32] = [
    "the",
    "board",
    "runs",
    "a",
    "model",
    "on",
    "its",
    "npu",
    "and",
    "every",
    "token",
    "arrives",
    "in",
    "order",
    "while",
    "batches",
    "share",
    "one",
    "pass",
    "through",
    "memory",
    "so",
    "throughput",
    "grows",
    "with",
    "each",
    "slot",
    "that",
    "joins",
    "quietly",
    "again",
    "today",
];

/// FNV-1a: a stable hash, so the same prompt gives the same text on every machine.
/// Size of the synthetic hidden states.
pub const HIDDEN_SIZE: usize = 16;

/// Token `t`'s synthetic hidden state: a function of that token's bytes (or id), so equal
/// inputs give equal states and inputs sharing a prefix share its states.
fn hidden_state(token: &[u8], out: &mut Vec<f32>) {
    let h = fnv(token, 0x5eed);
    out.extend((0..HIDDEN_SIZE as u64).map(|j| {
        let x = fnv(&j.to_le_bytes(), h);
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }));
}

fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The text the synthetic engine generates for `prompt`, token by token.
pub fn synthetic_token(prompt_hash: u64, index: u32) -> (i32, &'static str) {
    let w = (fnv(&index.to_le_bytes(), prompt_hash) % WORDS.len() as u64) as usize;
    (100 + w as i32, WORDS[w])
}

/// Token ids of scripted pieces start here, clear of the filler's (98 to 131) and EOS (2).
const SCRIPT_TOKEN_BASE: i32 = 1000;

#[derive(Default, Clone)]
struct SlotState {
    history: usize,
    /// Prompt tokens of this run: they join the history at prefill.
    prompt: usize,
    /// Of those, the tokens prefill computes (the rest the slot already holds).
    pending: usize,
    prompt_hash: u64,
    generated: u32,
    /// The second byte of a split character, due next.
    split_tail: Option<u8>,
    /// Index into the engine's scripts, for a scripted reply.
    script: Option<usize>,
    /// Bytes of the script already streamed.
    script_pos: usize,
    /// Pieces of the script already streamed (selects the next `split` size).
    script_pieces: usize,
    /// Bytes a cut run held back mid-character, to be sent before the next piece.
    reemit: Vec<u8>,
}

pub struct SyntheticEngine {
    profile: Profile,
    context: usize,
    slots: Vec<SlotState>,
    /// What each slot last held, for continuation and prefix reuse.
    held: Vec<Option<context::Record>>,
    /// The prompt of the loaded prompt-cache file.
    file_cache: Option<context::Record>,
    /// Where this run saves its prompt cache (the first busy slot's prompt, at prefill).
    save_cache: Option<(PathBuf, context::Record)>,
    /// Tokens generated in this run, all slots together (for fault injection).
    run_tokens: u32,
    split: bool,
    /// The reply rules' texts, then the fallback script if there is one.
    scripts: Vec<String>,
}

impl SyntheticEngine {
    pub fn new(
        profile: Profile,
        n_batch: usize,
        max_context_len: i32,
    ) -> Result<Self, EngineError> {
        let f = &profile.faults;
        if f.abort_at_init && n_batch > usize::from(f.abort_at_init_above_n_batch) {
            if f.abort_at_init_above_n_batch > 0 {
                crash_abort(&format!(
                    "abort at init with n_batch {n_batch} > {} (faults.abort_at_init_above_n_batch)",
                    f.abort_at_init_above_n_batch
                ));
            }
            crash_abort("abort at init (faults.abort_at_init)");
        }
        if f.init_fails {
            return Err(EngineError::Injected(
                "the profile sets faults.init_fails".into(),
            ));
        }
        if profile.timing.load_ms > 0 {
            std::thread::sleep(Duration::from_millis(profile.timing.load_ms));
        }
        let trained = profile.model.context_length.max(1);
        let context = if max_context_len > 0 {
            (max_context_len as usize).min(trained)
        } else {
            trained
        };
        let split = profile.output.split_utf8;
        let out = &profile.output;
        let scripts = out
            .replies
            .iter()
            .map(|r| r.text.clone())
            .chain(out.script.clone())
            .collect();
        Ok(SyntheticEngine {
            profile,
            context,
            slots: vec![SlotState::default(); n_batch],
            held: vec![None; n_batch],
            file_cache: None,
            save_cache: None,
            run_tokens: 0,
            split,
            scripts,
        })
    }

    /// Which script answers `input`: the first rule it matches, else the fallback script.
    fn script_for(&self, input: &SlotInput) -> Option<usize> {
        let out = &self.profile.output;
        let fallback = out.script.as_ref().map(|_| out.replies.len());
        match input {
            SlotInput::Idle => None,
            SlotInput::Prompt { text, .. } => out
                .replies
                .iter()
                .position(|r| text.contains(&r.when))
                .or(fallback),
            // Token ids carry no text to match.
            SlotInput::Tokens(_) => fallback,
        }
    }

    fn prompt_tokens(&self, input: &SlotInput) -> Option<(usize, u64)> {
        match input {
            SlotInput::Idle => None,
            SlotInput::Prompt { text, .. } => {
                let per = self.profile.output.bytes_per_token.max(1);
                Some((text.len().div_ceil(per).max(1), fnv(text.as_bytes(), 0)))
            }
            SlotInput::Tokens(ids) => {
                let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
                Some((ids.len(), fnv(&bytes, 0)))
            }
        }
    }

    /// The slot whose last run `input` continues: slot `i` itself first, else any other (a
    /// scheduler is expected to keep a continuing request in its slot, but need not).
    fn continued_from(&self, i: usize, input: &SlotInput) -> Option<usize> {
        let continues = |j: &usize| {
            self.held[*j]
                .as_ref()
                .is_some_and(|r| r.continued_by(input))
        };
        std::iter::once(i)
            .chain(0..self.slots.len())
            .find(continues)
    }

    /// The next piece of `slot`'s reply (filler or script) and its token.
    fn next_piece(&mut self, slot: usize, piece: &mut Vec<u8>) -> Sampled {
        let eos_after = self.profile.output.eos_after;
        let s = &mut self.slots[slot];
        let index = s.generated;
        s.generated += 1;
        if eos_after > 0 && index >= eos_after {
            return Sampled {
                token: 2,
                eog: true,
            };
        }
        if let Some(k) = s.script {
            let text = &self.scripts[k];
            if s.script_pos >= text.len() {
                return Sampled {
                    token: 2,
                    eog: true,
                };
            }
            let out = &self.profile.output;
            let size = if out.split.is_empty() {
                out.bytes_per_token.max(1)
            } else {
                out.split[s.script_pieces % out.split.len()]
            };
            let mut end = (s.script_pos + size).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            piece.extend_from_slice(&text.as_bytes()[s.script_pos..end]);
            s.script_pos = end;
            s.script_pieces += 1;
            return Sampled {
                token: SCRIPT_TOKEN_BASE + (s.script_pieces % 100_000) as i32,
                eog: false,
            };
        }
        if let Some(b) = s.split_tail.take() {
            piece.push(b);
            return Sampled {
                token: 99,
                eog: false,
            };
        }
        if self.split && index % 7 == 6 {
            let e = "é".as_bytes();
            piece.push(e[0]);
            s.split_tail = Some(e[1]);
            return Sampled {
                token: 98,
                eog: false,
            };
        }
        let (token, word) = synthetic_token(s.prompt_hash, index);
        if index > 0 {
            piece.push(b' ');
        }
        piece.extend_from_slice(word.as_bytes());
        Sampled { token, eog: false }
    }

    /// Sleeps, waking early when aborted.
    fn pause(ms: f64, abort: Option<&AtomicBool>) {
        if ms <= 0.0 {
            return;
        }
        let until = Instant::now() + Duration::from_secs_f64(ms / 1000.0);
        loop {
            let now = Instant::now();
            if now >= until || abort.is_some_and(|a| a.load(Ordering::Acquire)) {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(5)));
        }
    }
}

impl Backend for SyntheticEngine {
    fn n_slots(&self) -> usize {
        self.slots.len()
    }

    fn prepare(&mut self, req: &RunRequest) -> Result<Vec<Option<usize>>, EngineError> {
        let mut plan = Vec::with_capacity(self.slots.len());
        for (i, input) in req.slots.iter().enumerate() {
            let history = if req.keep_history {
                self.slots[i].history
            } else {
                0
            };
            let p = self.prompt_tokens(input);
            if let Some((n, _)) = p {
                if history + n + 1 > self.context {
                    return Err(EngineError::ContextOverflow {
                        slot: i,
                        needed: history + n + 1,
                        limit: self.context,
                    });
                }
            }
            plan.push(p.map(|(n, hash)| (n, hash, history)));
        }
        // Every slot's new state is worked out from the old ones before any is replaced: a
        // continuation may come from another slot's record.
        let mut states = Vec::with_capacity(plan.len());
        for (i, (input, p)) in req.slots.iter().zip(&plan).enumerate() {
            let Some((n, hash, history)) = *p else {
                states.push(None);
                continue;
            };
            let next_turn = history > 0;
            let from = if next_turn {
                None
            } else {
                self.continued_from(i, input)
            };
            let mut state = match from {
                Some(j) => {
                    let mut state = self.slots[j].clone();
                    // Added to what is still owed if that run was stopped before its first
                    // piece (aborted during prefill).
                    let held = self.held[j].as_ref().map_or(&[][..], |r| r.held());
                    state.reemit.extend_from_slice(held);
                    state
                }
                None => SlotState {
                    prompt_hash: hash,
                    script: self.script_for(input),
                    ..SlotState::default()
                },
            };
            let per = self.profile.output.bytes_per_token;
            let own = match &self.held[i] {
                Some(r) if self.profile.timing.prefix_reuse && !next_turn => {
                    r.shared_tokens(input, per)
                }
                _ => 0,
            };
            let from_file = match &self.file_cache {
                Some(r) if !next_turn => r.shared_tokens(input, per),
                _ => 0,
            };
            let shared = own.max(from_file).min(n - 1);
            state.history = history;
            state.prompt = n;
            state.pending = n - shared;
            // A kept conversation is not one sequence the next input could repeat.
            let record = (!next_turn).then(|| context::Record::new(input)).flatten();
            states.push(Some((state, record)));
        }
        self.run_tokens = 0;
        self.save_cache = req.save_prompt_cache.clone().and_then(|path| {
            let first = states.iter().flatten().find_map(|(_, r)| r.clone())?;
            Some((path, first))
        });
        for (i, new) in states.into_iter().enumerate() {
            if let Some((state, record)) = new {
                self.slots[i] = state;
                self.held[i] = record;
            }
        }
        Ok(self
            .slots
            .iter()
            .zip(&plan)
            .map(|(s, p)| p.map(|_| s.pending))
            .collect())
    }

    /// Token states from the input's bytes (`bytes_per_token` per token) or ids, after the
    /// prefill time of the timing model; no slot's history changes.
    fn hidden_states(
        &mut self,
        req: &RunRequest,
        abort: &AtomicBool,
    ) -> Result<Vec<Option<Hidden>>, EngineError> {
        let per = self.profile.output.bytes_per_token.max(1);
        let out: Vec<Option<Hidden>> = req
            .slots
            .iter()
            .map(|input| {
                let tokens: Vec<Vec<u8>> = match input {
                    SlotInput::Idle => return None,
                    SlotInput::Prompt { text, .. } => {
                        text.as_bytes().chunks(per).map(<[u8]>::to_vec).collect()
                    }
                    SlotInput::Tokens(ids) => {
                        ids.iter().map(|t| t.to_le_bytes().to_vec()).collect()
                    }
                };
                let mut states = Vec::with_capacity(tokens.len() * HIDDEN_SIZE);
                tokens.iter().for_each(|t| hidden_state(t, &mut states));
                Some(Hidden {
                    states,
                    embd_size: HIDDEN_SIZE,
                    num_tokens: tokens.len(),
                })
            })
            .collect();
        if let Some(i) = out
            .iter()
            .position(|h| h.as_ref().is_some_and(|h| h.num_tokens == 0))
        {
            return Err(EngineError::InvalidInput(format!("slot {i}: empty prompt")));
        }
        let tokens: usize = out.iter().flatten().map(|h| h.num_tokens).sum();
        let tps = self.profile.timing.prefill_tokens_per_second;
        if tps > 0.0 {
            Self::pause(tokens as f64 * 1000.0 / tps, Some(abort));
        }
        Ok(out)
    }

    fn prefill(&mut self, abort: &AtomicBool) -> Result<(), EngineError> {
        let tokens: usize = self.slots.iter().map(|s| s.pending).sum();
        let tps = self.profile.timing.prefill_tokens_per_second;
        if tps > 0.0 {
            Self::pause(tokens as f64 * 1000.0 / tps, Some(abort));
        }
        for s in &mut self.slots {
            s.history += s.prompt;
            s.prompt = 0;
            s.pending = 0;
        }
        if let Some((path, record)) = self.save_cache.take() {
            std::fs::write(&path, record.to_file())
                .map_err(|e| EngineError::PromptCache(format!("saving {}: {e}", path.display())))?;
        }
        Ok(())
    }

    fn sample(&mut self, slot: usize, piece: &mut Vec<u8>) -> Result<Sampled, EngineError> {
        let faults = &self.profile.faults;
        self.run_tokens += 1;
        if faults.error_after_tokens > 0 && self.run_tokens > faults.error_after_tokens {
            return Err(EngineError::Injected(format!(
                "ERROR after {} tokens (faults.error_after_tokens)",
                faults.error_after_tokens
            )));
        }
        if faults.abort_after_tokens > 0 && self.run_tokens > faults.abort_after_tokens {
            crash_abort(&format!(
                "abort after {} tokens (faults.abort_after_tokens)",
                faults.abort_after_tokens
            ));
        }
        if faults.segfault_after_tokens > 0 && self.run_tokens > faults.segfault_after_tokens {
            eprintln!(
                "synthetic: segfault after {} tokens (faults.segfault_after_tokens)",
                faults.segfault_after_tokens
            );
            crate::exports::raise_segfault();
        }
        if faults.stall_after_tokens > 0 && self.run_tokens == faults.stall_after_tokens + 1 {
            let ms = if faults.stall_ms == 0 {
                f64::MAX / 4.0
            } else {
                faults.stall_ms as f64
            };
            // A stalled runtime ignores abort, like the field reports of a stuck NPU.
            Self::pause(ms.min(3.6e6), None);
        }
        let reemit = std::mem::take(&mut self.slots[slot].reemit);
        piece.extend_from_slice(&reemit);
        let sampled = self.next_piece(slot, piece);
        if !sampled.eog {
            if let Some(r) = &mut self.held[slot] {
                r.push(piece, sampled.token);
            }
        }
        Ok(sampled)
    }

    fn has_room(&self, slot: usize) -> bool {
        self.slots[slot].history + 1 < self.context
    }

    fn decode(&mut self, tokens: &[(usize, i32)]) -> Result<(), EngineError> {
        let b = tokens.len();
        if b > 0 {
            let t = &self.profile.timing;
            Self::pause(
                t.decode_step_ms * (1.0 + t.batch_alpha * (b as f64 - 1.0)),
                None,
            );
        }
        for (slot, _) in tokens {
            self.slots[*slot].history += 1;
        }
        Ok(())
    }

    fn stopping(&mut self, how: RunEnd) {
        let t = &self.profile.timing;
        match how {
            RunEnd::Paused => {
                if self.profile.faults.crash_on_pause {
                    crash_abort("abort when a callback returned 1 (faults.crash_on_pause)");
                }
                Self::pause(t.pause_ms as f64, None);
            }
            RunEnd::Aborted => Self::pause(t.abort_ms as f64, None),
            RunEnd::Finished => {}
        }
    }

    fn end_run(&mut self, keep_history: bool, last: &[(usize, i32)]) -> Result<(), EngineError> {
        for (slot, _) in last {
            self.slots[*slot].history += 1;
        }
        if !keep_history {
            for s in &mut self.slots {
                s.history = 0;
            }
        }
        Ok(())
    }

    fn memory_mb(&self) -> f32 {
        self.profile.model.memory_mb
    }

    fn clear_kv_cache(
        &mut self,
        _keep_system_prompt: bool,
        ranges: Option<&[(i32, i32)]>,
    ) -> Result<(), EngineError> {
        // Cleared cells no longer hold what the records say.
        self.held.iter_mut().for_each(|r| *r = None);
        match ranges {
            None => self.slots.iter_mut().for_each(|s| s.history = 0),
            Some(r) => {
                for (s, &(a, b)) in self.slots.iter_mut().zip(r) {
                    let (a, b) = (a.max(0) as usize, (b.max(0) as usize).min(s.history));
                    s.history -= b.saturating_sub(a);
                }
            }
        }
        Ok(())
    }

    fn kv_cache_sizes(&self) -> Vec<i32> {
        self.slots.iter().map(|s| s.history as i32).collect()
    }

    fn set_chat_template(&mut self, _system: &str, _prefix: &str, _postfix: &str) {}

    fn load_prompt_cache(&mut self, path: &Path) -> Result<(), EngineError> {
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::PromptCache(format!("{}: {e}", path.display())))?;
        let record = context::Record::from_file(&bytes).ok_or_else(|| {
            EngineError::PromptCache(format!(
                "{} is not a prompt cache this engine wrote",
                path.display()
            ))
        })?;
        Self::pause(self.profile.timing.prompt_cache_load_ms as f64, None);
        self.file_cache = Some(record);
        Ok(())
    }

    fn release_prompt_cache(&mut self) {
        self.file_cache = None;
    }

    fn finish_results(&self) -> FinishResults {
        self.profile.output.finish_results
    }

    fn shutdown(&mut self) {
        let f = &self.profile.faults;
        if f.destroy_hang_ms > 0 {
            std::thread::sleep(Duration::from_millis(f.destroy_hang_ms));
        }
        if f.hang_at_destroy {
            eprintln!("synthetic: hang at destroy (faults.hang_at_destroy)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if f.abort_at_destroy {
            crash_abort("abort at destroy (faults.abort_at_destroy)");
        }
    }
}
