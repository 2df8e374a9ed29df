//! Opening the files of the data dir safely, in a master that may run as root. Runs in the master.
//!
//! The data dir belongs to the workers' user (they write the embedded store there), so a worker,
//! or whoever else could write there, may have left a symbolic link, a FIFO or a device under a
//! name the master opens. Following a link as root would let them have a root-owned file chowned
//! to them or overwritten; opening a FIFO would hang the start. So every file is opened without
//! following a final link (`O_NOFOLLOW`) and without blocking (`O_NONBLOCK`), checked on the
//! opened descriptor (`fstat`: a regular file, of bounded size where it is read whole), and
//! changed through that descriptor (`fchown`, `fchmod`), never by path.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

/// Why a data-dir file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The name is a symbolic link.
    #[error(
        "{path} is a symbolic link; clusterd does not follow links in its data dir (remove it)"
    )]
    Link {
        /// The file.
        path: PathBuf,
    },
    /// Not a regular file (a FIFO, a device, a socket, a directory).
    #[error("{path} is a {kind}, not a regular file (remove it)")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Larger than anything clusterd writes there.
    #[error("{path} has {len} bytes, more than the {max} expected")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// Any other failure of open, read, fstat, fchown or fchmod.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// How to open a file of the data dir.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    /// Follow a final symbolic link (only for paths the operator named explicitly).
    pub follow: bool,
    /// Create it with this mode if it does not exist.
    pub create: Option<u32>,
    /// Open for writing too.
    pub write: bool,
}

/// Opens `path` as [`Open`] says; `Ok(None)` if it does not exist (and is not to be created).
/// The descriptor is a regular file, checked after opening.
pub fn open(path: &Path, how: Open) -> Result<Option<File>, FileError> {
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if !how.follow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(how.write).custom_flags(flags);
    if let Some(mode) = how.create {
        opts.create(true).mode(mode);
    }
    let file = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && how.create.is_none() => {
            return Ok(None);
        }
        // O_NOFOLLOW on a final link fails with ELOOP.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(FileError::Link {
                path: path.to_path_buf(),
            });
        }
        // Opening a FIFO for writing without a reader fails with ENXIO under O_NONBLOCK; a
        // device may refuse in its own ways: say what the name is, not the errno.
        Err(e) => {
            if let Ok(meta) = std::fs::symlink_metadata(path)
                && !meta.file_type().is_file()
            {
                return Err(FileError::NotRegular {
                    path: path.to_path_buf(),
                    kind: kind(&meta),
                });
            }
            return Err(FileError::Io {
                op: "opening",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let meta = file.metadata().map_err(|source| FileError::Io {
        op: "reading the metadata of",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind(&meta),
        });
    }
    Ok(Some(file))
}

/// A small file read whole, with its permission bits.
pub struct Small {
    /// The contents.
    pub bytes: Vec<u8>,
    /// `st_mode & 0o777`.
    pub mode: u32,
}

// Not derived: the bytes are a secret key.
impl std::fmt::Debug for Small {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Small")
            .field("len", &self.bytes.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// Reads a whole small file (a key) opened by [`open`], refusing one larger than `max` bytes.
pub fn read_small(path: &Path, follow: bool, max: u64) -> Result<Option<Small>, FileError> {
    let how = Open {
        follow,
        create: None,
        write: false,
    };
    let Some(mut file) = open(path, how)? else {
        return Ok(None);
    };
    let meta = file.metadata().map_err(|source| FileError::Io {
        op: "reading the metadata of",
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > max {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            max,
        });
    }
    let mut bytes = Vec::new();
    // `take` bounds the read even if the file grows after the fstat.
    (&mut file)
        .take(max)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Some(Small {
        bytes,
        mode: meta.mode() & 0o777,
    }))
}

/// Gives an opened file to `owner` and sets its mode, through the descriptor.
pub fn hand_over(
    file: &File,
    path: &Path,
    owner: Option<(Uid, Gid)>,
    mode: u32,
) -> Result<(), FileError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(file, Some(uid.as_raw()), Some(gid.as_raw())).map_err(
            |source| FileError::Io {
                op: "changing the owner of",
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|source| FileError::Io {
            op: "changing the mode of",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("clusterd-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const READ: Open = Open {
        follow: false,
        create: None,
        write: false,
    };

    #[test]
    fn links_fifos_and_directories_are_refused_by_name() {
        let dir = temp_dir("refuse");
        let target = dir.join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open(&link, READ).unwrap_err();
        assert!(matches!(e, FileError::Link { .. }), "{e}");
        assert!(e.to_string().contains("link"), "{e}");

        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = open(&fifo, READ).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        let write = Open {
            write: true,
            ..READ
        };
        let e = open(&fifo, write).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");

        let e = open(&dir, READ).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        assert!(open(&dir.join("missing"), READ).unwrap().is_none());
        // Following is for names the operator gave: a link to a regular file is fine then.
        let follow = Open {
            follow: true,
            ..READ
        };
        assert!(open(&link, follow).unwrap().is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn read_small_bounds_the_size() {
        let dir = temp_dir("small");
        let f = dir.join("key");
        std::fs::write(&f, [1u8; 100]).unwrap();
        assert_eq!(
            read_small(&f, false, 100).unwrap().unwrap().bytes.len(),
            100
        );
        let e = read_small(&f, false, 99).unwrap_err();
        assert!(e.to_string().contains("100 bytes"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
