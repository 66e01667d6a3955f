//! A runtime instance as the other threads see it: its state, its run in progress (for the
//! watchdog), its stopper, its thread, and what it shows of its runtime (n_batch in use,
//! restarts, worker memory). The thread itself is `worker.rs`.

use crate::demux::Demux;
pub use crate::snapshot::InstanceState;
use parking_lot::Mutex;
use rkllm::{Memory, Stopper};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub struct Instance {
    pub index: usize,
    /// Bumped when the instance is replaced; a thread of an older generation only cleans up.
    pub generation: AtomicU64,
    pub state: Mutex<InstanceState>,
    /// Microseconds since `epoch()` of the last callback (or run start).
    last_progress: AtomicU64,
    /// The run in progress, so the watchdog can fail its requests.
    pub run: Mutex<Option<Arc<Mutex<Demux>>>>,
    pub abort: Mutex<Option<Stopper>>,
    pub thread: Mutex<Option<JoinHandle<()>>>,
    /// The n_batch its engine was initialised with (below the model's after a fallback).
    pub n_batch: AtomicU8,
    /// Why n_batch is below the model's, once it fell back.
    pub fallback: Mutex<Option<String>>,
    /// Engines started after the first: worker deaths and stalls.
    pub restarts: AtomicU64,
    /// The worker's memory at its last look (process isolation only).
    pub memory: Mutex<Option<Memory>>,
}

impl Instance {
    pub fn new(index: usize) -> Instance {
        Instance {
            index,
            generation: AtomicU64::new(0),
            state: Mutex::new(InstanceState::Starting),
            last_progress: AtomicU64::new(0),
            run: Mutex::new(None),
            abort: Mutex::new(None),
            thread: Mutex::new(None),
            n_batch: AtomicU8::new(0),
            fallback: Mutex::new(None),
            restarts: AtomicU64::new(0),
            memory: Mutex::new(None),
        }
    }

    pub(crate) fn touch(&self) {
        let us = epoch().elapsed().as_micros() as u64;
        self.last_progress.store(us, Ordering::Relaxed);
    }

    /// How long the current run has gone without a callback.
    pub fn since_progress(&self) -> Duration {
        let last = Duration::from_micros(self.last_progress.load(Ordering::Relaxed));
        epoch().elapsed().saturating_sub(last)
    }

    pub(crate) fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }
}
