//! The demo app as a [`Service`]: its options (sessions, users), how the master builds it from
//! them, and its `hash-password` subcommand. The same extension points any app uses; runs in
//! the master (at start and on reload) and in `--check-config`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::DemoApp;
use super::users::{self, Users};
use crate::program::{EXIT_CONFIG, Service, Setup};
use crate::session::key::{self, KeyOrigin};
use crate::session::redis::RedisStore;
use crate::worker::BootError;

/// A number of seconds: 1 s to a year.
const SECS: std::ops::RangeInclusive<u64> = 1..=365 * 24 * 3600;

/// The demo's options: sessions and users.
#[derive(Debug, Clone, Args)]
pub struct DemoOptions {
    /// Redis URL for sessions: redis://, rediss://, redis+sentinel://host:port,.../SERVICE[/DB] or redis+cluster://host:port,...; without it sessions use the embedded store
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys that hold sessions
    #[arg(
        long,
        env = "CLUSTERD_SESSION_PREFIX",
        value_name = "PREFIX",
        default_value = "clusterd:session:"
    )]
    pub session_prefix: String,
    /// File holding the cookie key (64 bytes or more), shared by every host [default: generated in the data dir]
    #[arg(long, env = "CLUSTERD_SESSION_KEY_FILE", value_name = "FILE")]
    pub session_key_file: Option<PathBuf>,
    /// Mark the session cookie Secure (only sent over HTTPS, and to localhost)
    #[arg(long, env = "CLUSTERD_COOKIE_SECURE", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,
    /// Name of the session cookie
    #[arg(long, env = "CLUSTERD_COOKIE_NAME", value_name = "NAME", default_value = "clusterd_session", value_parser = cookie_name)]
    pub cookie_name: String,
    /// Seconds a session lives without being used; every use renews it
    #[arg(long, env = "CLUSTERD_SESSION_IDLE_TIMEOUT", value_name = "SECS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(SECS))]
    pub session_idle_timeout: u64,
    /// Seconds after login when a session ends however much it is used
    #[arg(long, env = "CLUSTERD_SESSION_MAX_LIFETIME", value_name = "SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(SECS))]
    pub session_max_lifetime: u64,
    /// Users file: one `name:argon2-hash` per line [default: the demo user alice / wonderland]
    #[arg(long, env = "CLUSTERD_USERS", value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Durable logins: a new session must reach this many Redis replicas (WAIT, 300 ms) before the login answers, else 503; not with redis+cluster
    #[arg(
        long,
        env = "CLUSTERD_REDIS_WAIT_REPLICAS",
        value_name = "N",
        default_value_t = 0
    )]
    pub redis_wait_replicas: u32,
    /// Sessions each worker keeps in memory (least recently used out first), invalidated by the store; 0 turns the cache off
    #[arg(
        long,
        env = "CLUSTERD_SESSION_CACHE_SIZE",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub session_cache_size: usize,
}

fn cookie_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then(|| s.to_string())
        .ok_or_else(|| "use letters, digits, '-', '_' or '.'".into())
}

const REDIS_SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
];

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
    /// Idle timeout, renewed on every use: the TTL the session middleware hands the store.
    pub idle_timeout: Duration,
    /// Absolute lifetime counted from login.
    pub max_lifetime: Duration,
    /// Users file; `None` means the demo user.
    pub users_file: Option<PathBuf>,
    /// Replicas a new session must reach before a login answers (Redis `WAIT`); 0: none.
    pub wait_replicas: u32,
    /// Sessions each worker caches (split among its threads); 0: none.
    pub cache_size: usize,
}

impl SessionConfig {
    /// The settings `o` describe, with the data dir clusterd chose; the combinations checked.
    pub fn new(o: DemoOptions, data_dir: PathBuf) -> Result<Self, BootError> {
        let invalid = |option: &str, why: String| {
            BootError::Config(format!("invalid value for {option}: {why}"))
        };
        if o.session_max_lifetime < o.session_idle_timeout {
            return Err(invalid(
                "session-max-lifetime",
                format!(
                    "{}s is shorter than the idle timeout ({}s)",
                    o.session_max_lifetime, o.session_idle_timeout
                ),
            ));
        }
        let redis_url = o.redis_url.filter(|u| !u.is_empty());
        if let Some(url) = &redis_url
            && !REDIS_SCHEMES.iter().any(|s| url.starts_with(s))
        {
            return Err(invalid(
                "redis-url",
                format!("must start with {}", REDIS_SCHEMES.join(", ")),
            ));
        }
        if o.redis_wait_replicas > 0 {
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
        Ok(SessionConfig {
            redis_url,
            prefix: o.session_prefix,
            data_dir,
            key_file: o.session_key_file,
            cookie_secure: o.cookie_secure,
            cookie_name: o.cookie_name,
            idle_timeout: Duration::from_secs(o.session_idle_timeout),
            max_lifetime: Duration::from_secs(o.session_max_lifetime),
            users_file: o.users,
            wait_replicas: o.redis_wait_replicas,
            cache_size: o.session_cache_size,
        })
    }
}

fn config<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BootError {
    move |e| BootError::Config(format!("{what}: {e}"))
}

impl Service for DemoApp {
    type Options = DemoOptions;
    const NAME: &'static str = "clusterd";

