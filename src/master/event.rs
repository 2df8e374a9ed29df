//! What goes into the master's decisions and what comes out. Pure data; runs in the master.
//!
//! Signals and control-socket lines speak one vocabulary, [`Command`]; a worker's pipe speaks
//! [`Message`]; what the edge observes of the workers is [`Seen`]; the decisions answer with [`Action`]s, which the edge (`mod.rs`) carries out.

use nix::sys::signal::Signal;

use crate::config::ClusterConfig;

/// What an operator asks, by signal or on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop: gracefully (TERM, INT) or now (QUIT). `by` names the signal for the log.
    Stop {
        /// SIGQUIT: close connections now.
        fast: bool,
        /// The signal's name.
        by: &'static str,
    },
    /// Re-read the configuration (or re-execute a replaced binary) and replace every worker.
    Reload,
    /// One worker more (SIGTTIN).
    More,
    /// One worker fewer (SIGTTOU).
    Fewer,
    /// This many workers (`clusterd scale N`).
    Scale(usize),
    /// The status document (`clusterd status`).
    Status,
    /// A signal the master receives but does not act on (SIGUSR1, SIGUSR2: a logrotate script
    /// written for nginx sends one). Logged, never fatal.
    Ignore(&'static str),
}

impl Command {
    /// The command a signal means; `None` for SIGCHLD, which only wakes the loop (it reaps on
    /// every turn).
    pub fn from_signal(sig: Signal) -> Option<Command> {
        Some(match sig {
            Signal::SIGTERM | Signal::SIGINT => Command::Stop {
                fast: false,
                by: sig.as_str(),
            },
            Signal::SIGQUIT => Command::Stop {
                fast: true,
                by: sig.as_str(),
            },
            Signal::SIGHUP => Command::Reload,
            Signal::SIGTTIN => Command::More,
            Signal::SIGTTOU => Command::Fewer,
            Signal::SIGCHLD => return None,
            other => Command::Ignore(other.as_str()),
        })
    }

    /// A control-socket line: `status`, `scale N` or `reload`.
    pub fn from_line(line: &str) -> Result<Command, String> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("status"), None, _) => Ok(Command::Status),
            (Some("reload"), None, _) => Ok(Command::Reload),
            (Some("scale"), Some(n), None) => n
                .parse()
                .map(Command::Scale)
                .map_err(|_| format!("scale: {n:?} is not a number of workers")),
            _ => Err(format!(
                "unknown request {:?}: status, scale N or reload",
                line.trim()
            )),
        }
    }
}

/// One byte a worker wrote on its pipe (see `worker::message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The server accepts connections.
    Ready,
    /// The app's dependencies answer, or not.
    Health(bool),
    /// A retiring worker shut its slot's socket down.
    SocketClosed,
    /// An unknown byte: a broken protocol.
    Garbage(u8),
    /// More bytes in one turn than a working worker ever sends: a broken protocol.
    Flood(usize),
}

impl Message {
    /// Reads one byte of the pipe protocol.
    pub fn from_byte(byte: u8) -> Message {
        use crate::worker::message;
        match byte {
            message::READY => Message::Ready,
            message::UP => Message::Health(true),
            message::DOWN => Message::Health(false),
            message::SOCKET_CLOSED => Message::SocketClosed,
            other => Message::Garbage(other),
        }
    }
}

/// What the service manager hears (sd_notify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// READY=1 with this status line.
    Ready(String),
    /// RELOADING=1.
    Reloading,
    /// STOPPING=1.
    Stopping,
}

/// The settings a new worker starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// Its id.
    pub id: u64,
    /// Its slot.
    pub slot: usize,
    /// Its scoreboard record.
    pub record: usize,
    /// The settings it runs (the running ones, or a rollout's new ones).
    pub config: ClusterConfig,
}

/// What the edge does for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fork a worker; report back with `Cluster::spawned` or `Cluster::spawn_failed`.
    Spawn(Box<Spawn>),
    /// Send `sig` to a worker.
    Signal {
        /// Worker id, for the log.
        id: u64,
        /// Its pid (never 0).
        pid: i32,
        /// The signal.
        sig: Signal,
    },
    /// Retire the worker of a slot that goes away: close the master's copy of the slot's
    /// socket, tell the cluster which socket the worker now holds last
    /// (`Cluster::closing_socket`), and signal it SIGUSR1 if there was one, else SIGTERM.
    CloseSlot {
        /// Worker id.
        id: u64,
        /// Its pid.
        pid: i32,
        /// The slot.
        slot: usize,
    },
    /// A retired slot's socket is out of the reuseport group (its last holder shut it down or
    /// died): the socket table forgets it.
    SocketGone(u64),
    /// A worker is gone: its scoreboard record no longer belongs to a live process.
    Release(usize),
    /// Stop reading a worker's pipe (it broke the protocol).
    DropPipe(u64),
    /// Tell the service manager.
    Notify(Notify),
    /// Re-read the configuration and hand it to `Cluster::reloaded`, or, if the binary was
    /// replaced, start the new binary's check and report with `Cluster::check_started`.
    Reload,
    /// SIGKILL the new binary's configuration check (it overstayed).
    KillCheck,
}

/// One worker as the edge saw it: the scoreboard and `/proc`, read once per observation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Worker id.
    pub id: u64,
    /// Age of its oldest server thread's heartbeat, if it has any.
    pub heartbeat_age_ms: Option<u64>,
    /// Stopped (SIGSTOP, a debugger): a SIGABRT would wait, so it gets SIGKILL.
    pub stopped: bool,
    /// Resident memory in bytes, if `/proc` tells.
    pub rss: Option<u64>,
    /// Requests answered, if it has a scoreboard record.
    pub requests: Option<u64>,
    /// Connections open, if it has a scoreboard record.
    pub connections: Option<u64>,
    /// Its socket's accept queue and the queue's limit, if the socket is open.
    pub queue: Option<(u32, u32)>,
    /// Its oldest request in flight, if it published one.
    pub request: Option<crate::scoreboard::InFlightRequest>,
}
