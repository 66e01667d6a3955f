//! Whether to cut a run at this step boundary and re-form it: a pure function of the run, the
//! queue and the learned costs, so it is tested without threads.
//!
//! Cutting a run and starting the next with the requests still generating ("continuing") plus
//! waiting requests in the freed slots pays when what the freed slots would produce before the
//! run's natural end outweighs what the cut costs. The cost is the time every continuing
//! request stands still: the cut itself (a callback's pause is near free, `rkllm_abort` was
//! seen to take over a second), and the prefill of everything the runtime cannot reuse (the
//! newcomers' prompts, and the continuing requests' contexts unless the runtime keeps their
//! prefix). Both sides are in slot-milliseconds, so a runtime that re-prefills everything
//! (Rockchip's with `keep_history = 0`, until a board shows otherwise) re-forms rarely and only
//! when many slots are free and the run has long to go.

use crate::cost::CostModel;

/// A request still generating in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuing {
    /// Tokens in its context now: its prompt and what it generated.
    pub context_tokens: usize,
    pub generated: u32,
    /// Tokens it may still generate (`max_tokens` minus what it generated).
    pub budget: u32,
}

/// The run as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct RunView<'a> {
    pub n_batch: usize,
    pub continuing: &'a [Continuing],
    /// Slots the runtime still decodes for requests that ended (their own `max_tokens`, a
    /// stop string, a client gone): compute spent for nobody until the run ends.
    pub dead: usize,
}

/// Waiting requests that may join this run (same sampling), oldest first.
#[derive(Debug, Clone, Copy)]
pub struct QueueView<'a> {
    /// Prompt tokens each admissible waiting request would prefill: its prompt's, less what
    /// the runtime is expected to reuse (a slot's cached prefix, a loaded prompt cache).
    pub prompt_tokens: &'a [usize],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub reform: bool,
    /// Slot-milliseconds the cut would gain and cost, for logs and tests.
    pub gain_ms: f64,
    pub cost_ms: f64,
}

/// The steps the run has left if nothing changes: its longest member's, each member's
/// estimated from its budget and the replies seen so far (a reply allowed 4,000 tokens
/// rarely takes them; see [`CostModel::expected_remaining`]).
pub fn remaining_steps(run: &RunView<'_>, cost: &CostModel) -> f64 {
    run.continuing
        .iter()
        .map(|c| cost.expected_remaining(c.generated, c.budget))
        .fold(0.0, f64::max)
}

