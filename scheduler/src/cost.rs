//! What re-forming a run costs on this runtime, learned from its own runs: how a decode step's
//! time grows with the slots decoded, what a prefilled token costs, how much of a resumed
//! context the runtime prefills again (perf stats of resumed runs), how long a cut takes, and
//! how long replies run. Priors stand in until the runtime has shown each figure; they are
//! the cautious ones (resuming re-prefills everything) because a board's behaviour is unknown.

/// How fast old observations fade: about the last 30 count.
const DECAY: f64 = 1.0 / 30.0;

#[derive(Debug, Clone, Copy)]
pub struct Priors {
    pub prefill_ms_per_token: f64,
    pub step_ms: f64,
    pub cut_ms: f64,
    /// Share of a resumed context the runtime prefills again: 1 = all of it.
    pub resume_fraction: f64,
}

impl Default for Priors {
    fn default() -> Self {
        Priors {
            prefill_ms_per_token: 1.0,
            step_ms: 50.0,
            cut_ms: 10.0,
            resume_fraction: 1.0,
        }
    }
}

/// An exponentially weighted mean.
#[derive(Debug, Clone, Copy)]
struct Ewma {
    value: f64,
    seen: bool,
}

impl Ewma {
    fn new(prior: f64) -> Ewma {
        Ewma {
            value: prior,
            seen: false,
        }
    }

    fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.value = if self.seen {
            self.value + DECAY * (x - self.value)
        } else {
            x
        };
        self.seen = true;
    }
}

/// `step_ms = a + b * slots`, fitted by decayed least squares.
#[derive(Debug, Clone, Copy, Default)]
struct LinearFit {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl LinearFit {
    fn observe(&mut self, x: f64, y: f64) {
        let k = 1.0 - DECAY / 4.0;
        self.w = self.w * k + 1.0;
        self.x = self.x * k + x;
        self.y = self.y * k + y;
        self.xx = self.xx * k + x * x;
        self.xy = self.xy * k + x * y;
    }

    /// `None` until steps of at least two batch sizes were seen.
    fn at(&self, x: f64) -> Option<f64> {
        if self.w < 1.0 {
            return None;
        }
        let var = self.xx / self.w - (self.x / self.w).powi(2);
        if var < 1e-3 {
            return Some(self.y / self.w);
        }
        let slope = ((self.xy / self.w - self.x / self.w * self.y / self.w) / var).max(0.0);
        let intercept = self.y / self.w - slope * self.x / self.w;
        Some((intercept + slope * x).max(0.0))
    }
}

#[derive(Debug, Clone)]
pub struct CostModel {
    priors: Priors,
    steps: LinearFit,
    prefill: Ewma,
    resume: Ewma,
    cut: Ewma,
    reply: Ewma,
}

/// Reply length assumed before any reply has ended by itself.
const PRIOR_REPLY_TOKENS: f64 = 256.0;

impl CostModel {
    pub fn new(priors: Priors) -> CostModel {
        CostModel {
            priors,
            steps: LinearFit::default(),
            prefill: Ewma::new(priors.prefill_ms_per_token),
            resume: Ewma::new(priors.resume_fraction),
            cut: Ewma::new(priors.cut_ms),
            reply: Ewma::new(PRIOR_REPLY_TOKENS),
        }
    }

    /// One decode step over `slots` sequences took `ms`.
    pub fn observe_step(&mut self, slots: usize, ms: f64) {
        if slots > 0 && ms.is_finite() && ms >= 0.0 {
            self.steps.observe(slots as f64, ms);
        }
    }

    /// A run prefilled `tokens` in `ms`.
    pub fn observe_prefill(&mut self, tokens: usize, ms: f64) {
        if tokens >= 8 && ms > 0.0 {
            self.prefill.observe(ms / tokens as f64);
        }
    }

    /// A resumed request's context of `context` tokens cost `prefilled` tokens of prefill.
    pub fn observe_resume(&mut self, prefilled: usize, context: usize) {
        if context > 0 {
            self.resume
                .observe((prefilled as f64 / context as f64).clamp(0.0, 1.0));
        }
    }

    /// A cut took `ms` from the decision to the run's return.
    pub fn observe_cut(&mut self, ms: f64) {
        self.cut.observe(ms.max(0.0));
    }

    /// A reply ended by itself (end of generation or a stop string) after `tokens`.
    pub fn observe_reply(&mut self, tokens: u32) {
        self.reply.observe(f64::from(tokens));
    }

    pub fn step_ms(&self, slots: usize) -> f64 {
        self.steps.at(slots as f64).unwrap_or(self.priors.step_ms)
    }

    pub fn prefill_ms_per_token(&self) -> f64 {
        self.prefill.value
    }

    pub fn resume_fraction(&self) -> f64 {
        self.resume.value
    }

    pub fn cut_ms(&self) -> f64 {
        self.cut.value
    }

    /// Steps a request that generated `generated` tokens and may generate `budget` more is
    /// expected to take: its budget, unless replies here usually end sooner. Reply lengths
    /// are long-tailed, so one that has run past the usual length is expected to run about
    /// as long again as it has (at least half the usual): estimating it to end any moment
    /// kept a natural-length run of 8 from ever taking in a waiting request, 330 steps in a
    /// row while its longest reply ran on (a 13 s TTFT p99 with 8 clients on 8 slots).
    pub fn expected_remaining(&self, generated: u32, budget: u32) -> f64 {
        let usual = self.reply.value.max(1.0);
        let gen = f64::from(generated);
        let left = (usual - gen).max(gen).max(usual / 2.0);
        left.min(f64::from(budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priors_stand_until_observed() {
        let c = CostModel::new(Priors::default());
        assert_eq!(c.step_ms(1), 50.0);
        assert_eq!(c.step_ms(8), 50.0);
        assert_eq!(c.resume_fraction(), 1.0);
    }

    #[test]
    fn the_step_fit_learns_the_cost_of_a_slot() {
        let mut c = CostModel::new(Priors::default());
        for _ in 0..10 {
            for b in [1, 4, 8] {
                c.observe_step(b, 20.0 + 5.0 * b as f64);
            }
        }
        assert!((c.step_ms(1) - 25.0).abs() < 0.5, "{}", c.step_ms(1));
        assert!((c.step_ms(8) - 60.0).abs() < 0.5, "{}", c.step_ms(8));
        // One batch size only: the mean, flat.
        let mut flat = CostModel::new(Priors::default());
        for _ in 0..5 {
            flat.observe_step(8, 70.0);
        }
        assert!((flat.step_ms(2) - 70.0).abs() < 1e-9);
    }

    #[test]
    fn resumes_teach_the_share_prefilled_again() {
        let mut c = CostModel::new(Priors::default());
        c.observe_resume(1, 500);
        assert!(c.resume_fraction() < 0.01);
        for _ in 0..200 {
            c.observe_resume(500, 500);
        }
        assert!(c.resume_fraction() > 0.99);
    }

    #[test]
    fn expected_remaining_follows_the_usual_reply_then_the_tail_within_the_budget() {
        let mut c = CostModel::new(Priors::default());
        for _ in 0..100 {
            c.observe_reply(100);
        }
        assert!((c.expected_remaining(10, 1000) - 90.0).abs() < 1.0);
        assert!((c.expected_remaining(60, 1000) - 60.0).abs() < 1.0);
        // Past the usual length: about as long again as it has run, within its budget.
        assert!((c.expected_remaining(500, 1000) - 500.0).abs() < 1.0);
        assert_eq!(c.expected_remaining(500, 120), 120.0);
        assert_eq!(c.expected_remaining(10, 5), 5.0);
    }
}
