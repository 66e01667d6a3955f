//! From an API request to scheduler streams: count the prompt, submit one request per
//! choice (`n` choices share one multi-batch run), and read the results back.

use super::error::ApiError;
use super::AppState;
use crate::catalog::Served;
use actix_web::http::StatusCode;
use actix_web::web;
use futures_util::stream::{self, BoxStream, StreamExt};
use rkllm::Sampling;
use scheduler::{Event, FinishReason, Request, RequestStream, Timings};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct GenRequest {
    /// Rendered prompt, passed to the runtime verbatim.
    pub prompt: String,
    /// The request field the prompt came from, named when it is too long.
    pub prompt_param: &'static str,
    pub sampling: Sampling,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub n: usize,
}

pub struct Generation {
    pub served: Arc<Served>,
    pub prompt_tokens: usize,
    pub arrival: Instant,
    /// Time spent loading the model for this request.
    pub load_duration: Duration,
    pub events: BoxStream<'static, (usize, Event)>,
    /// Keeps the model loaded until the generation (and so its stream) is dropped; never
    /// read, only held.
    #[allow(dead_code)]
    pub lease: crate::models::Lease,
}

/// The result of one choice, read to its end.
pub struct Choice {
    pub text: String,
    pub reason: FinishReason,
    pub completion_tokens: u32,
    pub timings: Timings,
}

fn events_of(i: usize, rs: RequestStream) -> BoxStream<'static, (usize, Event)> {
    stream::unfold(rs, |mut rs| async move { rs.next().await.map(|e| (e, rs)) })
        .map(move |e| (i, e))
        .boxed()
}

/// Loads the model if it is not loaded (off the async workers: loading blocks).
pub async fn ensure_loaded(
    state: &web::Data<AppState>,
    served: &Arc<Served>,
) -> Result<Duration, ApiError> {
    if state.catalog.scheduler.has_model(&served.entry.name) {
        return Ok(Duration::ZERO);
    }
    let started = Instant::now();
    let (st, sv) = (state.clone(), served.clone());
    web::block(move || st.catalog.ensure_loaded(&sv))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(started.elapsed())
}

/// A lease on the model, loading it first if needed (off the async workers: loading blocks).
pub async fn acquire(
    state: &web::Data<AppState>,
    served: &Arc<Served>,
) -> Result<crate::models::Lease, ApiError> {
    if let Some(lease) = state.catalog.try_acquire(&served.entry.name) {
        return Ok(lease);
    }
    let (st, sv) = (state.clone(), served.clone());
    Ok(web::block(move || st.catalog.acquire(&sv))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??)
}

pub async fn start(
    state: &web::Data<AppState>,
    served: Arc<Served>,
    g: GenRequest,
) -> Result<Generation, ApiError> {
    let lease = acquire(state, &served).await?;
    let load_duration = lease.load_duration();
    let prompt_tokens = served.tokenizer.count(&g.prompt);
    let ctx = served.context_len;
    if prompt_tokens + 1 > ctx {
        return Err(ApiError::bad_param(
            g.prompt_param,
            format!(
                "the prompt has {prompt_tokens} tokens but model '{}' has a context of {ctx} tokens",
                served.entry.name
            ),
        ));
    }
    if g.n == 0 || g.n > served.n_batch as usize {
        return Err(ApiError::bad_param(
            "n",
            format!("n must be 1 to {} (the model's n_batch)", served.n_batch),
        ));
    }
    let room = (ctx - prompt_tokens - 1) as u32;
    let max_tokens = g.max_tokens.unwrap_or(room).min(room).max(1);
    let mut stop = served.stop.clone();
    stop.extend(g.stop);
    let arrival = Instant::now();
    let reqs = (0..g.n)
        .map(|_| Request {
            model: served.entry.name.clone(),
            prompt: g.prompt.clone(),
            prompt_tokens,
            sampling: g.sampling,
            max_tokens,
            stop: stop.clone(),
            arrival,
        })
        .collect();
    // All choices are queued or none is: a refusal leaves no cancelled requests behind.
    let streams: Vec<_> = state
        .catalog
        .scheduler
        .submit_all(reqs)?
        .into_iter()
        .enumerate()
        .map(|(i, rs)| events_of(i, rs))
        .collect();
    Ok(Generation {
        served,
        prompt_tokens,
        arrival,
        load_duration,
        events: stream::select_all(streams).boxed(),
        lease,
    })
}

impl Generation {
    /// Reads every choice to its end. A choice that failed before producing text fails the
    /// request.
    pub async fn collect(mut self, n: usize) -> Result<(Vec<Choice>, Generation), ApiError> {
        let mut choices: Vec<Choice> = (0..n)
            .map(|_| Choice {
                text: String::new(),
                reason: FinishReason::Stop,
                completion_tokens: 0,
                timings: Timings::default(),
            })
            .collect();
        while let Some((i, e)) = self.events.next().await {
            match e {
                Event::Text { text, .. } => choices[i].text.push_str(&text),
                Event::End {
                    reason,
                    completion_tokens,
                    timings,
                    ..
                } => {
                    choices[i].reason = reason;
                    choices[i].completion_tokens = completion_tokens;
                    choices[i].timings = timings;
                }
            }
        }
        if let Some(FinishReason::Error(failure)) = choices
            .iter()
            .map(|c| &c.reason)
            .find(|r| matches!(r, FinishReason::Error(_)))
        {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                failure.message.clone(),
            ));
        }
        Ok((choices, self))
    }

    /// Waits for the first event, so that a request that fails before producing anything
    /// (queue timeout, a failed run) gets a real error status instead of a stream.
    pub async fn first(&mut self) -> Result<Option<(usize, Event)>, ApiError> {
        match self.events.next().await {
            Some((
                _,
                Event::End {
                    reason: FinishReason::Error(failure),
                    completion_tokens: 0,
                    ..
                },
            )) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                failure.message,
            )),
            other => Ok(other),
        }
    }
}

/// OpenAI's and Ollama's name for why generation ended.
pub fn reason_str(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Error(_) => "stop",
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sampling from optional request fields over the runtime's defaults.
#[allow(clippy::too_many_arguments)]
pub fn sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    repeat_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
) -> Result<Sampling, ApiError> {
    let mut s = Sampling::default();
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_param(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        s.temperature = t;
    }
    if let Some(p) = top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::bad_param(
                "top_p",
                "top_p must be between 0 and 1",
            ));
        }
        s.top_p = p;
    }
    if let Some(k) = top_k {
        s.top_k = k.max(0);
    }
    if let Some(r) = repeat_penalty {
        s.repeat_penalty = r;
    }
    if let Some(f) = frequency_penalty {
        if !(-2.0..=2.0).contains(&f) {
            return Err(ApiError::bad_param(
                "frequency_penalty",
                "frequency_penalty must be between -2 and 2",
            ));
        }
        s.frequency_penalty = f;
    }
    if let Some(p) = presence_penalty {
        if !(-2.0..=2.0).contains(&p) {
            return Err(ApiError::bad_param(
                "presence_penalty",
                "presence_penalty must be between -2 and 2",
            ));
        }
        s.presence_penalty = p;
    }
    Ok(s)
}
