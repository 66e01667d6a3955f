//! The models rkserve knows: what the models directory holds ([`crate::registry`]), each
//! prepared for serving (chat template, tokenizer, context length) on first use, and loaded
//! into the scheduler on demand through the [`ModelManager`], which owns when models load
//! and unload.
//!
//! Blocking: [`Catalog::list`], [`Catalog::resolve`] (a first resolve reads the model's
//! tokenizer), [`Catalog::acquire`] and [`Catalog::ensure_loaded`] touch the disk or wait for
//! a load; async callers run them through `web::block`. [`Catalog::try_acquire`],
//! [`Catalog::entries`] and [`Catalog::known_name`] never block.

use crate::config::IsolationMode;
use crate::config::{Config, Models, DEFAULT_MODEL, DEFAULT_MODEL_FILE};
use crate::duration::KeepAlive;
use crate::models::{Lease, ModelManager};
use crate::probe::{Explicit, Mechanisms, ProbeReports};
use crate::registry::{self, ModelEntry, ModelKind};
use crate::tokenizer::Tokenizer;
use chat_template::ChatTemplate;
use parking_lot::{Mutex, RwLock};
use scheduler::{Isolation, ModelConfig, ModelStatus, PromptCacheConfig, PromptStore, Scheduler};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    #[error("model '{0}' not found")]
    NotFound(String),
    #[error("model '{model}' cannot be served: {reason}")]
    Invalid { model: String, reason: String },
    #[error("model '{model}' needs about {need_mb} MB but only {available_mb} MB of memory is available; unload another model first")]
    InsufficientMemory {
        model: String,
        need_mb: u64,
        available_mb: u64,
    },
}

/// A model ready to take requests: how to render, count and stop its prompts.
pub struct Served {
    pub entry: ModelEntry,
    pub template: ChatTemplate,
    pub tokenizer: Tokenizer,
    pub context_len: usize,
    pub stop: Vec<String>,
    pub family: String,
    pub parameters: Option<u64>,
    pub n_batch: u8,
    pub instances: usize,
    /// The ABI family and how runs are cut: the settings, or a probe report's choice.
    pub mechanisms: Mechanisms,
    /// How embeddings pool the tokens' states: the GGUF's `pooling_type`, else mean.
    pub pooling: scheduler::Pooling,
    /// The embedding size, where the model's metadata says it (GGUF).
    pub embedding_len: Option<usize>,
}

pub struct Catalog {
    cfg: Config,
    runtime_lib: PathBuf,
    entries: RwLock<Vec<ModelEntry>>,
    /// The models directory's and its subdirectories' modification times at the last scan:
    /// unchanged, a listing need not read every sidecar again.
    scanned: Mutex<Option<Vec<Option<std::time::SystemTime>>>>,
    prepared: Mutex<HashMap<String, Arc<Served>>>,
    probes: ProbeReports,
    models: ModelManager,
    pub scheduler: Arc<Scheduler>,
    /// The prompt-cache directory, shared by every model; `None`: off.
    prompt_store: Option<Arc<PromptStore>>,
}

/// The CPU runtime built next to the running binary.
pub fn default_runtime_lib() -> Option<PathBuf> {
    rkllm::cpu_runtime_near_exe()
}

fn mem_available_mb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Runs scripts/fetch-default-model (the one place that knows where the default model comes
/// from and its checksum) into `dir`.
fn fetch_default_model(dir: &Path) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-default-model");
    if !script.is_file() {
        return Err(format!(
            "the default model {DEFAULT_MODEL_FILE} is missing from {} and {} is not available to fetch it",
            dir.display(),
            script.display()
        ));
    }
    tracing::info!("fetching the default model into {}", dir.display());
    let status = std::process::Command::new(&script)
        .arg(dir)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status})", script.display()))
    }
}

