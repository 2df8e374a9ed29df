//! The master's notion of time: `CLOCK_MONOTONIC` in milliseconds. Pure data; runs in the master.
//!
//! Not `Instant`, for two reasons. The master's state crosses `execve` on an upgrade, and a
//! monotonic reading means the same in the new image (same boot, same clock), so a deadline
//! needs no conversion to an age and back. And the decisions take the time as an argument, so a
//! test builds any moment it likes. The edge reads the clock once per loop turn ([`Ms::now`]).

use std::time::Duration;

/// A moment on `CLOCK_MONOTONIC`, in milliseconds since boot.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Ms(pub u64);

impl Ms {
    /// The clock now. Called once per turn of the master loop, by the edge only.
    pub fn now() -> Ms {
        Ms(crate::scoreboard::now_ms())
    }

    /// This moment plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Ms {
        Ms(self.0.saturating_add(d.as_millis() as u64))
    }

    /// This moment minus `d`, or the clock's start.
    pub fn minus(self, d: Duration) -> Ms {
        Ms(self.0.saturating_sub(d.as_millis() as u64))
    }

    /// How long after `earlier` this moment is (zero if it is not after it).
    pub fn since(self, earlier: Ms) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Ms(1_000);
        assert_eq!(t.plus(Duration::from_millis(250)), Ms(1_250));
        assert_eq!(t.minus(Duration::from_secs(5)), Ms(0));
        assert_eq!(Ms(1_500).since(t), Duration::from_millis(500));
        assert_eq!(t.since(Ms(1_500)), Duration::ZERO);
    }
}
