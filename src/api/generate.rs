//! From a validated request to scheduler streams: render and count the prompts, submit one
//! request per choice (choices of one request share a multi-batch run when they fit), and
//! hand back their events as typed frames.

use super::disconnect::Client;
use super::error::ApiError;
use super::frames::{self, Finish, Frame, Frames, Reply};
use super::prompt::{self, Prepared};
use super::request::GenRequest;
use super::structured;
use super::AppState;
use crate::catalog::Served;
use crate::models::Lease;
use actix_web::http::StatusCode;
use actix_web::web;
use futures_util::stream::{self, BoxStream, StreamExt};
use scheduler::{Event, FinishReason, Request, RequestStream, SharedPrefix};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Generation {
    pub served: Arc<Served>,
    /// Prompt tokens of every prompt, each counted once (not once per choice).
    pub prompt_tokens: usize,
    pub arrival: Instant,
    /// Time spent loading the model for this request.
    pub load_duration: Duration,
    /// Choices in all: prompts × n.
    pub choices: usize,
    pub single_call: bool,
    prepared: Prepared,
    events: BoxStream<'static, (usize, Event)>,
    /// Keeps the model loaded until the last frame is read.
    lease: Lease,
    /// Its outcome is counted by its caller ([`complete`]), not by the scheduler or frames.
    counted_by_caller: bool,
}

fn events_of(i: usize, rs: RequestStream) -> BoxStream<'static, (usize, Event)> {
    stream::unfold(rs, |mut rs| async move { rs.next().await.map(|e| (e, rs)) })
        .map(move |e| (i, e))
        .boxed()
}

/// Finds a model by any of its names; the first resolve reads its tokenizer, so it runs off
/// the async workers.
pub async fn resolve(state: &web::Data<AppState>, query: &str) -> Result<Arc<Served>, ApiError> {
    let (st, q) = (state.clone(), query.to_string());
    off_loop(move || st.catalog.resolve(&q)).await
}

/// Runs work that may block (directory scans, tokenizer reads, model loads) on the
/// blocking pool, in the caller's span: what it logs carries the request's id.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    web::block(move || span.in_scope(f))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Catalog work that may block, off the async workers.
async fn off_loop<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::catalog::CatalogError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(blocking(f).await??)
}

/// Loads the model if it is not loaded (off the async workers: loading blocks).
pub async fn ensure_loaded(
    state: &web::Data<AppState>,
    served: &Arc<Served>,
) -> Result<Duration, ApiError> {
    Ok(acquire(state, served).await?.load_duration())
}

/// A lease on the model, loading it first if needed: the model stays loaded while a request
/// holds one, whatever another request's keep_alive says.
pub async fn acquire(state: &web::Data<AppState>, served: &Arc<Served>) -> Result<Lease, ApiError> {
    if let Some(lease) = state.catalog.try_acquire(&served.entry.name) {
        return Ok(lease);
    }
    let (st, sv) = (state.clone(), served.clone());
    off_loop(move || st.catalog.acquire(&sv)).await
}

/// The prompt's first `bytes` as a prefix the scheduler may keep a prompt-cache file of:
/// counted in tokens, and where the prompt goes to the runtime as ids, its ids (as far as
/// the prefix tokenized alone agrees with the whole prompt's).
fn shared_prefix(
    served: &Served,
    prompt: &str,
    ids: Option<&[i32]>,
    bytes: usize,
    g: &GenRequest,
) -> Option<SharedPrefix> {
    let text = prompt.get(..bytes)?;
    let (ids_len, tokens) = match ids {
        Some(all) => {
            let head = served.tokenizer.ids(text)?;
            let n = scheduler::affinity::common_prefix(&head, all);
            (n, n)
        }
        None => (0, served.tokenizer.count(text)),
    };
    (tokens > 0).then_some(SharedPrefix {
        bytes,
        ids: ids_len,
        tokens,
        pinned: g.cache_prefix.is_some(),
    })
}

