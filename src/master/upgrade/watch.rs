//! `--watch`: upgrade in place whenever the binary's file is replaced, as a deploy followed by
//! `HUP` would, so `cargo build` in another terminal swaps the running app. The decision is
//! pure; the master looks at the file every `OBSERVE_EVERY` and sends itself a reload.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What identifies one version of the file: a build that rewrites it in place changes its
/// size or time, one that links a new file changes its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    /// The file at `path` now, if there is one.
    pub fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// What the watch has seen of the file.
#[derive(Debug, Default)]
pub struct Watch {
    /// At the previous look.
    seen: Option<Stamp>,
    /// The last version an upgrade was tried with (it may have failed its check: not again).
    tried: Option<Stamp>,
}

impl Watch {
    /// One look at a replaced file (`None`: the file is the running image, or missing).
    /// True when it is time to upgrade: the same version as at the previous look (a build
    /// still writing it is not taken half-written) and not tried before.
    pub fn look(&mut self, now: Option<Stamp>) -> bool {
        let settled = now.is_some() && now == self.seen;
        self.seen = now;
        if settled && self.tried != now {
            self.tried = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64, size: u64) -> Option<Stamp> {
        Some(Stamp {
            dev: 1,
            ino,
            size,
            mtime_ns: 5,
        })
    }

    #[test]
    fn a_replaced_file_is_taken_once_it_settles_and_only_once() {
        let mut w = Watch::default();
        assert!(!w.look(None), "nothing replaced");
        assert!(!w.look(stamp(2, 10)), "just appeared: may still be written");
        assert!(!w.look(stamp(2, 20)), "still growing");
        assert!(w.look(stamp(2, 20)), "settled");
        assert!(
            !w.look(stamp(2, 20)),
            "tried already (its check may have failed)"
        );
        assert!(!w.look(stamp(3, 20)), "another build");
        assert!(w.look(stamp(3, 20)));
        assert!(!w.look(None), "the upgrade ran: the file is the image");
    }
}
