//! Plain configuration data: command line, environment and an optional TOML file, merged and
//! validated. Runs in the master only (at start and on SIGHUP); nothing here has side effects
//! beyond reading the config file.
//!
//! Precedence, highest first: command-line flag, environment variable, config file, default.
//! On SIGHUP the master re-reads the file and merges it again under the same flags, so a flag
//! given at start keeps winning over the file (as it did at start).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::socket::{Balance, SocketMode};

mod cli;
mod options;
mod validate;

pub use self::cli::{Cli, Command, WaitArgs};
pub use self::options::{Args, FileKey};

/// Errors found while loading or validating configuration. All map to exit code 2 in `main`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a bad value.
    #[error("parsing config file {path}: {message}")]
    Parse {
        /// The file named by `--config`.
        path: PathBuf,
        /// The TOML parser's message, which names the key.
        message: String,
    },
    /// An option the command line parser rejected (an app's option, from any source).
    #[error("{0}")]
    Options(String),
    /// A value is syntactically fine but not allowed.
    #[error("invalid value for {option}: {message}")]
    Invalid {
        /// The option's name as the user writes it (`--workers`).
        option: &'static str,
        /// Why it is rejected.
        message: String,
    },
}

/// Settings of the process model, which the master owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Address the master binds (ignored when systemd hands over a socket).
    pub bind: SocketAddr,
    /// Number of worker processes kept running.
    pub workers: usize,
    /// actix-web threads per worker process.
    pub threads: usize,
    /// How long a stopping worker may take before it is killed.
    pub graceful_timeout: Duration,
    /// How long a client may take to send a whole request (head and body).
    pub read_timeout: Duration,
    /// How the workers' listening sockets are laid out.
    pub sockets: SocketMode,
    /// How new connections are spread over per-worker sockets (re-read on a reload).
    pub balance: Balance,
    /// Accept-queue length passed to `listen(2)`.
    pub backlog: u32,
    /// Unprivileged user the workers switch to when the master runs as root.
    pub user: Option<String>,
    /// Group for `user`; defaults to the user's primary group.
    pub group: Option<String>,
    /// The master's control socket; `None`: the default place (see `main`).
    pub control_socket: Option<PathBuf>,
    /// Where the workers serve metrics, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// Host names the metrics server answers to besides its address and `localhost`.
    pub metrics_allowed_hosts: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// A worker whose oldest thread heartbeat is older is replaced.
    pub worker_timeout: Duration,
    /// Requests after which a worker is recycled (0: never), and the random extra per worker.
    pub max_requests: u64,
    /// See `max_requests`.
    pub max_requests_jitter: u64,
    /// Resident memory (bytes) above which, for several samples, a worker is recycled (0: never).
    pub max_worker_memory: u64,
    /// The most workers TTIN and `clusterd scale` may ask for.
    pub max_workers: usize,
    /// The app's state directory (and, when not root, the control socket's).
    pub data_dir: PathBuf,
    /// Path of the health route every worker answers; `None`: none.
    pub health_path: Option<String>,
    /// A line per request in the log (`--access-log`).
    pub access_log: bool,
}

impl Default for ClusterConfig {
    /// What the binary uses when nothing is configured: the defaults of `validate.rs`.
    fn default() -> Self {
        Config::from_args(Args::default(), None)
            .expect("the defaults are valid")
            .cluster
    }
}

/// clusterd's settings, validated, and the config file's keys left for the app.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Process-model settings.
    pub cluster: ClusterConfig,
    /// The config file, if any (kept so SIGHUP can re-read it).
    pub file: Option<PathBuf>,
    /// The file's keys that are not clusterd's: the app's options (see `crate::program`).
    pub app_keys: Vec<FileKey>,
}

/// Default listening address: loopback only, so a first run exposes nothing.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

impl Config {
    /// Merges flags and environment (`args`) over the config file over the defaults.
    /// `state_directory` is systemd's `$STATE_DIRECTORY`, passed in so this stays pure.
    pub fn load(args: &Args, state_directory: Option<&Path>) -> Result<Self, ConfigError> {
        let (file, app_keys) = match &args.config {
            Some(path) => Args::from_file(path)?,
            None => (Args::default(), Vec::new()),
        };
        let mut config = Self::from_args(args.clone().or(file), state_directory)?;
        config.app_keys = app_keys;
        Ok(config)
    }

    /// Names of the settings that differ between `self` and `new` but only take effect after a
    /// full restart (they are bound or loaded once by the master).
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        new.cluster.clone().keep_restart_only(&self.cluster).1
    }
}

impl ClusterConfig {
    /// These settings with the restart-only ones (bound or resolved once at start: addresses,
    /// sockets, users, the control socket, `--max-workers`, which sized the scoreboard) taken
    /// from `running`, and the names of those that differed. The one list of them.
    pub fn keep_restart_only(
        mut self,
        running: &ClusterConfig,
    ) -> (ClusterConfig, Vec<&'static str>) {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($field:ident => $name:literal),* $(,)?) => {$(
                if self.$field != running.$field {
                    changed.push($name);
                    self.$field = running.$field.clone();
                }
            )*};
        }
        keep!(
            bind => "bind",
            backlog => "backlog",
            sockets => "sockets",
            user => "user",
            group => "group",
            control_socket => "control-socket",
            data_dir => "data-dir",
            metrics_bind => "metrics-bind",
            max_workers => "max-workers",
            proxy_protocol => "proxy-protocol",
        );
        (self, changed)
    }
}

#[cfg(test)]
mod tests;
