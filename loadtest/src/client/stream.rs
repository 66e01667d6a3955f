//! Framing of streamed bodies. Network reads split lines (and UTF-8 characters) anywhere, so
//! bytes are buffered until a whole line is in.

/// Splits a byte stream into lines (`\n` or `\r\n`).
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Complete lines now available, without their terminators.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            lines.push(decode(&self.pending[start..end]));
            start = end + 1;
        }
        self.pending.drain(..start);
        lines
    }

    /// A last line the stream ended without terminating.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            let line = decode(&self.pending);
            self.pending.clear();
            Some(line)
        }
    }
}

fn decode(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// Turns lines of a `text/event-stream` into event payloads: `data:` lines joined by `\n`,
/// dispatched at a blank line; comments (`: keep-alive`) and other fields are skipped.
#[derive(Debug, Default)]
pub struct SseDecoder {
    data: Option<String>,
}

impl SseDecoder {
    pub fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        None
    }

    /// An event the stream ended before dispatching. Strict SSE drops it; servers that omit
    /// the final blank line still mean it.
    pub fn finish(&mut self) -> Option<String> {
        self.data.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_events(reads: &[&[u8]]) -> Vec<String> {
        let mut lines = LineBuffer::default();
        let mut sse = SseDecoder::default();
        let mut out = Vec::new();
        for read in reads {
            for line in lines.push(read) {
                out.extend(sse.line(&line));
            }
        }
        if let Some(line) = lines.finish() {
            out.extend(sse.line(&line));
        }
        out.extend(sse.finish());
        out
    }

    const BODY: &str = ": keep-alive\n\ndata: {\"a\":\"h\u{e9}llo\"}\r\n\r\nevent: x\ndata: one\ndata: two\n\ndata: [DONE]\n\n";

    #[test]
    fn sse_whole_body() {
        assert_eq!(
            sse_events(&[BODY.as_bytes()]),
            ["{\"a\":\"h\u{e9}llo\"}", "one\ntwo", "[DONE]"]
        );
    }

    #[test]
    fn sse_split_at_every_byte_gives_the_same_events() {
        let bytes = BODY.as_bytes();
        let whole = sse_events(&[bytes]);
        for cut in 1..bytes.len() {
            // Includes cuts inside the two-byte UTF-8 "é" and between \r and \n.
            assert_eq!(
                sse_events(&[&bytes[..cut], &bytes[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(sse_events(&singles), whole);
    }

    #[test]
    fn sse_without_final_blank_line_still_dispatches() {
        assert_eq!(sse_events(&[b"data: [DONE]"]), ["[DONE]"]);
    }

    #[test]
    fn ndjson_lines_split_across_reads() {
        let mut lines = LineBuffer::default();
        assert!(lines.push(b"{\"a\":").is_empty());
        assert_eq!(lines.push(b"1}\n{\"b\""), ["{\"a\":1}"]);
        assert_eq!(lines.push(b":2}\n"), ["{\"b\":2}"]);
        assert_eq!(lines.push(b"{\"c\":3}"), Vec::<String>::new());
        assert_eq!(lines.finish().as_deref(), Some("{\"c\":3}"));
        assert_eq!(lines.finish(), None);
    }
}
