//! A queue from the senders to one receiving task that costs next to nothing while
//! empty: what a connection's writer is handed, and what the vhost hands a connection.
//!
//! tokio's unbounded channel allocates a block of 32 slots, and a cache-padded channel
//! of 512 bytes, when it is made: about 2 KB for each of a connection's two queues,
//! held for as long as the connection lives, most of it for a device that sends a
//! heartbeat every few seconds. Here a queue is one small allocation, and its items' room
//! is given back whenever it empties after a burst (`KEPT`).
//!
//! Semantics are the channel's: `send` fails, handing the item back, once the receiver
//! is closed or gone; `recv` returns `None` once every sender is gone and the queue is
//! empty. `recv` is cancel-safe (nothing is taken until it returns), as `select!` needs.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

/// Room for this many items is kept when a queue empties; more is given back.
const KEPT: usize = 4;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Fires when an item came or the last sender left.
    ready: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    closed: bool,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .expect("no code panics while holding a pipe's lock")
    }
}

/// A queue and its receiving end.
pub(crate) fn pipe<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            closed: false,
        }),
        ready: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

pub(crate) struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item`, or hands it back if the receiver is closed or gone.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        {
            let mut state = self.0.state();
            if state.closed {
                return Err(item);
            }
            state.items.push_back(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.state().senders += 1;
        Self(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.0.state();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.ready.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and nothing is left.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut state = self.0.state();
                if let Some(item) = take(&mut state) {
                    return Some(item);
                }
                if state.senders == 0 {
                    return None;
                }
            }
            // A send between the check and this wait left a permit: no wake-up is lost.
            self.0.ready.notified().await;
        }
    }

    /// The next item, if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        take(&mut self.0.state())
    }

    /// Nothing more may be sent; what was sent stays to be taken.
    pub(crate) fn close(&mut self) {
        self.0.state().closed = true;
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.closed = true;
        // Whatever was left goes now, not with the last sender.
        state.items = VecDeque::new();
    }
}

fn take<T>(state: &mut State<T>) -> Option<T> {
    let item = state.items.pop_front();
    if state.items.is_empty() && state.items.capacity() > KEPT {
        state.items = VecDeque::new();
    }
    item
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_end_is_seen() {
        let (sender, mut receiver) = pipe();
        let second = sender.clone();
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = receiver.recv().await {
                got.push(item);
            }
            got
        });
        for n in 0..100 {
            sender.send(n).unwrap();
            if n % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(sender);
        second.send(100).unwrap();
        drop(second);
        let got = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the receiver saw the last sender leave")
            .unwrap();
        assert_eq!(got, (0..=100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_closed_receiver_hands_items_back_and_keeps_what_came() {
        let (sender, mut receiver) = pipe();
        sender.send(1).unwrap();
        receiver.close();
        assert_eq!(sender.send(2), Err(2));
        assert_eq!(receiver.try_recv(), Some(1));
        assert_eq!(receiver.try_recv(), None);
        drop(receiver);
        assert_eq!(sender.send(3), Err(3), "and so does a dropped one");
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_nothing() {
        let (sender, mut receiver) = pipe();
        let waited = tokio::time::timeout(Duration::from_millis(20), receiver.recv()).await;
        assert!(waited.is_err(), "nothing was sent");
        sender.send("late").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await;
        assert_eq!(got.unwrap(), Some("late"));
    }

    #[test]
    fn an_emptied_queue_gives_back_the_room_a_burst_took() {
        let (sender, mut receiver) = pipe();
        for n in 0..1000 {
            sender.send(n).unwrap();
        }
        while receiver.try_recv().is_some() {}
        assert!(sender.0.state().items.capacity() <= KEPT);
        sender.send(1).unwrap();
        assert_eq!(receiver.try_recv(), Some(1));
        assert!(
            sender.0.state().items.capacity() <= KEPT,
            "a small queue keeps its room"
        );
    }
}
