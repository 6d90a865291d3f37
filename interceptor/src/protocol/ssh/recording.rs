//! Terminal recording: a shell's output and the agent's input, chunk by chunk, as `terminal`
//! note events (docs/journal.md) that `sessions replay` plays back at their pace.
//!
//! Why a module: the chunks SSH delivers split characters and lines wherever the window fell,
//! so the text kept must be re-joined at UTF-8 boundaries (a character cut in two would be
//! recorded as two replacement characters); and recording must see exactly what the agent
//! saw, which is the masked output. The window size is recorded as a `terminal` event of its
//! own (`stream: "window"`, `cols`, `rows`, no `data`): once when the terminal starts, from the
//! pty-req, then at each window-change, as asciicast v2 records its header size and its `r`
//! events. Readers that predate it skip it, as it has no text.

use std::time::Instant;

use crate::command::{EventId, Hooks};

/// The note kind `sessions replay` plays (the journal reader's `TERMINAL_KIND`; protocols do
/// not import the journal).
const TERMINAL: &str = "terminal";

/// Largest incomplete UTF-8 sequence carried to the next chunk (a character is at most 4).
const MAX_CARRY: usize = 3;

/// One stream of one channel.
pub struct Recorder<'a, H: Hooks> {
    hooks: &'a H,
    event: EventId,
    stream: &'static str,
    start: Instant,
    carry: Vec<u8>,
}

impl<'a, H: Hooks> Recorder<'a, H> {
    /// `stream`: `output` or `input`; `start`: when the channel's command began (offsets are
    /// from there, for both streams).
    pub fn new(hooks: &'a H, event: EventId, stream: &'static str, start: Instant) -> Self {
        Recorder {
            hooks,
            event,
            stream,
            start,
            carry: Vec::new(),
        }
    }

    /// Records a chunk (already masked).
    pub fn chunk(&mut self, bytes: &[u8]) {
        let text = utf8_text(&mut self.carry, bytes);
        self.note(text);
    }

    /// Records what is still carried (the stream ended mid-character).
    pub fn finish(&mut self) {
        let rest = std::mem::take(&mut self.carry);
        self.note(String::from_utf8_lossy(&rest).into_owned());
    }

    fn note(&self, text: String) {
        if text.is_empty() {
            return;
        }
        self.hooks.note(
            TERMINAL,
            serde_json::json!({
                "channel_event": self.event.0,
                "stream": self.stream,
                "offset_ms": self.start.elapsed().as_millis() as u64,
                "data": text,
            }),
        );
    }
}

/// Records the terminal's window size (`cols` x `rows` characters) at this moment of channel
/// `event`, which began at `start`.
pub fn window<H: Hooks>(hooks: &H, event: EventId, start: Instant, cols: u32, rows: u32) {
    hooks.note(
        TERMINAL,
        serde_json::json!({
            "channel_event": event.0,
            "stream": "window",
            "offset_ms": start.elapsed().as_millis() as u64,
            "cols": cols,
            "rows": rows,
        }),
    );
}

/// `carry` + `bytes` as text, keeping an incomplete character at the end in `carry` for the
/// next chunk. Invalid bytes elsewhere become U+FFFD, as they would on a terminal.
pub fn utf8_text(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    let mut all = std::mem::take(carry);
    all.extend_from_slice(bytes);
    // An incomplete sequence can only be the last 1..=3 bytes.
    let mut keep = 0;
    for n in 1..=MAX_CARRY.min(all.len()) {
        let start = all.len() - n;
        if let Err(e) = std::str::from_utf8(&all[start..]) {
            if e.error_len().is_none() && e.valid_up_to() == 0 {
                keep = n;
                break;
            }
        }
    }
    let split = all.len() - keep;
    carry.extend_from_slice(&all[split..]);
    String::from_utf8_lossy(&all[..split]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::utf8_text;

    #[test]
    fn characters_split_across_chunks_are_rejoined() {
        let text = "héllo → wörld ✓";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut carry = Vec::new();
            let mut out = utf8_text(&mut carry, &bytes[..cut]);
            out += &utf8_text(&mut carry, &bytes[cut..]);
            assert!(carry.is_empty(), "cut at {cut}");
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn invalid_bytes_are_replaced_not_carried() {
        let mut carry = Vec::new();
        assert_eq!(utf8_text(&mut carry, b"a\xffb"), "a\u{fffd}b");
        assert!(carry.is_empty());
        // A lone lead byte at the end waits for its continuation.
        assert_eq!(utf8_text(&mut carry, b"x\xe2\x86"), "x");
        assert_eq!(utf8_text(&mut carry, b"\x92"), "→");
    }
}