/// Opens the prompt-cache directory when caching is on (it is made at the first save). A path
/// that is not a directory is an error at start-up: the user asked for files there.
fn open_prompt_store(cfg: &Config) -> Result<Option<Arc<PromptStore>>, String> {
    let pc = &cfg.prompt_cache;
    if !pc.enabled {
        return Ok(None);
    }
    let dir = pc
        .dir
        .clone()
        .unwrap_or_else(|| cfg.models.dir.join("prompt-cache"));
    let store = PromptStore::open(dir.clone(), pc.max_mb.saturating_mul(1 << 20)).map_err(|e| {
        format!(
            "cannot open the prompt-cache directory {}: {e} (set prompt_cache.dir, or prompt_cache.enabled = false)",
            dir.display()
        )
    })?;
    tracing::info!(
        "prompt cache: {} ({} MB of {} MB used; a prefix is saved at its request {})",
        dir.display(),
        store.bytes() >> 20,
        pc.max_mb,
        pc.hot_after
    );
    Ok(Some(Arc::new(store)))
}

impl Catalog {
    pub fn new(cfg: Config) -> Result<Catalog, String> {
        let runtime_lib = if cfg.runtime.lib.as_os_str().is_empty() {
            default_runtime_lib().ok_or(
                "no runtime library configured and no librkllmrt.so next to rkserve: \
                 build the workspace (cargo build --release) or set --runtime-lib",
            )?
        } else {
            cfg.runtime.lib.clone()
        };
        if !cfg.models.dir.is_dir() {
            std::fs::create_dir_all(&cfg.models.dir).map_err(|e| {
                format!(
                    "cannot create models directory {}: {e}",
                    cfg.models.dir.display()
                )
            })?;
        }
        let mut cfg = cfg;
        let wants_default = cfg.models.preload.iter().any(|p| p == DEFAULT_MODEL);
        if wants_default && !cfg.models.dir.join(DEFAULT_MODEL_FILE).is_file() {
            // A directory of the user's choosing is theirs: the default model is fetched
            // into the default directory only.
            let default_dir = cfg.models.dir == Models::default().dir;
            if cfg.models.fetch_default_model && default_dir {
                fetch_default_model(&cfg.models.dir)?;
            } else if !default_dir && cfg.models.preload == Models::default().preload {
                tracing::info!(
                    "not preloading the default model {DEFAULT_MODEL}: it is not in {} and is \
                     fetched only into the default models directory ({}); set models.preload \
                     to choose what loads at start-up",
                    cfg.models.dir.display(),
                    Models::default().dir.display()
                );
                cfg.models.preload.clear();
            }
        }
        let entries = registry::scan(&cfg.models.dir).map_err(|e| e.to_string())?;
        let scheduler = Arc::new(Scheduler::with_stats_window(
            vec![],
            cfg.server.stats_window,
        ));
        let probes = ProbeReports::new(
            cfg.runtime.probe.clone(),
            cfg.runtime
                .probe_dir
                .clone()
                .unwrap_or_else(|| cfg.models.dir.join("probe")),
        );
        let prompt_store = open_prompt_store(&cfg)?;
        let catalog = Catalog {
            prompt_store,
            probes,
            runtime_lib,
            scanned: Mutex::new(Some(dir_times(&cfg.models.dir))),
            entries: RwLock::new(entries),
            prepared: Mutex::new(HashMap::new()),
            models: ModelManager::new(scheduler.clone()),
            scheduler,
            cfg,
        };
        for name in catalog.cfg.models.preload.clone() {
            let served = catalog.resolve(&name).map_err(|e| e.to_string())?;
            catalog.ensure_loaded(&served).map_err(|e| e.to_string())?;
        }
        Ok(catalog)
    }

