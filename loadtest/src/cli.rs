//! Command-line flags. Everything a run needs is here, so the integration test drives the
//! harness through exactly the flags a user types.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::lengths::LengthSpec;
use crate::prompts::Category;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rkserve-loadtest",
    version,
    about = "Load-test an OpenAI- or Ollama-compatible LLM server: concurrency and \
             arrival-rate sweeps, streaming latency percentiles, throughput, goodput"
)]
pub struct Cli {
    /// Server base URL; a trailing /v1, as OpenAI clients take, is accepted.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Which HTTP API to speak.
    #[arg(long, value_enum, default_value_t = Api::Openai)]
    pub api: Api,

    /// chat: /v1/chat/completions or /api/chat; completions: /v1/completions or /api/generate.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,

    /// Model name; default: the first model the server lists (/v1/models or /api/tags).
    #[arg(long)]
    pub model: Option<String>,

    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key: Option<String>,

    /// Upper bound on generated tokens (OpenAI max_tokens, Ollama options.num_predict). The
    /// model may stop earlier at end of sequence: output lengths are measured, not assumed.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,

    /// Mixed-length traffic: each request's max_tokens drawn from `lognormal:MEDIAN:SIGMA:MAX`
    /// (rounded, clamped to 1..=MAX), `uniform:MIN:MAX` or `fixed:N`, seeded by --seed.
    /// Replaces --max-tokens.
    #[arg(long, value_name = "SPEC", conflicts_with = "max_tokens")]
    pub max_tokens_dist: Option<LengthSpec>,

    /// Sampling temperature; 0 (greedy) keeps runs comparable.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub temperature: f64,

    /// Closed loop: comma-separated worker counts, each worker sending its next request when
    /// its previous one ends. Default when neither this nor --rate is given: 1,2,4,8.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "rate",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub concurrency: Vec<u64>,

    /// Open loop: comma-separated arrival rates in requests/s, requests launched on schedule
    /// whether or not earlier ones have finished.
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    pub rate: Vec<f64>,

    /// Inter-arrival distribution of the open loop.
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,

    /// Gamma shape of --arrival gamma: 1 is Poisson, below 1 burstier, above 1 more regular.
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    pub burstiness: f64,

    /// Measured requests per level.
    #[arg(
        long,
        default_value_t = 32,
        conflicts_with = "duration",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub requests: u64,

    /// Measure each level for this many seconds instead of a request count (requests in flight
    /// at the end are awaited and counted).
    #[arg(long, value_parser = positive)]
    pub duration: Option<f64>,

    /// Requests sent before each level, results discarded.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,

    /// Per-request limit in seconds, from sending to the end of the stream.
    #[arg(long, default_value_t = 300.0, value_parser = positive)]
    pub timeout: f64,

    /// Prompt source: `builtin`, or a text file with one prompt per line.
    #[arg(long, default_value = "builtin")]
    pub prompts: String,

    /// Restrict the built-in prompts to these categories (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub category: Vec<Category>,

    /// Generated prompts of about N tokens instead of the built-in set.
    #[arg(long, conflicts_with = "category", value_parser = clap::value_parser!(u64).range(1..))]
    pub prompt_tokens: Option<u64>,

    /// Seed for everything random (generated prompts, arrival times, --max-tokens-dist).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// SLO on time to first token, seconds.
    #[arg(long, value_parser = positive)]
    pub slo_ttft: Option<f64>,

    /// SLO on time per output token after the first, seconds.
    #[arg(long, value_parser = positive)]
    pub slo_tpot: Option<f64>,

    /// SLO on end-to-end latency, seconds.
    #[arg(long, value_parser = positive)]
    pub slo_e2e: Option<f64>,

    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write throughput and latency charts (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Api {
    Openai,
    Ollama,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Ollama => "ollama",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoint {
    Chat,
    #[value(alias = "generate")]
    Completions,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arrival {
    Poisson,
    Gamma,
}

impl Arrival {
    pub fn name(self) -> &'static str {
        match self {
            Arrival::Poisson => "poisson",
            Arrival::Gamma => "gamma",
        }
    }
}

/// When a level ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    Requests(u64),
    Duration(Duration),
}

impl Cli {
    pub fn stop(&self) -> Stop {
        match self.duration {
            Some(secs) => Stop::Duration(Duration::from_secs_f64(secs)),
            None => Stop::Requests(self.requests),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }

    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.arrival == Arrival::Poisson && self.burstiness != 1.0 {
            anyhow::bail!("--burstiness shapes gamma arrivals: add --arrival gamma");
        }
        if self.rate.is_empty() && (self.arrival != Arrival::Poisson || self.burstiness != 1.0) {
            anyhow::bail!("--arrival and --burstiness apply to open-loop runs: add --rate");
        }
        if self.prompt_tokens.is_some() && self.prompts != "builtin" {
            anyhow::bail!("--prompt-tokens generates its prompts: drop --prompts");
        }
        if self.prompts != "builtin" && !self.category.is_empty() {
            anyhow::bail!(
                "--category selects built-in prompts: drop --prompts {}",
                self.prompts
            );
        }
        Ok(())
    }
}

fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a positive number"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a non-negative number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rkserve-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn lists_and_defaults() {
        let cli = parse(&["--concurrency", "1,2,8"]).unwrap();
        assert_eq!(cli.concurrency, vec![1, 2, 8]);
        assert_eq!(cli.stop(), Stop::Requests(32));
        assert_eq!(cli.max_tokens, 128);
        assert_eq!(cli.temperature, 0.0);
        let cli = parse(&["--rate", "0.5,2", "--duration", "10"]).unwrap();
        assert_eq!(cli.rate, vec![0.5, 2.0]);
        assert_eq!(cli.stop(), Stop::Duration(Duration::from_secs(10)));
    }

    #[test]
    fn rejects_conflicts_and_bad_values() {
        assert!(parse(&["--concurrency", "1", "--rate", "1"]).is_err());
        assert!(parse(&["--requests", "4", "--duration", "1"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        let cli = parse(&["--rate", "1", "--burstiness", "0.5"]).unwrap();
        assert!(cli.validate().is_err(), "burstiness needs gamma");
        let cli = parse(&["--rate", "1", "--arrival", "gamma", "--burstiness", "0.5"]).unwrap();
        cli.validate().unwrap();
    }

    #[test]
    fn max_tokens_dist_is_parsed_and_replaces_max_tokens() {
        let cli = parse(&["--max-tokens-dist", "lognormal:64:1.2:512"]).unwrap();
        assert_eq!(
            cli.max_tokens_dist.unwrap().to_string(),
            "lognormal:64:1.2:512"
        );
        assert_eq!(parse(&[]).unwrap().max_tokens_dist, None);
        assert!(parse(&["--max-tokens-dist", "lognormal:64"]).is_err());
        assert!(parse(&["--max-tokens-dist", "fixed:8", "--max-tokens", "8"]).is_err());
    }
}
