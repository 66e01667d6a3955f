//! Load-test harness for OpenAI- and Ollama-compatible LLM servers. The binary is a thin
//! wrapper over [`execute`], which the integration tests call directly.

#![forbid(unsafe_code)]

pub mod arrivals;
pub mod cli;
pub mod client;
pub mod lengths;
pub mod plot;
pub mod progress;
pub mod prompts;
pub mod record;
pub mod report;
pub mod run;
pub mod summary;

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail};

use cli::{Arrival, Cli};
use client::{Client, Settings};
use lengths::MaxTokens;
use prompts::PromptSet;
use record::Outcome;
use report::{Report, Table};
use run::Driver;
use summary::{summarize, Load, Slo};

/// Levels swept when neither --concurrency nor --rate is given.
const DEFAULT_CONCURRENCY: [u64; 4] = [1, 2, 4, 8];

/// Runs the sweep the flags describe: prints the table to stdout as levels finish, writes the
/// files asked for, and returns the results. Errors are fatal conditions (bad flags, server
/// unreachable, first request refused); failed requests during the sweep are results.
pub async fn execute(cli: Cli) -> anyhow::Result<Report> {
    cli.validate()?;
    if let Some(path) = &cli.plot {
        plot::check_path(path)?;
    }
    let prompts = prompt_set(&cli)?;

    let mut client = Client::new(Settings {
        url: cli.url.clone(),
        api: cli.api,
        endpoint: cli.endpoint,
        model: cli.model.clone().unwrap_or_default(),
        api_key: cli.api_key.clone(),
        max_tokens: cli.max_tokens,
        temperature: cli.temperature,
        timeout: cli.timeout(),
    })?;
    if cli.model.is_none() {
        let first = client.models().await?.into_iter().next();
        client.set_model(first.ok_or_else(|| anyhow!("the server lists no models: pass --model"))?);
    }
    preflight(&client, &prompts).await?;

    let open_loop = !cli.rate.is_empty();
    let loads: Vec<Load> = if open_loop {
        cli.rate.iter().map(|&r| Load::Rate(r)).collect()
    } else if cli.concurrency.is_empty() {
        DEFAULT_CONCURRENCY.map(Load::Concurrency).to_vec()
    } else {
        cli.concurrency
            .iter()
            .map(|&c| Load::Concurrency(c))
            .collect()
    };
    let slo = Slo {
        ttft_seconds: cli.slo_ttft,
        tpot_seconds: cli.slo_tpot,
        e2e_seconds: cli.slo_e2e,
    };
    let settings = client.settings().clone();
    let prompt_desc = prompt_description(&cli);
    let max_tokens = MaxTokens {
        fixed: settings.max_tokens,
        dist: cli.max_tokens_dist,
        seed: cli.seed,
    };
    let length_desc = match &cli.max_tokens_dist {
        Some(spec) => format!("max_tokens {spec} (seed {})", cli.seed),
        None => format!("max {} tokens", settings.max_tokens),
    };
    println!(
        "{} {} API ({}) at {}, model {}, {}, temperature {}, prompts: {}",
        if open_loop {
            "open loop,"
        } else {
            "closed loop,"
        },
        settings.api.name(),
        settings.endpoint.name(),
        settings.url,
        settings.model,
        length_desc,
        settings.temperature,
        prompt_desc,
    );

    let driver = Driver {
        client: Arc::new(client),
        prompts: Arc::new(prompts),
        stop: cli.stop(),
        warmup: cli.warmup,
        shape: if cli.arrival == Arrival::Gamma {
            cli.burstiness
        } else {
            1.0
        },
        seed: cli.seed,
        max_tokens,
    };
    let table = Table::new(open_loop, !slo.is_empty());
    println!("{}", table.header());
    let mut levels = Vec::with_capacity(loads.len());
    let mut server_gone = None;
    for load in loads {
        let run = driver.level(load).await;
        let level = summarize(load, &run.records, run.wall, &slo);
        println!("{}", table.row(&level));
        levels.push(level);
        if let Some(message) = run.server_gone {
            server_gone = Some(format!(
                "the server stopped accepting connections during {}: {message}",
                load.describe()
            ));
            break;
        }
    }
    print!("{}", report::errors(&levels));
    // Every level's measured requests are numbered from 0, so they asked for the first draws.
    let sent = levels
        .iter()
        .map(|l| l.completed + l.failed)
        .max()
        .unwrap_or(0);
    let max_tokens_dist = cli
        .max_tokens_dist
        .and_then(|spec| lengths::summarize(&spec, cli.seed, sent));

    let report = Report {
        server: settings.url.clone(),
        api: settings.api.name().to_owned(),
        endpoint: settings.endpoint.name().to_owned(),
        model: settings.model.clone(),
        mode: if open_loop { "open" } else { "closed" }.to_owned(),
        max_tokens: settings.max_tokens,
        max_tokens_dist,
        temperature: settings.temperature,
        prompts: prompt_desc,
        warmup: cli.warmup,
        arrival: open_loop.then(|| cli.arrival.name().to_owned()),
        burstiness: (open_loop && cli.arrival == Arrival::Gamma).then_some(cli.burstiness),
        seed: cli.seed,
        levels,
    };
    if let Some(path) = &cli.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &cli.plot {
        plot::write_svg(path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    // The levels measured so far are printed and written; the sweep itself failed.
    if let Some(message) = server_gone {
        bail!(message);
    }
    Ok(report)
}

fn prompt_set(cli: &Cli) -> anyhow::Result<PromptSet> {
    if let Some(tokens) = cli.prompt_tokens {
        return Ok(PromptSet::generated(tokens as usize, cli.seed));
    }
    if cli.prompts == "builtin" {
        Ok(PromptSet::builtin(&cli.category))
    } else {
        PromptSet::from_file(Path::new(&cli.prompts))
    }
}

fn prompt_description(cli: &Cli) -> String {
    if let Some(tokens) = cli.prompt_tokens {
        return format!("generated, ~{tokens} tokens");
    }
    if cli.prompts != "builtin" {
        return cli.prompts.clone();
    }
    if cli.category.is_empty() {
        return "builtin".to_owned();
    }
    let names: Vec<String> = cli
        .category
        .iter()
        .map(|c| format!("{c:?}").to_lowercase())
        .collect();
    format!("builtin ({})", names.join(","))
}

/// One short request before anything is measured: a server that is down, a wrong model, API
/// or key would otherwise surface as a table of failures after a long wait.
async fn preflight(client: &Client, prompts: &PromptSet) -> anyhow::Result<()> {
    let s = client.settings();
    let record = client.send_limited(&prompts.get(0).text, 1).await;
    match record.outcome {
        Outcome::Ok => Ok(()),
        Outcome::Transport(m) => bail!("cannot reach the server at {}: {m}", s.url),
        Outcome::Http { status, message } => {
            let hint = match status {
                401 | 403 => " (check --api-key)".to_owned(),
                // A wrong model and a wrong API both give 404: the model list tells them apart.
                404 => match client.models().await {
                    Ok(models) if !models.is_empty() => {
                        format!(" (models on the server: {})", models.join(", "))
                    }
                    _ => format!(
                        " (check --model and --endpoint, and whether the server speaks the {} API)",
                        s.api.name()
                    ),
                },
                _ => String::new(),
            };
            bail!("the server refused the first request with HTTP {status}: {message}{hint}")
        }
        other => bail!(
            "the first request failed: {}",
            other.error_message().unwrap_or_default()
        ),
    }
}
