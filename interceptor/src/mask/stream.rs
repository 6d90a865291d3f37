//! Masking a byte stream: SSH terminal output, `kubectl exec` streams.
//!
//! Why this exists: a stream arrives in chunks cut wherever the transport cut it, so a card
//! number or a token can be split between two chunks and be found in neither. The
//! [`StreamMasker`] holds back the incomplete last line of what it was given and masks whole
//! lines, so a value that fits on a line is always seen whole.
//!
//! What it must never do is hold output forever (a shell prompt has no newline). Hence:
//! - an incomplete line is held up to [`STREAM_HOLD_LIMIT`] bytes; past that, everything but
//!   the last [`KEEP`] bytes is masked and sent (a match that straddles that cut is sent
//!   masked whole), so a value of up to [`KEEP`] bytes is still caught on an endless line;
//! - [`StreamMasker::flush`] sends what is held, masked, for the protocol to call when the
//!   stream goes idle or ends. A value written in pieces with idle gaps between them can
//!   therefore pass (docs/security.md, "Masking limits").
//!
//! A private key block spans lines: once its BEGIN line is seen without its END line, what
//! follows is swallowed up to the END line (at most [`KEY_LIMIT`] bytes, then the stream
//! flows again: an END line that never comes must not silence a session).
//!
//! Streams are bytes, not text: nothing here needs UTF-8, and a `null` strategy redacts.

use std::{collections::BTreeMap, sync::Arc};

use super::{
    detect::{Detector, Found},
    Masking,
};

/// How long an incomplete line may grow before part of it is sent anyway.
pub const STREAM_HOLD_LIMIT: usize = 4096;

/// What stays held when an incomplete line is cut: the longest value caught across the cut.
const KEEP: usize = 1024;

/// How much of an unterminated private key block is swallowed before output flows again.
const KEY_LIMIT: usize = 64 * 1024;

/// Masks one stream, chunk by chunk. Holds its own counters.
pub struct StreamMasker {
    masking: Arc<Masking>,
    /// Received, not yet sent: the incomplete last line.
    held: Vec<u8>,
    /// Inside a private key block whose END line has not come yet: how much was swallowed.
    in_key: Option<usize>,
    found: Vec<Found>,
    counts: BTreeMap<String, u64>,
}

impl StreamMasker {
    pub fn new(masking: Arc<Masking>) -> StreamMasker {
        StreamMasker {
            masking,
            held: Vec::new(),
            in_key: None,
            found: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Takes a chunk; returns the masked bytes that can be sent now (possibly none).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        let lines_end = memchr::memrchr(b'\n', &self.held).map_or(0, |i| i + 1);
        let cut = if self.held.len() - lines_end > STREAM_HOLD_LIMIT {
            self.forced_cut()
        } else {
            lines_end
        };
        self.send(cut)
    }

    /// Sends everything held, masked: for when the stream is idle or ends.
    pub fn flush(&mut self) -> Vec<u8> {
        self.send(self.held.len())
    }

    /// Bytes held back now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The counts so far (per detector), taken: the next call starts from zero.
    pub fn take_counts(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.counts)
    }

    /// Where to cut an over-long incomplete line: all but the last [`KEEP`] bytes, moved past
    /// any match that straddles the cut (it is sent masked, whole).
    fn forced_cut(&mut self) -> usize {
        let cut = self.held.len().saturating_sub(KEEP);
        let Some(scanner) = &self.masking.scanner else {
            return cut;
        };
        self.found.clear();
        scanner.find(&self.held, &mut self.found);
        self.found
            .iter()
            .find(|f| f.range.start < cut && cut < f.range.end)
            .map_or(cut, |f| f.range.end)
    }

    /// Masks and returns the first `cut` held bytes.
    fn send(&mut self, cut: usize) -> Vec<u8> {
        let cut = cut.min(self.held.len());
        let part: Vec<u8> = self.held.drain(..cut).collect();
        let mut rest = part.as_slice();
        if let Some(swallowed) = self.in_key {
            match key_end(rest) {
                Some(end) => {
                    rest = rest.get(end..).unwrap_or_default();
                    self.in_key = None;
                }
                None => {
                    let swallowed = swallowed + rest.len();
                    self.in_key = (swallowed < KEY_LIMIT).then_some(swallowed);
                    return Vec::new();
                }
            }
        }
        let Some(scanner) = &self.masking.scanner else {
            return rest.to_vec();
        };
        self.found.clear();
        scanner.find(rest, &mut self.found);
        // A key block the detector ran to the end of this part (its END line not here yet):
        // the rest of it is still to come.
        let open_key = self.found.last().is_some_and(|f| {
            f.detector == Detector::PrivateKey
                && f.range.end == rest.len()
                && rest
                    .get(f.range.clone())
                    .is_some_and(|k| key_end(k).is_none())
        });
        if open_key {
            self.in_key = Some(0);
        }
        self.masking
            .replace_spans(rest, &self.found, &mut self.counts)
    }
}

impl crate::command::StreamMask for StreamMasker {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        StreamMasker::push(self, chunk)
    }

    fn flush(&mut self) -> Vec<u8> {
        StreamMasker::flush(self)
    }

    fn take_counts(&mut self) -> BTreeMap<String, u64> {
        StreamMasker::take_counts(self)
    }

    fn held(&self) -> usize {
        StreamMasker::held(self)
    }
}

/// The end of the first `-----END …-----` line in `bytes`, if there is one.
fn key_end(bytes: &[u8]) -> Option<usize> {
    let start = memchr::memmem::find(bytes, b"-----END ")?;
    let after = start + b"-----END ".len();
    let close = memchr::memmem::find(bytes.get(after..)?, b"-----")?;
    Some(after + close + b"-----".len())
}

#[cfg(test)]
mod tests;
