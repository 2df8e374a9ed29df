//! Whether a replaced binary may become the master's next image. Runs in the master, on SIGHUP.
//!
//! The master runs the new file as root, so who could have written it matters: the file must
//! belong to root or the master's user, must not be writable by others nor by a group other
//! than its owner's own, and every directory on its real path that others can write must be
//! sticky (as /tmp is), so nobody else can swap the file. It is opened once; the check and the
//! `execve` both run that descriptor, so a second deploy during the check is not run unchecked.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for the upgrade and checks it may be trusted; the reason if not.
pub fn open_trusted(path: &Path) -> Result<OwnedFd, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let owner_group = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw());
    let me = nix::unistd::geteuid().as_raw();
    file_trusted(meta.uid(), meta.gid(), meta.mode(), owner_group, me)
        .map_err(|why| format!("{}: {why}", path.display()))?;
    // Where the descriptor really points (links resolved), not what the name said.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for dir in real.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .mode();
        if !dir_trusted(mode) {
            return Err(format!(
                "{} is writable by others and not sticky: anyone could replace the binary",
                dir.display()
            ));
        }
    }
    Ok(file.into())
}

/// The file's owner, group and mode allow nobody but root and `me` to change it.
fn file_trusted(
    uid: u32,
    gid: u32,
    mode: u32,
    owner_group: Option<u32>,
    me: u32,
) -> Result<(), String> {
    if uid != 0 && uid != me {
        return Err(format!("owned by uid {uid}, not root or this user"));
    }
    if mode & 0o002 != 0 {
        return Err("writable by others".into());
    }
    if mode & 0o020 != 0 && owner_group != Some(gid) {
        return Err(format!(
            "writable by group {gid}, which is not its owner's own"
        ));
    }
    Ok(())
}

/// A directory others cannot use to swap a file: not writable by them, or sticky.
fn dir_trusted(mode: u32) -> bool {
    mode & 0o002 == 0 || mode & 0o1000 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_or_this_user_may_write_the_next_image() {
        assert!(file_trusted(0, 0, 0o100755, Some(0), 1000).is_ok());
        assert!(file_trusted(1000, 1000, 0o100775, Some(1000), 1000).is_ok());
        assert!(file_trusted(1001, 1001, 0o100755, Some(1001), 1000).is_err());
        assert!(file_trusted(0, 0, 0o100757, Some(0), 0).is_err(), "others");
        assert!(
            file_trusted(0, 50, 0o100775, Some(0), 0).is_err(),
            "another group"
        );
        assert!(dir_trusted(0o40755) && dir_trusted(0o41777));
        assert!(!dir_trusted(0o40777));
    }
}
