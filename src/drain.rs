//! Whether the server still takes new work, and how much admitted work is unfinished.
//!
//! One state behind one lock, so that admitting a request and starting to drain cannot
//! interleave: a request is either refused, or counted before the drain can see the count
//! reach zero. The count is of HTTP requests, from admission until their response body is
//! dropped (sent to its end, or the client gone), so a stream still being written keeps the
//! server up even after its slot in the scheduler is free.

use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default)]
struct State {
    since: Option<Instant>,
    in_flight: usize,
}

/// What started a drain, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Signal => "a termination signal",
            Trigger::Admin => "POST /admin/drain",
        })
    }
}

pub struct Drain {
    state: watch::Sender<State>,
    timeout: Duration,
}

/// Held by an admitted request; dropping it marks the request finished.
#[must_use = "the request counts as finished as soon as the guard is dropped"]
pub struct Guard {
    state: watch::Sender<State>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.state.send_modify(|s| s.in_flight -= 1);
    }
}

impl Drain {
    pub fn new(timeout: Duration) -> Drain {
        Drain {
            state: watch::Sender::new(State::default()),
            timeout,
        }
    }

    /// The longest a drain waits for admitted work before the process exits regardless.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Admits a request, or `None` once draining.
    pub fn admit(&self) -> Option<Guard> {
        self.state
            .send_if_modified(|s| {
                if s.since.is_some() {
                    return false;
                }
                s.in_flight += 1;
                true
            })
            .then(|| Guard {
                state: self.state.clone(),
            })
    }

    /// Stops admitting; true if this call started the drain.
    pub fn begin(&self, by: Trigger) -> bool {
        let started = self.state.send_if_modified(|s| {
            if s.since.is_some() {
                return false;
            }
            s.since = Some(Instant::now());
            true
        });
        if started {
            tracing::info!(
                "draining ({by}): taking no new requests, {} in flight, exiting once they \
                 finish or in {:?}",
                self.in_flight(),
                self.timeout
            );
        }
        started
    }

    pub fn is_draining(&self) -> bool {
        self.state.borrow().since.is_some()
    }

    /// When the drain began, if it has.
    pub fn since(&self) -> Option<Instant> {
        self.state.borrow().since
    }

    pub fn in_flight(&self) -> usize {
        self.state.borrow().in_flight
    }

    /// Resolves once a drain has begun.
    pub async fn begun(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives in self, so the channel cannot close while this borrows it.
        let _ = rx.wait_for(|s| s.since.is_some()).await;
    }

    /// Resolves once draining and nothing admitted is left.
    pub async fn finished(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| s.since.is_some() && s.in_flight == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_draining_nothing_is_admitted_and_work_admitted_before_counts() {
        let d = Drain::new(Duration::from_secs(1));
        let a = d.admit().expect("admitted");
        let b = d.admit().expect("admitted");
        assert_eq!(d.in_flight(), 2);
        assert!(d.begin(Trigger::Admin));
        assert!(!d.begin(Trigger::Signal), "a drain starts once");
        assert!(d.admit().is_none());
        drop(a);
        assert_eq!(d.in_flight(), 1);
        drop(b);
        assert_eq!(d.in_flight(), 0);
    }

    #[tokio::test]
    async fn finished_waits_for_the_last_guard() {
        let d = std::sync::Arc::new(Drain::new(Duration::from_secs(1)));
        let g = d.admit().unwrap();
        d.begin(Trigger::Signal);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.finished().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "finished with a request in flight");
        drop(g);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("finished once the last request ended")
            .unwrap();
    }

    #[tokio::test]
    async fn finished_does_not_resolve_before_a_drain() {
        let d = Drain::new(Duration::from_secs(1));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), d.finished())
                .await
                .is_err(),
            "an idle server that is not draining has not finished"
        );
    }
}
