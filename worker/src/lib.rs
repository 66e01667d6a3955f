//! The runtime in a worker process, so that a crash in `librkllmrt.so` ends one instance and
//! not the server. The parent ([`Worker`], an [`rkllm::Engine`]) starts the child (the server's
//! own executable with the argument [`WORKER_ARG`], which calls [`child_main`]); they talk
//! over a Unix socket on the child's stdin in length-prefixed frames ([`protocol`]). The
//! child's stdout and stderr go to one pipe, whose last lines name what a dead worker said.

mod child;
mod exit;
mod parent;
pub mod protocol;
mod tail;

pub use child::child_main;
/// How a child process ended, in words ("was killed by signal 6 (SIGABRT)").
pub use exit::describe as describe_exit;
pub use parent::Worker;

/// The first argument that makes the server's executable a worker.
pub const WORKER_ARG: &str = "worker";
