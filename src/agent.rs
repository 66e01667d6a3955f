//! HAProxy's agent-check protocol on `server.agent_port`: HAProxy connects, rkserve writes
//! one line and closes. `leastconn` counts connections, not batch slots; the weight is how it
//! learns that a board's slots are full (a board with 8 slots and 8 connections is full, one
//! with 2 instances and 8 connections is half empty).
//!
//! - `up ready N%`: free capacity as a share of the configured weight (`ready` lifts a
//!   `drain` left by a previous process on this port);
//! - `drain`: no new connections, those open finish (rkserve is draining, or every model that
//!   can serve is being unloaded once its requests end);
//! - `down`: no model can serve.

use crate::api::AppState;
use crate::capacity::Capacity;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The weight never drops to 0% while up: 0 would make HAProxy treat the board as drained,
/// and when every board is full the queue on each should still share new work.
const MIN_WEIGHT: u8 = 1;

/// The agent's reply for the server's present state.
pub fn reply(draining: bool, capacity: Capacity) -> String {
    if draining {
        return "drain\n".into();
    }
    match capacity {
        Capacity::None => "down\n".into(),
        Capacity::Leaving => "drain\n".into(),
        Capacity::Free { percent } => format!("up ready {}%\n", percent.max(MIN_WEIGHT)),
    }
}

/// Serves the agent on its own thread: each answer is a snapshot and a few bytes, and it must
/// not wait behind the HTTP workers when they are busiest.
pub fn spawn(listener: TcpListener, state: actix_web::web::Data<AppState>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("haproxy-agent".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let catalog = &state.catalog;
                        let capacity = Capacity::staying(&catalog.scheduler.snapshot(), |m| {
                            catalog.unloading(m)
                        });
                        let line = reply(state.drain.is_draining(), capacity);
                        if let Err(e) = answer(stream, &line) {
                            tracing::debug!("agent check: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("agent port: {e}"),
                }
            }
        })
        .map(drop)
}

fn answer(mut stream: TcpStream, line: &str) -> std::io::Result<()> {
    // A peer that never reads must not hold the only agent thread.
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(line.as_bytes())?;
    // HAProxy may send a line of its own (agent-send); nothing in it changes the answer, but
    // reading what has arrived lets the close be clean instead of a reset.
    stream.set_nonblocking(true)?;
    let mut sink = [0u8; 256];
    let _ = stream.read(&mut sink);
    stream.shutdown(std::net::Shutdown::Both)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_follow_haproxy_agent_syntax() {
        assert_eq!(
            reply(false, Capacity::Free { percent: 60 }),
            "up ready 60%\n"
        );
        assert_eq!(reply(false, Capacity::Free { percent: 0 }), "up ready 1%\n");
        assert_eq!(reply(false, Capacity::None), "down\n");
        assert_eq!(reply(false, Capacity::Leaving), "drain\n");
        assert_eq!(reply(true, Capacity::Free { percent: 100 }), "drain\n");
        assert_eq!(reply(true, Capacity::None), "drain\n");
    }
}
