//! A runtime instance as the other threads see it: its state, its run in progress (for the
//! watchdog), its stopper, its thread, and what it shows of its runtime (n_batch in use,
//! restarts, worker memory). The thread itself is `worker.rs`.

use crate::demux::Demux;
pub use crate::snapshot::InstanceState;
use parking_lot::Mutex;
use rkllm::{Memory, Stopper};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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
    /// What its runtime holds for new requests to reuse (each slot's last text, the loaded
    /// prompt-cache file's prefix), for the placement of the model's other instances; kept
    /// only where the model has more than one.
    pub held: Mutex<Vec<Vec<u8>>>,
    /// Its run has no request left and is about to end: a new request can count on it as
    /// on an idle instance (its last replies reach clients before its state says idle).
    pub finishing: AtomicBool,
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
            held: Mutex::default(),
            finishing: AtomicBool::new(false),
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
