//! The command line around the options: subcommands and the flags that are not options of the
//! service (they act before or instead of it). Runs in the master and in the CLI.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::Args;

/// The command line. Every option can also come from the environment variable named in `--help`
/// and from the config file under the same name without the dashes in front.
#[derive(Debug, Clone, Parser)]
#[command(name = "clusterd", version, about, long_about = None)]
pub struct Cli {
    /// A subcommand; without one, the service runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How log lines look: plain (for people, also in the journal) or json (one object a line, for log shippers); flag or variable only, since logging starts before the config file is read [default: plain]
    #[arg(long, env = "CLUSTERD_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = crate::log::Format::Plain, hide_default_value = true)]
    pub log_format: crate::log::Format,
    /// Check the configuration (options, config file, users file, key file, --user) and exit:
    /// 0 if the service can start with it, 2 and the reason if not. Binds nothing, writes nothing.
    #[arg(long)]
    pub check_config: bool,
    /// Development loop: whenever the binary's file is replaced (`cargo build` in another
    /// terminal), check it and re-execute it in place as a reload does; a build that fails
    /// --check-config leaves the running one serving
    #[arg(long)]
    pub watch: bool,
    /// Service options.
    #[command(flatten)]
    pub args: Args,
}

/// Subcommands that do something else than serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
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
        /// `--wait`, `--timeout`.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Reload: re-read the config and replace the workers (and the master, if its binary changed), as SIGHUP does
    Reload {
        /// The master's control socket
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
        /// `--wait`, `--timeout`.
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `--wait` and `--timeout` of `scale` and `reload`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WaitArgs {
    /// Wait until the change has completed or failed, print which (and why), exit 0 on success and 1 otherwise
    #[arg(long)]
    pub wait: bool,
    /// Seconds --wait waits at most (then exits 1)
    #[arg(long, value_name = "SECS", default_value_t = 30, requires = "wait")]
    pub timeout: u64,
}
