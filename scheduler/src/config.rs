use crate::embed::Pooling;
use crate::prompt_store::PromptStore;
use rkllm::AbiFamily;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How one model is served.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name requests use.
    pub name: String,
    /// A `.rkllm` file (NPU), a `.gguf` file or a synthetic `.toml` profile (CPU runtime).
    pub model_path: PathBuf,
    pub runtime_lib: PathBuf,
    pub abi: AbiFamily,
    /// Tokens of context per sequence (prompt and reply).
    pub context_len: usize,
    /// Runtime handles, each on its own OS thread.
    pub instances: usize,
    /// Sequences per run, 1 to 8.
    pub n_batch: u8,
    /// Waiting requests beyond which submission fails with Overloaded.
    pub max_queue: usize,
    /// A request still waiting after this fails instead of waiting on.
    pub max_queue_wait: Duration,
    /// How long a free instance may wait for more compatible requests to fill its slots,
    /// from the later of the oldest request's arrival and the instance becoming free.
    pub batch_window: Duration,
    /// After this wait the oldest request goes next, whatever the instance would prefer.
    pub starvation_bound: Duration,
    /// A run with no callback for this long is stuck: its requests fail and the instance is
    /// re-created.
    pub stall_timeout: Duration,
    /// How long `rkllm_destroy` may take before it is abandoned on its thread.
    pub destroy_timeout: Duration,
    /// Whether runs may be cut at a step boundary to re-form (continuous batching).
    pub reform: Reform,
    /// How a run is cut: the callback returning pause, or `rkllm_abort`.
    pub cut_via: CutVia,
    /// CPUs for the runtime threads; `None`: the big cores if the board has them, else
    /// no pinning.
    pub cpus: Option<Vec<usize>>,
    /// How embedding requests pool their tokens' hidden states (the model's metadata).
    pub pooling: Pooling,
    /// Embedding runs: return 2 from the callback once the states are read (`None`: the
    /// binding's default, on for ABI 1.3).
    pub release_hidden_states: Option<bool>,
    /// Where the runtime runs: in a worker process (a crash ends one instance), or here.
    pub isolation: Isolation,
    /// The first wait before an instance whose worker died starts a new one; it doubles with
    /// each failed start, up to 32 times.
    pub restart_backoff: Duration,
    /// Prompt-cache files for shared prefixes; `None`: none are saved or loaded.
    pub prompt_cache: Option<PromptCacheConfig>,
}

/// When shared prefixes get prompt-cache files, and where those live.
#[derive(Debug, Clone)]
pub struct PromptCacheConfig {
    /// The directory, shared by every model (its size limit is for all of them).
    pub store: Arc<PromptStore>,
    /// A prefix is saved at its request number `hot_after` (0: only named caches are).
    pub hot_after: u32,
    /// Prefixes shorter than this are not worth a file.
    pub min_tokens: usize,
}

impl ModelConfig {
    pub fn new(name: impl Into<String>, model_path: PathBuf, runtime_lib: PathBuf) -> Self {
        ModelConfig {
            name: name.into(),
            model_path,
            runtime_lib,
            abi: AbiFamily::V1_3,
            context_len: 4096,
            instances: 1,
            n_batch: 8,
            max_queue: 64,
            max_queue_wait: Duration::from_secs(120),
            batch_window: Duration::from_millis(5),
            starvation_bound: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(30),
            destroy_timeout: Duration::from_secs(5),
            reform: Reform::Auto,
            cut_via: CutVia::Pause,
            cpus: None,
            pooling: Pooling::default(),
            release_hidden_states: None,
            isolation: Isolation::InProcess,
            restart_backoff: Duration::from_millis(200),
            prompt_cache: None,
        }
    }
}

/// Where an instance's runtime lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// In this process: a crash in the runtime ends the server.
    InProcess,
    /// In a worker process started from `exe` (the server's own executable, run with
    /// `worker::WORKER_ARG`): a crash ends that instance, which restarts.
    Process { exe: PathBuf },
}

impl Isolation {
    pub fn label(&self) -> &'static str {
        match self {
            Isolation::InProcess => "in-process",
            Isolation::Process { .. } => "process",
        }
    }
}

/// Continuous batching over static runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reform {
    /// A run may be cut when the cost model says re-forming pays.
    Auto,
    /// Static runs: a run lasts until its last member ends.
    Off,
}

/// How a run is ended early. Neither is verified on Rockchip's runtime (a field report has a
/// crash when a callback returned 1, another has abort taking over a second), so it is a
/// setting; when the chosen way does not stop the run, re-forming turns itself off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutVia {
    Pause,
    Abort,
}

impl fmt::Display for Reform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reform::Auto => "auto",
            Reform::Off => "off",
        })
    }
}

impl fmt::Display for CutVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CutVia::Pause => "pause",
            CutVia::Abort => "abort",
        })
    }
}

impl std::str::FromStr for Reform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Reform::Auto),
            "off" => Ok(Reform::Off),
            other => Err(format!("reform must be \"auto\" or \"off\", not {other:?}")),
        }
    }
}

impl std::str::FromStr for CutVia {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pause" => Ok(CutVia::Pause),
            "abort" => Ok(CutVia::Abort),
            other => Err(format!(
                "reform_via must be \"pause\" or \"abort\", not {other:?}"
            )),
        }
    }
}
