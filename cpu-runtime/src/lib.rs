//! `librkllmrt.so` for machines without an NPU: every function of Rockchip's RKLLM C API,
//! backed by llama.cpp for `.gguf` models and by a synthetic engine for `.toml` profiles.
//!
//! Data flow: [`exports`] (the C API: reads the caller's structs) → [`handle`] (one worker
//! thread per `LLMHandle`) → [`generate`] (prefill, then one batched forward pass per step)
//! over an [`engine`], or [`embed`] for hidden-state runs → [`report`] (each step's `RKLLMResult` array to the caller's callback).
//!
//! The ABI family is chosen by `RKLLM_CPU_ABI` (`1.3`, the default, or `1.2`).

pub mod embed;
pub mod engine;
mod exports;
pub mod generate;
pub mod handle;
pub mod report;
pub mod request;
pub mod sysinfo;
pub mod template;
pub mod utf8;
