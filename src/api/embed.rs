//! Embeddings for both APIs: count (and, if asked, truncate) each input to the context,
//! submit one scheduler embedding request per input (they share `GET_LAST_HIDDEN_LAYER`
//! runs, up to `n_batch` inputs each, in the model's own queue), and wait for the vectors,
//! which the scheduler pools by the model's pooling type and L2-normalises.

use super::disconnect::Client;
use super::error::ApiError;
use super::generate;
use super::AppState;
use crate::catalog::Served;
use actix_web::web;
use futures_util::future::join_all;
use rkllm::Sampling;
use scheduler::{Event, FinishReason, Request, RequestStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an embedding request asks, whichever API it came in.
pub struct EmbedRequest {
    pub model: String,
    pub inputs: Vec<String>,
    /// Cut inputs longer than the context to fit (Ollama's default); otherwise refuse them.
    pub truncate: bool,
    /// The request field the inputs came in, for errors.
    pub param: &'static str,
}

pub struct Embedded {
    pub served: Arc<Served>,
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    pub load_duration: Duration,
    pub total_duration: Duration,
}

/// One input ready for the scheduler: its text (as the runtime gets it without ids), its
/// token ids where the tokenizer is the model's own, and its token count.
struct Counted {
    text: String,
    ids: Option<Vec<i32>>,
    tokens: usize,
}

/// Counts `text`, cutting it to `limit` tokens when `truncate` says so.
fn count(served: &Served, text: &str, limit: usize, truncate: bool) -> Result<Counted, usize> {
    let tok = &served.tokenizer;
    if let Some(mut ids) = tok.ids(text) {
        if ids.len() > limit {
            if !truncate {
                return Err(ids.len());
            }
            ids.truncate(limit);
        }
        return Ok(Counted {
            text: text.to_string(),
            tokens: ids.len(),
            ids: Some(ids),
        });
    }
    let tokens = tok.count(text);
    if tokens <= limit {
        return Ok(Counted {
            text: text.to_string(),
            ids: None,
            tokens,
        });
    }
    if !truncate {
        return Err(tokens);
    }
    // Counts by bytes: keep the share of the text that fits, at a character boundary.
    let mut end = text.len() * limit / tokens;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    Ok(Counted {
        text: text.to_string(),
        ids: None,
        tokens: tok.count(text).min(limit),
    })
}

async fn vector_of(mut rs: RequestStream) -> Result<(Vec<f32>, usize), ApiError> {
    let mut vector = None;
    while let Some(e) = rs.next().await {
        match e {
            Event::Embedding { vector: v, .. } => vector = Some(v),
            Event::Text { .. } => {}
            Event::End {
                reason,
                prompt_tokens,
                ..
            } => {
                return match (reason, vector) {
                    (FinishReason::Error(f), _) => {
                        Err(ApiError::from_finish(&FinishReason::Error(f)))
                    }
                    (_, Some(v)) => Ok((v, prompt_tokens as usize)),
                    // The scheduler has counted this request's end already.
                    (_, None) => Err(ApiError {
                        counted: true,
                        ..ApiError::new(
                            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "the run ended without an embedding",
                        )
                    }),
                };
            }
        }
    }
    Err(ApiError::new(
        actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
        "the embedding request ended without a result",
    ))
}

/// Embeds every input; the vectors come back in input order.
pub async fn embed(
    state: &web::Data<AppState>,
    req: EmbedRequest,
    client: &Client,
) -> Result<Embedded, ApiError> {
    let started = Instant::now();
    let served = generate::resolve(state, &req.model).await?;
    if let Some(i) = req.inputs.iter().position(|t| t.contains('\0')) {
        return Err(ApiError::bad_param(
            req.param,
            format!("input {i} contains a NUL character, which the runtime cannot take"),
        ));
    }
    // The runtime needs a token of room past the input, as for a prompt.
    let limit = served.context_len.saturating_sub(1).max(1);
    let mut counted = Vec::with_capacity(req.inputs.len());
    for (i, text) in req.inputs.iter().enumerate() {
        let c = count(&served, text, limit, req.truncate).map_err(|tokens| {
            ApiError::bad_param(
                req.param,
                format!(
                    "input {i} has {tokens} tokens but model '{}' takes at most {limit} \
                     (its context is {}); send shorter text or let it be truncated",
                    served.entry.name, served.context_len
                ),
            )
        })?;
        counted.push(c);
    }
    let lease = generate::acquire(state, &served).await?;
    let arrival = Instant::now();
    let reqs: Vec<Request> = counted
        .into_iter()
        .map(|c| Request {
            model: served.entry.name.clone(),
            prompt: c.text,
            prompt_ids: c.ids,
            prompt_tokens: c.tokens,
            sampling: Sampling::default(),
            max_tokens: 0,
            stop: Vec::new(),
            arrival,
            prefix: None,
        })
        .collect();
    let streams = state.catalog.scheduler.submit_embeddings(reqs)?;
    let results = tokio::select! {
        r = join_all(streams.into_iter().map(vector_of)) => r,
        // Dropping the streams gives up their queue places and slots.
        _ = client.gone() => return Err(ApiError::client_gone()),
    };
    let mut vectors = Vec::with_capacity(results.len());
    let mut prompt_tokens = 0;
    for r in results {
        let (v, n) = r?;
        vectors.push(v);
        prompt_tokens += n;
    }
    Ok(Embedded {
        load_duration: lease.load_duration(),
        served,
        vectors,
        prompt_tokens,
        total_duration: started.elapsed(),
    })
}

/// The embedding size a request may ask for with `dimensions`: only the model's own, since
/// the runtime's hidden states cannot be shortened without changing what they mean (OpenAI's
/// shortening relies on models trained for it).
pub fn check_dimensions(
    asked: Option<u64>,
    served: &Served,
    got: Option<usize>,
) -> Result<(), ApiError> {
    let (Some(asked), Some(size)) = (asked, got.or(served.embedding_len)) else {
        return Ok(());
    };
    if asked as usize == size {
        return Ok(());
    }
    Err(ApiError::bad_param(
        "dimensions",
        format!(
            "model '{}' makes embeddings of {size} dimensions; dimensions {asked} cannot be \
             honoured (leave it out, or send {size})",
            served.entry.name
        ),
    ))
}
