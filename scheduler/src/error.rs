use std::time::Duration;

/// Why a request was refused before any streaming started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("model '{0}' not found")]
    UnknownModel(String),
    #[error("model '{model}' is unavailable: {reason}")]
    ModelUnavailable { model: String, reason: String },
    #[error(
        "the prompt has {prompt_tokens} tokens but model '{model}' has a context of {context_len}"
    )]
    PromptTooLong {
        model: String,
        prompt_tokens: usize,
        context_len: usize,
    },
    #[error("model '{model}' is overloaded: {waiting} requests are waiting; retry later")]
    Overloaded {
        model: String,
        waiting: usize,
        retry_after: Duration,
    },
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}
