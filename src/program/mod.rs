//! The whole program around an app: what the `clusterd` binary is, for any [`WorkerApp`].
//!
//! An app implements [`Service`] (its options, and how the master builds it from them) and its
//! `main` calls [`run`]. The result has every option, environment variable and config-file key
//! of `clusterd` plus the app's own, the `status`, `scale` and `reload` subcommands,
//! `--check-config`, systemd notify and socket activation, `--user`, the control socket,
//! `/metrics` and the dashboard, JSON logs, in-place upgrade of its own binary (and `--watch`),
//! and the exit codes: 0 stopped on request, 1 runtime failure, 2 invalid configuration or
//! command line, 4 a worker rejected the configuration.
//!
//! Runs in the master (and in the short-lived client processes); the workers are forks of it
//! and never return here.

mod client;
mod options;
mod start;
mod wait;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::FromArgMatches;
use nix::unistd::{Gid, Uid};

use crate::config::{Cli, ClusterConfig, Command, Config};
use crate::master::upgrade::{self, Binary};
use crate::worker::{BootError, WorkerApp};

pub use self::options::command;

/// Exit code for configuration errors, the same clap uses for a bad flag.
pub const EXIT_CONFIG: u8 = 2;

/// An app that [`run`] turns into a whole program.
///
/// `build` runs in the master, before the first fork and again on every reload (`HUP`,
/// `reload`): prepare there what every worker shares (configuration, keys, files read once) and
/// register counters ([`crate::counter`]). Connections belong in
/// [`WorkerApp::init`], after the fork.
pub trait Service: WorkerApp + Sized {
    /// The app's own options, a `#[derive(clap::Args)]` struct: each is a flag (with the
    /// environment variable its `env` names), and a key of the config file under its long
    /// name. The file is re-read on reload; a flag or variable wins over it. `()` for none.
    type Options: clap::Args + FromArgMatches + Send + 'static;

    /// The program's name, for `--help` and messages.
    const NAME: &'static str;

    /// What `--version` prints after the name (e.g. `env!("CARGO_PKG_VERSION")`); clusterd's
    /// version by default.
    const VERSION: Option<&'static str> = None;

    /// The line under the name in `--help`; clusterd's by default.
    const ABOUT: Option<&'static str> = None;

    /// Builds the app from its options. [`BootError::Config`] means the options cannot work:
    /// at start the program exits 2, on a reload the running app keeps serving.
    fn build(options: Self::Options, setup: &Setup<'_>) -> Result<Self, BootError>;

    /// `--check-config`: whether the app could start with these options, without binding or
    /// writing anything. By default, [`Service::build`] succeeds.
    fn check(options: Self::Options, setup: &Setup<'_>) -> Result<(), BootError> {
        Self::build(options, setup).map(drop)
    }

    /// Subcommands of the app's own, beside `status`, `scale` and `reload`.
    fn commands() -> Vec<clap::Command> {
        Vec::new()
    }

    /// Runs one of [`Service::commands`] (its name and its matches) and exits with the result.
    fn run_command(name: &str, matches: &clap::ArgMatches) -> ExitCode {
        let _ = matches;
        eprintln!("{}: no subcommand {name}", Self::NAME);
        ExitCode::from(EXIT_CONFIG)
    }
}

/// What the master knows when it builds the app.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// clusterd's settings (workers, threads, the data directory ...).
    pub cluster: &'a ClusterConfig,
    /// The user and group the workers will run as, when the master runs as root.
    pub credentials: Option<(Uid, Gid)>,
    /// Whether this is a reload (the app ran already) rather than the start.
    pub reloading: bool,
}

/// Runs `S` as a whole program (see the module's documentation): parse the command line, run
/// a subcommand or the service, and return the exit code. Call it from `main`, first.
pub fn run<S: Service>() -> ExitCode {
    // Before anything rewrites argv (the process title): an upgrade re-executes with it.
    let binary = Binary::at_start();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = match options::command_line::<S>().try_get_matches_from(&argv) {
        Ok(m) => m,
        // --help and --version print and exit 0 as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line naming the option, not its usage block.
            eprintln!("{}: {}", S::NAME, options::one_line(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some((name, sub)) = matches.subcommand()
        && S::commands().iter().any(|c| c.get_name() == name)
    {
        return S::run_command(name, sub);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("{}: {e}", S::NAME);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match &cli.command {
        Some(Command::Status {
            json,
            control_socket,
        }) => return client::status::<S>(&cli.args, control_socket.as_deref(), *json),
        Some(Command::Scale {
            workers,
            control_socket,
            wait,
        }) => return client::scale::<S>(&cli.args, control_socket.as_deref(), *workers, *wait),
        Some(Command::Reload {
            control_socket,
            wait,
        }) => {
            return client::reload::<S>(&cli.args, control_socket.as_deref(), *wait);
        }
        None => {}
    }
    crate::log::init(cli.log_format);
    // Left by the previous image of this process when it upgraded itself (see master::upgrade).
    let inherited = match upgrade::take_state() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // After an upgrade's exec a failure is never "configuration invalid" (2): the unit must not
    // treat it as final, since the previous version ran with this configuration.
    let upgraded = inherited.is_some();
    let code = |code: u8| {
        ExitCode::from(if upgraded && code == EXIT_CONFIG {
            1
        } else {
            code
        })
    };
    let loader = Loader::<S>::new(cli.args.clone(), argv);
    let (config, options) = match loader.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{}: {e}", S::NAME);
            return code(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        return start::check_config::<S>(&config, options);
    }
    match start::run::<S>(cli.watch, config, options, binary, inherited, loader) {
        Ok(()) => ExitCode::SUCCESS,
        Err(start::Failure { code: c, error }) => {
            tracing::error!("{error:#}");
            code(c)
        }
    }
}

/// Reads the configuration: at start, and again on every reload.
pub(crate) struct Loader<S: Service> {
    args: crate::config::Args,
    argv: Vec<OsString>,
    state_directory: Option<std::path::PathBuf>,
    _app: std::marker::PhantomData<fn() -> S>,
}

impl<S: Service> Loader<S> {
    fn new(args: crate::config::Args, argv: Vec<OsString>) -> Self {
        Loader {
            args,
            argv,
            // systemd's $STATE_DIRECTORY, else `<name>-data`, is the data dir no option names.
            state_directory: std::env::var_os("STATE_DIRECTORY")
                .map(Into::into)
                .or_else(|| Some(options::default_data_dir::<S>().into())),
            _app: std::marker::PhantomData,
        }
    }

    /// clusterd's settings and the app's options: flags over environment over file over
    /// defaults, for both.
    fn load(&self) -> Result<(Config, S::Options), crate::config::ConfigError> {
        let config = Config::load(&self.args, self.state_directory.as_deref())?;
        let options = options::app_options::<S>(&self.argv, &config)?;
        Ok((config, options))
    }
}
