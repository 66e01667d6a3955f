//! Stop sequences over a stream of text deltas. Text that could be the start of a stop
//! sequence is held back until the next delta decides, so a stop sequence is never emitted,
//! even when it arrives split across tokens.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What one delta released.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Text safe to send to the client now.
    pub text: String,
    /// A stop sequence matched: `text` ends right before it, and the stream is over.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> Released {
        if self.stops.is_empty() {
            return Released {
                text: delta.to_string(),
                stopped: false,
            };
        }
        self.held.push_str(delta);
        // The earliest match wins: text after it was never meant to be generated.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return Released {
                text,
                stopped: true,
            };
        }
        let keep = self.longest_partial_suffix();
        let split = self.held.len() - keep;
        let rest = self.held.split_off(split);
        Released {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// The stream ended without a stop sequence: what was held back is text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop sequence.
    fn longest_partial_suffix(&self) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(h.len());
            for n in (best + 1..=max).rev() {
                let start = h.len() - n;
                if h.is_char_boundary(start) && s.starts_with(&h[start..]) {
                    best = n;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let r = m.push(d);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn a_stop_split_across_deltas_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["</end>".into()]);
        assert_eq!(m.push("hello </").text, "hello ");
        assert_eq!(m.push("en").text, "");
        let r = m.push("d> tail");
        assert_eq!(
            r,
            Released {
                text: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_text_is_released_when_the_match_fails() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("a ST").text, "a ");
        assert_eq!(m.push("AR").text, "STAR");
        assert_eq!(run(&["STOP"], &["x S", "T"]), ("x ST".into(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "cd"], &["acdb"]), ("a".into(), true));
        assert_eq!(
            run(&["\n\n", "User:"], &["Hi\n", "\nUser:"]),
            ("Hi".into(), true)
        );
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        assert_eq!(run(&["éé"], &["aé", "b"]), ("aéb".into(), false));
        assert_eq!(run(&["éé"], &["aé", "é"]), ("a".into(), true));
    }
}
