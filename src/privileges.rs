//! Dropping root: the master (root, so it can bind port 80) resolves `--user` / `--group` before
//! forking; each worker switches to them before it serves. Resolution runs in the master, the
//! switch in workers.

use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

/// Why the user or group could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user in the user database.
    #[error("no user named {0:?}")]
    NoUser(String),
    /// No such group in the group database.
    #[error("no group named {0:?}")]
    NoGroup(String),
    /// `--user` given but the master does not run as root, so it could not switch.
    #[error("--user {0:?} needs the master to start as root")]
    NotRoot(String),
    /// A lookup or switch failed at the OS level.
    #[error("{op}: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// errno.
        source: nix::Error,
    },
}

/// Looks up the uid and gid to run workers as. `None` when no `--user` is set.
pub fn resolve(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(Uid, Gid)>, PrivilegeError> {
    let Some(name) = user else { return Ok(None) };
    if !Uid::effective().is_root() {
        return Err(PrivilegeError::NotRoot(name.to_string()));
    }
    let os = |op| move |source| PrivilegeError::Os { op, source };
    let u = User::from_name(name)
        .map_err(os("looking up the user"))?
        .ok_or_else(|| PrivilegeError::NoUser(name.to_string()))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(os("looking up the group"))?
                .ok_or_else(|| PrivilegeError::NoGroup(g.to_string()))?
                .gid
        }
        None => u.gid,
    };
    Ok(Some((u.uid, gid)))
}

/// Switches this process to `uid`/`gid` for good: supplementary groups first (only root may
/// set them), then the group, then the user. Leaving root through `setuid` clears every
/// capability from the permitted and effective sets.
pub fn drop_to(uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    let os = |op| move |source| PrivilegeError::Os { op, source };
    setgroups(&[gid]).map_err(os("setgroups"))?;
    setgid(gid).map_err(os("setgid"))?;
    setuid(uid).map_err(os("setuid"))?;
    // If root could be regained, the drop did not happen.
    if setuid(Uid::from_raw(0)).is_ok() && !uid.is_root() {
        return Err(PrivilegeError::Os {
            op: "verifying the drop",
            source: nix::Error::EPERM,
        });
    }
    Ok(())
}
