//! Holds back the bytes of a UTF-8 character split across tokens until it is complete.

#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Appends `bytes` and moves every complete character to `out`. Invalid bytes (not a
    /// prefix of any character) become U+FFFD so consumers always receive valid UTF-8.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(_) => {
                    out.extend_from_slice(&self.pending[start..]);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.extend_from_slice(&self.pending[start..valid]);
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return;
                        }
                        Some(n) => {
                            out.extend_from_slice("\u{FFFD}".as_bytes());
                            start = valid + n;
                        }
                    }
                }
            }
        }
    }

    pub fn is_waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
            self.pending.clear();
        }
    }

    pub fn reset(&mut self) {
        self.pending.clear();
    }
}

/// The bytes of an unfinished UTF-8 character at the end of `bytes` (empty if it ends whole).
pub fn incomplete_tail(bytes: &[u8]) -> &[u8] {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let from = bytes.len().saturating_sub(3);
    let Some(start) = (from..bytes.len())
        .rev()
        .find(|&i| !is_continuation(bytes[i]))
    else {
        return &[];
    };
    let needed = match bytes[start] {
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        b if b >= 0xC0 => 2,
        _ => 1,
    };
    if bytes.len() - start < needed {
        &bytes[start..]
    } else {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_character_is_held_until_complete() {
        let mut c = Utf8Carry::default();
        let mut out = Vec::new();
        let e_acute = "é".as_bytes();
        c.push(&[b'a', e_acute[0]], &mut out);
        assert_eq!(out, b"a");
        assert!(c.is_waiting());
        out.clear();
        c.push(&[e_acute[1], b'b'], &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), "éb");
        assert!(!c.is_waiting());
    }

    #[test]
    fn four_byte_character_over_three_tokens() {
        let mut c = Utf8Carry::default();
        let mut out = Vec::new();
        let b = "🦀".as_bytes();
        c.push(&b[..1], &mut out);
        c.push(&b[1..3], &mut out);
        assert!(out.is_empty());
        c.push(&b[3..], &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), "🦀");
    }

    #[test]
    fn invalid_bytes_become_replacement_and_flush_ends_a_partial_character() {
        let mut c = Utf8Carry::default();
        let mut out = Vec::new();
        c.push(&[b'x', 0xFF, b'y', 0xE4], &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), "x\u{FFFD}y");
        c.flush(&mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), "x\u{FFFD}y\u{FFFD}");
        assert!(!c.is_waiting());
    }

    #[test]
    fn held_bytes_are_an_unfinished_character_at_the_end() {
        let e = "é".as_bytes();
        let crab = "🦀".as_bytes();
        assert_eq!(incomplete_tail(b"abc"), b"");
        assert_eq!(incomplete_tail(&[b'a', e[0]]), &e[..1]);
        assert_eq!(incomplete_tail(e), b"");
        assert_eq!(incomplete_tail(&crab[..3]), &crab[..3]);
        assert_eq!(incomplete_tail(crab), b"");
        assert_eq!(incomplete_tail(b""), b"");
    }
}
