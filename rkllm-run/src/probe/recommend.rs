//! From check results to verdicts: the family, the largest n_batch, how to cut a run, and the
//! batching curve's `batch_alpha`. Pure functions of the results, so they are tested alone.

use super::checks::Check;
use super::N_BATCHES;
use rkllm::probe_report::{CheckResult, CurvePoint, Recommendations, Status};
use rkllm::AbiFamily;

fn is(r: &CheckResult, check: Check) -> bool {
    r.check == check.name()
}

fn find<'a>(checks: &'a [CheckResult], check: Check, arg: &str) -> Option<&'a CheckResult> {
    checks.iter().find(|r| is(r, check) && r.arg == arg)
}

fn ok(r: Option<&CheckResult>) -> bool {
    r.is_some_and(|r| r.status == Status::Ok)
}

/// What the library itself says (`rkllm_cpu_abi_family`), from any family check that lived
/// to read it.
pub fn exported_family(tried: &[(AbiFamily, CheckResult)]) -> Option<String> {
    tried.iter().find_map(|(_, r)| {
        r.figures
            .get("exported_family")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    })
}

/// The family that initialised and ran cleanly. Both working would mean the layouts cannot
/// be told apart by this library: then only its own word decides.
pub fn family(tried: &[(AbiFamily, CheckResult)], exported: Option<&str>) -> Option<AbiFamily> {
    let working: Vec<AbiFamily> = tried
        .iter()
        .filter(|(_, r)| r.status == Status::Ok)
        .map(|(f, _)| *f)
        .collect();
    match working.as_slice() {
        [one] => Some(*one),
        [] => None,
        _ => exported
            .and_then(|e| e.parse().ok())
            .filter(|f| working.contains(f)),
    }
}

/// The largest n_batch of 1, 2, 4, 8 that worked, full and with empty slots, with every
/// smaller one: rkserve runs partly filled batches all the time.
pub fn max_n_batch(checks: &[CheckResult]) -> u8 {
    let mut max = 0;
    for n in N_BATCHES {
        let full = ok(find(checks, Check::NBatch, &n.to_string()));
        let empty = n == 1
            || ok(checks
                .iter()
                .find(|r| is(r, Check::NBatch) && r.arg.starts_with(&format!("{n}, "))));
        if !(full && empty) {
            break;
        }
        max = n;
    }
    max
}

/// How to cut a run: pausing when the callback's 1 stops the run and the handle runs again
/// (it keeps the KV cache), else `rkllm_abort` when that does.
pub fn reform_via(checks: &[CheckResult]) -> Option<&'static str> {
    if ok(find(checks, Check::PauseResume, "")) {
        Some("pause")
    } else if ok(find(checks, Check::AbortDecode, "")) {
        Some("abort")
    } else {
        None
    }
}

pub fn recommendations(family: Option<AbiFamily>, checks: &[CheckResult]) -> Recommendations {
    let via = family.and(reform_via(checks));
    Recommendations {
        family: family.map(|f| f.to_string()),
        max_n_batch: if family.is_some() {
            max_n_batch(checks)
        } else {
            0
        },
        reform: via.is_some(),
        reform_via: via.map(str::to_string),
    }
}

/// The batching curve from the batch_curve checks that worked, relative to n_batch 1.
pub fn batch_curve(checks: &[CheckResult]) -> Vec<CurvePoint> {
    let tps = |n: u8| {
        find(checks, Check::BatchCurve, &n.to_string())
            .filter(|r| r.status == Status::Ok)
            .and_then(|r| r.figures.get("tok_per_s"))
            .and_then(|v| v.as_f64())
    };
    let Some(one) = tps(1).filter(|&t| t > 0.0) else {
        return vec![];
    };
    N_BATCHES
        .into_iter()
        .filter_map(|n| {
            let t = tps(n)?;
            let ratio = t / one;
            Some(CurvePoint {
                n_batch: n,
                tok_per_s: t,
                ratio: round(ratio, 3),
                alpha: (n > 1).then(|| round(alpha_of(n, ratio), 3)),
            })
        })
        .collect()
}

/// A step with `n` sequences takes `1 + alpha (n - 1)` single steps and yields `n` tokens,
/// so the throughput ratio is `n / (1 + alpha (n - 1))`.
fn alpha_of(n: u8, ratio: f64) -> f64 {
    let n = f64::from(n);
    (n / ratio - 1.0) / (n - 1.0)
}

