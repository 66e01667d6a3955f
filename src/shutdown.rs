//! How the process ends: SIGTERM or SIGINT (or `POST /admin/drain`) drains; the process
//! exits 0 once the work admitted before is done. A second signal, or `server.drain_timeout`
//! passing, exits at once and logs how many requests that cut.
//!
//! actix-web's own signal handling is off: it stops after a fixed timeout whatever is still
//! streaming, and answers nothing that tells routers to go elsewhere meanwhile.

use crate::drain::{Drain, Trigger};
use actix_web::dev::ServerHandle;
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Exit status when a drain was cut short with requests still in flight.
pub const CUT_EXIT_CODE: i32 = 1;

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Watches for the end and stops `server` once drained; returns only then. Exits the process
/// itself when the drain is cut short.
pub async fn run(drain: Arc<Drain>, server: ServerHandle) -> std::io::Result<()> {
    let mut signals = Signals::install()?;
    // Signals received so far: the first drains, the second exits. A drain begun by
    // POST /admin/drain (a preStop hook) is followed by the orchestrator's SIGTERM, and that
    // one must not cut the drain short.
    let mut seen = 0;
    tokio::select! {
        name = signals.next() => {
            seen += 1;
            tracing::info!("{name} received");
            drain.begin(Trigger::Signal);
        }
        _ = drain.begun() => {}
    }
    let since = drain.since().expect("draining");
    let deadline = tokio::time::Instant::from_std(since + drain.timeout());
    loop {
        tokio::select! {
            _ = drain.finished() => break,
            _ = tokio::time::sleep_until(deadline) => {
                cut(&drain, format_args!("the drain deadline ({:?}) passed", drain.timeout()))
            }
            name = signals.next() => {
                seen += 1;
                if seen >= 2 {
                    cut(&drain, format_args!("a second signal ({name}) arrived"));
                }
                tracing::info!("{name} received; already draining");
            }
        }
    }
    tracing::info!(
        "drained in {:.1} s: every request admitted before the drain finished; exiting",
        since.elapsed().as_secs_f64()
    );
    server.stop(true).await;
    Ok(())
}

fn cut(drain: &Drain, why: std::fmt::Arguments<'_>) -> ! {
    let n = drain.in_flight();
    if n == 0 {
        tracing::info!("{why}; nothing was in flight; exiting");
        std::process::exit(0);
    }
    tracing::warn!("{why}: exiting now; requests in flight cut: {n}");
    std::process::exit(CUT_EXIT_CODE);
}
