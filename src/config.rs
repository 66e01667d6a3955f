//! Configuration: `config/rkserve.toml` (every setting commented there), then environment
//! variables, then command-line flags.

use clap::Parser;
use rkllm::AbiFamily;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub runtime: Runtime,
    pub models: Models,
    pub scheduler: Scheduler,
    pub prompt_cache: PromptCache,
    /// Which settings a probe report may choose were set by the user (file, flag or env).
    #[serde(skip)]
    pub explicit: crate::probe::Explicit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub api_keys: Vec<String>,
    pub open_health: bool,
    pub max_body_bytes: usize,
    /// The sliding window of GET /v1/stats.
    #[serde(deserialize_with = "duration::de")]
    pub stats_window: Duration,
    /// Browser origins allowed to call the API (CORS), as Ollama's OLLAMA_ORIGINS: exact
    /// origins, `*` within one (`http://localhost:*`), or `*` for any.
    pub cors_origins: Vec<String>,
    /// How often a reply that must be JSON or a tool call is generated again when it is not.
    pub structured_retries: u32,
    /// The longest a request body may take to arrive once its headers have.
    #[serde(deserialize_with = "duration::de")]
    pub body_timeout: Duration,
    /// On SIGTERM or POST /admin/drain, how long admitted requests may take to finish
    /// before the process exits regardless.
    #[serde(deserialize_with = "duration::de")]
    pub drain_timeout: Duration,
    /// A TCP port speaking HAProxy's agent-check protocol (weight from free capacity, drain,
    /// down); none: no agent.
    pub agent_port: Option<u16>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            host: "127.0.0.1".into(),
            port: 8080,
            api_keys: vec![],
            open_health: true,
            max_body_bytes: 4 << 20,
            stats_window: Duration::from_secs(60),
            // Ollama's defaults: pages served from this machine and desktop-app schemes.
            cors_origins: [
                "http://localhost",
                "https://localhost",
                "http://localhost:*",
                "https://localhost:*",
                "http://127.0.0.1",
                "https://127.0.0.1",
                "http://127.0.0.1:*",
                "https://127.0.0.1:*",
                "http://0.0.0.0",
                "http://0.0.0.0:*",
                "app://*",
                "file://*",
                "tauri://*",
                "vscode-webview://*",
            ]
            .map(String::from)
            .to_vec(),
            structured_retries: 2,
            body_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            agent_port: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    pub lib: PathBuf,
    #[serde(deserialize_with = "de_abi")]
    pub abi: AbiFamily,
    /// Whether an embedding run's callback returns 2 ("release the buffer") after reading
    /// the hidden states. Absent: on ABI 1.3 (Rockchip's 1.3.0 frees them so; earlier runtimes
    /// leaked them), never on 1.2. A board must confirm 1.3.0's behaviour.
    pub release_hidden_states: Option<bool>,
    /// Where the runtime runs: `process` (a worker process per instance, so a crash in the
    /// runtime ends that instance, which restarts) or `in-process`.
    #[serde(deserialize_with = "de_parse")]
    pub isolation: IsolationMode,
    /// A board probe's report (`rkllm-run probe --json`): when it is about this library and
    /// model, it chooses the settings above and below that are not set.
    pub probe: Option<PathBuf>,
    /// Reports named `<library sha256>-<model sha256>.json` (`rkllm-run probe --cache`).
    /// Unset: `probe/` in the models directory.
    pub probe_dir: Option<PathBuf>,
}

/// `runtime.isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationMode {
    #[default]
    Process,
    InProcess,
}

impl std::str::FromStr for IsolationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(IsolationMode::Process),
            "in-process" => Ok(IsolationMode::InProcess),
            other => Err(format!(
                "isolation must be \"process\" or \"in-process\", not {other:?}"
            )),
        }
    }
}

fn de_abi<'de, D: serde::Deserializer<'de>>(d: D) -> Result<AbiFamily, D::Error> {
    de_parse(d)
}

