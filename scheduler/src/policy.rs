//! Which waiting requests form the next run: a pure function, so it is tested without threads.
//!
//! An instance that becomes free takes the oldest waiting request and fills its other slots
//! with requests of the same [`BatchKey`] in arrival order. If that leaves slots empty it may
//! wait for more, but never longer than `batch_window` after the oldest member arrived or the
//! instance became free, whichever is later. The second matters: the clients of the run that
//! just ended send their next requests a few milliseconds after it, and a request that waited
//! through that run must not start alone without them. Otherwise the clients split into
//! groups that take turns, each waiting out the other's whole run. Nor does it wait for
//! clients who are back already: once as many requests came within the window of the last
//! run's end as it had members, nobody else is known to be coming (one client alone never
//! waits the window between its requests). That holds only where runs are re-formed: a burst
//! just after a lone client's request then joins its run at the next step, where with static
//! runs it would wait the whole run out. On
//! ABI 1.2 (sampling fixed per handle) an instance prefers requests matching its current
//! sampling, to avoid re-initialising, until the oldest request has waited `starvation_bound`.

use crate::request::BatchKey;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub batch_window: Duration,
    pub starvation_bound: Duration,
}

/// A waiting request as the policy sees it, in arrival order.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    pub key: BatchKey,
    pub arrival: Instant,
}

/// The instance's last run, as the window sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    /// When it ended and the instance became free.
    pub at: Instant,
    /// Requests it served: their clients are the ones expected back within the window.
    pub members: usize,
    /// Whether a request arriving after the next run starts can still join it (runs are
    /// re-formed): only then may the run start before the window ends.
    pub late_join: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a run with these queue positions, in slot order.
    Run(Vec<usize>),
    /// Not full yet: look again at this time (or when a request arrives).
    WaitUntil(Instant),
    /// Nothing is waiting.
    Idle,
}

