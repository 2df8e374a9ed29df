//! The service's options, declared once: one struct is the command line (clap, with the
//! environment variable of each option), and the config file (serde, the same names in
//! kebab-case). Runs in the master (at start and on SIGHUP) and in the CLI.
//!
//! Values are only parsed here; ranges and combinations are checked once, on the merged
//! options, in `validate.rs` (so a value from the file gets the same checks as a flag).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use serde::Deserialize;

use super::ConfigError;
use crate::socket::{Balance, SocketMode};

/// Declares the options struct and its merge, so a new option is written in one place.
macro_rules! options {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : Option<$ty:ty>, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: Option<$ty>, )*
        }

        impl $name {
            /// The config file's keys for these options (kebab-case), `config` excepted.
            pub fn keys() -> Vec<String> {
                [$(stringify!($field)),*]
                    .iter()
                    .filter(|k| **k != "config")
                    .map(|k| k.replace('_', "-"))
                    .collect()
            }

            /// Each option given here, else the one in `lower` (flags over the file).
            pub fn or(self, lower: $name) -> $name {
                $name { $( $field: self.$field.or(lower.$field), )* }
            }
        }
    };
}

options! {
    /// Options of the service, declared once for the command line, the environment and the
    /// config file. `None` means "not given": a lower source or the default decides.
    #[derive(Debug, Clone, Default, PartialEq, ClapArgs, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub struct Args {
        /// Address to listen on, IPv4:port, or an IPv6 address in brackets and a port [default: 127.0.0.1:8080]
        #[arg(long, env = "CLUSTERD_BIND", value_name = "ADDR")]
        pub bind: Option<SocketAddr>,
        /// Worker processes [default: CPUs available to the process]
        #[arg(long, env = "CLUSTERD_WORKERS", value_name = "N", value_parser = parse_count)]
        pub workers: Option<usize>,
        /// Request-handling threads in each worker [default: 1]
        #[arg(long, env = "CLUSTERD_THREADS", value_name = "N", value_parser = parse_count)]
        pub threads: Option<usize>,
        /// Seconds a stopping worker may spend finishing requests before it is killed [default: 30]
        #[arg(long, env = "CLUSTERD_GRACEFUL_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
        pub graceful_timeout: Option<u64>,
        /// Seconds a client has to send a whole request, head and body, before it gets 408 or is cut off [default: 10]
        #[arg(long, env = "CLUSTERD_READ_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
        pub read_timeout: Option<u64>,
        /// Listening sockets: per-worker (SO_REUSEPORT, kernel-balanced), shared, or per-worker-port (port + slot) [default: per-worker]
        #[arg(long, env = "CLUSTERD_SOCKETS", value_name = "MODE")]
        pub sockets: Option<SocketMode>,
        /// How per-worker sockets share new connections: load (away from a worker that is stopped, stalled or backlogged, sampled every 50 ms) or hash (the connection's hash over every worker) [default: load]
        #[arg(long, env = "CLUSTERD_BALANCE", value_name = "MODE")]
        pub balance: Option<Balance>,
        /// Length of the listening socket's accept queue [default: 1024]
        #[arg(long, env = "CLUSTERD_BACKLOG", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535))]
        pub backlog: Option<u32>,
        /// TOML file with any of these options (kebab-case keys); re-read on SIGHUP
        #[arg(long, env = "CLUSTERD_CONFIG", value_name = "FILE")]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// Directory for the app's state (the demo's embedded session store and generated key) and, when not root, the control socket [default: $STATE_DIRECTORY, else ./clusterd-data]
        #[arg(long, env = "CLUSTERD_DATA_DIR", value_name = "DIR")]
        pub data_dir: Option<PathBuf>,
        /// When started as root: user the workers run as
        #[arg(long, env = "CLUSTERD_USER", value_name = "USER")]
        pub user: Option<String>,
        /// When started as root: group the workers run as [default: the user's group]
        #[arg(long, env = "CLUSTERD_GROUP", value_name = "GROUP")]
        pub group: Option<String>,
        /// Unix socket of the master for the `status`, `scale` and `reload` subcommands (mode 0600) [default: $RUNTIME_DIRECTORY/control.sock, else for root /run/clusterd/control-HASH.sock (HASH: of the data dir), else control.sock in the data dir]
        #[arg(long, env = "CLUSTERD_CONTROL_SOCKET", value_name = "PATH")]
        pub control_socket: Option<PathBuf>,
        /// Serve Prometheus metrics at /metrics (and the dashboard at /) on this address, from the workers [default: off]
        #[arg(long, env = "CLUSTERD_METRICS_BIND", value_name = "ADDR")]
        pub metrics_bind: Option<SocketAddr>,
        /// Every connection starts with a PROXY protocol header (v1 or v2) naming the client, as nginx stream's `proxy_protocol on` or HAProxy's `send-proxy-v2` send; one without a valid header is closed unanswered [default: false]
        #[arg(long, env = "CLUSTERD_PROXY_PROTOCOL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub proxy_protocol: Option<bool>,
        /// Proxies whose X-Forwarded-For names the client, comma-separated CIDRs (e.g. 127.0.0.1/32,10.0.0.0/8): from one of them the client is the rightmost address in that header that is not itself a trusted proxy; from anyone else, the connection's peer [default: none]
        #[arg(long, env = "CLUSTERD_TRUSTED_PROXIES", value_name = "CIDR,...")]
        pub trusted_proxies: Option<String>,
        /// Host names the metrics server answers to besides its own address and localhost, comma-separated (for a Prometheus that scrapes by DNS name); any other Host gets 421 [default: none]
        #[arg(long, env = "CLUSTERD_METRICS_ALLOWED_HOSTS", value_name = "NAME,...")]
        pub metrics_allowed_hosts: Option<String>,
        /// Seconds without a heartbeat from a worker's thread before it counts as hung and is replaced (SIGABRT, then SIGKILL) [default: 30]
        #[arg(long, env = "CLUSTERD_WORKER_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
        pub worker_timeout: Option<u64>,
        /// Replace a worker after it answered this many requests, like a rolling restart; 0 = never [default: 0]
        #[arg(long, env = "CLUSTERD_MAX_REQUESTS", value_name = "N")]
        pub max_requests: Option<u64>,
        /// Add a random 0..=J to each worker's --max-requests, so workers are not recycled together [default: 0]
        #[arg(long, env = "CLUSTERD_MAX_REQUESTS_JITTER", value_name = "J")]
        pub max_requests_jitter: Option<u64>,
        /// Replace a worker whose resident memory stays above this many MiB for 3 samples (a second apart); 0 = never [default: 0]
        #[arg(long, env = "CLUSTERD_MAX_WORKER_MEMORY", value_name = "MIB")]
        pub max_worker_memory: Option<u64>,
        /// Path of the health route every worker answers, before the app's routes (`off`: none) [default: /healthz]
        #[arg(long, env = "CLUSTERD_HEALTH_PATH", value_name = "PATH")]
        pub health_path: Option<String>,
        /// One line per request in the log stream (client, method, path, status, bytes, duration, worker; a JSON object each with --log-format json), written off the server thread [default: false]
        #[arg(long, env = "CLUSTERD_ACCESS_LOG", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        pub access_log: Option<bool>,
        /// Most workers TTIN or the `scale` subcommand may ask for [default: 4 per CPU, at least 16]
        #[arg(long, env = "CLUSTERD_MAX_WORKERS", value_name = "N", value_parser = parse_count)]
        pub max_workers: Option<usize>,
    }
}

