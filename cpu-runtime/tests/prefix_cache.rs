//! A system prompt shared by several requests, on the default model: a warm request (same
//! system prompt, another question) prefills only the tokens after the shared prefix, and its
//! reply is the one a cold run gives. Prompts longer than one llama.cpp batch, and several
//! slots at once, still reply as they do alone.

mod common;
mod resume;
use common::*;
use resume::*;
use rkllm::{AbiFamily, Handle, Input};

/// The coding-assistant system prompt the prefix-cache tests share.
const SYSTEM: &str = include_str!("../../tests/data/coding-system-prompt.txt");

const N_BATCH: usize = 4;

fn chat(system: &str, user: &str) -> String {
    format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn handle() -> Handle {
    let rt = runtime(AbiFamily::V1_3);
    let mut p = params(&rt, model_path(), N_BATCH as u8, 6);
    p.max_context_len = 2048;
    let mut h = rt.init(&p).expect("init");
    h.set_chat_template("", "", "").unwrap();
    h
}

/// Runs `ids` in `slot` alone.
fn run_in(h: &mut Handle, slot: usize, ids: &[i32]) -> Segment {
    let mut inputs = vec![Input::tokens(vec![]); N_BATCH];
    inputs[slot] = Input::tokens(ids.to_vec());
    run_cut(h, &inputs, None)
}

fn shared(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn a_warm_request_prefills_only_what_follows_the_shared_system_prompt() {
    let _g = serial();
    let mut h = handle();
    let first = prompt_ids(&chat(SYSTEM, "How do I reverse a list in Python?"));
    let second = prompt_ids(&chat(SYSTEM, "What is a Rust lifetime?"));
    let common = shared(&first, &second);
    assert!(
        common > 100 && second.len() - common < 20,
        "the prompts share {common} of {} tokens",
        second.len()
    );

    // The second question cold, in a slot nobody used: the reference reply.
    let cold = run_in(&mut h, 1, &second);
    assert_eq!(cold.prefill[1] as usize, second.len());

    let warmup = run_in(&mut h, 0, &first);
    assert_eq!(warmup.prefill[0] as usize, first.len());
    let warm = run_in(&mut h, 0, &second);
    assert_eq!(
        warm.prefill[0] as usize,
        second.len() - common,
        "a warm request prefilled {} of its {} tokens ({common} shared with the last one)",
        warm.prefill[0],
        second.len()
    );
    assert_eq!(
        warm.ids[0], cold.ids[1],
        "the warm reply differs from the cold one"
    );
    h.destroy().unwrap();
}

#[test]
fn long_prompts_and_several_slots_reply_as_they_do_alone() {
    let _g = serial();
    let mut h = handle();
    // Over one llama.cpp batch (512 tokens), so its prefill takes several passes.
    let long = prompt_ids(&chat(&[SYSTEM; 4].join(" "), "Summarise the rules above."));
    assert!(long.len() > 512, "{} tokens", long.len());
    let short = prompt_ids(&chat("You are terse.", "Name a prime number."));
    let alone_long = run_in(&mut h, 0, &long);
    let alone_short = run_in(&mut h, 1, &short);
    // Other slots' caches must not matter: slot 2 and 3 start cold here.
    let together = run_cut(
        &mut h,
        &[
            Input::tokens(vec![]),
            Input::tokens(vec![]),
            Input::tokens(short.clone()),
            Input::tokens(long.clone()),
        ],
        None,
    );
    assert_eq!(together.prefill[3] as usize, long.len());
    // llama.cpp's CPU flash attention (on by default here) is not batch-invariant: another
    // slot's tokens in the same passes change the float sums, and a near-tie can flip a
    // later greedy token (this prompt's 5th, seen on 2026-12-03; with
    // RKLLM_CPU_FLASH_ATTN=0 the whole replies agree). A wrong position or logits row, what
    // this test is for, garbles a reply from its first token.
    agree_at_first(&together.ids[3], &alone_long.ids[0], "long");
    agree_at_first(&together.ids[2], &alone_short.ids[1], "short");
    h.destroy().unwrap();
}

/// Two greedy replies to one prompt, batched and alone, agree on their first 4 tokens and
/// have the same length.
fn agree_at_first(batched: &[i32], alone: &[i32], what: &str) {
    let n = batched
        .iter()
        .zip(alone)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        n >= 4.min(alone.len()) && batched.len() == alone.len(),
        "the {what} prompt's reply batched {batched:?} and alone {alone:?} agree on {n} tokens"
    );
}
