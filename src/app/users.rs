//! The users file: one `name:argon2-hash` per line, `#` starts a comment. Loaded and checked by
//! the master (a bad file stops the start with a clear error); verified against in workers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// The demo user's name when no users file is configured.
pub const DEMO_USER: &str = "alice";
/// argon2id hash of the demo password `wonderland` (default parameters), made with
/// `clusterd hash-password`.
const DEMO_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZVKi1NFaErTylLm60KQnOw$aQdAAQB2Y8ZdjDPoCCQtpPPcrHsqoZHsYEEX+gg60ZQ";

/// Problems with the users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It could not be read.
    #[error("reading users file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not `name:hash` with a valid argon2 PHC string.
    #[error("users file {path}, line {line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file has no user at all.
    #[error("users file {0} defines no user")]
    Empty(PathBuf),
}

/// Known users and their password hashes.
#[derive(Debug, Clone)]
pub struct Users {
    hashes: HashMap<String, String>,
    demo: bool,
}

impl Users {
    /// Reads `path`, or gives the demo user when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, UsersError> {
        let Some(path) = path else {
            return Ok(Users {
                hashes: HashMap::from([(DEMO_USER.to_string(), DEMO_HASH.to_string())]),
                demo: true,
            });
        };
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let users = Self::parse(&text).map_err(|(line, message)| UsersError::Line {
            path: path.to_path_buf(),
            line,
            message,
        })?;
        if users.hashes.is_empty() {
            return Err(UsersError::Empty(path.to_path_buf()));
        }
        Ok(users)
    }

    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or((i + 1, "expected name:hash".to_string()))?;
            if name.is_empty() || name.len() > super::MAX_USERNAME {
                return Err((
                    i + 1,
                    format!("user name must be 1 to {} bytes", super::MAX_USERNAME),
                ));
            }
            PasswordHash::new(hash).map_err(|e| (i + 1, format!("not an argon2 hash: {e}")))?;
            if hashes.insert(name.to_string(), hash.to_string()).is_some() {
                return Err((i + 1, format!("user {name:?} appears twice")));
            }
        }
        Ok(Users {
            hashes,
            demo: false,
        })
    }

    /// True when running with the built-in demo user.
    pub fn is_demo(&self) -> bool {
        self.hashes.len() == 1 && self.demo
    }

    /// Checks a password. An unknown user costs the same argon2 work as a known one, so timing
    /// does not reveal which names exist.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(name) {
            Some(h) => (h.as_str(), true),
            None => (DEMO_HASH, false),
        };
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    }
}

/// Hashes a password with argon2id and a random salt, for `clusterd hash-password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut salt)
        .map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_user_verifies_and_others_do_not() {
        let users = Users::load(None).unwrap();
        assert!(users.is_demo());
        assert!(users.verify("alice", "wonderland"));
        assert!(!users.verify("alice", "Wonderland"));
        assert!(!users.verify("bob", "wonderland"));
    }

    #[test]
    fn parses_files_and_reports_bad_lines() {
        let hash = hash_password("pw").unwrap();
        let users = Users::parse(&format!("# comment\n\nbob:{hash}\n")).unwrap();
        assert!(users.verify("bob", "pw"));
        assert!(!users.is_demo());
        assert_eq!(Users::parse("bob").unwrap_err().0, 1);
        assert_eq!(Users::parse("\nbob:plaintext").unwrap_err().0, 2);
        assert!(
            Users::parse(&format!("bob:{hash}\nbob:{hash}"))
                .unwrap_err()
                .1
                .contains("twice")
        );
    }
}
