//! Plain configuration data: command line, environment and an optional TOML file, merged and
//! validated. Runs in the master only (at start and on SIGHUP); nothing here has side effects
//! beyond reading the config file.
//!
//! Precedence, highest first: command-line flag, environment variable, config file, default.
//! On SIGHUP the master re-reads the file and merges it again under the same flags, so a flag
//! given at start keeps winning over the file (as it did at start).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use serde::Deserialize;

use crate::socket::SocketMode;

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
    /// A value is syntactically fine but not allowed.
    #[error("invalid value for {option}: {message}")]
    Invalid {
        /// The option's name as the user writes it (`--workers`).
        option: &'static str,
        /// Why it is rejected.
        message: String,
    },
}

/// The command line. Every option can also come from the environment variable named in `--help`
/// and from the config file under the same name without the dashes in front.
#[derive(Debug, Clone, Parser)]
#[command(name = "clusterd", version, about, long_about = None)]
pub struct Cli {
    /// A subcommand; without one, clusterd runs the service.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How log lines look: plain (for people, also in the journal) or json (one object a line, for log shippers); flag or variable only, since logging starts before the config file is read [default: plain]
    #[arg(long, env = "CLUSTERD_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = crate::log::Format::Plain, hide_default_value = true)]
    pub log_format: crate::log::Format,
    /// Check the configuration (options, config file, users file, key file, --user) and exit:
    /// 0 if clusterd can start with it, 2 and the reason if not. Binds nothing, writes nothing.
    #[arg(long)]
    pub check_config: bool,
    /// Service options.
    #[command(flatten)]
    pub args: Args,
}

/// Subcommands that do something else than serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Read a password from standard input and print its argon2 hash for a users file.
    HashPassword,
    /// Show the master and every worker (slot, pid, state, uptime, restarts, connections,
    /// requests, memory, heartbeat age)
    Status {
        /// Print the JSON document instead of the table
        #[arg(long)]
        json: bool,
        /// The master's control socket [default: as the service would choose, else /run/clusterd/control.sock]
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
    },
    /// Set the number of workers (up to --max-workers), as TTIN/TTOU do one at a time
    Scale {
        /// Workers wanted
        workers: usize,
        /// The master's control socket
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
    },
    /// Reload: re-read the config and replace the workers (and the master, if its binary changed), as SIGHUP does
    Reload {
        /// The master's control socket
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
    },
}

