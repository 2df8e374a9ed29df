//! The control socket: a Unix stream socket (mode 0600) that the master polls in its own loop,
//! no thread. A client sends one line (`status`, `scale N`, `reload`) and reads one line of
//! JSON back; `clusterd status|scale|reload` is that client. Runs in the master (the listener)
//! and in the CLI (the client).
//!
//! Only its owner can use it: it is bound under a umask (no chmod by path afterwards) in a
//! directory that only root or the master's user can write (by default `/run/clusterd` for a
//! master run as root without systemd's `RuntimeDirectory=`), and both ends check the other's
//! credentials (`SO_PEERCRED`: root or the master's own user; the client also trusts the user
//! who alone can write the socket's directory, as a `DynamicUser=` service's runtime directory).
//!
//! The master never blocks on a client: clients are non-blocking and sit in the poll set, each
//! with one deadline for sending its line and taking its answer, and a turn accepts a bounded
//! number of them. A client that trickles bytes, or many idle ones, cost the loop nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
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
/// Where a master run as root puts its control socket when systemd gives it no runtime
/// directory: a directory of root's, never the data dir, which the workers' user owns.
pub const ROOT_DIR: &str = "/run/clusterd";

/// The control socket's path when `--control-socket` is not given: in systemd's
/// `RuntimeDirectory=`; else, for root, in [`ROOT_DIR`], one per data dir (two masters with
/// different data dirs both start); else in the data dir, which is then the master's own.
pub fn default_path(data_dir: &Path, runtime_directory: Option<&Path>, root: bool) -> PathBuf {
    match runtime_directory {
        Some(dir) => dir.join("control.sock"),
        None if root => {
            let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
            // FNV-1a: a stable name from the path, nothing secret about it.
            let hash = dir
                .as_os_str()
                .as_encoded_bytes()
                .iter()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
                });
            Path::new(ROOT_DIR).join(format!("control-{hash:016x}.sock"))
        }
        None => data_dir.join("control.sock"),
    }
}

/// Whether a peer with this uid may talk to us: root, or our own user.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Whether `uid` owns the directory `path` is in, and nobody else may write there: then only
/// that user (or root) could have put a socket at `path`. A service under systemd's
/// `DynamicUser=` has its runtime directory so, and root's `clusterd status` trusts its master.
fn owns_dir_alone(path: &Path, uid: u32) -> bool {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::metadata(dir).is_ok_and(|m| m.uid() == uid && m.mode() & 0o022 == 0)
}

/// The uid of the process at the other end of a Unix socket.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// A directory only root or we can change: owned by one of them, and not writable by group or
/// others unless sticky (as /tmp, where nobody else can replace our file).
fn safe_dir(dir: &Path) -> std::io::Result<()> {
    let m = std::fs::metadata(dir)?;
    if !trusted(m.uid()) {
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {}, not root or this user: another user could replace the socket",
            dir.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
        return Err(std::io::Error::other(format!(
            "{} is writable by group or others and not sticky: another user could replace the socket",
            dir.display()
        )));
    }
    Ok(())
}

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
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        safe_dir(dir).map_err(io)?;
        // Mode 0600 from the start: a umask for the bind, not a chmod by path after it (the
        // master is single-threaded here, so the process-wide umask is ours alone).
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        Ok(Control {
            listener,
            path: path.to_path_buf(),
            clients: Vec::new(),
            next_client: 0,
        })
    }

    /// What [`Control::bind`] will find at `path`, checked without changing anything (for
    /// `--check-config`): a directory only root or this user can change, and no file in the
    /// way.
    pub fn check_place(path: &Path) -> Result<(), ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| d.exists()) {
            safe_dir(dir).map_err(io)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                Err(io(std::io::Error::other("exists and is not a socket")))
            }
            _ => Ok(()),
        }
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
            if let Some(uid) = peer_uid(&stream).filter(|uid| !trusted(*uid)) {
                tracing::warn!(
                    uid,
                    "control socket: refused a client that is neither root nor this user"
                );
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
    match peer_uid(&stream) {
        Some(uid) if trusted(uid) || owns_dir_alone(path, uid) => {}
        other => {
            return Err(format!(
                "{}: answered by uid {}, not root or this user: refusing to trust it",
                path.display(),
                other.map_or_else(|| "unknown".to_string(), |u| u.to_string())
            ));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_path_is_systemds_then_roots_then_the_data_dirs() {
        let data = Path::new("/var/lib/app");
        assert_eq!(
            default_path(data, Some(Path::new("/run/x")), true),
            Path::new("/run/x/control.sock")
        );
        let a = default_path(data, None, true);
        assert!(a.starts_with(ROOT_DIR), "{}", a.display());
        assert_eq!(a, default_path(data, None, true), "stable");
        assert_ne!(a, default_path(Path::new("/var/lib/other"), None, true));
        assert_eq!(default_path(data, None, false), data.join("control.sock"));
    }
}
