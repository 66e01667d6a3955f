//! A served model as the scheduler's threads share it: its configuration, queue, status and
//! instances, and what every model shares (the shutdown flag, telemetry).

use crate::config::ModelConfig;
use crate::instance::{Instance, InstanceState};
use crate::policy::Policy;
use crate::prompt_cache::PromptFiles;
use crate::queue::Queue;
use crate::request::Failure;
use crate::snapshot::ModelStatus;
use crate::telemetry::{FailKind, Telemetry};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(crate) struct Shared {
    pub stopping: AtomicBool,
    pub telemetry: Telemetry,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

pub(crate) struct Model {
    pub cfg: ModelConfig,
    /// Set when the model is unloaded: its instances finish their run and exit.
    pub unloading: AtomicBool,
    pub policy: Policy,
    pub cpus: Vec<usize>,
    pub queue: Queue,
    pub status: Mutex<ModelStatus>,
    pub instances: Vec<Arc<Instance>>,
    /// Its prompt-cache files, when the configuration has them.
    pub prompt_files: Option<PromptFiles>,
}

impl Model {
    pub fn instance_ready(&self) {
        *self.status.lock() = ModelStatus::Ready;
    }

    /// An instance could not load. When none is left, the model is unavailable and its
    /// waiting requests fail with the reason.
    pub fn instance_failed(&self, inst: &Instance, reason: String) {
        tracing::error!(
            model = %self.cfg.name,
            instance = inst.index,
            "instance failed: {reason}"
        );
        *inst.state.lock() = InstanceState::Failed(reason.clone());
        let all_failed = self
            .instances
            .iter()
            .all(|i| matches!(*i.state.lock(), InstanceState::Failed(_)));
        if all_failed {
            *self.status.lock() = ModelStatus::Unavailable(reason.clone());
            let mut waiting = self.queue.waiting.lock();
            for p in waiting.drain(..) {
                p.fail(
                    Failure::new(
                        FailKind::Unavailable,
                        format!("model '{}' is unavailable: {reason}", self.cfg.name),
                    ),
                    &self.queue.tel,
                );
            }
        }
    }
}
