//! clusterd: a pre-fork cluster master for actix-web services, with sessions every worker
//! shares.
//!
//! # Run your app under clusterd
//!
//! An app is a [`WorkerApp`] (its routes, and the state each worker process builds after the
//! fork) and a [`Service`] (its own options, and how the master builds it from them). Its
//! `main` calls [`run`], and the program it makes is all of `clusterd`: every option,
//! environment variable and config-file key (`--help`), the app's own beside them,
//! `status`, `scale` and `reload`, `--check-config`, systemd notify and socket activation,
//! `--user`, `/metrics` and a dashboard on `--metrics-bind`, JSON logs, in-place upgrades of
//! its own binary (`HUP` after a deploy, or `--watch` while developing), and the exit codes
//! (0 stopped on request, 1 runtime failure, 2 bad configuration, 4 a worker rejected it).
//!
//! ```no_run
//! use actix_web::{HttpResponse, web};
//! use clusterd::counter::{self, Counter};
//! use clusterd::{BootError, Service, Setup, WorkerApp, WorkerInfo};
//!
//! /// The app's options: `--greeting`, `$HELLO_GREETING`, or `greeting = ".."` in the
//! /// `--config` file (re-read on reload).
//! #[derive(Clone, clap::Args)]
//! struct Options {
//!     /// What every answer starts with
//!     #[arg(long, env = "HELLO_GREETING", default_value = "hello")]
//!     greeting: String,
//! }
//!
//! /// Built by the master before the first fork, and again on every reload.
//! struct Hello {
//!     greeting: String,
//!     served: Counter,
//! }
//!
//! impl Service for Hello {
//!     type Options = Options;
//!     const NAME: &'static str = "hello";
//!
//!     fn build(options: Options, _: &Setup<'_>) -> Result<Self, BootError> {
//!         Ok(Hello {
//!             greeting: options.greeting,
//!             // Summed over the workers at /metrics, never going back.
//!             served: counter::counter("hello_greetings_total", "Greetings served"),
//!         })
//!     }
//! }
//!
//! /// Per worker, after the fork: open connections and pools here.
//! #[derive(Clone)]
//! struct State {
//!     greeting: String,
//!     worker: u64,
//!     served: Counter,
//! }
//!
//! impl WorkerApp for Hello {
//!     type State = State;
//!
//!     async fn init(&self, worker: &WorkerInfo) -> Result<State, BootError> {
//!         Ok(State { greeting: self.greeting.clone(), worker: worker.id, served: self.served })
//!     }
//!
//!     /// On each server thread: the routes. `/healthz` comes from clusterd.
//!     fn configure(state: &State, cfg: &mut web::ServiceConfig) {
//!         let state = state.clone();
//!         cfg.route("/", web::get().to(move || {
//!             state.served.inc();
//!             let body = format!("{} from worker {}\n", state.greeting, state.worker);
//!             async move { HttpResponse::Ok().body(body) }
//!         }));
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     clusterd::run::<Hello>()
//! }
//! ```
//!
//! `examples/hello.rs` is this program. Sessions every worker and host sees come from
//! [`session`]: its Redis store (feature `redis`) and embedded SQLite store (feature `sqlite`)
//! are plain actix-session stores, for `SessionMiddleware::new(store, key)`. With
//! `default-features = false` the crate is the master alone; the `demo` feature (the default)
//! adds the `clusterd` binary's app (`clusterd::app`), which uses the same extension points.
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
//! | HUP           | re-read the config file and rebuild the app, then replace workers one at a time (or upgrade in place if the binary was replaced) |
//! | TTIN / TTOU   | one worker more / fewer (never below one)                                 |
//! | USR1, USR2    | ignored, with a log line (never fatal)                                    |
//!
//! A signal sent to one worker affects that worker only: TERM or HUP make it finish its
//! requests and exit (the master replaces it in the same slot), QUIT makes it exit now, INT is
//! ignored (the terminal's Ctrl-C reaches every process in the group; the master handles it).
//! USR1 is the master's own: the worker's slot goes away, so it shuts the slot's socket down
//! before finishing its requests.

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
pub mod history;
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