/// A setting written as a string and parsed by its type's `FromStr`.
fn de_parse<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Models {
    pub dir: PathBuf,
    pub preload: Vec<String>,
    pub fetch_default_model: bool,
}

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

impl Default for Models {
    fn default() -> Self {
        Models {
            dir: "models".into(),
            preload: vec![DEFAULT_MODEL.into()],
            fetch_default_model: true,
        }
    }
}

/// Prompt-cache files for shared prefixes (system prompts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptCache {
    pub enabled: bool,
    /// Unset: prompt-cache/ in the models directory.
    pub dir: Option<PathBuf>,
    pub max_mb: u64,
    pub hot_after: u32,
    pub min_tokens: usize,
    /// Named caches made at start-up, by model then name: prefixes hot from the first request.
    pub named: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for PromptCache {
    fn default() -> Self {
        PromptCache {
            enabled: true,
            dir: None,
            max_mb: 2048,
            hot_after: 2,
            min_tokens: 32,
            named: BTreeMap::new(),
        }
    }
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scheduler {
    pub instances: usize,
    pub n_batch: u8,
    pub max_queue: usize,
    #[serde(deserialize_with = "duration::de")]
    pub max_queue_wait: Duration,
    #[serde(deserialize_with = "duration::de")]
    pub batch_window: Duration,
    #[serde(deserialize_with = "duration::de")]
    pub starvation_bound: Duration,
    #[serde(deserialize_with = "duration::de")]
    pub stall_timeout: Duration,
    #[serde(deserialize_with = "duration::de")]
    pub destroy_timeout: Duration,
    /// The first wait before an instance whose worker died starts a new one (doubling).
    #[serde(deserialize_with = "duration::de")]
    pub restart_backoff: Duration,
    pub cpus: Vec<usize>,
    pub default_context_len: usize,
    #[serde(deserialize_with = "de_parse")]
    pub reform: scheduler::Reform,
    #[serde(deserialize_with = "de_parse")]
    pub reform_via: scheduler::CutVia,
}

impl Default for Scheduler {
    /// The scheduler crate's own defaults, so the two cannot drift apart.
    fn default() -> Self {
        let m = scheduler::ModelConfig::new("", PathBuf::new(), PathBuf::new());
        Scheduler {
            instances: m.instances,
            n_batch: m.n_batch,
            max_queue: m.max_queue,
            max_queue_wait: m.max_queue_wait,
            batch_window: m.batch_window,
            starvation_bound: m.starvation_bound,
            stall_timeout: m.stall_timeout,
            destroy_timeout: m.destroy_timeout,
            restart_backoff: m.restart_backoff,
            cpus: vec![],
            default_context_len: m.context_len,
            reform: m.reform,
            reform_via: m.cut_via,
        }
    }
}

/// Command-line flags; each also reads its environment variable.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "A batching LLM server for Rockchip NPUs (OpenAI and Ollama APIs)"
)]
pub struct Cli {
    /// Configuration file. Default: config/rkserve.toml if it exists.
    #[arg(long, env = "RKSERVE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "RKSERVE_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "RKSERVE_PORT")]
    pub port: Option<u16>,
    /// HAProxy agent-check port.
    #[arg(long, env = "RKSERVE_AGENT_PORT")]
    pub agent_port: Option<u16>,
    #[arg(long, env = "RKSERVE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    #[arg(long, env = "RKSERVE_RUNTIME_LIB")]
    pub runtime_lib: Option<PathBuf>,
    #[arg(long, env = "RKSERVE_RUNTIME_ABI")]
    pub runtime_abi: Option<AbiFamily>,
    /// A board probe's JSON report (rkllm-run probe --json).
    #[arg(long, env = "RKSERVE_RUNTIME_PROBE")]
    pub runtime_probe: Option<PathBuf>,
    /// `process` (default: each instance's runtime in a worker process) or `in-process`.
    #[arg(long, env = "RKSERVE_ISOLATION")]
    pub isolation: Option<IsolationMode>,
    /// Comma-separated API keys.
    #[arg(long, env = "RKSERVE_API_KEYS", value_delimiter = ',')]
    pub api_keys: Option<Vec<String>>,
    /// Models to load at start-up (comma-separated), replacing the configured list.
    #[arg(long, env = "RKSERVE_PRELOAD", value_delimiter = ',')]
    pub preload: Option<Vec<String>>,
    /// Sequences per run.
    #[arg(long, env = "RKSERVE_N_BATCH")]
    pub n_batch: Option<u8>,
    /// Instances per model.
    #[arg(long, env = "RKSERVE_INSTANCES")]
    pub instances: Option<usize>,
    /// Continuous batching: "auto" (re-form runs when it pays) or "off" (static runs).
    #[arg(long, env = "RKSERVE_REFORM")]
    pub reform: Option<scheduler::Reform>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let path = cli.config.clone().or_else(|| {
            let p = PathBuf::from("config/rkserve.toml");
            p.is_file().then_some(p)
        });
        let mut cfg = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                let mut cfg: Config =
                    toml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: p.clone(),
                        source,
                    })?;
                cfg.explicit = explicit_in(&text);
                cfg
            }
            None => Config::default(),
        };
        if let Some(p) = &cli.runtime_probe {
            cfg.runtime.probe = Some(p.clone());
        }
        if let Some(h) = &cli.host {
            cfg.server.host = h.clone();
        }
        if let Some(p) = cli.port {
            cfg.server.port = p;
        }
        if let Some(p) = cli.agent_port {
            cfg.server.agent_port = Some(p);
        }
        if let Some(d) = &cli.models_dir {
            cfg.models.dir = d.clone();
        }
        if let Some(l) = &cli.runtime_lib {
            cfg.runtime.lib = l.clone();
        }
        if let Some(i) = cli.isolation {
            cfg.runtime.isolation = i;
        }
        if let Some(a) = cli.runtime_abi {
            cfg.runtime.abi = a;
            cfg.explicit.abi = true;
        }
        if let Some(k) = &cli.api_keys {
            // Set but empty is a mistake (a secret or variable that came out empty), not a
            // way to turn authentication off: it fails closed.
            if k.iter().any(|k| k.trim().is_empty()) {
                return Err(ConfigError::Invalid(
                    "--api-keys (RKSERVE_API_KEYS) holds an empty or blank key: give \
                     comma-separated keys with none empty, or unset it to use the \
                     configuration file's server.api_keys"
                        .into(),
                ));
            }
            cfg.server.api_keys = k.clone();
        }
        if let Some(p) = &cli.preload {
            cfg.models.preload = p.iter().filter(|k| !k.is_empty()).cloned().collect();
        }
        if let Some(n) = cli.n_batch {
            cfg.scheduler.n_batch = n;
            cfg.explicit.n_batch = true;
        }
        if let Some(n) = cli.instances {
            cfg.scheduler.instances = n;
        }
        if let Some(r) = cli.reform {
            cfg.scheduler.reform = r;
            cfg.explicit.reform = true;
        }
        // An empty key would match a request's empty bearer token: it must not pass for a
        // key, and silently dropping it could leave a server open that was meant to be shut.
        if let Some(i) = cfg.server.api_keys.iter().position(|k| k.trim().is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "server.api_keys[{i}] is empty or blank: every API key must have characters \
                 (remove it, or leave api_keys = [] to turn authentication off)"
            )));
        }
        for (model, caches) in &cfg.prompt_cache.named {
            for (name, prompt) in caches {
                if !valid_cache_name(name) || prompt.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "prompt_cache.named.\"{model}\".{name}: a cache name is 1 to 64 letters, \
                         digits, '-', '_' or '.', and its prompt must not be empty"
                    )));
                }
            }
        }
        if !(1..=8).contains(&cfg.scheduler.n_batch) {
            return Err(ConfigError::Invalid(format!(
                "scheduler.n_batch must be 1 to 8, got {}",
                cfg.scheduler.n_batch
            )));
        }
        Ok(cfg)
    }
}