    /// The prompt-cache directory, when prompt-cache files are on.
    pub fn prompt_cache_dir(&self) -> Option<&std::path::Path> {
        self.prompt_store.as_deref().map(PromptStore::dir)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Every model in the models directory, rescanned when the directory changed so new
    /// files appear. Blocking (it reads the disk).
    pub fn list(&self) -> Vec<ModelEntry> {
        let times = dir_times(&self.cfg.models.dir);
        let mut scanned = self.scanned.lock();
        if scanned.as_ref() != Some(&times) {
            if let Ok(fresh) = registry::scan(&self.cfg.models.dir) {
                *self.entries.write() = fresh;
                *scanned = Some(times);
            }
        }
        drop(scanned);
        self.entries.read().clone()
    }

    /// The models found by the last scan, without touching the disk.
    pub fn entries(&self) -> Vec<ModelEntry> {
        self.entries.read().clone()
    }

    /// The name of the model `query` names, if the catalog knows it (no rescan, no loading).
    pub fn known_name(&self, query: &str) -> Option<String> {
        registry::find(&self.entries.read(), query).map(|e| e.name.clone())
    }

    /// Finds a model by name, file name or stem, and prepares it for serving (blocking the
    /// first time: it reads the tokenizer).
    pub fn resolve(&self, query: &str) -> Result<Arc<Served>, CatalogError> {
        let entry = {
            let entries = self.entries.read();
            registry::find(&entries, query).cloned()
        };
        let entry = match entry {
            Some(e) => e,
            None => {
                let entries = self.list();
                registry::find(&entries, query)
                    .cloned()
                    .ok_or_else(|| CatalogError::NotFound(query.to_string()))?
            }
        };
        if let Some(s) = self.prepared.lock().get(&entry.name) {
            return Ok(s.clone());
        }
        let served = Arc::new(self.prepare(entry)?);
        self.prepared
            .lock()
            .insert(served.entry.name.clone(), served.clone());
        Ok(served)
    }

    fn prepare(&self, entry: ModelEntry) -> Result<Served, CatalogError> {
        let invalid = |reason: String| CatalogError::Invalid {
            model: entry.name.clone(),
            reason,
        };
        let side = &entry.sidecar;
        let (tokenizer, gguf) = match entry.kind {
            ModelKind::Gguf => {
                let (t, info) = Tokenizer::gguf(&entry.path).map_err(invalid)?;
                (t, Some(info))
            }
            ModelKind::Synthetic => (
                Tokenizer::Bytes {
                    bytes_per_token: 4,
                    exact: true,
                },
                None,
            ),
            ModelKind::Rkllm => (
                Tokenizer::Bytes {
                    bytes_per_token: 3,
                    exact: false,
                },
                None,
            ),
        };
        let template = if let Some(src) = &side.chat_template {
            let (bos, eos) = gguf.as_ref().map_or((String::new(), String::new()), |g| {
                (g.bos.clone(), g.eos.clone())
            });
            ChatTemplate::from_jinja(src, &bos, &eos).map_err(|e| invalid(e.to_string()))?
        } else if let Some(family) = &side.template_family {
            ChatTemplate::builtin(family)
                .ok_or_else(|| invalid(format!("unknown template_family '{family}'")))?
        } else if let Some(src) = gguf.as_ref().and_then(|g| g.chat_template.as_ref()) {
            let g = gguf.as_ref().expect("checked");
            ChatTemplate::from_jinja(src, &g.bos, &g.eos).map_err(|e| invalid(e.to_string()))?
        } else {
            let family = ChatTemplate::guess_family(&entry.file_name).unwrap_or_else(|| {
                tracing::warn!(
                    "model {}: no chat template known; using ChatML (set template_family or chat_template in {}.toml)",
                    entry.name,
                    entry.path.with_extension("").display()
                );
                "chatml"
            });
            ChatTemplate::builtin(family).expect("guessed families are built in")
        };
        let context_len = entry
            .context_len
            .or(gguf.as_ref().map(|g| g.context_len).filter(|&c| c > 0))
            .unwrap_or(self.cfg.scheduler.default_context_len);
        let mechanisms = self.mechanisms(&entry)?;
        let mut stop = template.stop_strings();
        stop.extend(side.stop.clone().unwrap_or_default());
        stop.retain(|s| !s.is_empty());
        stop.dedup();
        Ok(Served {
            family: gguf
                .as_ref()
                .and_then(|g| g.architecture.clone())
                .or_else(|| template.family().map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
            parameters: gguf.as_ref().map(|g| g.parameters),
            n_batch: mechanisms.n_batch,
            mechanisms,
            instances: side.instances.unwrap_or(self.cfg.scheduler.instances),
            pooling: gguf
                .as_ref()
                .and_then(|g| g.pooling_type)
                .map_or(scheduler::Pooling::Mean, scheduler::Pooling::from_gguf),
            embedding_len: gguf.as_ref().and_then(|g| g.embedding_len),
            template,
            tokenizer,
            context_len,
            stop,
            entry,
        })
    }

    fn runtime_lib(&self, entry: &ModelEntry) -> PathBuf {
        entry
            .sidecar
            .runtime_lib
            .clone()
            .unwrap_or_else(|| self.runtime_lib.clone())
    }

    /// The settings a probe report may choose, from the configuration and the sidecar, then
    /// from a report about this library and model where neither set them.
    fn mechanisms(&self, entry: &ModelEntry) -> Result<Mechanisms, CatalogError> {
        let side = &entry.sidecar;
        let sc = &self.cfg.scheduler;
        let mut m = Mechanisms {
            abi: match &side.abi {
                Some(a) => a.parse().map_err(|e: String| CatalogError::Invalid {
                    model: entry.name.clone(),
                    reason: e,
                })?,
                None => self.cfg.runtime.abi,
            },
            n_batch: side.n_batch.unwrap_or(sc.n_batch),
            reform: sc.reform,
            reform_via: sc.reform_via,
        };
        let explicit = Explicit {
            abi: self.cfg.explicit.abi || side.abi.is_some(),
            n_batch: self.cfg.explicit.n_batch || side.n_batch.is_some(),
            ..self.cfg.explicit
        };
        let lib = self.runtime_lib(entry);
        if let Some((path, report)) = self.probes.find(&entry.name, &lib, &entry.path) {
            let line = crate::probe::apply(
                &entry.name,
                &path,
                &report.recommendations,
                explicit,
                &mut m,
            );
            tracing::info!(model = %entry.name, "{line}");
        }
        Ok(m)
    }

    fn model_config(&self, s: &Served) -> Result<ModelConfig, CatalogError> {
        let sc = &self.cfg.scheduler;
        let lib = self.runtime_lib(&s.entry);
        let mut m = ModelConfig::new(s.entry.name.clone(), s.entry.path.clone(), lib);
        m.abi = s.mechanisms.abi;
        m.context_len = s.context_len;
        m.instances = s.instances;
        m.n_batch = s.n_batch;
        m.max_queue = sc.max_queue;
        m.max_queue_wait = sc.max_queue_wait;
        m.batch_window = sc.batch_window;
        m.starvation_bound = sc.starvation_bound;
        m.stall_timeout = sc.stall_timeout;
        m.destroy_timeout = sc.destroy_timeout;
        m.reform = s.mechanisms.reform;
        m.cut_via = s.mechanisms.reform_via;
        m.cpus = (!sc.cpus.is_empty()).then(|| sc.cpus.clone());
        m.pooling = s.pooling;
        m.release_hidden_states = self.cfg.runtime.release_hidden_states;
        m.restart_backoff = sc.restart_backoff;
        m.prompt_cache = self.prompt_store.as_ref().map(|store| PromptCacheConfig {
            store: store.clone(),
            hot_after: self.cfg.prompt_cache.hot_after,
            min_tokens: self.cfg.prompt_cache.min_tokens,
        });
        m.isolation = match self.cfg.runtime.isolation {
            IsolationMode::InProcess => Isolation::InProcess,
            // The workers are this executable, run as `rkserve worker`.
            IsolationMode::Process => Isolation::Process {
                exe: std::env::current_exe().map_err(|e| CatalogError::Invalid {
                    model: s.entry.name.clone(),
                    reason: format!("cannot find rkserve's executable to start workers: {e}"),
                })?,
            },
        };
        Ok(m)
    }

    /// A lease on the model, loading it first if it is not loaded (refusing a model that
    /// would not fit in the memory available, instead of letting the kernel kill the
    /// server). Blocking; concurrent first requests share one load. Hold the lease until
    /// the request's stream ends: the model is not unloaded while any lease is held.
    pub fn acquire(&self, s: &Served) -> Result<Lease, CatalogError> {
        self.models
            .acquire(&s.entry.name, &|_: &str| self.load_into_scheduler(s))
    }

    /// A lease on the model if it is loaded, without blocking.
    pub fn try_acquire(&self, name: &str) -> Option<Lease> {
        self.models.try_acquire(name)
    }

    /// Loads the model unless it is loaded (see [`Catalog::acquire`]). Blocking.
    pub fn ensure_loaded(&self, s: &Served) -> Result<(), CatalogError> {
        self.acquire(s).map(drop)
    }

    fn load_into_scheduler(&self, s: &Served) -> Result<(), CatalogError> {
        let cfg = self.model_config(s)?;
        if s.entry.kind != ModelKind::Synthetic {
            let need_mb = s.entry.size_bytes * 12 / 10 / (1 << 20) + 64;
            if let Some(available_mb) = mem_available_mb() {
                if need_mb > available_mb {
                    return Err(CatalogError::InsufficientMemory {
                        model: s.entry.name.clone(),
                        need_mb,
                        available_mb,
                    });
                }
            }
        }
        let name = s.entry.name.clone();
        if !self.scheduler.add_model_if_absent(cfg) {
            tracing::warn!(model = %name, "already in the scheduler; not loading it again");
        }
        // A model whose instances all failed is served as unavailable: requests get 503 with
        // the reason until it is unloaded, as before this manager.
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.scheduler.status(&name) == Some(ModelStatus::Loading)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::info!(model = %name, status = ?self.scheduler.status(&name).map(|s| s.label()), "loaded");
        Ok(())
    }

    /// Unloads the model as soon as no request holds it (at once if none does). Returns
    /// whether it was loaded.
    pub fn unload(&self, name: &str) -> bool {
        self.models.unload(name)
    }

    /// Ollama's keep_alive after a request (see [`ModelManager::keep_alive`]).
    pub fn keep_alive(&self, name: &str, keep: KeepAlive) {
        self.models.keep_alive(name, keep)
    }

    /// Whether the model goes as soon as its requests in flight end.
    pub fn unloading(&self, name: &str) -> bool {
        self.models.unloading(name)
    }

    /// When the model will be unloaded, if a keep_alive set it.
    pub fn expires_at(&self, name: &str) -> Option<std::time::SystemTime> {
        self.models.expires_at(name)
    }

    /// Unloads models whose keep_alive has passed (or that were asked to unload) and that
    /// no lease holds and have nothing running or waiting.
    pub fn reap_expired(&self) -> Vec<String> {
        let snapshot = self.scheduler.snapshot();
        self.models.reap(|name| {
            snapshot
                .iter()
                .find(|m| m.name == name)
                .is_none_or(|m| m.waiting == 0 && m.busy_slots() == 0)
        })
    }

    /// When the model was loaded and how long loading took.
    pub fn load_info(&self, name: &str) -> Option<(std::time::SystemTime, Duration)> {
        self.models.load_info(name)
    }
}

/// Modification times of the models directory and its immediate subdirectories (where
/// [`registry::scan`] looks), in a stable order.
fn dir_times(dir: &Path) -> Vec<Option<std::time::SystemTime>> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    subdirs.sort();
    std::iter::once(mtime(dir))
        .chain(subdirs.iter().map(|p| mtime(p)))
        .collect()
}
