//! Descriptors that cross `execve`: close-on-exec on and off, and taking one over in the new
//! image. One place for what the upgrade, the scoreboard and the socket table all need. Runs in
//! the master.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Sets or clears close-on-exec on a descriptor the caller owns.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and write the descriptor's flags; callers pass
    // descriptors they own.
    let flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | nix::libc::FD_CLOEXEC
    } else {
        flags & !nix::libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes over a descriptor the previous image of this process let cross `execve` and makes it
/// close-on-exec again; `None` if it is not open.
pub fn adopt(fd: RawFd) -> Option<OwnedFd> {
    set_cloexec(fd, true).ok()?;
    // SAFETY: the previous image of this process exported fd as one of its own and let it
    // cross execve; F_SETFD above proved it open; the master adopts inherited descriptors
    // before it opens anything that could have been given that number.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
