//! `rkserve`: with no configuration it serves the default model on the CPU runtime built
//! next to it; see config/rkserve.toml for everything else.

use actix_web::web;
use clap::Parser;
use rkserve::api::AppState;
use rkserve::catalog::Catalog;
use rkserve::config::{Cli, Config};
use std::process::ExitCode;

fn main() -> ExitCode {
    // `rkserve worker`: one instance's runtime, driven by the server over its stdin.
    if std::env::args().nth(1).as_deref() == Some(worker::WORKER_ARG) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("RKSERVE_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .init();
        return ExitCode::from(worker::child_main().clamp(0, 255) as u8);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RKSERVE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Before anything records: the scheduler's telemetry goes to this exporter.
    let exporter = match rkserve::exporter::Exporter::install() {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!("metrics exporter: {e}; /metrics will answer 503");
            None
        }
    };
    let cli = Cli::parse();
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (host, port) = (cfg.server.host.clone(), cfg.server.port);
    let drain_timeout = cfg.server.drain_timeout;
    let catalog = match Catalog::new(cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    for m in catalog.scheduler.snapshot() {
        match &m.status {
            scheduler::ModelStatus::Unavailable(r) => {
                tracing::error!("model {} is unavailable: {r}", m.name)
            }
            s => tracing::info!(
                "model {}: {s}, n_batch {}, context {}",
                m.name,
                m.n_batch,
                m.context_len
            ),
        }
    }
    let drain = std::sync::Arc::new(rkserve::drain::Drain::new(drain_timeout));
    // Named caches are kept beside the prompt-cache files of their prefixes.
    let caches = catalog
        .prompt_cache_dir()
        .map_or_else(Default::default, |d| {
            rkserve::api::named_caches::NamedCaches::persistent(d.join("named-caches.json"))
        });
    let state = web::Data::new(AppState {
        catalog,
        exporter,
        drain: drain.clone(),
        caches,
    });
    if let Some(agent_port) = state.catalog.config().server.agent_port {
        let bound = std::net::TcpListener::bind((host.as_str(), agent_port))
            .and_then(|l| rkserve::agent::spawn(l, state.clone()));
        match bound {
            Ok(()) => tracing::info!("HAProxy agent on {host}:{agent_port}"),
            Err(e) => {
                tracing::error!("agent port {host}:{agent_port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let housekeeping = state.clone();
    let run = async move {
        // Once a second: unload models idle past their Ollama keep_alive, and fold the
        // histogram samples recorded since into their buckets.
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let st = housekeeping.clone();
                let unloaded = web::block(move || {
                    if let Some(e) = &st.exporter {
                        e.upkeep();
                    }
                    st.catalog.reap_expired()
                })
                .await
                .unwrap_or_default();
                for name in unloaded {
                    tracing::info!("model {name}: keep_alive expired, unloaded");
                }
            }
        });
        let origins = state.catalog.config().server.cors_origins.clone();
        let configured = state.clone();
        let server = rkserve::http_server::bind(&host, port, state, origins)?;
        actix_web::rt::spawn(rkserve::api::create_configured_caches(configured));
        tracing::info!("listening on http://{host}:{port} (OpenAI: /v1, Ollama: /api)");
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            if let Err(e) = rkserve::shutdown::run(drain, handle.clone()).await {
                // Without signal handlers the process would die on SIGTERM mid-stream.
                tracing::error!("cannot watch for signals: {e}");
                handle.stop(false).await;
            }
        });
        server.await
    };
    match actix_web::rt::System::new().block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("server: {e}");
            ExitCode::FAILURE
        }
    }
}
