//! rkserve: the OpenAI- and Ollama-compatible HTTP server in front of the scheduler.

pub mod registry;