/// Options of the service. `None` means "not given": the file or the default decides.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct Args {
    /// Address to listen on, IPv4 or [IPv6]:port [default: 127.0.0.1:8080]
    #[arg(long, env = "CLUSTERD_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Worker processes [default: CPUs available to the process]
    #[arg(long, env = "CLUSTERD_WORKERS", value_name = "N", value_parser = parse_nonzero)]
    pub workers: Option<NonZeroUsize>,
    /// Request-handling threads in each worker [default: 1]
    #[arg(long, env = "CLUSTERD_THREADS", value_name = "N", value_parser = parse_nonzero)]
    pub threads: Option<NonZeroUsize>,
    /// Seconds a stopping worker may spend finishing requests before it is killed [default: 30]
    #[arg(long, env = "CLUSTERD_GRACEFUL_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub graceful_timeout: Option<u64>,
    /// Seconds a client has to send a whole request, head and body, before it gets 408 or is cut off [default: 10]
    #[arg(long, env = "CLUSTERD_READ_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub read_timeout: Option<u64>,
    /// Listening sockets: per-worker (SO_REUSEPORT, kernel-balanced), shared, or per-worker-port (port + slot) [default: per-worker]
    #[arg(long, env = "CLUSTERD_SOCKETS", value_name = "MODE")]
    pub sockets: Option<SocketMode>,
    /// Length of the listening socket's accept queue [default: 1024]
    #[arg(long, env = "CLUSTERD_BACKLOG", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub backlog: Option<u32>,
    /// TOML file with any of these options (kebab-case keys); re-read on SIGHUP
    #[arg(long, env = "CLUSTERD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Redis URL for sessions: redis://, rediss://, redis+sentinel://host:port,.../SERVICE[/DB] or redis+cluster://host:port,...; without it sessions use the embedded store
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys that hold sessions [default: clusterd:session:]
    #[arg(long, env = "CLUSTERD_SESSION_PREFIX", value_name = "PREFIX")]
    pub session_prefix: Option<String>,
    /// Directory for the embedded session store and a generated key [default: $STATE_DIRECTORY, else ./clusterd-data]
    #[arg(long, env = "CLUSTERD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the cookie key (64 bytes or more), shared by every host [default: generated in the data dir]
    #[arg(long, env = "CLUSTERD_SESSION_KEY_FILE", value_name = "FILE")]
    pub session_key_file: Option<PathBuf>,
    /// Mark the session cookie Secure (only sent over HTTPS, and to localhost) [default: true]
    #[arg(long, env = "CLUSTERD_COOKIE_SECURE", value_name = "BOOL")]
    pub cookie_secure: Option<bool>,
    /// Name of the session cookie [default: clusterd_session]
    #[arg(long, env = "CLUSTERD_COOKIE_NAME", value_name = "NAME")]
    pub cookie_name: Option<String>,
    /// Seconds a session lives without being used; every use renews it [default: 1800]
    #[arg(long, env = "CLUSTERD_SESSION_IDLE_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub session_idle_timeout: Option<u64>,
    /// Seconds after login when a session ends however much it is used [default: 86400]
    #[arg(long, env = "CLUSTERD_SESSION_MAX_LIFETIME", value_name = "SECS", value_parser = parse_secs)]
    pub session_max_lifetime: Option<u64>,
    /// Users file: one `name:argon2-hash` per line [default: the demo user alice / wonderland]
    #[arg(long, env = "CLUSTERD_USERS", value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// When started as root: user the workers run as
    #[arg(long, env = "CLUSTERD_USER", value_name = "USER")]
    pub user: Option<String>,
    /// When started as root: group the workers run as [default: the user's group]
    #[arg(long, env = "CLUSTERD_GROUP", value_name = "GROUP")]
    pub group: Option<String>,
    /// Durable logins: a new session must reach this many Redis replicas (WAIT, 300 ms) before the login answers, else 503; not with redis+cluster [default: 0]
    #[arg(long, env = "CLUSTERD_REDIS_WAIT_REPLICAS", value_name = "N")]
    pub redis_wait_replicas: Option<u32>,
    /// Unix socket of the master for `clusterd status|scale|reload` (mode 0600) [default: $RUNTIME_DIRECTORY/control.sock, else control.sock in the data dir]
    #[arg(long, env = "CLUSTERD_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics (and the dashboard at /) on this address, from the workers [default: off]
    #[arg(long, env = "CLUSTERD_METRICS_BIND", value_name = "ADDR")]
    pub metrics_bind: Option<SocketAddr>,
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
    /// Most workers TTIN or `clusterd scale` may ask for [default: 4 per CPU, at least 16]
    #[arg(long, env = "CLUSTERD_MAX_WORKERS", value_name = "N", value_parser = parse_nonzero)]
    pub max_workers: Option<NonZeroUsize>,
}

fn parse_nonzero(s: &str) -> Result<NonZeroUsize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n > 1024 => Err("must be at most 1024".into()),
        Ok(n) => Ok(NonZeroUsize::new(n).expect("checked above")),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_secs(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".into()),
        Ok(n) if n > 365 * 24 * 3600 => Err("must be at most a year".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The config file's shape: the same options, kebab-case, all optional. Unknown keys are errors
/// so that a typo does not silently keep a default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileArgs {
    redis_wait_replicas: Option<u32>,
    control_socket: Option<PathBuf>,
    metrics_bind: Option<String>,
    worker_timeout: Option<u64>,
    max_requests: Option<u64>,
    max_requests_jitter: Option<u64>,
    max_worker_memory: Option<u64>,
    max_workers: Option<usize>,
    bind: Option<String>,
    workers: Option<usize>,
    threads: Option<usize>,
    graceful_timeout: Option<u64>,
    read_timeout: Option<u64>,
    sockets: Option<String>,
    backlog: Option<u32>,
    redis_url: Option<String>,
    session_prefix: Option<String>,
    data_dir: Option<PathBuf>,
    session_key_file: Option<PathBuf>,
    cookie_secure: Option<bool>,
    cookie_name: Option<String>,
    session_idle_timeout: Option<u64>,
    session_max_lifetime: Option<u64>,
    users: Option<PathBuf>,
    user: Option<String>,
    group: Option<String>,
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
}

/// The default `--max-workers`: 4 per CPU, at least 16.
fn default_max_workers() -> usize {
    (4 * std::thread::available_parallelism().map_or(1, NonZeroUsize::get)).max(16)
}

impl Default for ClusterConfig {
    /// Loopback on port 8080, one worker per available CPU, one thread each, 30 s graceful
    /// timeout: what the binary uses when nothing is configured.
    fn default() -> Self {
        ClusterConfig {
            bind: DEFAULT_BIND.parse().expect("default address parses"),
            workers: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            threads: 1,
            graceful_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
            sockets: SocketMode::default(),
            backlog: 1024,
            user: None,
            group: None,
            control_socket: None,
            metrics_bind: None,
            worker_timeout: Duration::from_secs(30),
            max_requests: 0,
            max_requests_jitter: 0,
            max_worker_memory: 0,
            max_workers: default_max_workers(),
        }
    }
}

/// Settings of the demo app's sessions and logins; read by the master, used by the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Redis URL; `None` selects the embedded SQLite store.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key clusterd writes.
    pub prefix: String,
    /// Directory of the embedded store and of a generated cookie key.
    pub data_dir: PathBuf,
    /// Cookie key file; `None` means generate one in `data_dir` on first start.
    pub key_file: Option<PathBuf>,
    /// Whether the cookie carries the `Secure` attribute.
    pub cookie_secure: bool,
    /// Cookie name.
    pub cookie_name: String,
    /// Idle timeout, renewed on every use; also the store's TTL.
    pub idle_timeout: Duration,
    /// Absolute lifetime counted from login.
    pub max_lifetime: Duration,
    /// Users file; `None` means the demo user.
    pub users_file: Option<PathBuf>,
    /// Replicas a new session must reach before a login answers (Redis `WAIT`); 0: none.
    pub wait_replicas: u32,
}

