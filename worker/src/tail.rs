//! The worker's stdout and stderr: every line goes to the log, and the last few are kept to
//! say what a dead worker wrote before it died.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines kept.
const KEPT: usize = 12;
/// A line longer than this is cut: the tail is for error messages, not data.
const LINE_MAX: usize = 400;

pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Disconnected when the pipe reaches its end (the worker and its children are gone).
    ended: crossbeam_channel::Receiver<()>,
}

impl Tail {
    pub fn start(pipe: impl Read + Send + 'static, label: String) -> std::io::Result<Tail> {
        let lines = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT)));
        let (tx, ended) = crossbeam_channel::bounded::<()>(0);
        let kept = lines.clone();
        std::thread::Builder::new()
            .name("rkserve-worker-log".into())
            .spawn(move || {
                let _alive = tx;
                let mut r = BufReader::new(pipe);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match r.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let text = String::from_utf8_lossy(&raw);
                    let mut line = text.trim_end().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    if line.len() > LINE_MAX {
                        let mut cut = LINE_MAX;
                        while !line.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        line.truncate(cut);
                    }
                    tracing::info!(target: "rkserve::worker", worker = %label, "{line}");
                    let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if k.len() == KEPT {
                        k.pop_front();
                    }
                    k.push_back(line);
                }
            })?;
        Ok(Tail { lines, ended })
    }

    /// The last lines, after waiting up to `limit` for the pipe to end (a dying process's
    /// last words may still be in it).
    pub fn last(&self, n: usize, limit: Duration) -> Vec<String> {
        let _ = self.ended.recv_timeout(limit);
        let k = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        k.iter().skip(k.len().saturating_sub(n)).cloned().collect()
    }
}
