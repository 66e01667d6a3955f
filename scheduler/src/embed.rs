//! Embedding runs: the waiting embedding requests a free instance took (never mixed with
//! generation: their [`BatchKey`] is [`BatchKey::EMBEDDING`]) go through one
//! `GET_LAST_HIDDEN_LAYER` run, one input per slot. The runtime reports each input's
//! per-token last hidden layer (Rockchip's contract); the callback pools it at once by the
//! model's [`Pooling`] and L2-normalises it, so the runtime's buffer can be released in the
//! same callback and only `embd_size` floats per request outlive it.

use crate::instance::{Instance, InstanceState};
use crate::model::Model;
use crate::queue::Pending;
use crate::records::{counted, Outcome, RequestRecord, RunRecord};
use crate::request::{Event, Failure, FinishReason, Timings};
use crate::telemetry::FailKind;
use rkllm::{Engine, Flow, HiddenStates, InferMode, Input, RunOutcome, RunParams, StepState};
use std::time::{Duration, Instant};

/// How a sequence's token states become one vector (GGUF `{arch}.pooling_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pooling {
    /// The average over tokens: what causal LMs without a pooling type get, as Ollama and
    /// llama.cpp's server do for them.
    #[default]
    Mean,
    /// The first token's state (BERT-style models).
    Cls,
    /// The last token's state (decoder embedding models such as Qwen3-Embedding).
    Last,
}

impl Pooling {
    /// From GGUF's `pooling_type` value (0 none, 1 mean, 2 cls, 3 last, 4 rank): one vector
    /// per input is needed, so none and rank fall back to mean.
    pub fn from_gguf(value: u32) -> Pooling {
        match value {
            2 => Pooling::Cls,
            3 => Pooling::Last,
            _ => Pooling::Mean,
        }
    }
}

/// One vector from a sequence's token states.
pub fn pool(h: &HiddenStates<'_>, pooling: Pooling) -> Vec<f32> {
    match pooling {
        Pooling::Cls => h.token(0).to_vec(),
        Pooling::Last => h.token(h.num_tokens - 1).to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f64; h.embd_size];
            for t in 0..h.num_tokens {
                for (s, &x) in sum.iter_mut().zip(h.token(t)) {
                    *s += f64::from(x);
                }
            }
            let n = h.num_tokens as f64;
            sum.into_iter().map(|s| (s / n) as f32).collect()
        }
    }
}

/// Scales `v` to unit length, as OpenAI's and Ollama's embeddings are (so a dot product is
/// the cosine). A zero vector stays zero.
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

/// Runs `members` (at most `n_batch`) through one hidden-state run and ends each request
/// with its vector ([`Event::Embedding`]) or the run's failure.
pub(crate) fn run(
    model: &Model,
    inst: &Instance,
    generation: u64,
    engine: &mut dyn Engine,
    members: Vec<Pending>,
) {
    let cfg = &model.cfg;
    let tel = &model.queue.tel;
    let started = Instant::now();
    let inputs: Vec<Input> = members
        .iter()
        .map(|p| match &p.req.prompt_ids {
            Some(ids) => Input::tokens(ids.clone()),
            None => Input::prompt(p.req.prompt.clone()),
        })
        .collect();
    inst.touch();
    *inst.state.lock() = InstanceState::Running {
        slots: members.len(),
    };
    let params = RunParams {
        mode: InferMode::LastHiddenLayer,
        release_hidden_states: cfg.release_hidden_states,
        ..RunParams::default()
    };
    let pooling = cfg.pooling;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; members.len()];
    let mut memory_mb = None;
    let result = engine.run(&inputs, &params, &mut |step| {
        if inst.current(generation) {
            inst.touch();
        }
        if matches!(step.state(), StepState::Normal | StepState::Waiting) {
            for (v, s) in vectors.iter_mut().zip(step.slots()) {
                if let Some(h) = s.hidden {
                    let mut e = pool(&h, pooling);
                    normalize(&mut e);
                    *v = Some(e);
                }
                memory_mb = Some(s.perf.memory_usage_mb);
            }
        }
        Flow::Continue
    });
    let failure = match result {
        Ok(RunOutcome::Finished) | Ok(RunOutcome::Stopped) => None,
        Ok(RunOutcome::Failed) => Some("the runtime reported an error during the run".to_string()),
        Ok(RunOutcome::Aborted) => Some("the run was aborted".to_string()),
        Err(e) => Some(format!("the run failed: {e}")),
    };
    if let Some(f) = &failure {
        tracing::warn!(model = %cfg.name, instance = inst.index, "embedding run: {f}");
    }
    let now = Instant::now();
    let n = members.len();
    for (p, v) in members.into_iter().zip(vectors) {
        let queue = started.saturating_duration_since(p.req.arrival);
        let (events, outcome) = match (v, &failure) {
            (Some(vector), None) => (
                vec![
                    Event::Embedding { vector, at: now },
                    end(&p, FinishReason::Stop, queue),
                ],
                Outcome::Stop,
            ),
            (_, f) => {
                let message = f.clone().unwrap_or_else(|| {
                    "the runtime returned no hidden states for this input".to_string()
                });
                let failure = Failure::new(FailKind::RuntimeError, message);
                (
                    vec![end(&p, FinishReason::Error(failure), queue)],
                    Outcome::Failed(FailKind::RuntimeError),
                )
            }
        };
        tel.request(RequestRecord {
            model: tel.model.clone(),
            outcome,
            counted: counted(p.choices.as_deref(), outcome),
            prompt_tokens: p.req.prompt_tokens as u32,
            completion_tokens: 0,
            prefilled_tokens: None,
            queue,
            ttft: None,
            prefill: Some(now.saturating_duration_since(started)),
            decode: Duration::ZERO,
            e2e: now.saturating_duration_since(p.req.arrival),
            itl_us: Vec::new(),
        });
        for e in events {
            let _ = p.tx.send(e);
        }
    }
    tel.run(RunRecord {
        model: tel.model.clone(),
        slots: n,
        busy: started.elapsed(),
        steps: 1,
        slot_steps: n as u64,
        dead_slot_steps: 0,
        cut: false,
        resumed_prefill_tokens: 0,
        memory_bytes: memory_mb.map(|mb| (f64::from(mb) * 1024.0 * 1024.0) as u64),
    });
    if inst.current(generation) {
        *inst.state.lock() = InstanceState::Idle;
    }
}

fn end(p: &Pending, reason: FinishReason, queue: Duration) -> Event {
    Event::End {
        reason,
        prompt_tokens: p.req.prompt_tokens as u32,
        completion_tokens: 0,
        timings: Timings {
            queue,
            ..Timings::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(v: &[f32], embd: usize) -> HiddenStates<'_> {
        HiddenStates {
            states: v,
            embd_size: embd,
            num_tokens: v.len() / embd,
        }
    }

    #[test]
    fn pooling_takes_the_mean_the_first_or_the_last_token() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0];
        let h = states(&v, 2);
        assert_eq!(pool(&h, Pooling::Mean), vec![3.0, 5.0]);
        assert_eq!(pool(&h, Pooling::Cls), vec![1.0, 2.0]);
        assert_eq!(pool(&h, Pooling::Last), vec![5.0, 9.0]);
        assert_eq!(Pooling::from_gguf(0), Pooling::Mean);
        assert_eq!(Pooling::from_gguf(2), Pooling::Cls);
        assert_eq!(Pooling::from_gguf(3), Pooling::Last);
        assert_eq!(Pooling::from_gguf(4), Pooling::Mean);
    }

    #[test]
    fn normalised_vectors_have_unit_length_and_zero_stays_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