/// Everything the binary needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Process-model settings.
    pub cluster: ClusterConfig,
    /// Session and login settings.
    pub session: SessionConfig,
    /// The config file, if any (kept so SIGHUP can re-read it).
    pub file: Option<PathBuf>,
}

/// Default listening address: loopback only, so a first run exposes nothing.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Default Redis key prefix.
pub const DEFAULT_SESSION_PREFIX: &str = "clusterd:session:";
/// Default cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "clusterd_session";

impl Config {
    /// Merges flags and environment (`args`) over the config file over the defaults.
    /// `state_directory` is systemd's `$STATE_DIRECTORY`, passed in so this stays pure.
    pub fn load(args: &Args, state_directory: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileArgs::default(),
        };
        Self::merge(args, file, state_directory)
    }

    fn merge(
        args: &Args,
        file: FileArgs,
        state_directory: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let bind = match (args.bind, file.bind) {
            (Some(addr), _) => addr,
            (None, Some(s)) => s
                .parse()
                .map_err(|e| invalid("bind", format!("{s:?}: {e}")))?,
            (None, None) => DEFAULT_BIND.parse().expect("default address parses"),
        };
        let workers = match (args.workers, file.workers) {
            (Some(n), _) => n.get(),
            (None, Some(n)) => check_count("workers", n)?,
            (None, None) => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        let threads = match (args.threads, file.threads) {
            (Some(n), _) => n.get(),
            (None, Some(n)) => check_count("threads", n)?,
            (None, None) => 1,
        };
        let graceful = pick_secs(
            "graceful-timeout",
            args.graceful_timeout,
            file.graceful_timeout,
            30,
        )?;
        let read_timeout = pick_secs("read-timeout", args.read_timeout, file.read_timeout, 10)?;
        let sockets = match (args.sockets, file.sockets) {
            (Some(m), _) => m,
            (None, Some(s)) => s.parse().map_err(|e| invalid("sockets", e))?,
            (None, None) => SocketMode::default(),
        };
        let backlog = args.backlog.or(file.backlog).unwrap_or(1024);
        if !(1..=65535).contains(&backlog) {
            return Err(invalid("backlog", "must be between 1 and 65535".into()));
        }
        let idle = pick_secs(
            "session-idle-timeout",
            args.session_idle_timeout,
            file.session_idle_timeout,
            1800,
        )?;
        let max = pick_secs(
            "session-max-lifetime",
            args.session_max_lifetime,
            file.session_max_lifetime,
            86_400,
        )?;
        if max < idle {
            return Err(invalid(
                "session-max-lifetime",
                format!("{max}s is shorter than the idle timeout ({idle}s)"),
            ));
        }
        let cookie_name = args
            .cookie_name
            .clone()
            .or(file.cookie_name)
            .unwrap_or_else(|| DEFAULT_COOKIE_NAME.into());
        if cookie_name.is_empty()
            || !cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "cookie-name",
                "use letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let redis_url = args
            .redis_url
            .clone()
            .or(file.redis_url)
            .filter(|u| !u.is_empty());
        if let Some(url) = &redis_url
            && ![
                "redis://",
                "rediss://",
                "redis+sentinel://",
                "rediss+sentinel://",
                "redis+cluster://",
                "rediss+cluster://",
            ]
            .iter()
            .any(|s| url.starts_with(s))
        {
            return Err(invalid(
                "redis-url",
                "must start with redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"
                    .into(),
            ));
        }
        let wait_replicas = args
            .redis_wait_replicas
            .or(file.redis_wait_replicas)
            .unwrap_or(0);
        if wait_replicas > 0 {
            match &redis_url {
                None => {
                    return Err(invalid(
                        "redis-wait-replicas",
                        "needs --redis-url (the embedded store has no replicas)".into(),
                    ));
                }
                Some(u) if u.contains("+cluster://") => {
                    return Err(invalid(
                        "redis-wait-replicas",
                        "is not supported with redis+cluster://".into(),
                    ));
                }
                Some(_) => {}
            }
        }
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .or_else(|| state_directory.map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("clusterd-data"));
        let group = args.group.clone().or(file.group);
        let user = args.user.clone().or(file.user);
        if group.is_some() && user.is_none() {
            return Err(invalid("group", "needs --user as well".into()));
        }
        let metrics_bind = match (args.metrics_bind, file.metrics_bind) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => Some(
                s.parse()
                    .map_err(|e| invalid("metrics-bind", format!("{s:?}: {e}")))?,
            ),
            (None, None) => None,
        };
        if metrics_bind.is_some_and(|m| m.port() != 0 && m == bind) {
            return Err(invalid(
                "metrics-bind",
                "must not be the public --bind address".into(),
            ));
        }
        let worker_timeout = pick_secs(
            "worker-timeout",
            args.worker_timeout,
            file.worker_timeout,
            30,
        )?;
        let max_workers = match (args.max_workers, file.max_workers) {
            (Some(n), _) => n.get(),
            (None, Some(n)) => check_count("max-workers", n)?,
            (None, None) => default_max_workers(),
        };
        if workers > max_workers {
            return Err(invalid(
                "workers",
                format!("{workers} is more than --max-workers ({max_workers})"),
            ));
        }
        Ok(Config {
            cluster: ClusterConfig {
                bind,
                workers,
                threads,
                graceful_timeout: Duration::from_secs(graceful),
                read_timeout: Duration::from_secs(read_timeout),
                sockets,
                backlog,
                user,
                group,
                control_socket: args.control_socket.clone().or(file.control_socket),
                metrics_bind,
                worker_timeout: Duration::from_secs(worker_timeout),
                max_requests: args.max_requests.or(file.max_requests).unwrap_or(0),
                max_requests_jitter: args
                    .max_requests_jitter
                    .or(file.max_requests_jitter)
                    .unwrap_or(0),
                max_worker_memory: args
                    .max_worker_memory
                    .or(file.max_worker_memory)
                    .unwrap_or(0)
                    .saturating_mul(1 << 20),
                max_workers,
            },
            session: SessionConfig {
                redis_url,
                prefix: args
                    .session_prefix
                    .clone()
                    .or(file.session_prefix)
                    .unwrap_or_else(|| DEFAULT_SESSION_PREFIX.into()),
                data_dir,
                key_file: args.session_key_file.clone().or(file.session_key_file),
                cookie_secure: args.cookie_secure.or(file.cookie_secure).unwrap_or(true),
                cookie_name,
                idle_timeout: Duration::from_secs(idle),
                max_lifetime: Duration::from_secs(max),
                users_file: args.users.clone().or(file.users),
                wait_replicas,
            },
            file: args.config.clone(),
        })
    }

    /// Names of the settings that differ between `self` and `new` but only take effect after a
    /// full restart (they are bound or loaded once by the master).
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.cluster, &new.cluster);
        let mut out = Vec::new();
        if a.bind != b.bind {
            out.push("bind");
        }
        if a.backlog != b.backlog {
            out.push("backlog");
        }
        if a.sockets != b.sockets {
            out.push("sockets");
        }
        if a.user != b.user || a.group != b.group {
            out.push("user/group");
        }
        if a.control_socket != b.control_socket {
            out.push("control-socket");
        }
        if a.metrics_bind != b.metrics_bind {
            out.push("metrics-bind");
        }
        if a.max_workers != b.max_workers {
            out.push("max-workers");
        }
        if self.session != new.session {
            out.push("session settings");
        }
        out
    }
}

