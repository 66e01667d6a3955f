//! What the scheduler shows of itself: each model's status, queue depth and instances.

use std::fmt;

/// What an instance is doing, for introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    Starting,
    Idle,
    Running {
        slots: usize,
    },
    /// Its run stopped making progress; a new handle is being created.
    Restarting,
    Failed(String),
}

impl InstanceState {
    /// The state's name, as the API shows it.
    pub fn label(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Idle => "idle",
            InstanceState::Running { .. } => "running",
            InstanceState::Restarting => "restarting",
            InstanceState::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceState::Running { slots } => write!(f, "running ({slots} slots)"),
            InstanceState::Failed(r) => write!(f, "failed: {r}"),
            other => f.write_str(other.label()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatus {
    /// No instance is ready yet; requests queue.
    Loading,
    Ready,
    /// Every instance failed to load: requests are refused with this reason.
    Unavailable(String),
}

impl ModelStatus {
    /// The state's name, as the API and the model-state metric show it.
    pub fn label(&self) -> &'static str {
        match self {
            ModelStatus::Loading => "loading",
            ModelStatus::Ready => "ready",
            ModelStatus::Unavailable(_) => "unavailable",
        }
    }

    /// Why the model cannot serve, when it cannot.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ModelStatus::Unavailable(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for ModelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelStatus::Unavailable(r) => write!(f, "unavailable: {r}"),
            other => f.write_str(other.label()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSnapshot {
    pub index: usize,
    pub state: InstanceState,
    /// KV cells its requests in flight occupy: their prompts and what they generated.
    pub kv_tokens: usize,
    /// The n_batch its runtime runs with (0 before it loaded).
    pub n_batch: u8,
    /// Why that is below the model's n_batch.
    pub fallback: Option<String>,
    /// Engines it started after its first (worker deaths, stalls).
    pub restarts: u64,
    /// Its worker process's resident memory and peak (bytes), with process isolation.
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSnapshot {
    pub name: String,
    pub status: ModelStatus,
    pub waiting: usize,
    pub n_batch: u8,
    pub context_len: usize,
    pub instances: Vec<InstanceSnapshot>,
}

impl ModelSnapshot {
    /// The KV cells in use over all there are (`n_batch` x context per instance), 0 to 1.
    pub fn kv_usage(&self) -> f64 {
        let total = self.instances.len() * self.n_batch as usize * self.context_len;
        if total == 0 {
            return 0.0;
        }
        let used: usize = self.instances.iter().map(|i| i.kv_tokens).sum();
        (used as f64 / total as f64).min(1.0)
    }

    /// Slots of all instances currently generating.
    pub fn busy_slots(&self) -> usize {
        self.instances
            .iter()
            .map(|i| match i.state {
                InstanceState::Running { slots } => slots,
                _ => 0,
            })
            .sum()
    }
}