/// A count of workers or threads (checked again, with the same words, in `validate.rs`).
pub(super) fn parse_count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e: std::num::ParseIntError| e.to_string())?;
    super::validate::count(n)
}

/// A number of seconds (checked again in `validate.rs`).
pub(super) fn parse_secs(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|e: std::num::ParseIntError| e.to_string())?;
    super::validate::secs(n)
}

/// A key of the config file that is not one of clusterd's: the app's (see `crate::program`).
#[derive(Debug, Clone, PartialEq)]
pub struct FileKey {
    /// The key as written (kebab-case).
    pub key: String,
    /// Its value.
    pub value: toml::Value,
    /// Where it is, for messages: ` (line N: the line)`.
    pub at: String,
}

/// ` (line N: the line)` for the byte offset `start` of `text`.
fn line_at(text: &str, start: usize) -> String {
    let line = text[..start.min(text.len())].matches('\n').count();
    let shown = text.lines().nth(line).unwrap_or("").trim();
    format!(" (line {}: {shown})", line + 1)
}

impl Args {
    /// The options in a TOML file, and the keys that are not clusterd's (left for the app,
    /// which rejects those it does not know either). A bad value names the line it is on.
    pub fn from_file(path: &Path) -> Result<(Args, Vec<FileKey>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span().map_or(String::new(), |s| line_at(&text, s.start)),
        };
        // Spanned keys, so an unknown one can be shown where it is.
        let table: std::collections::BTreeMap<toml::Spanned<String>, toml::Value> =
            toml::from_str(&text).map_err(parse_error)?;
        let ours = Args::keys();
        let mut rest = Vec::new();
        for (key, value) in table {
            let at = line_at(&text, key.span().start);
            if key.get_ref() == "config" {
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: format!("`config` names the file; it cannot be set in it{at}"),
                });
            }
            if !ours.contains(key.get_ref()) {
                let key = key.into_inner();
                rest.push(FileKey { key, value, at });
            }
        }
        let args = toml::from_str(&text).map_err(parse_error)?;
        Ok((args, rest))
    }
}