fn read_file(path: &Path) -> Result<FileArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string()
            + &e.span()
                .map_or(String::new(), |s| format!(" (at byte {})", s.start)),
    })
}

fn invalid(option: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { option, message }
}

fn check_count(option: &'static str, n: usize) -> Result<usize, ConfigError> {
    parse_nonzero(&n.to_string())
        .map(NonZeroUsize::get)
        .map_err(|m| invalid(option, m))
}

fn pick_secs(
    option: &'static str,
    flag: Option<u64>,
    file: Option<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    match (flag, file) {
        (Some(n), _) => Ok(n),
        (None, Some(n)) => parse_secs(&n.to_string()).map_err(|m| invalid(option, m)),
        (None, None) => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileArgs {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let c = Config::merge(&Args::default(), FileArgs::default(), None).unwrap();
        assert_eq!(c.cluster.bind.to_string(), DEFAULT_BIND);
        assert!(c.cluster.workers >= 1);
        assert_eq!(c.cluster.threads, 1);
        assert_eq!(c.cluster.graceful_timeout, Duration::from_secs(30));
        assert_eq!(c.session.data_dir, PathBuf::from("clusterd-data"));
        assert!(c.session.cookie_secure);
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let args = Args {
            workers: NonZeroUsize::new(3),
            ..Args::default()
        };
        let c = Config::merge(
            &args,
            file("workers = 5\nthreads = 2\nbind = \"[::1]:9000\""),
            None,
        )
        .unwrap();
        assert_eq!(c.cluster.workers, 3);
        assert_eq!(c.cluster.threads, 2);
        assert_eq!(c.cluster.bind, "[::1]:9000".parse().unwrap());
    }

    #[test]
    fn state_directory_is_the_default_data_dir() {
        let c = Config::merge(
            &Args::default(),
            FileArgs::default(),
            Some(Path::new("/var/lib/x")),
        )
        .unwrap();
        assert_eq!(c.session.data_dir, PathBuf::from("/var/lib/x"));
    }

    #[test]
    fn bad_file_values_name_the_option() {
        let err = Config::merge(&Args::default(), file("workers = 0"), None).unwrap_err();
        assert!(err.to_string().contains("workers"), "{err}");
        let err = Config::merge(&Args::default(), file("bind = \"nowhere\""), None).unwrap_err();
        assert!(err.to_string().contains("bind"), "{err}");
        let err =
            Config::merge(&Args::default(), file("redis-url = \"http://x\""), None).unwrap_err();
        assert!(err.to_string().contains("redis-url"), "{err}");
        let err = Config::merge(
            &Args::default(),
            file("session-idle-timeout = 600\nsession-max-lifetime = 60"),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("session-max-lifetime"), "{err}");
    }

    #[test]
    fn sockets_come_from_flag_file_or_default_and_need_a_restart() {
        let c = Config::merge(&Args::default(), FileArgs::default(), None).unwrap();
        assert_eq!(c.cluster.sockets, SocketMode::PerWorker);
        let f = Config::merge(&Args::default(), file("sockets = \"shared\""), None).unwrap();
        assert_eq!(f.cluster.sockets, SocketMode::Shared);
        let args = Args {
            sockets: Some(SocketMode::PerWorkerPort),
            ..Args::default()
        };
        let a = Config::merge(&args, file("sockets = \"shared\""), None).unwrap();
        assert_eq!(
            a.cluster.sockets,
            SocketMode::PerWorkerPort,
            "the flag wins"
        );
        let err = Config::merge(&Args::default(), file("sockets = \"many\""), None).unwrap_err();
        assert!(err.to_string().contains("sockets"), "{err}");
        assert_eq!(c.needs_restart(&f), vec!["sockets"]);
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<FileArgs>("wokers = 2").is_err());
    }

    #[test]
    fn restart_only_settings_are_reported() {
        let a = Config::merge(&Args::default(), FileArgs::default(), None).unwrap();
        let mut b = a.clone();
        b.cluster.workers += 1;
        b.cluster.graceful_timeout = Duration::from_secs(5);
        assert!(a.needs_restart(&b).is_empty());
        b.cluster.bind = "127.0.0.1:1".parse().unwrap();
        b.session.cookie_name = "other".into();
        assert_eq!(a.needs_restart(&b), vec!["bind", "session settings"]);
    }
}
