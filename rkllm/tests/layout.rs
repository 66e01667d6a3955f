//! Every size and offset below was measured with gcc from Rockchip's `rkllm.h`
//! (shared/rkllm-runtime.md). A mismatch here means a crash on a real board.

use rkllm::abi::*;
use std::mem::{align_of, offset_of, size_of};

#[test]
fn extend_param_is_the_same_in_both_families() {
    assert_eq!(size_of::<RKLLMExtendParam>(), 120);
    assert_eq!(align_of::<RKLLMExtendParam>(), 4);
    assert_eq!(offset_of!(RKLLMExtendParam, base_domain_id), 0);
    assert_eq!(offset_of!(RKLLMExtendParam, embed_flash), 4);
    assert_eq!(offset_of!(RKLLMExtendParam, enabled_cpus_num), 5);
    assert_eq!(offset_of!(RKLLMExtendParam, enabled_cpus_mask), 8);
    assert_eq!(offset_of!(RKLLMExtendParam, n_batch), 12);
    assert_eq!(offset_of!(RKLLMExtendParam, use_cross_attn), 13);
    assert_eq!(offset_of!(RKLLMExtendParam, reserved), 14);
}

#[test]
fn v1_2_param() {
    use v1_2::RKLLMParam as P;
    assert_eq!(size_of::<P>(), 208);
    assert_eq!(align_of::<P>(), 8);
    assert_eq!(offset_of!(P, model_path), 0);
    assert_eq!(offset_of!(P, max_context_len), 8);
    assert_eq!(offset_of!(P, max_new_tokens), 12);
    assert_eq!(offset_of!(P, top_k), 16);
    assert_eq!(offset_of!(P, n_keep), 20);
    assert_eq!(offset_of!(P, top_p), 24);
    assert_eq!(offset_of!(P, temperature), 28);
    assert_eq!(offset_of!(P, repeat_penalty), 32);
    assert_eq!(offset_of!(P, frequency_penalty), 36);
    assert_eq!(offset_of!(P, presence_penalty), 40);
    assert_eq!(offset_of!(P, mirostat), 44);
    assert_eq!(offset_of!(P, mirostat_tau), 48);
    assert_eq!(offset_of!(P, mirostat_eta), 52);
    assert_eq!(offset_of!(P, skip_special_token), 56);
    assert_eq!(offset_of!(P, is_async), 57);
    assert_eq!(offset_of!(P, img_start), 64);
    assert_eq!(offset_of!(P, img_end), 72);
    assert_eq!(offset_of!(P, img_content), 80);
    assert_eq!(offset_of!(P, extend_param), 88);
}

#[test]
fn v1_3_param() {
    use v1_3::RKLLMParam as P;
    assert_eq!(size_of::<P>(), 184);
    assert_eq!(align_of::<P>(), 8);
    assert_eq!(offset_of!(P, model_path), 0);
    assert_eq!(offset_of!(P, max_context_len), 8);
    assert_eq!(offset_of!(P, max_new_tokens), 12);
    assert_eq!(offset_of!(P, top_k), 16);
    assert_eq!(offset_of!(P, n_keep), 20);
    assert_eq!(offset_of!(P, top_p), 24);
    assert_eq!(offset_of!(P, temperature), 28);
    assert_eq!(offset_of!(P, repeat_penalty), 32);
    assert_eq!(offset_of!(P, frequency_penalty), 36);
    assert_eq!(offset_of!(P, presence_penalty), 40);
    assert_eq!(offset_of!(P, mirostat), 44);
    assert_eq!(offset_of!(P, mirostat_tau), 48);
    assert_eq!(offset_of!(P, mirostat_eta), 52);
    assert_eq!(offset_of!(P, skip_special_token), 56);
    assert_eq!(offset_of!(P, ignore_eos_token), 57);
    assert_eq!(offset_of!(P, is_async), 58);
    assert_eq!(offset_of!(P, extend_param), 60);
}

#[test]
fn inputs() {
    assert_eq!(size_of::<RKLLMTokenInput>(), 16);
    assert_eq!(size_of::<RKLLMEmbedInput>(), 16);
    assert_eq!(offset_of!(RKLLMTokenInput, n_tokens), 8);

    use v1_2::RKLLMInput as I12;
    assert_eq!(size_of::<I12>(), 64);
    assert_eq!(size_of::<v1_2::RKLLMMultiModelInput>(), 48);
    assert_eq!(offset_of!(I12, role), 0);
    assert_eq!(offset_of!(I12, enable_thinking), 8);
    assert_eq!(offset_of!(I12, input_type), 12);
    assert_eq!(offset_of!(I12, input), 16);

    use v1_3::RKLLMInput as I13;
    assert_eq!(size_of::<I13>(), 160);
    assert_eq!(size_of::<v1_3::RKLLMMultiModalInput>(), 144);
    assert_eq!(offset_of!(I13, role), 0);
    assert_eq!(offset_of!(I13, enable_thinking), 8);
    assert_eq!(offset_of!(I13, input_type), 12);
    assert_eq!(offset_of!(I13, input), 16);
}

