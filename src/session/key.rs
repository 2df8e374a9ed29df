//! The cookie key and the data dir, prepared by the master before any fork (fork rule 5: one
//! key for every worker, so a cookie minted by worker 1 opens on worker 2; and for every host,
//! when they share the key file).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::files::{self, FileError, Open};

use actix_web::cookie::Key;
use nix::unistd::{Gid, Uid};
use rand::TryRngCore;

/// Shortest key accepted, in bytes (the cookie crate signs with 32 and encrypts with 32).
pub const MIN_KEY_LEN: usize = 64;
/// Name of the generated key inside the data dir.
pub const GENERATED_NAME: &str = "session.key";
/// Largest key file read: keys are 64 bytes; this only stops a huge or endless file.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Why the key or the data dir could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("reading session key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file holds fewer than [`MIN_KEY_LEN`] bytes.
    #[error(
        "session key {path} has {len} bytes; it needs at least {MIN_KEY_LEN} (try: head -c 64 /dev/urandom > {path})"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Creating the data dir or writing the generated key failed.
    #[error("{op} {path}: {source}")]
    Write {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The OS random generator failed.
    #[error("generating a session key: {0}")]
    Random(String),
    /// A file of the data dir, or the key file, is not what it must be (a link, a FIFO, ...).
    #[error(transparent)]
    File(#[from] FileError),
}

/// Where the key came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `--session-key-file`.
    Configured(PathBuf),
    /// Generated in the data dir by an earlier start.
    Kept(PathBuf),
    /// Generated in the data dir just now.
    Generated(PathBuf),
}