/// A named prompt cache's name goes into URLs and logs: a plain token.
pub fn valid_cache_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Which of the settings a probe may choose the file sets (a typed parse has filled in
/// defaults for the others, so only the text can tell).
fn explicit_in(text: &str) -> crate::probe::Explicit {
    let table: toml::Table = text.parse().unwrap_or_default();
    let set = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key)).is_some();
    crate::probe::Explicit {
        abi: set("runtime", "abi"),
        n_batch: set("scheduler", "n_batch"),
        reform: set("scheduler", "reform"),
        reform_via: set("scheduler", "reform_via"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_and_matches_the_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rkserve.toml"))
                .unwrap();
        let file: Config = toml::from_str(&text).unwrap();
        let d = Config::default();
        assert_eq!(file.server.port, d.server.port);
        assert_eq!(file.scheduler.n_batch, d.scheduler.n_batch);
        assert_eq!(file.scheduler.batch_window, d.scheduler.batch_window);
        assert_eq!(file.models.preload, d.models.preload);
        assert_eq!(file.runtime.abi, d.runtime.abi);
        assert_eq!(file.server.drain_timeout, d.server.drain_timeout);
        assert_eq!(file.server.agent_port, d.server.agent_port);
    }

    #[test]
    fn settings_a_probe_may_choose_are_explicit_only_when_written_or_flagged() {
        let e = explicit_in("[runtime]\nabi = \"1.2\"\n[scheduler]\nreform_via = \"abort\"\n");
        assert!(e.abi && e.reform_via && !e.n_batch && !e.reform, "{e:?}");
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rkserve.toml"))
                .unwrap();
        assert_eq!(
            explicit_in(&shipped),
            crate::probe::Explicit::default(),
            "the shipped file must leave them to a probe"
        );
        let cli = Cli::parse_from(["rkserve", "--n-batch", "4", "--runtime-probe", "p.json"]);
        let cfg = Config::load(&cli).unwrap();
        assert!(cfg.explicit.n_batch && !cfg.explicit.abi);
        assert_eq!(
            cfg.runtime.probe.as_deref(),
            Some(std::path::Path::new("p.json"))
        );
    }

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let cli = Cli::parse_from([
            "rkserve",
            "--port",
            "9000",
            "--runtime-abi",
            "1.2",
            "--api-keys",
            "a,b",
        ]);
        let cfg = Config::load(&cli).unwrap();
        assert_eq!(cfg.server.port, 9000);
        assert_eq!(cfg.runtime.abi, AbiFamily::V1_2);
        assert_eq!(cfg.server.api_keys, vec!["a", "b"]);
        let cli = Cli::parse_from(["rkserve", "--n-batch", "9"]);
        assert!(matches!(Config::load(&cli), Err(ConfigError::Invalid(_))));
        assert!(
            toml::from_str::<Config>("[server]\nprot = 1\n").is_err(),
            "unknown keys are typos"
        );
    }

    #[test]
    fn empty_or_blank_api_keys_are_refused() {
        for keys in [r#"["k1", ""]"#, r#"["  "]"#, r#"["k1", "\t"]"#] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rkserve.toml");
            std::fs::write(&path, format!("[server]\napi_keys = {keys}\n")).unwrap();
            let cli = Cli::parse_from(["rkserve", "--config", path.to_str().unwrap()]);
            match Config::load(&cli) {
                Err(ConfigError::Invalid(m)) => assert!(m.contains("api_keys"), "{m}"),
                other => panic!("{keys} was accepted: {other:?}"),
            }
        }
        for flag in ["k1, ", "", "k1,,k2", ","] {
            let cli = Cli::parse_from(["rkserve", "--api-keys", flag]);
            match Config::load(&cli) {
                Err(ConfigError::Invalid(m)) => assert!(m.contains("--api-keys"), "{m}"),
                other => panic!("--api-keys {flag:?} was accepted: {other:?}"),
            }
        }
    }
}
