//! clusterd: a pre-fork cluster master for actix-web services, with sessions every worker
//! shares.
//!
//! # Process model
//!
//! ```text
//!             systemd (Type=notify, MAINPID = master)
//!                  |
//!            clusterd master          one thread, no tokio: socket table, worker slots,
//!             |   |   |   |            signals, sd_notify, restart policy  (master/)
//!          worker worker worker ...    each: own runtime + actix-web on its slot's socket,
//!                                      own Redis connection  (worker/)
//! ```
//!
//! The master opens the listening sockets ([`socket`]: by default one `SO_REUSEPORT` socket per
//! worker slot, so the kernel balances connections), forks [`ClusterConfig::workers`] workers
//! ([`process::spawn`]) and then only waits: for signals (read from a signalfd, see
//! [`signals`]), for workers reporting ready (a byte on a pipe), for control clients, and for
//! children to reap. Every decision it takes on those events is a pure function of its state
//! and the time ([`master::cluster`]); the loop around them does the system calls.
//! ARCHITECTURE.md in the repository explains the fork rules and the socket table.
//!
//! # Signals of the master
//!
//! | signal        | effect                                                                   |
//! |---------------|--------------------------------------------------------------------------|
//! | TERM, INT     | graceful stop: stop accepting, finish requests (up to the graceful timeout), exit 0 |
//! | QUIT          | fast stop: close connections now, exit 0                                  |
//! | HUP           | re-read the config file, then replace workers one at a time              |
//! | TTIN / TTOU   | one worker more / fewer (never below one)                                 |
//! | USR1, USR2    | ignored, with a log line (never fatal)                                    |
//!
//! A signal sent to one worker affects that worker only: TERM or HUP make it finish its
//! requests and exit (the master replaces it in the same slot), QUIT makes it exit now, INT is
//! ignored (the terminal's Ctrl-C reaches every process in the group; the master handles it).
//! USR1 is the master's own: the worker's slot goes away, so it shuts the slot's socket down
//! before finishing its requests.
//!
//! # Running your own app
//!
//! Implement [`WorkerApp`] and hand it to [`Master`]; `examples/hello.rs` shows the whole
//! program.

#![deny(missing_docs)]

// The master reads signals from a signalfd, maps the scoreboard from a memfd, and workers use
// PR_SET_PDEATHSIG: all Linux. Say so at once, not with a screen of unresolved imports.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "clusterd runs on Linux only (signalfd, memfd, PR_SET_PDEATHSIG, SO_REUSEPORT steering)"
);

#[cfg(feature = "demo")]
pub mod app;
pub mod config;
pub mod counter;
pub mod fd;
pub mod log;
pub mod master;
pub mod metrics;
pub mod privileges;
pub mod process;
pub mod program;
pub mod scoreboard;
pub mod session;
pub mod signals;
pub mod socket;
pub mod systemd;
pub mod title;
pub mod worker;

pub use config::{ClusterConfig, Config};
pub use master::{Master, MasterError, Reloaded};
pub use program::{Service, Setup, run};
pub use worker::{BootError, Health, WorkerApp, WorkerInfo};
