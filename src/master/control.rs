//! The control socket: a Unix stream socket (mode 0600) that the master polls in its own loop,
//! no thread. A client sends one line (`status`, `scale N`, `reload`) and reads one line of
//! JSON back; `clusterd status|scale|reload` is that client. Runs in the master (the listener)
//! and in the CLI (the client).
//!
//! The master never blocks on a client: clients are non-blocking and sit in the poll set, each
//! with one deadline for sending its line and taking its answer, and a turn accepts a bounded
//! number of them. A client that trickles bytes, or many idle ones, cost the loop nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::clock::Ms;
use super::event::Command;

/// How long a client has, from its connect, to send its line and take the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Clients accepted in one turn of the loop (the rest wait in the listen queue).
const ACCEPT_PER_TURN: usize = 16;
/// Clients open at once; one more is closed at once.
const MAX_CLIENTS: usize = 128;
/// The longest request line.
const MAX_LINE: usize = 4096;

/// Errors opening the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A live master answers there already.
    #[error(
        "{0}: another clusterd answers on this control socket; give this one another --control-socket"
    )]
    InUse(PathBuf),
    /// bind/chmod failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The master's end.
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    next_client: u64,
}

/// One connected client.
struct Client {
    id: u64,
    stream: UnixStream,
    /// What it sent so far (until the newline).
    line: Vec<u8>,
    /// The answer and how much of it was written.
    answer: Option<(Vec<u8>, usize)>,
    /// When it is dropped, done or not.
    deadline: Ms,
}

/// A client's request: its id (for [`Control::answer`]) and the command, or why it is none.
pub type Asked = (u64, Result<Command, String>);

impl Control {
    /// Binds `path` (replacing a stale socket file no master answers on), mode 0600.
    pub fn bind(path: &Path) -> Result<Control, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                std::fs::remove_file(path).map_err(io)?;
            }
            Ok(_) => {
                return Err(io(std::io::Error::other(
                    "exists and is not a socket; remove it or choose another --control-socket",
                )));
            }
            Err(_) => {}
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        Ok(Control {
            listener,
            path: path.to_path_buf(),
            clients: Vec::new(),
            next_client: 0,
        })
    }

    /// The descriptors to poll, each with whether it waits for room to write (an answer) rather
    /// than for input: the listener and every client.
    pub fn poll_set(&self) -> Vec<(BorrowedFd<'_>, bool)> {
        let mut out = vec![(self.listener.as_fd(), false)];
        out.extend(
            self.clients
                .iter()
                .map(|c| (c.stream.as_fd(), c.answer.is_some())),
        );
        out
    }

    /// Accepts new clients (a bounded number), reads what the others sent without blocking,
    /// drops those past their deadline, and returns every whole request line.
    pub fn read(&mut self, now: Ms) -> Vec<Asked> {
        for _ in 0..ACCEPT_PER_TURN {
            let Ok((stream, _)) = self.listener.accept() else {
                break;
            };
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_client += 1;
            self.clients.push(Client {
                id: self.next_client,
                stream,
                line: Vec::new(),
                answer: None,
                deadline: now.plus(CLIENT_DEADLINE),
            });
        }
        let mut asked = Vec::new();
        self.clients.retain_mut(|c| {
            if now >= c.deadline {
                return false;
            }
            if c.answer.is_some() {
                return true;
            }
            let mut buf = [0u8; 512];
            match (&c.stream).read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => c.line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
            if let Some(end) = c.line.iter().position(|b| *b == b'\n') {
                let text = String::from_utf8_lossy(&c.line[..end]).into_owned();
                asked.push((c.id, Command::from_line(&text)));
            } else if c.line.len() > MAX_LINE {
                asked.push((c.id, Err("request line too long".to_string())));
            }
            true
        });
        asked
    }

    /// Gives client `id` its answer and writes what the socket takes now; the rest goes out on
    /// later turns, within the client's deadline.
    pub fn answer(&mut self, id: u64, value: &serde_json::Value) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            c.answer = Some((format!("{value}\n").into_bytes(), 0));
        }
        self.flush();
    }

    /// Writes pending answers without blocking; a client whose answer is out is closed.
    pub fn flush(&mut self) {
        self.clients.retain_mut(|c| {
            let Some((text, sent)) = c.answer.as_mut() else {
                return true;
            };
            while *sent < text.len() {
                match (&c.stream).write(&text[*sent..]) {
                    Ok(n) if n > 0 => *sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    _ => return false,
                }
            }
            false
        });
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The client: sends `line`, returns the master's JSON answer. Errors name the path and what
/// to check.
pub fn ask(path: &Path, line: &str) -> Result<serde_json::Value, String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the master at {}: {e} (is clusterd running? pass its --control-socket; as a service it is /run/clusterd/control.sock, readable by root)",
            path.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    BufReader::new(stream)
        .read_line(&mut text)
        .map_err(|e| format!("{}: no answer: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: bad answer: {e}", path.display()))
}