/// Submits every choice of the prepared prompts, each prompt's `n` choices in a row.
fn submit(
    state: &web::Data<AppState>,
    served: &Served,
    g: &GenRequest,
    prepared: &Prepared,
    ids: &[Option<Vec<i32>>],
    counts: &[usize],
    counted_by_caller: bool,
) -> Result<BoxStream<'static, (usize, Event)>, ApiError> {
    let ctx = served.context_len;
    let mut stop = served.stop.clone();
    stop.extend(g.stop.iter().cloned());
    let arrival = Instant::now();
    let mut reqs = Vec::with_capacity(prepared.prompts.len() * g.n);
    for (((prompt, &prompt_tokens), ids), bytes) in prepared
        .prompts
        .iter()
        .zip(counts)
        .zip(ids)
        .zip(&prepared.prefixes)
    {
        let room = (ctx - prompt_tokens - 1) as u32;
        let max_tokens = g.max_tokens.unwrap_or(room).min(room).max(1);
        let prefix = bytes.and_then(|b| shared_prefix(served, prompt, ids.as_deref(), b, g));
        for _ in 0..g.n {
            reqs.push(Request {
                model: served.entry.name.clone(),
                prompt: prompt.clone(),
                prompt_ids: ids.clone(),
                prompt_tokens,
                sampling: g.sampling,
                max_tokens,
                stop: stop.clone(),
                arrival,
                prefix,
            });
        }
    }
    // All choices are queued or none: a refused request leaves nothing behind.
    let scheduler = &state.catalog.scheduler;
    let streams = if counted_by_caller {
        scheduler.submit_all_counted_by_caller(reqs)?
    } else {
        scheduler.submit_all(reqs)?
    };
    let streams: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, rs)| events_of(i, rs))
        .collect();
    Ok(stream::select_all(streams).boxed())
}

/// Queues a request; its outcome is counted by the scheduler, or by the caller where
/// `counted_by_caller` (see [`complete`]).
pub async fn start(
    state: &web::Data<AppState>,
    served: Arc<Served>,
    g: &GenRequest,
    client: &Client,
    counted_by_caller: bool,
) -> Result<Generation, ApiError> {
    let named = state.caches.apply(&served.entry.name, g)?;
    let g = named.as_ref().unwrap_or(g);
    g.validate()?;
    structured::check_schema(&g.format, g.prompt_param)?;
    let prepared = prompt::prepare(&served, g)?;
    // A client that leaves while the model loads is gone before anything was queued: the
    // load goes on for others, and the refusal counts the cancellation.
    let lease = tokio::select! {
        l = acquire(state, &served) => l?,
        _ = client.gone() => {
            return Err(ApiError {
                counted: false,
                ..ApiError::client_gone()
            })
        }
    };
    let load_duration = lease.load_duration();
    let ctx = served.context_len;
    let ids: Vec<Option<Vec<i32>>> = prepared
        .prompts
        .iter()
        .map(|p| served.tokenizer.ids(p))
        .collect();
    let counts: Vec<usize> = prepared
        .prompts
        .iter()
        .zip(&ids)
        .map(|(p, ids)| {
            ids.as_ref()
                .map_or_else(|| served.tokenizer.count(p), Vec::len)
        })
        .collect();
    for (i, &tokens) in counts.iter().enumerate() {
        if tokens + 1 > ctx {
            let which = if counts.len() > 1 {
                format!("prompt {i} has")
            } else {
                "the prompt has".into()
            };
            return Err(ApiError::bad_param(
                g.prompt_param,
                format!(
                    "{which} {tokens} tokens but model '{}' has a context of {ctx} tokens",
                    served.entry.name
                ),
            ));
        }
    }
    if g.n == 0 || g.n > served.n_batch as usize {
        return Err(ApiError::bad_param(
            "n",
            format!("n must be 1 to {} (the model's n_batch)", served.n_batch),
        ));
    }
    let arrival = Instant::now();
    let events = submit(
        state,
        &served,
        g,
        &prepared,
        &ids,
        &counts,
        counted_by_caller,
    )?;
    Ok(Generation {
        choices: prepared.prompts.len() * g.n,
        prompt_tokens: counts.iter().sum(),
        single_call: !g.parallel_tool_calls,
        served,
        arrival,
        load_duration,
        prepared,
        events,
        lease,
        counted_by_caller,
    })
}

impl Generation {
    /// Waits for the first event, so that a request that fails before producing anything
    /// (queue timeout, a failed run) gets a real error status instead of a stream; a client
    /// that leaves meanwhile gives up its queue place.
    pub async fn begin(mut self, client: &Client) -> Result<Frames, ApiError> {
        let first = tokio::select! {
            e = self.events.next() => e,
            _ = client.gone() => return Err(ApiError::client_gone()),
        };
        if let Some((
            _,
            Event::End {
                reason: reason @ FinishReason::Error(_),
                completion_tokens: 0,
                ..
            },
        )) = &first
        {
            return Err(ApiError::from_finish(reason));
        }
        Ok(Frames::new(
            self.events,
            self.choices,
            &self.prepared.parse,
            self.single_call,
            first,
            self.lease,
            self.counted_by_caller,
        ))
    }
}

