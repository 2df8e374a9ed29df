//! Talking to systemd: `sd_notify` from the master (READY, STATUS, RELOADING, STOPPING,
//! WATCHDOG). Runs in the master; [`forget_in_child`] runs in a new worker so that only the
//! master can ever notify (the unit also says `NotifyAccess=main`). Socket activation lives in
//! `socket/`.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op, so the same code runs under a terminal.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The master's line to the service manager.
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    last_status: String,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (the latter only if `WATCHDOG_PID` is us).
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: None,
            last_status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(states)
        {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    /// Every initial worker is serving (or a reload finished).
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload (rolling restart) began. systemd's `Type=notify-reload` wants the monotonic
    /// timestamp with it.
    pub fn reloading(&mut self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// The service is stopping.
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Updates the free-form status line, sending only when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    /// The interval at which [`Self::ping`] must be called, if the watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Pets the watchdog if half its period has passed. The master calls it only while healthy.
    pub fn ping(&mut self) {
        let now = Instant::now();
        let Some(every) = self.watchdog_interval() else {
            return;
        };
        if self
            .last_ping
            .is_none_or(|t| now.duration_since(t) >= every)
        {
            self.last_ping = Some(now);
            self.send(&[NotifyState::Watchdog]);
        }
    }
}

/// Removes the service manager's variables from a new worker's environment, so neither the
/// worker nor anything it runs can notify or believe it owns the watchdog.
pub fn forget_in_child() {
    for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        // SAFETY: called right after fork, while the child has its only thread.
        unsafe { std::env::remove_var(name) };
    }
}
