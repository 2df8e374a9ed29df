//! The `clusterd` binary: parse the command line, prepare what the workers share (config,
//! socket, cookie key, users), run the master with the demo app, map errors to exit codes.
//! Runs in the master; the workers are forks of this process and never return here.
//!
//! Exit codes: 0 stopped on request, 1 runtime failure (e.g. the port is taken), 2 invalid
//! configuration or command line, 4 a worker rejected the configuration.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use clusterd::app::DemoApp;
use clusterd::app::users::{self, Users};
use clusterd::config::{Cli, Command, Config};
use clusterd::master::upgrade::{self, Binary};
use clusterd::master::{self, Master, Reloaded};
use clusterd::session::key::{self, KeyOrigin};
use clusterd::session::redis::RedisStore;
use clusterd::{privileges, socket};

mod cli;

/// Exit code for configuration errors, the same clap uses for a bad flag.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Before anything rewrites argv (the process title): an upgrade re-executes with it.
    let binary = Binary::at_start();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and exit 0 as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line naming the option (clap's first), not its usage block.
            let text = e.render().to_string();
            eprintln!(
                "clusterd: {}",
                text.lines()
                    .next()
                    .unwrap_or("invalid command line")
                    .trim_start_matches("error: ")
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match &cli.command {
        Some(Command::HashPassword) => return hash_password(),
        Some(Command::Status {
            json,
            control_socket,
        }) => return cli::status(&cli.args, control_socket.as_deref(), *json),
        Some(Command::Scale {
            workers,
            control_socket,
        }) => return cli::scale(&cli.args, control_socket.as_deref(), *workers),
        Some(Command::Reload { control_socket }) => {
            return cli::reload(&cli.args, control_socket.as_deref());
        }
        None => {}
    }
    clusterd::log::init(cli.log_format);
    // Left by the previous image of this process when it upgraded itself (see master::upgrade).
    let inherited = match upgrade::take_state() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let state_directory = std::env::var_os("STATE_DIRECTORY").map(std::path::PathBuf::from);
    let config = match Config::load(&cli.args, state_directory.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clusterd: {e}");
            // After an upgrade's exec: not final (see below).
            return ExitCode::from(if inherited.is_some() { 1 } else { EXIT_CONFIG });
        }
    };
    if cli.check_config {
        return check_config(&config);
    }
    let upgraded = inherited.is_some();
    match run(cli, config, state_directory, binary, inherited) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            tracing::error!("{error:#}");
            // After an upgrade's exec a failure is never "configuration invalid" (2): the unit
            // must not treat it as final, since the previous version ran with this config.
            ExitCode::from(if upgraded && code == EXIT_CONFIG {
                1
            } else {
                code
            })
        }
    }
}

struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> Failure {
    move |error| Failure { code, error }
}

