//! Ollama's `keep_alive`, parsed totally: every JSON value gives a [`KeepAlive`] or an error
//! message, never a panic (`Duration::from_secs_f64` panics on NaN, infinities and values
//! past `u64::MAX` seconds, and the request's JSON is the client's to choose).

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::time::Duration;

/// How long a model stays loaded once the request that says so is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// 0: unload once no request holds the model any more.
    Unload,
    /// Unload once the model has been idle this long.
    For(Duration),
    /// A negative value: stay loaded until unloaded explicitly.
    Forever,
}

impl KeepAlive {
    /// Whether the model should be unloaded as soon as it is free.
    pub fn is_zero(&self) -> bool {
        *self == KeepAlive::Unload
    }

    /// How long the model stays loaded after the request: `None` is forever.
    pub fn duration(&self) -> Option<Duration> {
        match self {
            KeepAlive::Unload => Some(Duration::ZERO),
            KeepAlive::For(d) => Some(*d),
            KeepAlive::Forever => None,
        }
    }
}

/// Reads a request's `keep_alive` into [`KeepAlive`], refusing nonsense at deserialisation
/// (a 400 with the reason) instead of acting on it.
impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeepAlive, D::Error> {
        let v = Value::deserialize(d)?;
        parse_keep_alive(&v).map_err(serde::de::Error::custom)
    }
}

/// Ollama's forms: a number of seconds, a string of seconds, or a Go-style duration
/// ("5m", "1h30m", "300ms", "1.5h"). Negative is forever, zero unloads, huge values saturate.
pub fn parse_keep_alive(v: &Value) -> Result<KeepAlive, String> {
    match v {
        Value::Number(n) => {
            let secs = n
                .as_f64()
                .ok_or_else(|| format!("keep_alive {n} is not a number of seconds"))?;
            from_seconds(secs).ok_or_else(|| format!("keep_alive {n} is not a number of seconds"))
        }
        Value::String(s) => parse_text(s),
        other => Err(format!(
            "keep_alive must be a number of seconds or a duration such as \"5m\", not {other}"
        )),
    }
}

fn parse_text(s: &str) -> Result<KeepAlive, String> {
    let t = s.trim();
    let bad = || {
        format!("keep_alive \"{s}\" is not a duration: use seconds or a form such as \"5m\", \"1h30m\", \"300ms\"")
    };
    if t.is_empty() {
        return Err(bad());
    }
    // A bare number is seconds. Rust's float parser also takes "inf" and "NaN": those are
    // only accepted as written digits, and rejected otherwise.
    if t.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        if let Ok(secs) = t.parse::<f64>() {
            return from_seconds(secs).ok_or_else(bad);
        }
    }
    let (negative, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let secs = go_duration_seconds(body).ok_or_else(bad)?;
    if negative && secs > 0.0 {
        return Ok(KeepAlive::Forever);
    }
    from_seconds(secs).ok_or_else(bad)
}

/// `None` for NaN; everything else has a meaning.
fn from_seconds(secs: f64) -> Option<KeepAlive> {
    if secs.is_nan() {
        None
    } else if secs < 0.0 {
        Some(KeepAlive::Forever)
    } else if secs == 0.0 {
        Some(KeepAlive::Unload)
    } else {
        // Saturates at Duration::MAX (infinity included) instead of panicking.
        Some(KeepAlive::For(
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX),
        ))
    }
}

/// The seconds of a sequence of `<decimal><unit>` terms, as Go's time.ParseDuration reads
/// them (Ollama is written in Go). `None` when any part is malformed.
fn go_duration_seconds(s: &str) -> Option<f64> {
    let mut rest = s;
    let mut total = 0.0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = next;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Result<KeepAlive, String> {
        parse_keep_alive(&v)
    }

    fn secs(s: u64) -> KeepAlive {
        KeepAlive::For(Duration::from_secs(s))
    }

    #[test]
    fn numbers_are_seconds() {
        assert_eq!(p(json!(30)), Ok(secs(30)));
        assert_eq!(
            p(json!(1.5)),
            Ok(KeepAlive::For(Duration::from_millis(1500)))
        );
        assert_eq!(p(json!(0)), Ok(KeepAlive::Unload));
        assert_eq!(p(json!(0.0)), Ok(KeepAlive::Unload));
        assert_eq!(p(json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(p(json!(-0.5)), Ok(KeepAlive::Forever));
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        assert_eq!(
            p(json!(1.8e19)),
            Ok(KeepAlive::For(Duration::from_secs(
                18_000_000_000_000_000_000
            )))
        );
        assert_eq!(p(json!(1.9e19)), Ok(KeepAlive::For(Duration::MAX)));
        assert_eq!(p(json!(1e300)), Ok(KeepAlive::For(Duration::MAX)));
        assert_eq!(p(json!(u64::MAX)), Ok(KeepAlive::For(Duration::MAX)));
        assert_eq!(p(json!("1e300")), Ok(KeepAlive::For(Duration::MAX)));
        assert_eq!(
            p(json!("99999999999999999999h")),
            Ok(KeepAlive::For(Duration::MAX))
        );
    }

    #[test]
    fn strings_are_seconds_or_go_durations() {
        assert_eq!(p(json!("0")), Ok(KeepAlive::Unload));
        assert_eq!(p(json!("0s")), Ok(KeepAlive::Unload));
        assert_eq!(p(json!("10")), Ok(secs(10)));
        assert_eq!(p(json!("5m")), Ok(secs(300)));
        assert_eq!(p(json!("1h30m")), Ok(secs(5400)));
        assert_eq!(p(json!("1.5h")), Ok(secs(5400)));
        assert_eq!(
            p(json!("300ms")),
            Ok(KeepAlive::For(Duration::from_millis(300)))
        );
        assert_eq!(p(json!(" 2s ")), Ok(secs(2)));
        assert_eq!(p(json!("-1")), Ok(KeepAlive::Forever));
        assert_eq!(p(json!("-1m")), Ok(KeepAlive::Forever));
        assert_eq!(p(json!("-0s")), Ok(KeepAlive::Unload));
    }

    #[test]
    fn nonsense_is_an_error() {
        for v in [
            json!("NaN"),
            json!("nan"),
            json!("inf"),
            json!("-inf"),
            json!("infinity"),
            json!(""),
            json!("  "),
            json!("5 minutes"),
            json!("5x"),
            json!("m"),
            json!("1h-5m"),
            json!("."),
            json!(null),
            json!(true),
            json!([1]),
            json!({"s": 1}),
        ] {
            assert!(p(v.clone()).is_err(), "{v} was accepted");
        }
    }

    #[test]
    fn deserialising_refuses_nonsense_with_its_reason() {
        let ok: KeepAlive = serde_json::from_value(json!("5m")).unwrap();
        assert_eq!(ok, secs(300));
        let err = serde_json::from_value::<KeepAlive>(json!("NaN")).unwrap_err();
        assert!(err.to_string().contains("keep_alive"), "{err}");
    }

    #[test]
    fn the_accessors_keep_their_meaning() {
        assert!(KeepAlive::Unload.is_zero());
        assert_eq!(KeepAlive::Unload.duration(), Some(Duration::ZERO));
        assert_eq!(KeepAlive::Forever.duration(), None);
        assert!(!secs(300).is_zero());
    }
}
