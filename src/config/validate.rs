//! From options to a validated [`Config`]: every default, range and combination, once, for
//! whatever source a value came from. Pure; runs in the master and the CLI.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Args, ClusterConfig, Config, ConfigError, DEFAULT_BIND};

/// A count of workers or threads: 1 to 1024.
pub(super) fn count(n: usize) -> Result<usize, String> {
    match n {
        0 => Err("must be at least 1".into()),
        n if n > 1024 => Err("must be at most 1024".into()),
        n => Ok(n),
    }
}

/// A number of seconds: 1 s to a year.
pub(super) fn secs(n: u64) -> Result<u64, String> {
    match n {
        0 => Err("must be at least 1 second".into()),
        n if n > 365 * 24 * 3600 => Err("must be at most a year".into()),
        n => Ok(n),
    }
}

/// The default `--max-workers`: 4 per CPU, at least 16.
pub(super) fn default_max_workers() -> usize {
    (4 * cpus()).max(16)
}

/// CPUs available to this process: the default `--workers`.
pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

fn invalid(option: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { option, message }
}

fn pick_count(
    option: &'static str,
    n: Option<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    n.map_or(Ok(default), |n| count(n).map_err(|m| invalid(option, m)))
}

fn pick_secs(option: &'static str, n: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    let n = n.map_or(Ok(default), |n| secs(n).map_err(|m| invalid(option, m)))?;
    Ok(Duration::from_secs(n))
}

/// `--trusted-proxies`: CIDRs, or single addresses (a /32 or /128).
fn proxies(list: Option<&str>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        "trusted-proxies",
                        format!("{s:?} is not an address or a CIDR"),
                    )
                })
        })
        .collect()
}

impl Config {
    /// The configuration the merged options describe. `state_directory` is systemd's
    /// `$STATE_DIRECTORY`, passed in so this stays pure.
    pub fn from_args(a: Args, state_directory: Option<&Path>) -> Result<Config, ConfigError> {
        let bind = a
            .bind
            .unwrap_or_else(|| DEFAULT_BIND.parse().expect("default address parses"));
        let workers = pick_count("workers", a.workers, cpus())?;
        let threads = pick_count("threads", a.threads, 1)?;
        let max_workers = pick_count("max-workers", a.max_workers, default_max_workers())?;
        if workers > max_workers {
            return Err(invalid(
                "workers",
                format!("{workers} is more than --max-workers ({max_workers})"),
            ));
        }
        let backlog = a.backlog.unwrap_or(1024);
        if !(1..=65535).contains(&backlog) {
            return Err(invalid("backlog", "must be between 1 and 65535".into()));
        }
        if a.group.is_some() && a.user.is_none() {
            return Err(invalid("group", "needs --user as well".into()));
        }
        if a.metrics_bind.is_some_and(|m| m.port() != 0 && m == bind) {
            return Err(invalid(
                "metrics-bind",
                "must not be the public --bind address".into(),
            ));
        }
        let health_path = match a.health_path.as_deref() {
            None => Some("/healthz".to_string()),
            Some("off") => None,
            Some(p) if p.starts_with('/') && !p.contains(['?', '#', ' ']) => Some(p.to_string()),
            Some(_) => {
                return Err(invalid(
                    "health-path",
                    "must start with '/' (and have no '?', '#' or space), or be off".into(),
                ));
            }
        };
        let data_dir = a
            .data_dir
            .or_else(|| state_directory.map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("clusterd-data"));
        Ok(Config {
            cluster: ClusterConfig {
                bind,
                workers,
                threads,
                graceful_timeout: pick_secs("graceful-timeout", a.graceful_timeout, 30)?,
                read_timeout: pick_secs("read-timeout", a.read_timeout, 10)?,
                sockets: a.sockets.unwrap_or_default(),
                balance: a.balance.unwrap_or_default(),
                backlog,
                user: a.user,
                group: a.group,
                control_socket: a.control_socket,
                metrics_bind: a.metrics_bind,
                trusted_proxies: proxies(a.trusted_proxies.as_deref())?,
                proxy_protocol: a.proxy_protocol.unwrap_or(false),
                metrics_allowed_hosts: a
                    .metrics_allowed_hosts
                    .unwrap_or_default()
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
                worker_timeout: pick_secs("worker-timeout", a.worker_timeout, 30)?,
                max_requests: a.max_requests.unwrap_or(0),
                max_requests_jitter: a.max_requests_jitter.unwrap_or(0),
                max_worker_memory: a.max_worker_memory.unwrap_or(0).saturating_mul(1 << 20),
                max_workers,
                data_dir,
                health_path,
                access_log: a.access_log.unwrap_or(false),
            },
            file: a.config,
            app_keys: Vec::new(),
        })
    }
}