fn run(
    cli: Cli,
    config: Config,
    state_directory: Option<std::path::PathBuf>,
    binary: Option<Binary>,
    mut inherited: Option<upgrade::State>,
) -> Result<(), Failure> {
    // Sockets from systemd (or from the previous image, after an upgrade) come first, before
    // any file is opened: their descriptors must not be confused with ours.
    let passed = socket::from_systemd()
        .context("adopting the systemd socket")
        .map_err(fail(EXIT_CONFIG))?;
    let inherited_sockets = match inherited.as_mut() {
        Some(state) => Some(
            state
                .take_sockets()
                .map_err(anyhow::Error::from)
                .and_then(|s| socket::Sockets::import(s).map_err(anyhow::Error::from))
                .context("adopting the previous image's sockets")
                .map_err(fail(1))?,
        ),
        None => None,
    };
    let cluster = config.cluster.clone();
    let session = config.session.clone();
    let credentials = privileges::resolve(cluster.user.as_deref(), cluster.group.as_deref())
        .context("resolving --user/--group")
        .map_err(fail(EXIT_CONFIG))?;

    // Everything the workers share is prepared here, once, before the first fork. Files that
    // are only read come first, so a bad one stops the start before anything is created.
    let users = Users::load(session.users_file.as_deref())
        .context("loading users")
        .map_err(fail(EXIT_CONFIG))?;

    key::prepare_data_dir(&session.data_dir, credentials, session.redis_url.is_none())
        .context("preparing the data dir")
        .map_err(fail(EXIT_CONFIG))?;
    let (cookie_key, origin) = key::load(session.key_file.as_deref(), &session.data_dir)
        .context("loading the cookie key")
        .map_err(fail(EXIT_CONFIG))?;
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
    let store_line = match &session.redis_url {
        Some(url) => format!(
            "redis {} (prefix {})",
            RedisStore::describe(url),
            session.prefix
        ),
        None => format!("embedded sqlite in {}", session.data_dir.display()),
    };
    tracing::info!(store = %store_line, "session store");

    let sockets = match (inherited_sockets, passed) {
        (Some(sockets), _) => {
            let c = &cluster;
            if c.sockets != sockets.mode()
                || (sockets.passed() == 0 && c.bind.port() != 0 && c.bind != sockets.addr())
            {
                tracing::warn!(
                    "bind or sockets changed in the config; the upgraded master keeps the running sockets until a full restart"
                );
            }
            sockets
        }
        (None, Some(passed)) => {
            let n = passed.len();
            let (sockets, note) = socket::Sockets::adopt(cluster.sockets, passed, cluster.backlog)
                .context("adopting the systemd socket")
                .map_err(fail(EXIT_CONFIG))?;
            tracing::info!(addr = %sockets.addr(), sockets = n, "using the socket passed by systemd");
            if let Some(note) = note {
                tracing::warn!("{note}");
            }
            sockets
        }
        (None, None) => socket::Sockets::bind(cluster.sockets, cluster.bind, cluster.backlog)
            .context("opening the listening socket")
            .map_err(fail(1))?,
    };

    // About one hashing thread per CPU across the cluster: argon2 takes a CPU and ~19 MiB each.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let app = DemoApp {
        session,
        key: cookie_key,
        users: Arc::new(users),
        hash_threads: cpus.div_ceil(cluster.workers).max(1),
    };
    let args = cli.args;
    let running = config.clone();
    let reload = Box::new(move || -> Result<Reloaded, String> {
        let new = Config::load(&args, state_directory.as_deref()).map_err(|e| e.to_string())?;
        Ok(Reloaded {
            needs_restart: running.needs_restart(&new),
            cluster: new.cluster,
        })
    });
    let store_kind = if config.session.redis_url.is_some() {
        "store redis"
    } else {
        "store sqlite"
    };
    let control_path = cli::control_path(&cluster, &config.session);
    let control = master::control::Control::bind(&control_path)
        .with_context(|| format!("opening the control socket {}", control_path.display()))
        .map_err(fail(1))?;
    tracing::info!(path = %control_path.display(), "control socket");
    // On an upgrade the previous image's metrics socket is adopted with the rest.
    let metrics = match (&inherited, cluster.metrics_bind) {
        (None, Some(addr)) => {
            let l = socket::bind(addr, 128, false)
                .context("opening the --metrics-bind socket")
                .map_err(fail(1))?;
            tracing::info!(addr = %l.local_addr().map_or(addr, |a| a), "metrics served by the workers at /metrics");
            Some(l)
        }
        _ => None,
    };
    let mut master = Master::new(app, cluster, sockets)
        .context("starting the master")
        .map_err(fail(1))?
        .with_binary(binary)
        .with_control(Some(control))
        .with_metrics(metrics);
    if let Some(state) = inherited {
        master = master.adopt(state);
    }
    master
        .with_reload(reload)
        .with_credentials(credentials)
        .with_health_label(store_kind)
        .run()
        .map_err(|e| Failure {
            code: master::exit_code_for(&e) as u8,
            error: e.into(),
        })
}

/// `--check-config`: everything `run` reads before it binds or writes, and nothing else. An
/// upgrading master runs the new binary with it before re-executing it.
fn check_config(config: &Config) -> ExitCode {
    let checks = || -> anyhow::Result<()> {
        upgrade::check_state_version()?;
        let session = &config.session;
        privileges::resolve(
            config.cluster.user.as_deref(),
            config.cluster.group.as_deref(),
        )
        .context("resolving --user/--group")?;
        Users::load(session.users_file.as_deref()).context("loading users")?;
        if let Some(path) = &session.key_file {
            key::load(Some(path), &session.data_dir).context("loading the cookie key")?;
        }
        key::check_data_dir(
            &session.data_dir,
            session.key_file.as_deref(),
            session.redis_url.is_none(),
        )
        .context("checking the data dir")?;
        let control = cli::control_path(&config.cluster, session);
        master::control::Control::check_place(&control).context("checking the control socket")?;
        Ok(())
    };
    match checks() {
        Ok(()) => {
            println!("clusterd: configuration ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clusterd: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
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
