//! clusterd: a pre-fork cluster master for actix-web services, with sessions every worker
//! shares.
//!
//! # Process model
//!
//! ```text
//!             systemd (Type=notify, MAINPID = master)
//!                  |
//!            clusterd master          one thread, no tokio: socket, worker table, signals,
//!             |   |   |   |            sd_notify, restart policy  (master.rs)
//!          worker worker worker ...    each: own runtime + actix-web on the inherited socket,
//!                                      own Redis connection  (worker.rs)
//! ```
//!
//! The master binds once ([`socket`]), forks [`ClusterConfig::workers`] workers
//! ([`process::spawn`]) and then only waits: for signals (read from a signalfd, see
//! [`signals`]), for workers reporting ready (a byte on a pipe), and for children to reap.
//!
//! # Signals of the master
//!
//! | signal        | effect                                                                   |
//! |---------------|--------------------------------------------------------------------------|
//! | TERM, INT     | graceful stop: stop accepting, finish requests (up to the graceful timeout), exit 0 |
//! | QUIT          | fast stop: close connections now, exit 0                                  |
//! | HUP           | re-read the config file, then replace workers one at a time              |
//! | TTIN / TTOU   | one worker more / fewer (never below one)                                 |
//!
//! A signal sent to one worker affects that worker only: TERM or HUP make it finish its
//! requests and exit (the master replaces it), QUIT makes it exit now, INT is ignored (the
//! terminal's Ctrl-C reaches every process in the group; the master handles it).
//!
//! # Running your own app
//!
//! Implement [`WorkerApp`] and hand it to [`Master`]; `examples/hello.rs` shows the whole
//! program.

pub mod app;
pub mod config;
pub mod log;
pub mod master;
pub mod privileges;
pub mod process;
pub mod session;
pub mod signals;
pub mod socket;
pub mod systemd;
pub mod title;
pub mod worker;

pub use config::{ClusterConfig, Config};
pub use master::{Master, MasterError, Reloaded};
pub use worker::{BootError, WorkerApp, WorkerInfo};
