//! How PROMPT input is wrapped before tokenization: the model's own Jinja chat template by
//! default, or the system/prefix/postfix given to `rkllm_set_chat_template`.

use chat_template::ChatMessage;

#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// A Hugging Face Jinja template, as stored in the GGUF (`tokenizer.chat_template`),
    /// compiled once when the model loads.
    Jinja(chat_template::ChatTemplate),
    /// The model's template does not compile; every PROMPT render reports why.
    Invalid(String),
    /// Set by `rkllm_set_chat_template`; all empty passes text through verbatim.
    Fixed {
        system: String,
        prefix: String,
        postfix: String,
    },
}

// Sentinels mark where message contents go, so the text around them can be cut out.
const A: &str = "\u{1}rkllm-a\u{1}";
const B: &str = "\u{1}rkllm-b\u{1}";

impl ChatTemplate {
    /// The model's Jinja template with its BOS/EOS token texts. A template that does not
    /// compile is kept as the error, so requests fail with it rather than the model load.
    pub fn jinja(source: &str, bos: &str, eos: &str) -> Self {
        match chat_template::ChatTemplate::from_jinja(source, bos, eos) {
            Ok(t) => ChatTemplate::Jinja(t),
            Err(e) => {
                eprintln!("rkllm-cpu: {e}");
                ChatTemplate::Invalid(e.to_string())
            }
        }
    }

    pub fn verbatim() -> Self {
        ChatTemplate::Fixed {
            system: String::new(),
            prefix: String::new(),
            postfix: String::new(),
        }
    }

    fn render(
        template: &chat_template::ChatTemplate,
        messages: &[(&str, &str)],
        enable_thinking: bool,
    ) -> Result<String, String> {
        let messages: Vec<_> = messages
            .iter()
            .map(|(role, content)| ChatMessage::new(*role, *content))
            .collect();
        template
            .render_with(&messages, true, enable_thinking)
            .map_err(|e| e.to_string())
    }

    /// The text that starts a conversation with one message of `role`.
    pub fn first_turn(&self, role: &str, text: &str, thinking: bool) -> Result<String, String> {
        match self {
            ChatTemplate::Fixed {
                system,
                prefix,
                postfix,
            } => Ok(format!("{system}{prefix}{text}{postfix}")),
            ChatTemplate::Jinja(template) => Self::render(template, &[(role, text)], thinking),
            ChatTemplate::Invalid(e) => Err(e.clone()),
        }
    }

    /// The text that continues a conversation whose last assistant turn, ending in the
    /// end-of-generation token, is already in the KV cache.
    pub fn next_turn(&self, role: &str, text: &str, thinking: bool) -> Result<String, String> {
        match self {
            ChatTemplate::Fixed {
                prefix, postfix, ..
            } => Ok(format!("{prefix}{text}{postfix}")),
            ChatTemplate::Jinja(template) => {
                let out = Self::render(
                    template,
                    &[("user", A), ("assistant", B), (role, text)],
                    thinking,
                )?;
                let after = out
                    .split_once(B)
                    .map(|(_, rest)| rest)
                    .ok_or("chat template drops assistant turns")?;
                Ok(after
                    .strip_prefix(template.eos_token())
                    .unwrap_or(after)
                    .to_string())
            }
            ChatTemplate::Invalid(e) => Err(e.clone()),
        }
    }

    /// The system part of a first turn (kept by `rkllm_clear_kv_cache(keep_system_prompt)`).
    pub fn system_part(&self, thinking: bool) -> String {
        match self {
            ChatTemplate::Fixed { system, .. } => system.clone(),
            ChatTemplate::Jinja(_) => {
                let first = self.first_turn("user", A, thinking).unwrap_or_default();
                let next = self.next_turn("user", A, thinking).unwrap_or_default();
                let head = first.split(A).next().unwrap_or("");
                let user_prefix = next.split(A).next().unwrap_or("").trim_start();
                head.strip_suffix(user_prefix).unwrap_or("").to_string()
            }
            ChatTemplate::Invalid(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn chatml() -> ChatTemplate {
        ChatTemplate::jinja(CHATML, "<|im_start|>", "<|im_end|>")
    }

    #[test]
    fn jinja_first_turn_adds_the_default_system_message() {
        let t = chatml().first_turn("user", "Hi", false).unwrap();
        assert_eq!(
            t,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn jinja_next_turn_follows_the_eos_already_in_the_cache() {
        let t = chatml().next_turn("user", "More", false).unwrap();
        assert_eq!(
            t,
            "\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn system_part_is_the_head_before_the_user_prefix() {
        assert_eq!(
            chatml().system_part(false),
            "<|im_start|>system\nYou are helpful<|im_end|>\n"
        );
    }

    #[test]
    fn fixed_and_verbatim() {
        let t = ChatTemplate::Fixed {
            system: "S:".into(),
            prefix: "[".into(),
            postfix: "]".into(),
        };
        assert_eq!(t.first_turn("user", "x", false).unwrap(), "S:[x]");
        assert_eq!(t.next_turn("user", "y", false).unwrap(), "[y]");
        assert_eq!(
            ChatTemplate::verbatim()
                .first_turn("user", "as is", false)
                .unwrap(),
            "as is"
        );
    }

    #[test]
    fn template_errors_are_reported_not_panicked() {
        let t = ChatTemplate::jinja("{{ raise_exception('no') }}", "", "");
        assert!(t.first_turn("user", "x", false).unwrap_err().contains("no"));
        let t = ChatTemplate::jinja("{% if %}", "", "");
        assert!(matches!(t, ChatTemplate::Invalid(_)));
        assert!(t
            .next_turn("user", "x", false)
            .unwrap_err()
            .contains("syntax error"));
        assert_eq!(t.system_part(false), "");
    }
}
