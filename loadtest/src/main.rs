use std::process::ExitCode;

use clap::Parser;
use rkserve_loadtest::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkserve-loadtest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(rkserve_loadtest::execute(cli)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` keeps the whole cause chain on one line.
            eprintln!("rkserve-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
