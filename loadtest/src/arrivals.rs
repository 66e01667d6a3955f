//! Open-loop send times: a renewal process with gamma-distributed gaps of mean 1/rate. Shape 1
//! is the exponential, i.e. Poisson arrivals; smaller shapes bunch requests into bursts.

use std::time::Duration;

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Gamma};

/// Offsets from the start of a level at which to send requests; the first is at zero.
#[derive(Debug, Clone)]
pub struct Arrivals {
    rng: StdRng,
    gaps: Gamma<f64>,
    next: f64,
}

impl Arrivals {
    /// `rate` in requests/s and `shape` must be positive.
    pub fn new(rate: f64, shape: f64, seed: u64) -> Arrivals {
        assert!(rate > 0.0 && shape > 0.0, "rate and shape must be positive");
        // Scale 1/(rate·shape) keeps the mean gap at 1/rate whatever the shape.
        let gaps = Gamma::new(shape, 1.0 / (rate * shape)).expect("positive parameters");
        Arrivals {
            rng: StdRng::seed_from_u64(seed),
            gaps,
            next: 0.0,
        }
    }
}

impl Iterator for Arrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let at = self.next;
        self.next += self.gaps.sample(&mut self.rng);
        Some(Duration::from_secs_f64(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed_rate(rate: f64, shape: f64) -> f64 {
        let n = 20_000;
        let last = Arrivals::new(rate, shape, 42).nth(n).unwrap();
        n as f64 / last.as_secs_f64()
    }

    #[test]
    fn mean_rate_matches_for_poisson_and_gamma() {
        for (rate, shape) in [(0.5, 1.0), (2.0, 1.0), (10.0, 0.25), (4.0, 4.0)] {
            let got = observed_rate(rate, shape);
            assert!(
                (got / rate - 1.0).abs() < 0.05,
                "rate {rate} shape {shape}: got {got}"
            );
        }
    }

    #[test]
    fn lower_shape_is_burstier() {
        // Coefficient of variation of the gaps is 1/sqrt(shape).
        let cv = |shape: f64| {
            let t: Vec<f64> = Arrivals::new(1.0, shape, 7)
                .take(20_001)
                .map(|d| d.as_secs_f64())
                .collect();
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            var.sqrt() / mean
        };
        assert!((cv(1.0) - 1.0).abs() < 0.05);
        assert!((cv(0.25) - 2.0).abs() < 0.15);
        assert!((cv(4.0) - 0.5).abs() < 0.05);
    }

    #[test]
    fn deterministic_per_seed_and_starts_at_zero() {
        let a: Vec<_> = Arrivals::new(2.0, 1.0, 5).take(10).collect();
        let b: Vec<_> = Arrivals::new(2.0, 1.0, 5).take(10).collect();
        assert_eq!(a, b);
        assert_eq!(a[0], Duration::ZERO);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }
}
