//! The cookie key and the data dir, prepared by the master before any fork (fork rule 5: one
//! key for every worker, so a cookie minted by worker 1 opens on worker 2; and for every host,
//! when they share the key file).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use actix_web::cookie::Key;
use nix::unistd::{Gid, Uid};
use rand::TryRngCore;

/// Shortest key accepted, in bytes (the cookie crate signs with 32 and encrypts with 32).
pub const MIN_KEY_LEN: usize = 64;
/// Name of the generated key inside the data dir.
pub const GENERATED_NAME: &str = "session.key";

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
        return Ok((read(path)?, KeyOrigin::Configured(path.to_path_buf())));
    }
    let path = data_dir.join(GENERATED_NAME);
    if path.exists() {
        return Ok((read(&path)?, KeyOrigin::Kept(path)));
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
    // both running with different keys.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_err)?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    Ok((Key::from(&bytes), KeyOrigin::Generated(path)))
}

fn read(path: &Path) -> Result<Key, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < MIN_KEY_LEN {
        return Err(KeyError::TooShort {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    Ok(Key::from(&bytes))
}

/// Creates the data dir (mode 0700) if needed and, for the embedded store, the database. When
/// workers run as another user, hands them the dir and the database files, which they write;
/// the key stays readable by root only.
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
    if embedded_store {
        super::sqlite::SqliteStore::initialize(dir).map_err(|e| KeyError::Write {
            op: "creating the embedded session store in",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    if let Some((uid, gid)) = owner {
        let names = [
            "",
            super::sqlite::FILE_NAME,
            "sessions.sqlite3-wal",
            "sessions.sqlite3-shm",
        ];
        for name in names {
            let path = if name.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(name)
            };
            if path.exists() {
                std::os::unix::fs::chown(&path, Some(uid.as_raw()), Some(gid.as_raw()))
                    .map_err(err("changing owner of"))?;
            }
        }
    }
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