/// Loads the configured key file, or the generated one in `data_dir`, generating it (mode 0600)
/// if this is the first start.
pub fn load(key_file: Option<&Path>, data_dir: &Path) -> Result<(Key, KeyOrigin), KeyError> {
    if let Some(path) = key_file {
        // A name the operator gave may be a link (systemd's credentials are); it must still
        // end at a regular file of a key's size.
        return Ok((read(path, true)?, KeyOrigin::Configured(path.to_path_buf())));
    }
    let path = data_dir.join(GENERATED_NAME);
    if let Some(file) = files::read_small(&path, false, MAX_KEY_FILE)? {
        return Ok((key_from(&path, file)?, KeyOrigin::Kept(path)));
    }
    let mut bytes = [0u8; MIN_KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    let write_err = |source| KeyError::Write {
        op: "writing session key",
        path: path.clone(),
        source,
    };
    // create_new: if another clusterd races us, one wins and the other fails loudly instead of
    // both running with different keys. It is O_EXCL, which never follows a link either.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(write_err)?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    Ok((Key::from(&bytes), KeyOrigin::Generated(path)))
}

fn read(path: &Path, follow: bool) -> Result<Key, KeyError> {
    let file = files::read_small(path, follow, MAX_KEY_FILE)?.ok_or_else(|| KeyError::Read {
        path: path.to_path_buf(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    key_from(path, file)
}

/// Checks the key's length; then, for a key in use, warns if others may read it.
fn key_from(path: &Path, file: files::Small) -> Result<Key, KeyError> {
    let bytes = file.bytes;
    if bytes.len() < MIN_KEY_LEN {
        return Err(KeyError::TooShort {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    if file.mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", file.mode),
            "the session key is readable by group or others; chmod 600 it"
        );
    }
    Ok(Key::from(&bytes))
}

/// The embedded store's database (`sqlite::FILE_NAME`, which a test holds equal; named here
/// too, so the data dir is checked the same with or without the `sqlite` feature).
const STORE_FILE: &str = "sessions.sqlite3";

/// Names of the embedded store's files in the data dir.
const STORE_FILES: [&str; 3] = [STORE_FILE, "sessions.sqlite3-wal", "sessions.sqlite3-shm"];

/// Creates the data dir (mode 0700) if needed and, for the embedded store, the database (mode
/// 0600). When workers run as another user, hands them the dir and the database files, which
/// they write; the key stays readable by root only. Every file is checked and changed through
/// its descriptor ([`files`]): a link, FIFO or device under one of these names stops the start.
pub fn prepare_data_dir(
    dir: &Path,
    owner: Option<(Uid, Gid)>,
    embedded_store: bool,
) -> Result<(), KeyError> {
    let err = |op| {
        move |source| KeyError::Write {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err("creating data dir"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(err("setting mode of"))?;
    }
    // The dir itself is the operator's choice and may be a link (systemd's StateDirectory= with
    // DynamicUser= is one); it is changed through a descriptor of what it points at.
    let dir_file = std::fs::File::open(dir).map_err(err("opening data dir"))?;
    if !dir_file
        .metadata()
        .map_err(err("reading the metadata of"))?
        .is_dir()
    {
        return Err(err("using as data dir")(std::io::Error::other(
            "not a directory",
        )));
    }
    // The generated key, if there is one, must be a regular file too (read later, as root).
    regular_if_there(&dir.join(GENERATED_NAME))?;
    if embedded_store {
        // Checked before SQLite, running as root here, opens or creates anything.
        for name in STORE_FILES {
            files::open(
                &dir.join(name),
                Open {
                    follow: false,
                    create: (name == STORE_FILE).then_some(0o600),
                    write: true,
                },
            )?;
        }
        #[cfg(feature = "sqlite")]
        super::sqlite::SqliteStore::initialize(dir).map_err(|e| KeyError::Write {
            op: "creating the embedded session store in",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&dir_file, Some(uid.as_raw()), Some(gid.as_raw()))
            .map_err(err("changing owner of"))?;
    }
    if embedded_store {
        for name in STORE_FILES {
            let path = dir.join(name);
            let how = Open {
                follow: false,
                create: None,
                write: true,
            };
            if let Some(file) = files::open(&path, how)? {
                files::hand_over(&file, &path, owner, 0o600)?;
            }
        }
    }
    Ok(())
}

/// What [`prepare_data_dir`] and [`load`] will find, checked without changing anything: the
/// data dir is a directory, the generated key (if any) a regular file that reads as a key, the
/// embedded store's files (if any) regular files. `--check-config` runs it, so an upgrade whose
/// new image would refuse the data dir after `execve` is refused before it (a worker's user can
/// turn a file in its data dir into a link between two starts).
pub fn check_data_dir(
    dir: &Path,
    key_file: Option<&Path>,
    embedded_store: bool,
) -> Result<(), KeyError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(KeyError::Write {
                op: "using as data dir",
                path: dir.to_path_buf(),
                source: std::io::Error::other("not a directory"),
            });
        }
        Ok(_) => {}
        // Created at start.
        Err(_) => return Ok(()),
    }
    if key_file.is_none() {
        let path = dir.join(GENERATED_NAME);
        if let Some(file) = files::read_small(&path, false, MAX_KEY_FILE)? {
            key_from(&path, file)?;
        }
    } else {
        regular_if_there(&dir.join(GENERATED_NAME))?;
    }
    if embedded_store {
        for name in STORE_FILES {
            regular_if_there(&dir.join(name))?;
        }
    }
    Ok(())
}

/// A file of the data dir, if it exists, is a regular file and not a link (opened read-only,
/// never followed, nothing created).
fn regular_if_there(path: &Path) -> Result<(), KeyError> {
    files::open(
        path,
        Open {
            follow: false,
            create: None,
            write: false,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("clusterd-key-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn the_store_file_checked_is_the_one_the_store_opens() {
        assert_eq!(STORE_FILE, crate::session::sqlite::FILE_NAME);
    }

    #[test]
    fn generated_key_is_kept_private_and_reused() {
        let dir = temp_dir("gen");
        let (k1, o1) = load(None, &dir).unwrap();
        assert!(matches!(o1, KeyOrigin::Generated(_)));
        let mode = std::fs::metadata(dir.join(GENERATED_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (k2, o2) = load(None, &dir).unwrap();
        assert!(matches!(o2, KeyOrigin::Kept(_)));
        assert_eq!(k1.master(), k2.master());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn short_or_missing_keys_are_errors() {
        let dir = temp_dir("short");
        let short = dir.join("short.key");
        std::fs::write(&short, [7u8; 63]).unwrap();
        let e = load(Some(&short), &dir).err().unwrap();
        assert!(e.to_string().contains("63 bytes"), "{e}");
        let e = load(Some(&dir.join("missing")), &dir).err().unwrap();
        assert!(e.to_string().starts_with("reading session key"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
