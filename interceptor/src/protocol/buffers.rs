//! The memory budget for large messages in flight, shared by every session.
//!
//! Why this exists: a protocol that judges whole commands must hold a whole message before it
//! can forward it, so each session may buffer up to its target's `max_message_bytes` (64 MiB by
//! default) per direction. Without a shared bound, a few agents sending (or stalling halfway
//! through) large statements would take the host's memory, and everyone's sessions with it.
//! A message above [`LARGE`] bytes may only be read once its whole size is reserved from the
//! budget (`[proxy] buffer_budget_bytes`); until then the session stops reading (backpressure:
//! the sender's socket fills and it waits), and after `[proxy] buffer_wait_secs` it is refused.
//! Small messages, which are nearly all of them, never wait.
//!
//! Buffers that grew for a large message are given back once it is consumed, so memory
//! returns to its baseline after a burst.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Messages up to this size are read without a reservation.
pub const LARGE: usize = 1 << 20;

/// A buffer whose capacity exceeds this once its large message is consumed is replaced.
const KEEP_CAPACITY: usize = 2 * LARGE;

/// The default `[proxy] buffer_budget_bytes`: four maximum-size (64 MiB) messages at once.
pub const DEFAULT_BUDGET_BYTES: usize = 256 << 20;

/// The default `[proxy] buffer_wait_secs`.
pub const DEFAULT_WAIT_SECS: u64 = 30;

/// Spare room the relays keep before each read, so large results need few syscalls.
pub const READ_CHUNK: usize = 64 * 1024;

/// The budget is counted in KiB, so that a `u32` of permits covers any size.
const UNIT: usize = 1024;

/// Bytes of large messages all sessions may hold at once.
pub struct Budget {
    permits: Arc<Semaphore>,
    units: u32,
    wait: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error(
        "the gateway's memory for large messages ({budget} bytes) stayed in use by other \
         sessions for {waited_secs} s; a {needed}-byte message could not be read"
    )]
    Exhausted {
        needed: usize,
        budget: usize,
        waited_secs: u64,
    },
    #[error("a {needed}-byte message exceeds the gateway's whole memory budget for large messages ({budget} bytes)")]
    TooLarge { needed: usize, budget: usize },
}

impl Budget {
    pub fn new(bytes: usize, wait: Duration) -> Budget {
        let units = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX);
        Budget {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
            wait,
        }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }

    fn bytes(&self) -> usize {
        self.units as usize * UNIT
    }
}

/// One direction of one session: the reservation for the large message being read, if any.
pub struct Inflight<'b> {
    budget: &'b Budget,
    held: Option<OwnedSemaphorePermit>,
}

impl<'b> Inflight<'b> {
    pub fn new(budget: &'b Budget) -> Inflight<'b> {
        Inflight { budget, held: None }
    }

    /// Before reading more into `buf`, whose first message is `total` bytes long once whole
    /// (`None`: its header is not in yet). A large message waits for its reservation, then
    /// gets room for all of it at once (growing by doubling would overshoot by up to 2×).
    pub async fn before_read(
        &mut self,
        buf: &mut BytesMut,
        total: Option<usize>,
    ) -> Result<(), BudgetError> {
        let Some(total) = total.filter(|t| *t > LARGE) else {
            return Ok(());
        };
        self.reserve(total).await?;
        // Room for the whole message and one read beyond it, so the reads that complete it
        // never make the buffer grow again (a growth doubles: 60 MB would become 120 MB).
        let wanted = total + READ_CHUNK;
        if buf.capacity() < wanted {
            buf.reserve(wanted - buf.len());
        }
        Ok(())
    }

    /// Reserves `total` bytes for the message being read, when it is large and nothing is
    /// reserved yet; waits for other sessions to give room back, up to the budget's wait.
    pub async fn reserve(&mut self, total: usize) -> Result<(), BudgetError> {
        if total > LARGE && self.held.is_none() {
            let needed = u32::try_from(total.div_ceil(UNIT)).unwrap_or(u32::MAX);
            if needed > self.budget.units {
                return Err(BudgetError::TooLarge {
                    needed: total,
                    budget: self.budget.bytes(),
                });
            }
            let permits = self.budget.permits.clone().acquire_many_owned(needed);
            match tokio::time::timeout(self.budget.wait, permits).await {
                Ok(Ok(permit)) => self.held = Some(permit),
                // The semaphore is never closed; a closed one reads as exhausted.
                Ok(Err(_)) | Err(_) => {
                    return Err(BudgetError::Exhausted {
                        needed: total,
                        budget: self.budget.bytes(),
                        waited_secs: self.budget.wait.as_secs(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The message reserved for is consumed: its reservation ends.
    pub fn release(&mut self) {
        self.held = None;
    }

    /// After messages were taken from the front of `buf`: the reservation ends, and a buffer
    /// that grew for a large message is replaced by a small one (keeping what is left in it).
    pub fn consumed(&mut self, buf: &mut BytesMut) {
        self.release();
        if buf.capacity() > KEEP_CAPACITY && buf.len() <= LARGE {
            let mut fresh = BytesMut::with_capacity(READ_CHUNK.max(buf.len()));
            fresh.extend_from_slice(buf);
            *buf = fresh;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_messages_wait_for_the_budget_and_small_ones_never_do() {
        let budget = Budget::new(3 * LARGE, Duration::from_millis(200));
        let mut buf = BytesMut::new();
        let mut first = Inflight::new(&budget);
        first
            .before_read(&mut buf, Some(2 * LARGE))
            .await
            .expect("reserved");
        assert!(buf.capacity() >= 2 * LARGE);
        assert_eq!(budget.available(), LARGE);
        // Another session's large message does not fit: it waits, then is refused.
        let mut second = Inflight::new(&budget);
        let refused = second
            .before_read(&mut BytesMut::new(), Some(2 * LARGE))
            .await;
        assert!(
            matches!(refused, Err(BudgetError::Exhausted { .. })),
            "{refused:?}"
        );
        // Small messages do not count.
        second
            .before_read(&mut BytesMut::new(), Some(1000))
            .await
            .expect("small");
        // Consumed: the reservation ends and the big buffer is given back.
        buf.clear();
        first.consumed(&mut buf);
        assert_eq!(budget.available(), 3 * LARGE);
        assert!(buf.capacity() <= KEEP_CAPACITY);
        second
            .before_read(&mut BytesMut::new(), Some(2 * LARGE))
            .await
            .expect("fits now");
        let whole = Inflight::new(&budget)
            .before_read(&mut BytesMut::new(), Some(4 * LARGE))
            .await;
        assert!(matches!(whole, Err(BudgetError::TooLarge { .. })));
    }
}
