//! Cut and resumed replies on the default model, ABI family v1.3.

mod common;
mod resume;
use common::*;
use resume::*;

resume_suite!(rkllm::AbiFamily::V1_3);
