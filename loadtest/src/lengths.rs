//! Reply lengths for mixed-length traffic (`--max-tokens-dist`): each request's max_tokens is
//! drawn from a distribution. Chat replies are long-tailed, and a batching server that does
//! well only when every reply has the same length is found out here.
//!
//! Draws are a function of the seed and the request's index alone, so every level of a sweep
//! (and every run with the same seed) sends the same lengths in the same order, whatever the
//! concurrency.

use std::fmt;
use std::str::FromStr;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthSpec {
    /// Every request asks for N tokens.
    Fixed(u32),
    /// Uniform over MIN..=MAX.
    Uniform { min: u32, max: u32 },
    /// Log-normal with this median and sigma (of the log), rounded and clamped to 1..=MAX.
    LogNormal { median: f64, sigma: f64, max: u32 },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("'{0}': expected lognormal:MEDIAN:SIGMA:MAX, uniform:MIN:MAX or fixed:N")]
    Shape(String),
    #[error("'{value}' is not a valid {what}")]
    Number { what: &'static str, value: String },
    #[error("{0}")]
    Range(&'static str),
}

fn number<T: FromStr>(what: &'static str, value: &str) -> Result<T, SpecError> {
    value.trim().parse().map_err(|_| SpecError::Number {
        what,
        value: value.to_owned(),
    })
}

impl FromStr for LengthSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let parts: Vec<&str> = s.split(':').collect();
        let spec = match parts.as_slice() {
            ["fixed", n] => LengthSpec::Fixed(number("token count", n)?),
            ["uniform", min, max] => LengthSpec::Uniform {
                min: number("minimum", min)?,
                max: number("maximum", max)?,
            },
            ["lognormal", median, sigma, max] => LengthSpec::LogNormal {
                median: number("median", median)?,
                sigma: number("sigma", sigma)?,
                max: number("maximum", max)?,
            },
            _ => return Err(SpecError::Shape(s.to_owned())),
        };
        spec.check()?;
        Ok(spec)
    }
}

impl LengthSpec {
    fn check(&self) -> Result<(), SpecError> {
        match *self {
            LengthSpec::Fixed(0) => Err(SpecError::Range("fixed:N needs N >= 1")),
            LengthSpec::Uniform { min, max } if min == 0 || min > max => {
                Err(SpecError::Range("uniform:MIN:MAX needs 1 <= MIN <= MAX"))
            }
            LengthSpec::LogNormal { median, sigma, max } => {
                if !(median.is_finite() && median > 0.0) {
                    Err(SpecError::Range("lognormal: the median must be positive"))
                } else if !(sigma.is_finite() && sigma >= 0.0) {
                    Err(SpecError::Range("lognormal: sigma must be 0 or more"))
                } else if max == 0 {
                    Err(SpecError::Range("lognormal: MAX must be at least 1"))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The max_tokens of request `index` under `seed`.
    pub fn draw(&self, seed: u64, index: u64) -> u32 {
        // One generator per request (seed and index mixed by a golden-ratio multiply), so a
        // draw does not depend on which requests were drawn before it.
        let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match *self {
            LengthSpec::Fixed(n) => n,
            LengthSpec::Uniform { min, max } => rng.random_range(min..=max),
            LengthSpec::LogNormal { median, sigma, max } => {
                let dist = LogNormal::new(median.ln(), sigma).expect("checked when parsed");
                let x: f64 = dist.sample(&mut rng);
                x.round().clamp(1.0, f64::from(max)) as u32
            }
        }
    }
}

impl fmt::Display for LengthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthSpec::Fixed(n) => write!(f, "fixed:{n}"),
            LengthSpec::Uniform { min, max } => write!(f, "uniform:{min}:{max}"),
            LengthSpec::LogNormal { median, sigma, max } => {
                write!(f, "lognormal:{median}:{sigma}:{max}")
            }
        }
    }
}

/// Each request's max_tokens: `--max-tokens`, or a draw from `--max-tokens-dist`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxTokens {
    pub fixed: u32,
    pub dist: Option<LengthSpec>,
    pub seed: u64,
}

impl MaxTokens {
    /// The max_tokens of request `index` (counted from 0 in each phase of a level).
    pub fn of(&self, index: u64) -> u32 {
        self.dist.map_or(self.fixed, |d| d.draw(self.seed, index))
    }
}

/// What the JSON report says about the drawn lengths.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LengthSummary {
    pub spec: String,
    pub seed: u64,
    /// Requests 0..count of a level: the lengths every level's measured requests asked for.
    pub count: u64,
    pub mean: f64,
    pub p50: u32,
    pub p90: u32,
    pub max: u32,
}

