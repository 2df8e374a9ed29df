//! Restart policy of the master: crash-loop back-off. Pure data and decisions; runs in the
//! master.

use std::time::Duration;

/// Crash-loop protection: exponential delay for workers that die young, reset by one that
/// lived long enough.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// A worker that dies before being ready or before this uptime counts as a failure.
    pub min_uptime: Duration,
    /// Delay after the first failure; doubles after each further one.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min_uptime: Duration::from_secs(1),
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            failures: 0,
        }
    }
}

impl Backoff {
    /// Records a death and returns how long to wait before the next fork.
    pub fn on_death(&mut self, was_ready: bool, uptime: Duration) -> Duration {
        if was_ready && uptime >= self.min_uptime {
            self.failures = 0;
            return Duration::ZERO;
        }
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32.checked_shl(self.failures - 1).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Carries the count over from the previous image of an upgraded master.
    pub fn set_failures(&mut self, failures: u32) {
        self.failures = failures;
    }

    /// Consecutive early deaths so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets_after_stable_uptime() {
        let mut b = Backoff::default();
        let young = Duration::from_millis(10);
        assert_eq!(b.on_death(true, young), Duration::from_millis(100));
        assert_eq!(b.on_death(true, young), Duration::from_millis(200));
        assert_eq!(
            b.on_death(false, Duration::from_secs(5)),
            Duration::from_millis(400)
        );
        for _ in 0..20 {
            b.on_death(false, young);
        }
        assert_eq!(b.on_death(false, young), Duration::from_secs(10));
        assert_eq!(b.on_death(true, Duration::from_secs(2)), Duration::ZERO);
        assert_eq!(b.failures(), 0);
        assert_eq!(b.on_death(true, young), Duration::from_millis(100));
    }

    #[test]
    fn a_stable_worker_is_replaced_at_once() {
        let mut b = Backoff::default();
        assert_eq!(b.on_death(true, Duration::from_secs(60)), Duration::ZERO);
    }
}
