//! GET_LAST_HIDDEN_LAYER through the C API on the default model (ABI 1.3): per-token states
//! of every slot in one callback, independent of batch-mates, and no effect on generation.

mod common;
use common::*;
use rkllm::{AbiFamily, Flow, InferMode, InferParams, Input, RunOutcome, StepState};

/// A slot's token count and states, copied out of the callback.
type SlotStates = Option<(usize, Vec<f32>)>;

/// Each slot's states, and the states seen per step.
fn hidden(h: &mut rkllm::Handle, inputs: &[Input]) -> (Vec<SlotStates>, Vec<StepState>) {
    let infer = InferParams {
        mode: InferMode::LastHiddenLayer,
        ..InferParams::default()
    };
    let mut out = vec![None; h.n_batch()];
    let mut states = Vec::new();
    let end = h
        .run(inputs, &infer, |step| {
            states.push(step.state());
            for (i, s) in step.slots().enumerate() {
                if let Some(hs) = s.hidden {
                    assert_eq!(hs.states.len(), hs.embd_size * hs.num_tokens);
                    out[i] = Some((hs.num_tokens, hs.states.to_vec()));
                }
            }
            Flow::Continue
        })
        .expect("run");
    assert_eq!(end, RunOutcome::Finished);
    (out, states)
}

#[test]
fn every_slot_reports_its_tokens_states_alone_and_generation_is_unchanged() {
    let _g = serial();
    let mut h = model_handle(AbiFamily::V1_3, 4, 8);
    let a = Input::prompt("The cat sat on the mat.");
    let b = Input::prompt("Paris is the capital of France, a country in Europe.");
    let greedy = InferParams {
        sampling: Some(rkllm::Sampling::greedy()),
        ..InferParams::default()
    };
    let before = generated(&mut h, &[Input::prompt(chatml("Hi"))], &greedy);

    let (alone, states) = hidden(&mut h, std::slice::from_ref(&a));
    assert_eq!(states, vec![StepState::Normal, StepState::Finish]);
    let (n_a, va) = alone[0].clone().expect("slot 0 has states");
    assert!(n_a >= 6, "{n_a} tokens");
    assert_eq!(va.len() % n_a, 0);
    assert!(va.iter().all(|x| x.is_finite()));
    assert!(
        alone[1..].iter().all(Option::is_none),
        "idle slots report nothing"
    );

    let (both, _) = hidden(
        &mut h,
        &[b.clone(), a.clone(), Input::tokens(Vec::new()), b],
    );
    let (_, va2) = both[1].clone().expect("slot 1");
    let max_diff = va
        .iter()
        .zip(&va2)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff < 1e-3,
        "batch-mates changed slot 1's states by {max_diff}"
    );
    assert!(both[2].is_none());
    assert_eq!(both[0].as_ref().unwrap().1, both[3].as_ref().unwrap().1);

    let after = generated(&mut h, &[Input::prompt(chatml("Hi"))], &greedy);
    assert_eq!(
        before, after,
        "an embedding run changed what generation does"
    );
}

fn generated(h: &mut rkllm::Handle, inputs: &[Input], infer: &InferParams) -> Vec<u8> {
    let mut text = Vec::new();
    h.run(inputs, infer, |step| {
        if step.state() == StepState::Normal {
            if let Some(t) = step.slot(0).text {
                text.extend_from_slice(t);
            }
        }
        Flow::Continue
    })
    .expect("run");
    text
}
