//! The control socket: a Unix stream socket (mode 0600) that the master polls in its own loop,
//! no thread. A client sends one line (`status`, `scale N`, `reload`) and reads one line of
//! JSON back; `clusterd status|scale|reload` is that client. Runs in the master (the listener)
//! and in the CLI (the client).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the master waits for a client's line, and for its answer to be taken.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(200);

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
}

/// A request from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The status document.
    Status,
    /// Set the worker count.
    Scale(usize),
    /// As SIGHUP.
    Reload,
}

impl Request {
    fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("status"), None, _) => Ok(Request::Status),
            (Some("reload"), None, _) => Ok(Request::Reload),
            (Some("scale"), Some(n), None) => n
                .parse()
                .map(Request::Scale)
                .map_err(|_| format!("scale: {n:?} is not a number of workers")),
            _ => Err(format!(
                "unknown request {:?}: status, scale N or reload",
                line.trim()
            )),
        }
    }
}

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
        })
    }

    /// For the master's poll.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Answers every client waiting, each with `answer(request)` (a JSON value). A client that
    /// does not send its line within 200 ms is dropped.
    pub fn serve(&self, mut answer: impl FnMut(Request) -> serde_json::Value) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
            let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
            let mut line = String::new();
            let mut reader = BufReader::new((&stream).take(4096));
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let reply = match Request::parse(&line) {
                Ok(req) => answer(req),
                Err(e) => serde_json::json!({ "ok": false, "error": e }),
            };
            let _ = (&stream).write_all(format!("{reply}\n").as_bytes());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(Request::parse("status\n"), Ok(Request::Status));
        assert_eq!(Request::parse("scale 5"), Ok(Request::Scale(5)));
        assert_eq!(Request::parse("reload"), Ok(Request::Reload));
        assert!(Request::parse("scale five").is_err());
        assert!(Request::parse("scale 1 2").is_err());
        assert!(Request::parse("shutdown").is_err());
    }
}
