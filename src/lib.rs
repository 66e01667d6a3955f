//! rkserve: the OpenAI- and Ollama-compatible HTTP server in front of the scheduler.
//!
//! Data flow: [`api`] (HTTP, one module per API) → [`catalog`] (which model, its template
//! and tokenizer; [`registry`] finds the files; [`models`] owns when models load and
//! unload) → the `scheduler` crate (queue, batches,
//! runtime threads) → per-request streams back out as SSE or NDJSON. The scheduler measures;
//! [`exporter`] serves its metrics to Prometheus.

pub mod api;
pub mod catalog;
pub mod config;
pub mod duration;
pub mod exporter;
pub mod models;
pub mod registry;
pub mod tokenizer;
