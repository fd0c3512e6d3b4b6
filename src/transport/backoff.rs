//! Exponential backoff with jitter, for every transport's retries: the MQTT
//! reconnects, and the HTTP transport's polls and status posts.

use std::time::{Duration, Instant};

/// Exponential backoff with jitter between attempts. A success
/// alone does not reset it: only one that lasted `held` does (a
/// connection granted the tasks subscription and kept it, for MQTT).
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    held: Duration,
    attempt: u32,
    serving_since: Option<Instant>,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `cap`, and starts over after a
    /// connection served for `held`.
    pub fn new(initial: Duration, cap: Duration, held: Duration) -> Self {
        Backoff {
            initial,
            cap,
            held,
            attempt: 0,
            serving_since: None,
        }
    }

    /// The current connection was granted the tasks subscription at `now`.
    pub fn serving(&mut self, now: Instant) {
        self.serving_since.get_or_insert(now);
    }

    /// The connection (or the attempt) failed at `now`: the delay before the
    /// next attempt, the doubled base, capped, scaled by a random 50–100 %.
    pub fn next_delay(&mut self, now: Instant) -> Duration {
        if let Some(since) = self.serving_since.take()
            && now.saturating_duration_since(since) >= self.held
        {
            self.attempt = 0;
        }
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}
