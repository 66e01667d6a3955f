//! rkserve: the OpenAI- and Ollama-compatible HTTP server in front of the scheduler.
//!
//! Data flow: [`http_server`] (connections) → [`api`] (HTTP, one module per API) → [`catalog`] (which model, its template
//! and tokenizer; [`registry`] finds the files; [`models`] owns when models load and
//! unload) → the `scheduler` crate (queue, batches,
//! runtime threads) → per-request streams back out as SSE or NDJSON. The scheduler measures;
//! [`exporter`] serves its metrics to Prometheus. Routers in front of several boards read
//! [`capacity`] through those metrics or the HAProxy [`agent`]; [`drain`] and [`shutdown`]
//! end the process without cutting a request.

pub mod agent;
pub mod api;
pub mod capacity;
pub mod catalog;
pub mod config;
pub mod drain;
pub mod duration;
pub mod exporter;
pub mod http_server;
pub mod models;
pub mod probe;
pub mod registry;
pub mod shutdown;
pub mod tokenizer;
