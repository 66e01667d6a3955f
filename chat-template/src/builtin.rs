//! Chat templates for the model families people convert to `.rkllm`, so a model works without
//! its `tokenizer_config.json`. They follow each family's published prompt format; they are
//! written for `trim_blocks`/`lstrip_blocks` (as Hugging Face renders templates), which is why
//! the layout below can be indented freely.

/// One built-in family: its template and the token texts it is rendered with.
pub(crate) struct Builtin {
    pub name: &'static str,
    pub source: &'static str,
    pub bos: &'static str,
    pub eos: &'static str,
}

pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "chatml",
        source: CHATML,
        // Qwen has no BOS token; ChatML models that do (SmolLM) do not put it in prompts.
        bos: "",
        eos: "<|im_end|>",
    },
    Builtin {
        name: "llama3",
        source: LLAMA3,
        bos: "<|begin_of_text|>",
        // The instruct models end a turn with <|eot_id|>; <|end_of_text|> is the base EOS.
        eos: "<|eot_id|>",
    },
    Builtin {
        name: "gemma",
        source: GEMMA,
        bos: "<bos>",
        eos: "<eos>",
    },
    Builtin {
        name: "phi3",
        source: PHI3,
        bos: "<s>",
        eos: "<|endoftext|>",
    },
    Builtin {
        name: "minicpm",
        source: MINICPM,
        bos: "<s>",
        eos: "</s>",
    },
    Builtin {
        name: "deepseek",
        source: DEEPSEEK,
        bos: "<｜begin▁of▁sentence｜>",
        eos: "<｜end▁of▁sentence｜>",
    },
];

// Thinking models (Qwen3, QwQ) are not shown their earlier reasoning again, and an empty
// think block is how Qwen3 is told to answer directly; ChatML models that never think see
// neither unless a caller explicitly turns thinking off.
const CHATML: &str = r#"
{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
    {%- else %}
        {%- set content = message.content %}
    {%- endif %}
{{- '<|im_start|>' ~ message.role ~ '\n' ~ content ~ '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is false %}
{{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"#;

const LLAMA3: &str = r#"
{{- '<|begin_of_text|>' }}
{%- for message in messages %}
{{- '<|start_header_id|>' ~ message.role ~ '<|end_header_id|>\n\n' ~ message.content | trim ~ '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

// Gemma has no system role: the system text opens the first user turn instead.
const GEMMA: &str = r#"
{{- '<bos>' }}
{%- if messages and messages[0].role == 'system' %}
    {%- set system = messages[0].content | trim ~ '\n\n' %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system = '' %}
    {%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
    {%- set role = 'model' if message.role == 'assistant' else message.role %}
{{- '<start_of_turn>' ~ role ~ '\n' ~ (system if loop.first else '') ~ message.content | trim ~ '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<start_of_turn>model\n' }}
{%- endif %}
"#;

const PHI3: &str = r#"
{%- for message in messages %}
{{- '<|' ~ message.role ~ '|>\n' ~ message.content ~ '<|end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|assistant|>\n' }}
{%- endif %}
"#;

// MiniCPM marks only who speaks next, so a system prompt is plain text ahead of the first turn.
const MINICPM: &str = r#"
{%- for message in messages %}
    {%- if message.role == 'user' %}
{{- '<用户>' ~ message.content | trim }}
    {%- elif message.role == 'assistant' %}
{{- '<AI>' ~ message.content | trim }}
    {%- else %}
{{- message.content | trim }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<AI>' }}
{%- endif %}
"#;

// DeepSeek puts all system text, unmarked, straight after BOS, wherever it appears in the
// conversation. R1 models are not shown their earlier reasoning again.
const DEEPSEEK: &str = r#"
{{- '<｜begin▁of▁sentence｜>' }}
{{- messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\n\n') }}
{%- for message in messages %}
    {%- if message.role == 'user' %}
{{- '<｜User｜>' ~ message.content }}
    {%- elif message.role == 'assistant' %}
{{- '<｜Assistant｜>' ~ message.content.split('</think>')[-1].lstrip('\n') ~ '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<｜Assistant｜>' }}
    {%- if enable_thinking is false %}
{{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"#;
