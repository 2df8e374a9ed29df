//! Steering in `per-worker` mode: the classic BPF program attached to the reuseport group that
//! maps each new connection's hash onto a live slot's socket, leaving out the slots
//! `--balance load` avoids. Runs in the master.

use std::os::fd::{AsRawFd, RawFd};

use super::*;

/// How new connections are spread over the slots' sockets in `per-worker` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The connection's hash, over every live slot (blind to load).
    Hash,
    /// The hash over the slots whose worker keeps up: the master samples every worker every
    /// 50 ms and steers new connections away from one that is stopped, stalled or backlogged.
    #[default]
    Load,
}

impl Balance {
    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Hash => "hash",
            Balance::Load => "load",
        }
    }
}

impl FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hash" => Ok(Balance::Hash),
            "load" => Ok(Balance::Load),
            _ => Err(format!("{s:?} is not one of load, hash")),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Sockets {
    /// Steers new connections away from the sockets of `slots` (and back to every other one),
    /// in `per-worker` mode. Returns whether that changed the steering.
    pub fn avoid(&mut self, slots: &[usize]) -> bool {
        if self.mode != SocketMode::PerWorker || !self.fallback.is_empty() {
            return false;
        }
        let mut serials: Vec<u64> = slots
            .iter()
            .filter_map(|s| self.slots.get(*s)?.as_ref().map(|e| e.serial))
            .collect();
        serials.sort_unstable();
        if self.avoided.as_ref() == Some(&serials) {
            return false;
        }
        self.avoided = Some(serials);
        self.steer();
        true
    }

    /// Attaches a program to the group that sends each new connection to a live slot's
    /// socket, chosen by the connection's hash, leaving out the avoided ones unless they are
    /// all there is.
    pub(super) fn steer(&mut self) {
        if !self.steer {
            return;
        }
        let live = |i: &usize| !self.closing.contains(&self.group[*i]);
        let mut active: Vec<u32> = (0..self.group.len())
            .filter(live)
            .filter(|i| {
                self.avoided
                    .as_ref()
                    .is_none_or(|a| !a.contains(&self.group[*i]))
            })
            .map(|i| i as u32)
            .collect();
        if active.is_empty() {
            active = (0..self.group.len())
                .filter(live)
                .map(|i| i as u32)
                .collect();
        }
        let Some(holder) = self
            .slots
            .iter()
            .flatten()
            .find(|e| !self.closing.contains(&e.serial))
        else {
            return;
        };
        if let Err(e) =
            attach_reuseport_cbpf(holder.listener.as_raw_fd(), &steering_program(&active))
        {
            tracing::warn!(error = %e, "attaching the SO_REUSEPORT steering program failed; the kernel's own hash spreads connections, and a retiring slot may reset what is queued on it");
            self.unsteer();
        }
    }

    pub(super) fn unsteer(&mut self) {
        self.steer = false;
    }

    /// Hands the group back to the kernel's own hash for good: attaches a program that names
    /// no socket (the kernel then hashes over its sockets), replacing one a previous master
    /// attached for an order no longer known, and stops steering.
    pub(super) fn release_steering(&mut self) {
        if let Some(holder) = self.slots.iter().flatten().next() {
            let _ = attach_reuseport_cbpf(holder.listener.as_raw_fd(), &steering_program(&[]));
        }
        self.unsteer();
    }
}

/// A classic BPF program for `SO_ATTACH_REUSEPORT_CBPF`: the connection's hash modulo the
/// number of live sockets, looked up in `indices` (positions in the kernel's array).
fn steering_program(indices: &[u32]) -> Vec<nix::libc::sock_filter> {
    use nix::libc::{
        BPF_ABS, BPF_ALU, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_MOD, BPF_RET, BPF_W, SKF_AD_OFF,
        SKF_AD_RXHASH, sock_filter,
    };
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let n = indices.len().max(1) as u32;
    let mut prog = vec![
        // A = skb->hash (the flow hash of the connection's addresses and ports)
        op(
            BPF_LD | BPF_W | BPF_ABS,
            0,
            0,
            (SKF_AD_OFF + SKF_AD_RXHASH) as u32,
        ),
        // A %= number of live sockets
        op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, n),
    ];
    for (j, index) in indices.iter().enumerate() {
        // if A == j return indices[j]
        prog.push(op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, j as u32));
        prog.push(op(BPF_RET | BPF_K, 0, 0, *index));
    }
    // Unreachable with n live sockets; an index past the array makes the kernel use its hash.
    prog.push(op(BPF_RET | BPF_K, 0, 0, u32::MAX));
    prog
}

/// `SO_ATTACH_REUSEPORT_CBPF` from the kernel's asm-generic/socket.h (x86-64, arm64 and most
/// architectures; the libc crate defines it for Android only).
const SO_ATTACH_REUSEPORT_CBPF: nix::libc::c_int = 51;

/// Attaches `prog` to the SO_REUSEPORT group of `fd` (it replaces the group's program).
fn attach_reuseport_cbpf(fd: RawFd, prog: &[nix::libc::sock_filter]) -> std::io::Result<()> {
    let fprog = nix::libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the program
    // and reads exactly `len` instructions; the option's size is that of `sock_fprog`.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const nix::libc::sock_fprog).cast(),
            std::mem::size_of::<nix::libc::sock_fprog>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
