//! The RKLLM C API for Rust: `#[repr(C)]` declarations of both ABI families ([`abi`]) and a
//! safe wrapper that loads any `librkllmrt.so` at run time (Rockchip's, or rkserve's CPU
//! runtime) and drives multi-batch runs through it.
//!
//! Data flow: [`Runtime::load`] → [`Runtime::init`] gives a [`Handle`] → [`Handle::run`] takes
//! one [`Input`] per batch slot and calls back once per decode step with a [`Step`] holding
//! every slot's result.

pub mod abi;
mod callback;
mod defaults;
mod engine;
mod error;
mod handle;
mod in_process;
mod library;
mod params;
pub mod probe_report;

pub use callback::{Flow, HiddenStates, SlotResult, Step, StepState};
pub use engine::{Engine, EngineSpec, Memory, OnStep, RunParams, StopRun, Stopper};
pub use error::{Error, LoadError};
pub use handle::{AbortHandle, Handle, RunOutcome};
pub use in_process::InProcess;
pub use library::{cpu_runtime_near_exe, AbiFamily, Runtime};
pub use params::{InferMode, InferParams, InitParams, Input, InputKind, PromptCache, Sampling};
