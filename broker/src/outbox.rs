//! Each connection's outbox: the bytes waiting to be written to its peer, bounded by
//! `Config::outgoing_buffer`, as RabbitMQ bounds them with credit flow. A consumer whose
//! connection's outbox is full is passed over (its deliveries stay in the queue, and the
//! queue is remembered); the connection reads nothing more from its peer until there is
//! room again; and once the writer has written enough, the connection is woken to
//! dispatch the queues it was passed over for. The vhost's lock is never held for any of
//! it: the writer only counts, and the connection dispatches under the lock as usual.
//!
//! Deliveries are counted from the moment the vhost hands them over (their body's bytes
//! are reserved then), so a burst cannot overfill an outbox before the connection has
//! encoded them.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// One connection's outbox.
#[derive(Debug)]
pub struct Outbox {
    /// Bytes queued for the writer, or reserved for deliveries on their way to it.
    queued: AtomicUsize,
    /// Beyond this, the outbox is full.
    budget: usize,
    /// Someone waits for room: the writer wakes the connection when there is.
    wanted: AtomicBool,
    /// Queues whose consumers on this connection were passed over for want of room.
    held_back: Mutex<Vec<String>>,
    /// Fires when there is room again, or when the writer stalled.
    pub(crate) wake: Notify,
    /// The writer gave up: its peer took nothing for `stalled_writer_timeout`.
    stalled: AtomicBool,
    /// What all the broker's outboxes hold.
    total: Arc<AtomicUsize>,
}

impl Outbox {
    pub(crate) fn new(budget: usize, total: Arc<AtomicUsize>) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            budget,
            wanted: AtomicBool::new(false),
            held_back: Mutex::default(),
            wake: Notify::new(),
            stalled: AtomicBool::new(false),
            total,
        }
    }

    /// `bytes` more waiting for the writer (or reserved for a delivery).
    pub(crate) fn add(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::SeqCst);
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` written (or a reservation given back): wakes the connection if it waits
    /// for room and there is some now.
    pub(crate) fn written(&self, bytes: usize) {
        let left = self.queued.fetch_sub(bytes, Ordering::SeqCst) - bytes;
        self.total.fetch_sub(bytes, Ordering::Relaxed);
        // Paired with `wait_for_room`: whichever of the two comes second sees the other.
        if left < self.budget && self.wanted.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.queued.load(Ordering::SeqCst) < self.budget
    }

    /// Asks to be woken when there is room; whether there is, after all, already.
    pub(crate) fn wait_for_room(&self) -> bool {
        self.wanted.store(true, Ordering::SeqCst);
        self.has_room()
    }

    /// Whether a consumer of `queue` on this connection may be given a message now; if
    /// not, the queue is dispatched again once there is room.
    pub(crate) fn room_for(&self, queue: &str) -> bool {
        if self.has_room() {
            return true;
        }
        {
            let mut held_back = self.held_back();
            if !held_back.iter().any(|name| name == queue) {
                held_back.push(queue.to_owned());
            }
        }
        self.wait_for_room()
    }

    /// The queues to dispatch again, now that there is room.
    pub(crate) fn take_held_back(&self) -> Vec<String> {
        std::mem::take(&mut *self.held_back())
    }

    fn held_back(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.held_back
            .lock()
            .expect("no code panics while holding an outbox's lock")
    }

    /// The writer gave up on its peer.
    pub(crate) fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }
}

/// Whatever was never written leaves the broker's total with the connection.
impl Drop for Outbox {
    fn drop(&mut self) {
        let left = self.queued.load(Ordering::SeqCst);
        self.total.fetch_sub(left, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_remembers_its_queues_and_wakes_when_written() {
        let total = Arc::new(AtomicUsize::new(0));
        let outbox = Outbox::new(100, total.clone());
        assert!(outbox.room_for("q"));
        outbox.add(150);
        assert!(!outbox.room_for("q"));
        assert!(!outbox.room_for("q"));
        assert_eq!(total.load(Ordering::Relaxed), 150);
        outbox.written(100);
        assert!(outbox.has_room());
        assert_eq!(
            outbox.take_held_back(),
            ["q"],
            "once, however often passed over"
        );
        // The wake-up was stored for the connection to find.
        {
            let woken = outbox.wake.notified();
            tokio::pin!(woken);
            assert!(
                poll_once(woken.as_mut()),
                "the connection is woken to dispatch q"
            );
        }
        drop(outbox);
        assert_eq!(
            total.load(Ordering::Relaxed),
            0,
            "what was left is uncounted"
        );
    }

    /// Polls a future once.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        future.poll(&mut context).is_ready()
    }
}