    fn build(options: DemoOptions, setup: &Setup<'_>) -> Result<Self, BootError> {
        let session = SessionConfig::new(options, setup.cluster.data_dir.clone())?;
        // Files that are only read come first, so a bad one changes nothing.
        let users = Users::load(session.users_file.as_deref()).map_err(config("loading users"))?;
        let embedded = session.redis_url.is_none();
        key::prepare_data_dir(&session.data_dir, setup.credentials, embedded)
            .map_err(config("preparing the data dir"))?;
        let (cookie_key, origin) = key::load(session.key_file.as_deref(), &session.data_dir)
            .map_err(config("loading the cookie key"))?;
        match &origin {
            KeyOrigin::Configured(p) => tracing::info!(path = %p.display(), "cookie key loaded"),
            KeyOrigin::Kept(p) | KeyOrigin::Generated(p) => tracing::warn!(
                path = %p.display(),
                generated_now = matches!(origin, KeyOrigin::Generated(_)),
                "using a generated cookie key; hosts that share sessions must share one key: copy it and pass --session-key-file"
            ),
        }
        if users.is_demo() {
            tracing::warn!(
                "no --users file: the demo user alice / wonderland can log in; do not run like this in production"
            );
        }
        let store = match &session.redis_url {
            Some(url) => format!(
                "redis {} (prefix {})",
                RedisStore::describe(url),
                session.prefix
            ),
            None => format!("embedded sqlite in {}", session.data_dir.display()),
        };
        tracing::info!(store = %store, "session store");
        super::metrics::register();
        // About one hashing thread per CPU across the cluster: argon2 takes a CPU and ~19 MiB each.
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Ok(DemoApp {
            session,
            key: cookie_key,
            users: Arc::new(users),
            hash_threads: cpus.div_ceil(setup.cluster.workers).max(1),
        })
    }

    fn check(options: DemoOptions, setup: &Setup<'_>) -> Result<(), BootError> {
        let session = SessionConfig::new(options, setup.cluster.data_dir.clone())?;
        Users::load(session.users_file.as_deref()).map_err(config("loading users"))?;
        if let Some(path) = &session.key_file {
            key::load(Some(path), &session.data_dir).map_err(config("loading the cookie key"))?;
        }
        key::check_data_dir(
            &session.data_dir,
            session.key_file.as_deref(),
            session.redis_url.is_none(),
        )
        .map_err(config("checking the data dir"))
    }

    fn commands() -> Vec<clap::Command> {
        vec![clap::Command::new("hash-password").about(
            "Read a password from standard input and print its argon2 hash for a users file",
        )]
    }

    fn run_command(_name: &str, _matches: &clap::ArgMatches) -> ExitCode {
        hash_password()
    }
}

fn hash_password() -> ExitCode {
    let mut password = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut password) {
        eprintln!("clusterd: reading the password from stdin: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // One trailing newline is the terminal's, not the password's.
    let password = password.strip_suffix('\n').unwrap_or(&password);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("clusterd: empty password on stdin");
        return ExitCode::from(EXIT_CONFIG);
    }
    match users::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clusterd: hashing: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use clap::{Args as _, FromArgMatches};

    use super::*;

    /// The options parsed from `flags`, without the environment's.
    pub fn defaults(flags: &[&str]) -> DemoOptions {
        let cmd = DemoOptions::augment_args(clap::Command::new("t"));
        let cmd = cmd.mut_args(|a| a.env(None::<&str>));
        let m = cmd
            .try_get_matches_from(std::iter::once("t").chain(flags.iter().copied()))
            .unwrap();
        DemoOptions::from_arg_matches(&m).unwrap()
    }

    fn check(flags: &[&str]) -> Result<SessionConfig, String> {
        SessionConfig::new(defaults(flags), "d".into()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_demos_options_are_checked_together() {
        let c = check(&[]).unwrap();
        assert!(c.cookie_secure && c.redis_url.is_none());
        assert_eq!(c.idle_timeout, Duration::from_secs(1800));
        let err = check(&["--redis-url", "http://x"]).unwrap_err();
        assert!(err.contains("redis-url"), "{err}");
        let err = check(&[
            "--session-idle-timeout",
            "600",
            "--session-max-lifetime",
            "60",
        ])
        .unwrap_err();
        assert!(err.contains("session-max-lifetime"), "{err}");
        let err = check(&["--redis-wait-replicas", "1"]).unwrap_err();
        assert!(err.contains("needs --redis-url"), "{err}");
        assert!(check(&["--redis-url", "redis://h", "--redis-wait-replicas", "1"]).is_ok());
    }
}
