//! The heart of rkserve: turns many independent requests into RKLLM multi-batch runs, and
//! each run's per-step results back into per-request streams. It knows nothing of HTTP.
//!
//! Data flow: [`Scheduler::submit`] → a model's [`queue`] → [`policy`] picks a batch →
//! an [`instance`] thread runs it (`rkllm_run`) → [`demux`] sends each slot's text, through
//! [`stop`] sequences, to its [`RequestStream`].

pub mod affinity;
pub mod config;
pub mod cost;
pub mod cpus;
pub mod demux;
pub mod embed;
mod engine;
pub mod error;
pub mod hot_prefixes;
mod instance;
mod model;
pub mod policy;
mod prompt_cache;
pub mod prompt_store;
mod queue;
mod records;
pub mod reform;
pub mod request;
mod runner;
pub mod scheduler;
pub mod sequence;
pub mod snapshot;
pub mod stats;
pub mod stop;
pub mod telemetry;
mod worker;

pub use config::{CutVia, Isolation, ModelConfig, PromptCacheConfig, Reform};
pub use embed::Pooling;
pub use error::SubmitError;
pub use prompt_store::PromptStore;
pub use request::{
    BatchKey, Event, Failure, FinishReason, Request, RequestStream, SharedPrefix, Timings,
};
pub use scheduler::Scheduler;
pub use snapshot::{InstanceSnapshot, InstanceState, ModelSnapshot, ModelStatus};
pub use telemetry::FailKind;
