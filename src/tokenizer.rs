//! Prompt token counts. For GGUF models they are exact: the vocabulary is loaded from the
//! same file with llama.cpp (vocab only, no weights) and tokenizes as the runtime does.
//! For `.rkllm` files the tokenizer lives inside the closed runtime, so counts are estimates.

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use std::path::Path;
use std::sync::OnceLock;

fn backend() -> Result<&'static LlamaBackend, String> {
    static B: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    B.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(
            llama_cpp_2::LogOptions::default().with_logs_enabled(false),
        );
        LlamaBackend::init().map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| e.clone())
}

pub enum Tokenizer {
    /// The model's own vocabulary.
    Exact(Box<Vocab>),
    /// `ceil(bytes / bytes_per_token)`: exact for synthetic profiles (that is how the
    /// synthetic engine counts), an estimate for `.rkllm` models.
    Bytes { bytes_per_token: usize, exact: bool },
}

pub struct Vocab {
    model: LlamaModel,
    bos_text: String,
}

/// What a GGUF file says about itself.
pub struct GgufInfo {
    pub chat_template: Option<String>,
    pub bos: String,
    pub eos: String,
    pub context_len: usize,
    pub architecture: Option<String>,
    pub parameters: u64,
    /// `{arch}.embedding_length`: the size of the hidden states embeddings are made of.
    pub embedding_len: Option<usize>,
    /// `{arch}.pooling_type` (0 none, 1 mean, 2 cls, 3 last, 4 rank), absent for most LMs.
    pub pooling_type: Option<u32>,
}

impl Tokenizer {
    /// Loads the vocabulary of a GGUF file and reads its metadata.
    pub fn gguf(path: &Path) -> Result<(Tokenizer, GgufInfo), String> {
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend()?, path, &params)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let vocab = model.vocab();
        let text = |t| {
            vocab
                .text(t)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let (bos, eos) = (text(vocab.bos()), text(vocab.eos()));
        let architecture = model.meta_val_str("general.architecture").ok();
        // A vocab-only load leaves the hyperparameters unread: take the context from metadata.
        let context_len = architecture
            .as_ref()
            .and_then(|a| model.meta_val_str(&format!("{a}.context_length")).ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let meta = |key: &str| {
            architecture
                .as_ref()
                .and_then(|a| model.meta_val_str(&format!("{a}.{key}")).ok())
        };
        let embedding_len = meta("embedding_length").and_then(|v| v.trim().parse().ok());
        let pooling_type = meta("pooling_type").and_then(|v| v.trim().parse().ok());
        let info = GgufInfo {
            embedding_len,
            pooling_type,
            chat_template: model
                .chat_template(None)
                .ok()
                .and_then(|t| t.to_string().ok()),
            bos: bos.clone(),
            eos,
            context_len,
            architecture,
            parameters: model.n_params(),
        };
        Ok((
            Tokenizer::Exact(Box::new(Vocab {
                model,
                bos_text: bos,
            })),
            info,
        ))
    }

    /// Tokens the runtime will prefill for `text` passed verbatim at the start of a sequence.
    pub fn count(&self, text: &str) -> usize {
        match self {
            Tokenizer::Exact(_) => self.ids(text).map_or(0, |ids| ids.len()),
            Tokenizer::Bytes {
                bytes_per_token, ..
            } => text.len().div_ceil((*bytes_per_token).max(1)).max(1),
        }
    }

    /// The token ids the runtime would make of `text`, where this tokenizer is the model's
    /// own (GGUF); `None` where only counts are known.
    pub fn ids(&self, text: &str) -> Option<Vec<i32>> {
        let Tokenizer::Exact(v) = self else {
            return None;
        };
        let vocab = v.model.vocab();
        // The CPU runtime adds BOS unless the rendered text already starts with it.
        let add_bos = vocab.should_add_bos() && !text.starts_with(&v.bos_text);
        Some(
            vocab
                .tokenize(text.as_bytes(), add_bos, true)
                .into_iter()
                .map(|t| t.0)
                .collect(),
        )
    }

    pub fn is_exact(&self) -> bool {
        match self {
            Tokenizer::Exact(_) => true,
            Tokenizer::Bytes { exact, .. } => *exact,
        }
    }
}