#[test]
fn infer_params() {
    use v1_2::RKLLMInferParam as P12;
    assert_eq!(size_of::<P12>(), 32);
    assert_eq!(offset_of!(P12, mode), 0);
    assert_eq!(offset_of!(P12, lora_params), 8);
    assert_eq!(offset_of!(P12, prompt_cache_params), 16);
    assert_eq!(offset_of!(P12, keep_history), 24);

    use v1_3::RKLLMInferParam as P13;
    assert_eq!(size_of::<P13>(), 40);
    assert_eq!(offset_of!(P13, mode), 0);
    assert_eq!(offset_of!(P13, lora_params), 8);
    assert_eq!(offset_of!(P13, prompt_cache_params), 16);
    assert_eq!(offset_of!(P13, sampling_params), 24);
    assert_eq!(offset_of!(P13, keep_history), 32);
    assert_eq!(offset_of!(P13, max_new_tokens), 36);
}

#[test]
fn v1_3_sampling_and_callback() {
    use v1_3::RKLLMSamplingParam as S;
    assert_eq!(size_of::<S>(), 36);
    assert_eq!(offset_of!(S, top_k), 0);
    assert_eq!(offset_of!(S, top_p), 4);
    assert_eq!(offset_of!(S, temperature), 8);
    assert_eq!(offset_of!(S, repeat_penalty), 12);
    assert_eq!(offset_of!(S, frequency_penalty), 16);
    assert_eq!(offset_of!(S, presence_penalty), 20);
    assert_eq!(offset_of!(S, mirostat), 24);
    assert_eq!(offset_of!(S, mirostat_tau), 28);
    assert_eq!(offset_of!(S, mirostat_eta), 32);

    use v1_3::RKLLMCallback as C;
    assert_eq!(size_of::<C>(), 48);
    assert_eq!(offset_of!(C, result_callback), 0);
    assert_eq!(offset_of!(C, result_userdata), 8);
    assert_eq!(offset_of!(C, tokenizer_callback), 16);
    assert_eq!(offset_of!(C, tokenizer_userdata), 24);
    assert_eq!(offset_of!(C, embed_callback), 32);
    assert_eq!(offset_of!(C, embed_userdata), 40);
}

#[test]
fn types_shared_by_both_families() {
    assert_eq!(size_of::<RKLLMPromptCacheParam>(), 16);
    assert_eq!(offset_of!(RKLLMPromptCacheParam, save_prompt_cache), 0);
    assert_eq!(offset_of!(RKLLMPromptCacheParam, prompt_cache_path), 8);

    assert_eq!(size_of::<RKLLMLoraAdapter>(), 24);
    assert_eq!(offset_of!(RKLLMLoraAdapter, scale), 16);
    assert_eq!(size_of::<RKLLMLoraParam>(), 8);

    assert_eq!(size_of::<RKLLMPerfStat>(), 20);
    assert_eq!(align_of::<RKLLMPerfStat>(), 4);
    assert_eq!(offset_of!(RKLLMPerfStat, prefill_time_ms), 0);
    assert_eq!(offset_of!(RKLLMPerfStat, prefill_tokens), 4);
    assert_eq!(offset_of!(RKLLMPerfStat, generate_time_ms), 8);
    assert_eq!(offset_of!(RKLLMPerfStat, generate_tokens), 12);
    assert_eq!(offset_of!(RKLLMPerfStat, memory_usage_mb), 16);

    // The multi-batch callback strides over an array of these: 72 bytes each.
    assert_eq!(size_of::<RKLLMResult>(), 72);
    assert_eq!(align_of::<RKLLMResult>(), 8);
    assert_eq!(offset_of!(RKLLMResult, text), 0);
    assert_eq!(offset_of!(RKLLMResult, token_id), 8);
    assert_eq!(offset_of!(RKLLMResult, last_hidden_layer), 16);
    assert_eq!(offset_of!(RKLLMResult, logits), 32);
    assert_eq!(offset_of!(RKLLMResult, perf), 48);
    assert_eq!(offset_of!(RKLLMResultLastHiddenLayer, embd_size), 8);
    assert_eq!(offset_of!(RKLLMResultLastHiddenLayer, num_tokens), 12);
    assert_eq!(offset_of!(RKLLMResultLogits, vocab_size), 8);
    assert_eq!(offset_of!(RKLLMResultLogits, num_tokens), 12);
}

#[test]
fn enums_have_the_c_values() {
    assert_eq!(
        (
            call_state::NORMAL,
            call_state::WAITING,
            call_state::FINISH,
            call_state::ERROR
        ),
        (0, 1, 2, 3)
    );
    assert_eq!(
        (
            input_type::PROMPT,
            input_type::TOKEN,
            input_type::EMBED,
            input_type::MULTIMODAL
        ),
        (0, 1, 2, 3)
    );
    assert_eq!(
        (
            infer_mode::GENERATE,
            infer_mode::GET_LAST_HIDDEN_LAYER,
            infer_mode::GET_LOGITS
        ),
        (0, 1, 2)
    );
}
