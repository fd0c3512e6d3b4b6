//! Flow control for the worker's own QoS 1 publishes.
//!
//! rumqttc sends requests in order through one channel and stops taking any
//! while the broker's Receive Maximum of publishes is unacknowledged. Status
//! publishes queued there ahead of an acknowledgement of a received request
//! delay that acknowledgement, the broker then holds back further requests
//! (its own in-flight window to us), and Mosquitto drops what exceeds its
//! per-client queue (`max_queued_messages`, 1000 by default): a burst of
//! requests would lose tasks. So the status publisher hands the client at most
//! [`PUBLISH_WINDOW`] publishes that the broker has not acknowledged yet, and
//! an acknowledgement of a request never waits behind more than that.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Unacknowledged status publishes allowed at once (below the Receive
/// Maximum of common brokers: Mosquitto's default is 20).
pub const PUBLISH_WINDOW: usize = 16;

/// Permits for publishes in flight; clones share them.
#[derive(Debug, Clone)]
pub struct PublishWindow {
    permits: Arc<Semaphore>,
}

impl Default for PublishWindow {
    fn default() -> Self {
        PublishWindow {
            permits: Arc::new(Semaphore::new(PUBLISH_WINDOW)),
        }
    }
}

impl PublishWindow {
    /// Waits for room for one more publish and takes it.
    pub async fn enter(&self) {
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }

    /// The broker acknowledged a publish (of ours or, harmlessly, another
    /// task's: the window never grows past its size).
    pub fn acknowledged(&self) {
        if self.permits.available_permits() < PUBLISH_WINDOW {
            self.permits.add_permits(1);
        }
    }

    /// A new connection: what was in flight is re-sent by the client or
    /// re-published by the publisher, so the whole window is free again.
    pub fn reset(&self) {
        let missing = PUBLISH_WINDOW.saturating_sub(self.permits.available_permits());
        self.permits.add_permits(missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_window_closes_when_full_and_never_grows() {
        let window = PublishWindow::default();
        for _ in 0..PUBLISH_WINDOW {
            window.enter().await;
        }
        let full = tokio::time::timeout(std::time::Duration::from_millis(20), window.enter());
        assert!(full.await.is_err(), "a full window must wait");
        window.acknowledged();
        window.enter().await;
        window.reset();
        window.acknowledged();
        assert_eq!(window.permits.available_permits(), PUBLISH_WINDOW);
    }
}
