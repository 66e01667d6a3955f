//! The heart of rkserve: turns many independent requests into RKLLM multi-batch runs, and
//! each run's per-step results back into per-request streams. It knows nothing of HTTP.
//!
//! Data flow: [`Scheduler::submit`] → a model's [`queue`] → [`policy`] picks a batch →
//! an [`instance`] thread runs it (`rkllm_run`) → [`demux`] sends each slot's text, through
//! [`stop`] sequences, to its [`RequestStream`].

pub mod config;
pub mod cpus;
pub mod demux;
pub mod error;
mod instance;
pub mod policy;
mod queue;
pub mod request;
pub mod scheduler;
pub mod stats;
pub mod stop;
pub mod telemetry;

pub use config::ModelConfig;
pub use error::SubmitError;
pub use instance::InstanceState;
pub use request::{BatchKey, Event, Failure, FinishReason, Request, RequestStream, Timings};
pub use scheduler::{InstanceSnapshot, ModelSnapshot, ModelStatus, Scheduler};
pub use telemetry::FailKind;
