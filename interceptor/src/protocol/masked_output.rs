//! A terminal's output stream masked line by line, flushed when it goes idle: what the SSH
//! gateway does for its channels and the Kubernetes gateway for exec and attach streams.
//!
//! Why this exists: a transport cuts output wherever it likes (an SSH data message, a
//! WebSocket frame), so a value masked one chunk at a time escapes the detectors when it is
//! split. The [`StreamMask`] holds back an unfinished line so it is masked whole; but a prompt
//! has no newline, and an interactive session must show it. So whatever is held is sent
//! (masked) once the stream has been quiet for [`FLUSH_AFTER`]: the protocol races
//! [`idle`] against its next read. Both gateways use this one type so that what is masked,
//! and when held bytes go out, is the same whatever the protocol (docs/security.md,
//! "Masking limits": a value written in pieces with a longer pause between them can pass).

use std::{collections::BTreeMap, time::Duration};

use crate::command::StreamMask;

/// How long masked output may sit in a masker's line buffer before it is sent anyway (a
/// prompt has no newline; an interactive shell must show it). Short enough not to be seen,
/// long enough for the pieces of one write cut by the transport to arrive together.
pub const FLUSH_AFTER: Duration = Duration::from_millis(30);

/// One output stream (stdout, or stderr) through its own masker: the two are masked apart,
/// as a line of one says nothing about a line of the other.
pub struct MaskedOutput {
    mask: Box<dyn StreamMask>,
}

impl MaskedOutput {
    pub fn new(mask: Box<dyn StreamMask>) -> MaskedOutput {
        MaskedOutput { mask }
    }

    /// Takes a chunk; returns the masked bytes that can be sent now (whole lines).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.mask.push(chunk)
    }

    /// Everything held, masked: the stream went idle or ended.
    pub fn flush(&mut self) -> Vec<u8> {
        self.mask.flush()
    }

    /// Whether bytes wait for the idle flush.
    pub fn holds(&self) -> bool {
        self.mask.held() > 0
    }

    /// The counts so far (per detector), taken.
    pub fn take_counts(&mut self) -> BTreeMap<String, u64> {
        self.mask.take_counts()
    }
}

/// Resolves [`FLUSH_AFTER`] from now when `holding` (a stream holds bytes), never otherwise:
/// a branch of the protocol's `select!`, re-armed by every read, so the flush comes after
/// [`FLUSH_AFTER`] of quiet.
pub async fn idle(holding: bool) {
    if holding {
        tokio::time::sleep(FLUSH_AFTER).await;
    } else {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in masker: holds what follows the last newline, writes `X` for `@`.
    struct Lines(Vec<u8>);

    impl StreamMask for Lines {
        fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
            self.0.extend_from_slice(chunk);
            let end = self
                .0
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            self.0
                .drain(..end)
                .map(|b| if b == b'@' { b'X' } else { b })
                .collect()
        }
        fn flush(&mut self) -> Vec<u8> {
            let all = self.0.len();
            self.0.drain(..all).collect()
        }
        fn take_counts(&mut self) -> BTreeMap<String, u64> {
            BTreeMap::new()
        }
        fn held(&self) -> usize {
            self.0.len()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_line_is_held_until_the_stream_is_idle() {
        let mut out = MaskedOutput::new(Box::new(Lines(Vec::new())));
        assert!(out.push(b"a@").is_empty());
        assert!(out.holds());
        assert_eq!(out.push(b"b\nprompt$ "), b"aXb\n");
        assert!(out.holds());
        let started = tokio::time::Instant::now();
        idle(out.holds()).await;
        assert_eq!(started.elapsed(), FLUSH_AFTER);
        assert_eq!(out.flush(), b"prompt$ ");
        assert!(!out.holds());
        let never = tokio::time::timeout(Duration::from_secs(3600), idle(out.holds())).await;
        assert!(never.is_err());
    }
}
