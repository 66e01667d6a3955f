//! The C API conformance suite, ABI family v1.3, on the default model.

mod common;
use common::*;
use rkllm::{Flow, InferParams, Input, RunOutcome, StepState};

conformance_suite!(rkllm::AbiFamily::V1_3);