/// The least-squares `batch_alpha` over the curve's points (relative step time against
/// extra sequences, through the origin).
pub fn batch_alpha(curve: &[CurvePoint]) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for p in curve.iter().filter(|p| p.n_batch > 1 && p.ratio > 0.0) {
        let extra = f64::from(p.n_batch) - 1.0;
        let step = f64::from(p.n_batch) / p.ratio;
        num += extra * (step - 1.0);
        den += extra * extra;
    }
    (den > 0.0).then(|| round(num / den, 3))
}

fn round(x: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (x * k).round() / k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(check: Check, arg: &str, status: Status) -> CheckResult {
        CheckResult {
            check: check.name().into(),
            arg: arg.into(),
            status,
            detail: String::new(),
            figures: Default::default(),
            vm_hwm_mb: None,
            elapsed_ms: 0.0,
        }
    }

    fn curve_point(n: u8, tps: f64) -> CheckResult {
        let mut r = result(Check::BatchCurve, &n.to_string(), Status::Ok);
        r.figures.insert("tok_per_s".into(), tps.into());
        r
    }

    #[test]
    fn the_working_family_wins_and_a_tie_goes_to_the_librarys_word() {
        let one = vec![
            (
                AbiFamily::V1_3,
                result(Check::Family, "1.3", Status::Crashed),
            ),
            (AbiFamily::V1_2, result(Check::Family, "1.2", Status::Ok)),
        ];
        assert_eq!(family(&one, None), Some(AbiFamily::V1_2));
        let both = vec![
            (AbiFamily::V1_3, result(Check::Family, "1.3", Status::Ok)),
            (AbiFamily::V1_2, result(Check::Family, "1.2", Status::Ok)),
        ];
        assert_eq!(family(&both, None), None);
        assert_eq!(family(&both, Some("1.2")), Some(AbiFamily::V1_2));
    }

    #[test]
    fn max_n_batch_stops_below_the_first_failure_full_or_with_empty_slots() {
        let mut checks = vec![result(Check::NBatch, "1", Status::Ok)];
        for n in [2, 4, 8] {
            checks.push(result(Check::NBatch, &n.to_string(), Status::Ok));
            checks.push(result(Check::NBatch, &format!("{n}, 1 prompt"), Status::Ok));
        }
        assert_eq!(max_n_batch(&checks), 8);
        checks[4].status = Status::Crashed; // "4" with empty slots
        assert_eq!(max_n_batch(&checks), 2);
        checks[0].status = Status::Failed;
        assert_eq!(max_n_batch(&checks), 0);
    }

    #[test]
    fn pause_is_preferred_and_abort_is_the_fallback() {
        let pause = result(Check::PauseResume, "", Status::Ok);
        let abort = result(Check::AbortDecode, "", Status::Ok);
        assert_eq!(reform_via(&[pause.clone(), abort.clone()]), Some("pause"));
        let broken = result(Check::PauseResume, "", Status::Crashed);
        assert_eq!(reform_via(&[broken.clone(), abort]), Some("abort"));
        let r = recommendations(Some(AbiFamily::V1_3), &[broken]);
        assert!(!r.reform);
        assert_eq!(r.reform_via, None);
    }

    #[test]
    fn batch_alpha_recovers_the_step_cost_of_a_known_curve() {
        let alpha = 0.15;
        let tps1 = 30.0;
        let checks: Vec<CheckResult> = N_BATCHES
            .iter()
            .map(|&n| {
                curve_point(
                    n,
                    tps1 * f64::from(n) / (1.0 + alpha * (f64::from(n) - 1.0)),
                )
            })
            .collect();
        let curve = batch_curve(&checks);
        assert_eq!(curve.len(), 4);
        assert!((curve[3].ratio - 8.0 / 2.05).abs() < 1e-3, "{curve:?}");
        for p in &curve[1..] {
            assert!((p.alpha.unwrap() - alpha).abs() < 1e-3, "{p:?}");
        }
        assert!((batch_alpha(&curve).unwrap() - alpha).abs() < 1e-3);
        assert_eq!(batch_alpha(&curve[..1]), None);
    }
}
