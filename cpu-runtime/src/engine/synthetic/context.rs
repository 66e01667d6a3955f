//! What a synthetic slot last held: its last run's input followed by what that run generated.
//! A real model's output is a function of its whole context; this record is what lets the
//! synthetic engine behave the same way. A new input that repeats the record exactly (the
//! prompt followed by the reply so far, as a scheduler resumes a cut run) continues that
//! sequence, and with prefix reuse on, the part of a new input it shares is not prefilled.

use crate::request::SlotInput;
use crate::utf8::incomplete_tail;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Text(Vec<u8>),
    Tokens(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    input: Input,
    /// Every byte the run's pieces carried, including any the runtime held back.
    text: Vec<u8>,
    /// The token ids the run reported.
    ids: Vec<i32>,
}

impl Record {
    /// `None` for an idle slot, which holds nothing new.
    pub fn new(input: &SlotInput) -> Option<Record> {
        let input = match input {
            SlotInput::Idle => return None,
            SlotInput::Prompt { text, .. } => Input::Text(text.as_bytes().to_vec()),
            SlotInput::Tokens(ids) => Input::Tokens(ids.clone()),
        };
        Some(Record {
            input,
            text: Vec::new(),
            ids: Vec::new(),
        })
    }

    pub fn push(&mut self, piece: &[u8], token: i32) {
        self.text.extend_from_slice(piece);
        self.ids.push(token);
    }

    /// The first bytes of a character the reply was cut in: the runtime's UTF-8 carry held
    /// them back and never reported them, so a client's text lacks them.
    pub fn held(&self) -> &[u8] {
        incomplete_tail(&self.text)
    }

    /// Whether `input` is this record's input followed by everything it generated, as the
    /// client received it (text: without the held-back bytes; tokens: every reported id).
    pub fn continued_by(&self, input: &SlotInput) -> bool {
        match (&self.input, input) {
            (Input::Text(prompt), SlotInput::Prompt { text, .. }) => {
                let reply = &self.text[..self.text.len() - self.held().len()];
                let text = text.as_bytes();
                text.len() == prompt.len() + reply.len()
                    && text.starts_with(prompt)
                    && &text[prompt.len()..] == reply
            }
            (Input::Tokens(prompt), SlotInput::Tokens(ids)) => {
                ids.len() == prompt.len() + self.ids.len()
                    && ids.starts_with(prompt)
                    && ids[prompt.len()..] == self.ids[..]
            }
            _ => false,
        }
    }

    /// How many whole prompt tokens of `input` the slot already holds (a common prefix with
    /// the record): text counts `bytes_per_token` bytes a token, token input counts ids.
    pub fn shared_tokens(&self, input: &SlotInput, bytes_per_token: usize) -> usize {
        match (&self.input, input) {
            (Input::Text(prompt), SlotInput::Prompt { text, .. }) => {
                let held = prompt.iter().chain(&self.text);
                let common = held.zip(text.as_bytes()).take_while(|(a, b)| a == b);
                common.count() / bytes_per_token.max(1)
            }
            (Input::Tokens(prompt), SlotInput::Tokens(ids)) => {
                let held = prompt.iter().chain(&self.ids);
                held.zip(ids).take_while(|(a, b)| a == b).count()
            }
            _ => 0,
        }
    }
}

/// The start of a synthetic prompt-cache file: what it holds is a prompt, not model state.
const FILE_MAGIC: &[u8; 8] = b"RKSYNPC1";

impl Record {
    /// The record's input as a prompt-cache file: the prompt whose prefill state a real
    /// runtime would save (the reply is not part of it).
    pub fn to_file(&self) -> Vec<u8> {
        let mut out = FILE_MAGIC.to_vec();
        match &self.input {
            Input::Text(t) => {
                out.push(0);
                out.extend_from_slice(t);
            }
            Input::Tokens(ids) => {
                out.push(1);
                ids.iter()
                    .for_each(|t| out.extend_from_slice(&t.to_le_bytes()));
            }
        }
        out
    }

    /// A record of the prompt a file holds, with no reply; `None` if it is not such a file.
    pub fn from_file(bytes: &[u8]) -> Option<Record> {
        let rest = bytes.strip_prefix(FILE_MAGIC)?;
        let (&tag, body) = rest.split_first()?;
        let input = match tag {
            0 => Input::Text(body.to_vec()),
            1 if body.len() % 4 == 0 => Input::Tokens(
                body.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            _ => return None,
        };
        Some(Record {
            input,
            text: Vec::new(),
            ids: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &[u8]) -> SlotInput {
        SlotInput::Prompt {
            text: String::from_utf8_lossy(s).into_owned(),
            role: "user".into(),
            enable_thinking: false,
        }
    }

    #[test]
    fn a_text_continuation_lacks_exactly_the_held_bytes() {
        let mut r = Record::new(&text(b"hi")).unwrap();
        let e = "é".as_bytes();
        r.push(b" one", 100);
        r.push(&e[..1], 98);
        assert_eq!(r.held(), &e[..1]);
        assert!(r.continued_by(&text(b"hi one")));
        assert!(!r.continued_by(&text(b"hi on")));
        assert!(!r.continued_by(&text(b"hi one two")));
        assert!(!r.continued_by(&SlotInput::Tokens(vec![1])));
        // Every byte it shares counts toward the prefix, the held one too.
        assert_eq!(r.shared_tokens(&text(b"hi one"), 2), 3);
        assert_eq!(r.shared_tokens(&text(b"ho"), 1), 1);
    }

    #[test]
    fn a_token_continuation_repeats_every_reported_id() {
        let mut r = Record::new(&SlotInput::Tokens(vec![5, 6])).unwrap();
        r.push(b"x", 100);
        r.push(b"y", 101);
        assert!(r.continued_by(&SlotInput::Tokens(vec![5, 6, 100, 101])));
        assert!(!r.continued_by(&SlotInput::Tokens(vec![5, 6, 100])));
        assert_eq!(
            r.shared_tokens(&SlotInput::Tokens(vec![5, 6, 100, 7]), 4),
            3
        );
        assert!(Record::new(&SlotInput::Idle).is_none());
    }

    #[test]
    fn a_file_holds_the_prompt_and_not_the_reply() {
        for input in [
            text(b"system: be brief"),
            SlotInput::Tokens(vec![1, -2, 300]),
        ] {
            let mut r = Record::new(&input).unwrap();
            r.push(b"reply", 100);
            let back = Record::from_file(&r.to_file()).unwrap();
            assert_eq!(back, Record::new(&input).unwrap());
        }
        assert!(Record::from_file(b"RKSYNPC1\x01abc").is_none());
        assert!(Record::from_file(b"GGUF").is_none());
    }
}