pub fn decide(run: &RunView<'_>, queue: &QueueView<'_>, cost: &CostModel) -> Verdict {
    let n_cont = run.continuing.len();
    let free = run.n_batch.saturating_sub(n_cont);
    let joining = free.min(queue.prompt_tokens.len());
    let no = |gain_ms, cost_ms| Verdict {
        reform: false,
        gain_ms,
        cost_ms,
    };
    // Nothing to gain: no slot to fill and none wasted; or nobody left to continue (the run
    // is about to end by itself, and the queue starts afresh).
    if n_cont == 0 || (joining == 0 && run.dead == 0) {
        return no(0.0, 0.0);
    }
    let steps = remaining_steps(run, cost);
    let active_now = n_cont + run.dead;
    let active_after = n_cont + joining;
    let step_after = cost.step_ms(active_after);
    // The newcomers' slot-steps until the run would have ended, and every continuing
    // request's steps made cheaper by dropping the dead slots.
    let gain_ms = joining as f64 * steps * step_after
        + n_cont as f64 * steps * (cost.step_ms(active_now) - cost.step_ms(n_cont)).max(0.0);
    let context: usize = run.continuing.iter().map(|c| c.context_tokens).sum();
    let newcomers: usize = queue.prompt_tokens.iter().take(joining).sum();
    let per_token = cost.prefill_ms_per_token();
    // What every cut costs the continuing requests, however many join: the cut, and their
    // contexts prefilled again where the runtime does not keep them.
    let fixed_ms =
        n_cont as f64 * (cost.cut_ms() + cost.resume_fraction() * context as f64 * per_token);
    let cost_ms = fixed_ms + n_cont as f64 * newcomers as f64 * per_token;
    // Cutting now and again when the next member ends pays the fixed cost twice; waiting for
    // that end and cutting once leaves the free slots empty until then. Cut now only if their
    // idle slot-steps until then would cost more than one more cut. Where resuming is cheap
    // this always holds; where the runtime re-prefills every context (a board with
    // `keep_history = 0`, assumed) it gathers several freed slots into one cut.
    let next_end = run
        .continuing
        .iter()
        .map(|c| cost.expected_remaining(c.generated, c.budget))
        .fold(steps, f64::min);
    let idle_ms = joining as f64 * next_end * step_after;
    if gain_ms > cost_ms && (joining == 0 || idle_ms >= fixed_ms) {
        Verdict {
            reform: true,
            gain_ms,
            cost_ms,
        }
    } else {
        no(gain_ms, cost_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{CostModel, Priors};

    fn cont(n: usize, context: usize, generated: u32, budget: u32) -> Vec<Continuing> {
        vec![
            Continuing {
                context_tokens: context,
                generated,
                budget,
            };
            n
        ]
    }

    /// A runtime that keeps prefixes: resuming costs about one token.
    fn reusing() -> CostModel {
        let mut c = CostModel::new(Priors {
            prefill_ms_per_token: 0.5,
            step_ms: 50.0,
            cut_ms: 5.0,
            resume_fraction: 1.0,
        });
        for _ in 0..20 {
            c.observe_resume(1, 400);
        }
        c
    }

    /// Rockchip's assumed behaviour: every resume prefills the whole context again.
    fn cold() -> CostModel {
        CostModel::new(Priors {
            prefill_ms_per_token: 2.0,
            step_ms: 60.0,
            cut_ms: 5.0,
            resume_fraction: 1.0,
        })
    }

    #[test]
    fn a_free_slot_and_a_waiting_request_re_form_when_resuming_is_cheap() {
        let c = cont(7, 300, 50, 400);
        let run = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 1,
        };
        let v = decide(
            &run,
            &QueueView {
                prompt_tokens: &[40],
            },
            &reusing(),
        );
        assert!(v.reform, "{v:?}");
    }

    #[test]
    fn nothing_waiting_and_nothing_wasted_never_re_forms() {
        let c = cont(3, 300, 50, 400);
        let run = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 0,
        };
        let v = decide(&run, &QueueView { prompt_tokens: &[] }, &reusing());
        assert!(!v.reform);
        // A full run has no slot for a waiting request.
        let full = cont(8, 300, 50, 400);
        let run = RunView {
            n_batch: 8,
            continuing: &full,
            dead: 0,
        };
        assert!(
            !decide(
                &run,
                &QueueView {
                    prompt_tokens: &[10, 10]
                },
                &reusing()
            )
            .reform
        );
    }

    #[test]
    fn a_run_with_nobody_left_is_not_cut() {
        let run = RunView {
            n_batch: 8,
            continuing: &[],
            dead: 8,
        };
        assert!(
            !decide(
                &run,
                &QueueView {
                    prompt_tokens: &[10]
                },
                &reusing()
            )
            .reform
        );
    }

    #[test]
    fn cold_prefill_re_forms_only_when_the_gain_is_large() {
        // Seven long contexts to re-prefill for one newcomer and a run nearly over: no.
        let c = cont(7, 600, 380, 20);
        let run = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 1,
        };
        let one = QueueView {
            prompt_tokens: &[40],
        };
        assert!(!decide(&run, &one, &cold()).reform);
        // The same run with the one free slot and a long way to go: one newcomer still does
        // not pay for seven cold prefills...
        let c = cont(7, 600, 20, 2000);
        let long = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 1,
        };
        let mut cost = cold();
        for _ in 0..50 {
            cost.observe_reply(200);
        }
        assert!(!decide(&long, &one, &cost).reform);
        // ...but half the slots freed, with a queue to fill them and short contexts, do.
        let c = cont(4, 100, 20, 2000);
        let half = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 4,
        };
        let four = QueueView {
            prompt_tokens: &[40, 40, 40, 40],
        };
        assert!(decide(&half, &four, &cost).reform);
    }

    #[test]
    fn cold_prefill_gathers_freed_slots_into_one_cut() {
        let mut cost = cold();
        for _ in 0..50 {
            cost.observe_reply(400);
        }
        // Six members with long to go and one about to end, two slots free: the gain covers
        // the cut, but the next end is 5 steps away, and two slots idle for 5 steps cost less
        // than cutting twice.
        let mut c = cont(5, 100, 20, 600);
        c.push(Continuing {
            context_tokens: 100,
            generated: 20,
            budget: 5,
        });
        let about_to_end = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 2,
        };
        let two = QueueView {
            prompt_tokens: &[40, 40, 40],
        };
        let v = decide(&about_to_end, &two, &cost);
        assert!(!v.reform && v.gain_ms > v.cost_ms, "{v:?}");
        // Once that member has ended, its slot joins the others in the one cut.
        let ended = cont(5, 100, 25, 595);
        let run = RunView {
            n_batch: 8,
            continuing: &ended,
            dead: 3,
        };
        assert!(decide(&run, &two, &cost).reform);
        // Where resuming is cheap, the free slots are filled at once.
        assert!(decide(&about_to_end, &two, &reusing()).reform);
    }

    #[test]
    fn a_slow_cut_raises_the_bar() {
        let c = cont(7, 300, 350, 50);
        let run = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 1,
        };
        let q = QueueView {
            prompt_tokens: &[40],
        };
        let mut fast = reusing();
        assert!(decide(&run, &q, &fast).reform);
        for _ in 0..20 {
            fast.observe_cut(1500.0);
        }
        assert!(!decide(&run, &q, &fast).reform);
    }

    #[test]
    fn dead_slots_alone_re_form_when_each_costs_compute() {
        let c = cont(1, 300, 10, 3000);
        let run = RunView {
            n_batch: 8,
            continuing: &c,
            dead: 7,
        };
        let mut cost = reusing();
        // A compute-bound runtime: every slot adds 10 ms to a 20 ms step.
        for _ in 0..50 {
            for b in 1..=8 {
                cost.observe_step(b, 20.0 + 10.0 * b as f64);
            }
        }
        assert!(decide(&run, &QueueView { prompt_tokens: &[] }, &cost).reform);
        // Memory-bound (the NPU) with cold resumes: slots cost almost nothing, and the cut's
        // re-prefill is not worth it.
        let mut flat = cold();
        for _ in 0..50 {
            for b in 1..=8 {
                flat.observe_step(b, 50.0 + 0.01 * b as f64);
            }
        }
        assert!(!decide(&run, &QueueView { prompt_tokens: &[] }, &flat).reform);
    }
}
