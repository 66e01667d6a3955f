//! `rkllm-run`: runs one prompt, or a batch of prompts in one multi-batch run, through any
//! `librkllmrt.so` (Rockchip's or rkserve's CPU runtime, either ABI family) and prints the
//! streamed text and the runtime's perf stats. The first thing to run on a new board; then
//! `rkllm-run probe`, which finds out what the library can do (docs/probe.md).

mod probe;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks what a library and model can do, each check in a child process, and writes a
    /// report rkserve reads to choose its mechanisms.
    Probe(probe::ProbeArgs),
    /// One check of the probe, run in a child process of `probe`: prints one JSON line.
    #[command(hide = true)]
    ProbeCheck(probe::checks::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::run(cli.run),
        Some(Command::Probe(args)) => probe::probe(args),
        Some(Command::ProbeCheck(args)) => {
            probe::checks::run_check(args);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rkllm-run: {e}");
            ExitCode::FAILURE
        }
    }
}