/// The figures both APIs report about a request, whatever its replies.
pub struct Meta {
    pub served: Arc<Served>,
    pub prompt_tokens: usize,
    pub arrival: Instant,
    pub load_duration: Duration,
}

impl Generation {
    pub fn meta(&self) -> Meta {
        Meta {
            served: self.served.clone(),
            prompt_tokens: self.prompt_tokens,
            arrival: self.arrival,
            load_duration: self.load_duration,
        }
    }
}

async fn read_replies(frames: Frames, n: usize, client: &Client) -> Result<Vec<Reply>, ApiError> {
    let replies = tokio::select! {
        r = frames::collect(frames, n) => r,
        _ = client.gone() => return Err(ApiError::client_gone()),
    };
    match replies.iter().find_map(|r| match &r.finish {
        Finish::Error(e) => Some(e.clone()),
        _ => None,
    }) {
        Some(e) => Err(e),
        None => Ok(replies),
    }
}

/// Runs a request to its end, each reply checked against what the request demands (a JSON
/// shape, a forced tool call): a reply that misses is generated again, up to the configured
/// number of retries, then the request fails with what was wrong. Such a request is one
/// request however many runs it takes: its outcome is counted here, once, when final (a
/// failure by the handler's refusal, which counts what is not counted yet).
pub async fn complete(
    state: &web::Data<AppState>,
    served: Arc<Served>,
    g: &GenRequest,
    client: &Client,
) -> Result<(Meta, Vec<Reply>), ApiError> {
    if !g.may_retry() {
        return attempts(state, served, g, client, false).await;
    }
    let model = served.entry.name.clone();
    match attempts(state, served, g, client, true).await {
        Ok((meta, replies)) => {
            let length = replies.iter().any(|r| matches!(r.finish, Finish::Length));
            scheduler::telemetry::count_success(&model, length);
            Ok((meta, replies))
        }
        Err(e) => Err(ApiError {
            counted: false,
            model: Some(model),
            ..e
        }),
    }
}

/// The runs of [`complete`], each failing choice again until it meets the request.
async fn attempts(
    state: &web::Data<AppState>,
    served: Arc<Served>,
    g: &GenRequest,
    client: &Client,
    counted_by_caller: bool,
) -> Result<(Meta, Vec<Reply>), ApiError> {
    let retries = state.catalog.config().server.structured_retries;
    let generation = start(state, served, g, client, counted_by_caller).await?;
    let (meta, n) = (generation.meta(), generation.choices);
    let mut replies = read_replies(generation.begin(client).await?, n, client).await?;
    for attempt in 0..=retries {
        let failing: Vec<(usize, String)> = replies
            .iter_mut()
            .enumerate()
            .filter_map(|(i, r)| structured::check(g, r).err().map(|why| (i, why)))
            .collect();
        let Some((_, why)) = failing.first().cloned() else {
            break;
        };
        if attempt == retries {
            return Err(ApiError {
                code: Some("invalid_model_output"),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "the model's reply did not meet the request after {} attempts: {why}",
                        retries + 1
                    ),
                )
            });
        }
        tracing::info!(
            model = %meta.served.entry.name,
            attempt = attempt + 1,
            "reply rejected ({why}); generating again"
        );
        // Each failing choice again on its own, from the prompt it came from.
        for (i, _) in failing {
            let one = g.retry_of(i / g.n);
            let again = start(state, meta.served.clone(), &one, client, counted_by_caller).await?;
            let frames = again.begin(client).await?;
            replies[i] = read_replies(frames, 1, client).await?.remove(0);
        }
    }
    Ok((meta, replies))
}

/// A request's frames for a streamed reply. Replies that must be checked first are
/// generated to their end and then streamed, so that a stream labelled JSON is JSON.
pub async fn stream(
    state: &web::Data<AppState>,
    served: Arc<Served>,
    g: &GenRequest,
    client: &Client,
) -> Result<(Meta, BoxStream<'static, Frame>), ApiError> {
    if g.is_checked() {
        let (meta, replies) = complete(state, served, g, client).await?;
        let frames: Vec<Frame> = replies
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.frames(i))
            .collect();
        return Ok((meta, stream::iter(frames).boxed()));
    }
    let generation = start(state, served, g, client, false).await?;
    let meta = generation.meta();
    Ok((meta, generation.begin(client).await?.into_stream()))
}
