//! How PROMPT input is wrapped before tokenization: the model's own Jinja chat template by
//! default, or the system/prefix/postfix given to `rkllm_set_chat_template`.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// A Hugging Face Jinja template, as stored in the GGUF (`tokenizer.chat_template`).
    Jinja {
        source: String,
        bos: String,
        eos: String,
    },
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

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(_fmt: String) -> String {
    String::new()
}

impl ChatTemplate {
    pub fn verbatim() -> Self {
        ChatTemplate::Fixed {
            system: String::new(),
            prefix: String::new(),
            postfix: String::new(),
        }
    }

    fn render(
        source: &str,
        bos: &str,
        eos: &str,
        messages: &[(&str, &str)],
        enable_thinking: bool,
    ) -> Result<String, JinjaError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template("chat", source)?;
        let messages: Vec<_> = messages
            .iter()
            .map(|(role, content)| context! { role => *role, content => *content })
            .collect();
        env.get_template("chat")?.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
            enable_thinking => enable_thinking,
        })
    }

    /// The text that starts a conversation with one message of `role`.
    pub fn first_turn(&self, role: &str, text: &str, thinking: bool) -> Result<String, String> {
        match self {
            ChatTemplate::Fixed {
                system,
                prefix,
                postfix,
            } => Ok(format!("{system}{prefix}{text}{postfix}")),
            ChatTemplate::Jinja { source, bos, eos } => {
                Self::render(source, bos, eos, &[(role, text)], thinking)
                    .map_err(|e| format!("chat template: {e}"))
            }
        }
    }

    /// The text that continues a conversation whose last assistant turn, ending in the
    /// end-of-generation token, is already in the KV cache.
    pub fn next_turn(&self, role: &str, text: &str, thinking: bool) -> Result<String, String> {
        match self {
            ChatTemplate::Fixed {
                prefix, postfix, ..
            } => Ok(format!("{prefix}{text}{postfix}")),
            ChatTemplate::Jinja { source, bos, eos } => {
                let out = Self::render(
                    source,
                    bos,
                    eos,
                    &[("user", A), ("assistant", B), (role, text)],
                    thinking,
                )
                .map_err(|e| format!("chat template: {e}"))?;
                let after = out
                    .split_once(B)
                    .map(|(_, rest)| rest)
                    .ok_or("chat template drops assistant turns")?;
                Ok(after
                    .strip_prefix(eos.as_str())
                    .unwrap_or(after)
                    .to_string())
            }
        }
    }

    /// The system part of a first turn (kept by `rkllm_clear_kv_cache(keep_system_prompt)`).
    pub fn system_part(&self, thinking: bool) -> String {
        match self {
            ChatTemplate::Fixed { system, .. } => system.clone(),
            ChatTemplate::Jinja { .. } => {
                let first = self.first_turn("user", A, thinking).unwrap_or_default();
                let next = self.next_turn("user", A, thinking).unwrap_or_default();
                let head = first.split(A).next().unwrap_or("");
                let user_prefix = next.split(A).next().unwrap_or("").trim_start();
                head.strip_suffix(user_prefix).unwrap_or("").to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn chatml() -> ChatTemplate {
        ChatTemplate::Jinja {
            source: CHATML.into(),
            bos: "<|im_start|>".into(),
            eos: "<|im_end|>".into(),
        }
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
        let t = ChatTemplate::Jinja {
            source: "{{ raise_exception('no') }}".into(),
            bos: String::new(),
            eos: String::new(),
        };
        assert!(t.first_turn("user", "x", false).unwrap_err().contains("no"));
    }
}