impl Policy {
    pub fn decide(
        &self,
        queue: &[Waiting],
        n_batch: usize,
        now: Instant,
        preferred: Option<BatchKey>,
        freed: Option<Freed>,
    ) -> Decision {
        let Some(oldest) = queue.first() else {
            return Decision::Idle;
        };
        let starving = now.saturating_duration_since(oldest.arrival) >= self.starvation_bound;
        let key = match preferred {
            Some(p) if !starving && queue.iter().any(|w| w.key == p) => p,
            _ => oldest.key,
        };
        let members: Vec<usize> = queue
            .iter()
            .enumerate()
            .filter(|(_, w)| w.key == key)
            .map(|(i, _)| i)
            .take(n_batch)
            .collect();
        let first_arrival = queue[members[0]].arrival;
        let window_opens = freed.map_or(first_arrival, |f| f.at.max(first_arrival));
        let deadline = window_opens + self.batch_window;
        // Requests that came within the window of the last run's end are its clients, back.
        let all_back = freed.is_some_and(|f| {
            if !f.late_join {
                return false;
            }
            let back = members
                .iter()
                .filter(|&&i| (f.at..=f.at + self.batch_window).contains(&queue[i].arrival))
                .count();
            back >= f.members.max(1)
        });
        if members.len() < n_batch && now < deadline && !all_back {
            Decision::WaitUntil(deadline)
        } else {
            Decision::Run(members)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkllm::Sampling;

    fn key(temp: f32) -> BatchKey {
        BatchKey::of(&Sampling {
            temperature: temp,
            ..Sampling::default()
        })
    }

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Policy {
        Policy {
            batch_window: 5 * MS,
            starvation_bound: 100 * MS,
        }
    }

    #[test]
    fn incompatible_sampling_never_shares_a_run() {
        let t = Instant::now();
        let q = [
            Waiting {
                key: key(0.7),
                arrival: t,
            },
            Waiting {
                key: key(0.0),
                arrival: t + MS,
            },
            Waiting {
                key: key(0.7),
                arrival: t + 2 * MS,
            },
            Waiting {
                key: key(0.0),
                arrival: t + 3 * MS,
            },
        ];
        let d = policy().decide(&q, 4, t + 10 * MS, None, None);
        assert_eq!(d, Decision::Run(vec![0, 2]));
    }

    #[test]
    fn arrival_order_within_a_key_and_the_oldest_first() {
        let t = Instant::now();
        let q: Vec<Waiting> = (0..6)
            .map(|i| Waiting {
                key: key(0.5),
                arrival: t + i * MS,
            })
            .collect();
        assert_eq!(
            policy().decide(&q, 4, t, None, None),
            Decision::Run(vec![0, 1, 2, 3])
        );
    }

    #[test]
    fn a_partial_batch_waits_for_the_window_then_runs() {
        let t = Instant::now();
        let q = [Waiting {
            key: key(0.5),
            arrival: t,
        }];
        assert_eq!(
            policy().decide(&q, 4, t + MS, None, None),
            Decision::WaitUntil(t + 5 * MS)
        );
        assert_eq!(
            policy().decide(&q, 4, t + 5 * MS, None, None),
            Decision::Run(vec![0])
        );
        // A full batch never waits.
        let q4 = [q[0]; 4];
        assert_eq!(
            policy().decide(&q4, 4, t, None, None),
            Decision::Run(vec![0, 1, 2, 3])
        );
        // A zero window runs at once.
        let p = Policy {
            batch_window: Duration::ZERO,
            ..policy()
        };
        assert_eq!(p.decide(&q, 4, t, None, None), Decision::Run(vec![0]));
    }

    #[test]
    fn a_request_that_waited_through_a_run_waits_the_window_for_its_clients() {
        let t = Instant::now();
        let q = [Waiting {
            key: key(0.5),
            arrival: t,
        }];
        // It arrived during a 2 s run; the instance is free at t + 2 s. The run's clients
        // come back within the window and join it.
        let free = t + 2000 * MS;
        let freed = Some(Freed {
            at: free,
            members: 3,
            late_join: true,
        });
        assert_eq!(
            policy().decide(&q, 4, free + MS, None, freed),
            Decision::WaitUntil(free + 5 * MS)
        );
        assert_eq!(
            policy().decide(&q, 4, free + 5 * MS, None, freed),
            Decision::Run(vec![0])
        );
        // A full batch still starts at once.
        assert_eq!(
            policy().decide(&[q[0]; 4], 4, free, None, freed),
            Decision::Run(vec![0, 1, 2, 3])
        );
        // An instance idle for long changes nothing for a new arrival.
        let q = [Waiting {
            key: key(0.5),
            arrival: free + 100 * MS,
        }];
        assert_eq!(
            policy().decide(&q, 4, free + 101 * MS, None, freed),
            Decision::WaitUntil(free + 105 * MS)
        );
    }

    #[test]
    fn once_the_last_runs_clients_are_back_nobody_else_is_awaited() {
        let t = Instant::now();
        let at = |ms: u32| Waiting {
            key: key(0.5),
            arrival: t + ms * MS,
        };
        // One client alone: its next request, 1 ms after its last run ended, starts at once.
        let alone = Some(Freed {
            at: t,
            members: 1,
            late_join: true,
        });
        assert_eq!(
            policy().decide(&[at(1)], 4, t + 2 * MS, None, alone),
            Decision::Run(vec![0])
        );
        // Three clients: two are back, the third is awaited (the window opens with the first
        // back); with all three back, it runs.
        let three = Some(Freed {
            at: t,
            members: 3,
            late_join: true,
        });
        assert_eq!(
            policy().decide(&[at(1), at(2)], 4, t + 2 * MS, None, three),
            Decision::WaitUntil(t + 6 * MS)
        );
        assert_eq!(
            policy().decide(&[at(1), at(2), at(3)], 4, t + 3 * MS, None, three),
            Decision::Run(vec![0, 1, 2])
        );
        // One that waited through the run is no returning client: with it and one client
        // back, the window still waits for the second.
        let two = Some(Freed {
            at: t + 10 * MS,
            members: 2,
            late_join: true,
        });
        assert_eq!(
            policy().decide(&[at(1), at(11)], 4, t + 12 * MS, None, two),
            Decision::WaitUntil(t + 15 * MS)
        );
        // With static runs the window always runs its course: a burst could not join later.
        let static_runs = alone.map(|f| Freed {
            late_join: false,
            ..f
        });
        assert_eq!(
            policy().decide(&[at(1)], 4, t + 2 * MS, None, static_runs),
            Decision::WaitUntil(t + 6 * MS)
        );
        // A request long after the last run is no returning client: it waits the window
        // for companions, as on a cold start.
        assert_eq!(
            policy().decide(&[at(100)], 4, t + 101 * MS, None, alone),
            Decision::WaitUntil(t + 105 * MS)
        );
    }

    #[test]
    fn the_preferred_key_yields_to_a_starving_request() {
        let t = Instant::now();
        let q = [
            Waiting {
                key: key(0.9),
                arrival: t,
            },
            Waiting {
                key: key(0.5),
                arrival: t + MS,
            },
        ];
        let p = policy();
        // Before the bound the instance keeps its own sampling...
        assert_eq!(
            p.decide(&q, 1, t + 50 * MS, Some(key(0.5)), None),
            Decision::Run(vec![1])
        );
        // ...after it, the oldest goes first whatever it costs.
        assert_eq!(
            p.decide(&q, 1, t + 100 * MS, Some(key(0.5)), None),
            Decision::Run(vec![0])
        );
        // A preference nobody shares changes nothing.
        assert_eq!(
            p.decide(&q, 1, t + MS, Some(key(0.1)), None),
            Decision::Run(vec![0])
        );
    }

    #[test]
    fn empty_queue_is_idle() {
        assert_eq!(
            policy().decide(&[], 8, Instant::now(), None, None),
            Decision::Idle
        );
    }
}