/// The first `count` draws, summarised (nearest-rank percentiles).
pub fn summarize(spec: &LengthSpec, seed: u64, count: u64) -> Option<LengthSummary> {
    let mut drawn: Vec<u32> = (0..count).map(|i| spec.draw(seed, i)).collect();
    if drawn.is_empty() {
        return None;
    }
    drawn.sort_unstable();
    let rank = |q: f64| drawn[((q * drawn.len() as f64).ceil() as usize).clamp(1, drawn.len()) - 1];
    Some(LengthSummary {
        spec: spec.to_string(),
        seed,
        count,
        mean: drawn.iter().map(|&n| f64::from(n)).sum::<f64>() / drawn.len() as f64,
        p50: rank(0.5),
        p90: rank(0.9),
        max: *drawn.last().expect("not empty"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_prints_them_back() {
        for text in ["fixed:64", "uniform:8:256", "lognormal:64:1.2:512"] {
            let spec: LengthSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!(
            "lognormal:64:0.8:512".parse(),
            Ok(LengthSpec::LogNormal {
                median: 64.0,
                sigma: 0.8,
                max: 512
            })
        );
        assert_eq!(
            "uniform:1:1".parse(),
            Ok(LengthSpec::Uniform { min: 1, max: 1 })
        );
    }

    #[test]
    fn refuses_malformed_and_out_of_range_specs() {
        let err = |s: &str| s.parse::<LengthSpec>().unwrap_err();
        assert!(matches!(err("normal:1:2"), SpecError::Shape(_)));
        assert!(matches!(err("lognormal:64:1"), SpecError::Shape(_)));
        assert!(matches!(err("fixed"), SpecError::Shape(_)));
        assert!(matches!(err("fixed:x"), SpecError::Number { .. }));
        assert!(matches!(err("fixed:-3"), SpecError::Number { .. }));
        assert!(matches!(err("fixed:0"), SpecError::Range(_)));
        assert!(matches!(err("uniform:0:5"), SpecError::Range(_)));
        assert!(matches!(err("uniform:9:5"), SpecError::Range(_)));
        assert!(matches!(err("lognormal:0:1:10"), SpecError::Range(_)));
        assert!(matches!(err("lognormal:64:-1:10"), SpecError::Range(_)));
        assert!(matches!(err("lognormal:64:nan:10"), SpecError::Range(_)));
        assert!(matches!(err("lognormal:64:1:0"), SpecError::Range(_)));
        assert!(err("bogus")
            .to_string()
            .contains("lognormal:MEDIAN:SIGMA:MAX"));
    }

    #[test]
    fn lognormal_median_is_the_median_and_max_clamps() {
        let spec: LengthSpec = "lognormal:64:1.0:100000".parse().unwrap();
        let s = summarize(&spec, 7, 20_000).unwrap();
        assert!((60..=68).contains(&s.p50), "median {}", s.p50);
        // exp(1.2816 * sigma) * median is the 90th percentile: 231.
        assert!((215..=248).contains(&s.p90), "p90 {}", s.p90);
        // A long tail: the mean exp(sigma^2 / 2) * median = 105.5 is well above the median.
        assert!((98.0..113.0).contains(&s.mean), "mean {}", s.mean);

        let clamped: LengthSpec = "lognormal:64:1.5:128".parse().unwrap();
        let draws: Vec<u32> = (0..5000).map(|i| clamped.draw(3, i)).collect();
        assert!(draws.iter().all(|&n| (1..=128).contains(&n)));
        assert!(
            draws.iter().filter(|&&n| n == 128).count() > 500,
            "the tail piles up at MAX"
        );
        // A median far below 1 clamps up to 1.
        let tiny: LengthSpec = "lognormal:0.01:0.1:50".parse().unwrap();
        assert!((0..100).all(|i| tiny.draw(0, i) == 1));
    }

    #[test]
    fn uniform_and_fixed_stay_in_range_and_cover_it() {
        let spec: LengthSpec = "uniform:3:6".parse().unwrap();
        let draws: Vec<u32> = (0..1000).map(|i| spec.draw(1, i)).collect();
        for n in 3..=6 {
            assert!(draws.contains(&n), "{n} never drawn");
        }
        assert!(draws.iter().all(|n| (3..=6).contains(n)));
        let fixed = LengthSpec::Fixed(17);
        assert!((0..50).all(|i| fixed.draw(9, i) == 17));
    }

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let spec: LengthSpec = "lognormal:64:1.2:512".parse().unwrap();
        let run = |seed| (0..200).map(|i| spec.draw(seed, i)).collect::<Vec<_>>();
        assert_eq!(run(0), run(0));
        assert_ne!(run(0), run(1));
        // A draw depends on its index only, not on the draws before it.
        assert_eq!(spec.draw(0, 150), run(0)[150]);
    }

    #[test]
    fn summary_uses_nearest_rank() {
        let s = summarize(&"uniform:5:5".parse().unwrap(), 0, 10).unwrap();
        assert_eq!((s.p50, s.p90, s.max, s.mean), (5, 5, 5, 5.0));
        assert!(summarize(&LengthSpec::Fixed(3), 0, 0).is_none());
        let s = summarize(&LengthSpec::Fixed(3), 0, 4).unwrap();
        assert_eq!((s.spec.as_str(), s.count), ("fixed:3", 4));
    }
}
