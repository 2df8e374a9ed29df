//! The read ends of the workers' pipes, read a bounded amount per turn. Runs in the master, at
//! the edge.
//!
//! One `read` of at most `READ_MAX` bytes per pipe per turn: a worker that keeps writing
//! cannot keep the master in a loop (no reaping, no signals, no watchdog). A working worker
//! writes a handful of bytes in its whole life (ready, health changes, socket closed), so more
//! than `FLOOD` in one turn is reported as a broken protocol and the worker is replaced.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::event::Message;

/// The most read from one pipe in one turn.
const READ_MAX: usize = 64;
/// More bytes than this in one turn is a flood.
const FLOOD: usize = 16;

/// Each worker's pipe, by worker id, until EOF.
#[derive(Default)]
pub struct Pipes {
    open: Vec<(u64, OwnedFd)>,
}

impl Pipes {
    /// Adds worker `id`'s pipe.
    pub fn insert(&mut self, id: u64, fd: OwnedFd) {
        self.open.push((id, fd));
    }

    /// Stops reading worker `id`'s pipe and closes it.
    pub fn remove(&mut self, id: u64) {
        self.open.retain(|(i, _)| *i != id);
    }

    /// For the poll.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.open.iter().map(|(_, fd)| fd.as_fd())
    }

    /// For the upgrade state.
    pub fn raw(&self) -> Vec<(u64, RawFd)> {
        self.open
            .iter()
            .map(|(id, fd)| (*id, fd.as_raw_fd()))
            .collect()
    }

    /// What each worker wrote since the last turn (one bounded read each). A pipe at EOF (the
    /// worker is gone; the reaper says why) is closed.
    pub fn read(&mut self) -> Vec<(u64, Message)> {
        let mut out = Vec::new();
        self.open.retain(|(id, fd)| {
            let mut buf = [0u8; READ_MAX];
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => return false,
                Ok(n) if n > FLOOD => out.push((*id, Message::Flood(n))),
                Ok(n) => out.extend(buf[..n].iter().map(|b| (*id, Message::from_byte(*b)))),
                // WouldBlock: nothing new.
                Err(_) => {}
            }
            true
        });
        out
    }
}
