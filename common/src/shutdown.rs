//! One shutdown for a whole process: a cancellation token every long-running task
//! watches, and a tracker of those tasks, so that whoever started them can stop them
//! all and wait (within a bound) until each has finished its last step.

use std::{future::Future, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Cheap to clone; every clone stops and tracks the same tasks.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` in the background, tracked: [`Shutdown::wait`] waits for it. The
    /// task itself must watch [`Shutdown::stopping`] and end when it resolves.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Tells every task to stop.
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// Whether [`Shutdown::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once [`Shutdown::stop`] is called.
    pub async fn stopping(&self) {
        self.token.cancelled().await;
    }

    /// The token itself, for APIs that take one.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Stops everything and waits up to `within` for every tracked task to end; false
    /// if some had not ended by then (they are left to the runtime's end).
    pub async fn stop_and_wait(&self, within: Duration) -> bool {
        self.stop();
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_reaches_every_task_and_waits_for_them() {
        let shutdown = Shutdown::new();
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (shutdown_, done) = (shutdown.clone(), done.clone());
            shutdown.spawn(async move {
                shutdown_.stopping().await;
                // A last step after the signal still runs before the wait ends.
                tokio::time::sleep(Duration::from_millis(20)).await;
                done.send(i).unwrap();
            });
        }
        assert!(!shutdown.is_stopping());
        assert!(shutdown.stop_and_wait(Duration::from_secs(5)).await);
        let mut seen = Vec::new();
        while let Ok(i) = finished.try_recv() {
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_does_not_hold_the_wait_forever() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        assert!(!shutdown.stop_and_wait(Duration::from_millis(50)).await);
    }
}
