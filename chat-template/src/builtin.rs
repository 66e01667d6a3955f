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
//
// Tools follow Qwen 2.5/3 (Hermes style): offered in the system turn, called in
// <tool_call> blocks, answered in <tool_response> blocks of a user turn. Without a system
// message of the caller's the tools section is the whole system turn, as in Qwen3.
const CHATML: &str = r#"
{%- if tools %}
{{- '<|im_start|>system\n' }}
    {%- if messages and messages[0].role == 'system' %}
{{- messages[0].content ~ '\n\n' }}
    {%- endif %}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
{{- '\n' ~ tool | tojson }}
    {%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if tools and loop.first and message.role == 'system' %}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}
{{- '<|im_start|>user' }}
        {%- endif %}
{{- '\n<tool_response>\n' ~ message.content ~ '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
{{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
{{- '<|im_start|>assistant' }}
        {%- if content or not message.tool_calls %}
{{- '\n' ~ content }}
        {%- endif %}
        {%- for call in message.tool_calls %}
{{- '\n<tool_call>\n{"name": "' ~ call.function.name ~ '", "arguments": ' ~ call.function.arguments | tojson ~ '}\n</tool_call>' }}
        {%- endfor %}
{{- '<|im_end|>\n' }}
    {%- else %}
{{- '<|im_start|>' ~ message.role ~ '\n' ~ message.content ~ '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is false %}
{{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"#;

// Tools follow Meta's Llama 3.1 JSON tool calling with the tools in the first user message
// (the layout its own template defaults to); calls are bare JSON objects, results come back
// in an `ipython` turn. Meta's format has one call per turn; several are separated by `; `.
const LLAMA3: &str = r#"
{{- '<|begin_of_text|>' }}
{%- set ns = namespace(tools_shown=false) %}
{%- for message in messages %}
    {%- set role = 'ipython' if message.role == 'tool' else message.role %}
{{- '<|start_header_id|>' ~ role ~ '<|end_header_id|>\n\n' }}
    {%- if tools and message.role == 'user' and not ns.tools_shown %}
{{- 'Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n' }}
        {%- for tool in tools %}
{{- tool | tojson(indent=4) ~ '\n\n' }}
        {%- endfor %}
        {%- set ns.tools_shown = true %}
    {%- endif %}
    {%- if message.tool_calls %}
        {%- for call in message.tool_calls %}
{{- ('; ' if not loop.first else '') ~ '{"name": "' ~ call.function.name ~ '", "parameters": ' ~ call.function.arguments | tojson ~ '}' }}
        {%- endfor %}
    {%- else %}
{{- message.content | trim }}
    {%- endif %}
{{- '<|eot_id|>' }}
{%- endfor %}
{%- if tools and not ns.tools_shown %}
{{- raise_exception('Llama 3 tools go in the first user message, and there is none') }}
{%- endif %}
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
