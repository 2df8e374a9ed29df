//! Versions of the embedded store's sessions that every process opening one data dir shares: a
//! small file of counters mapped into each, one of which a writer bumps once it has committed a
//! change to a session. A worker's cache then knows with one atomic load, and no system call,
//! whether its copy is still current. Sessions share counters by hash ([`BUCKETS`] of them): a
//! change to one costs the others of its bucket a miss, never a stale answer. Runs in workers.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// File name inside the data dir.
pub const FILE_NAME: &str = "sessions.versions";
/// Counters in the file.
pub const BUCKETS: usize = 4096;

/// The mapped counters of one data dir.
pub(crate) struct Versions {
    slots: &'static [AtomicU64],
}

/// Every file this process mapped: one mapping per file, however many store handles open it.
static MAPPED: Mutex<Vec<(PathBuf, &'static Versions)>> = Mutex::new(Vec::new());

impl Versions {
    /// Maps `data_dir`'s versions file, creating it (0600, never through a symlink) if needed.
    pub(crate) fn open(data_dir: &Path) -> Result<&'static Versions, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let mut mapped = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = mapped.iter().find(|(p, _)| *p == path) {
            return Ok(v);
        }
        let failed = |e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("session versions {}: {e}", path.display()))
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| failed(&e))?;
        let len = (BUCKETS * std::mem::size_of::<u64>()) as u64;
        // Only ever grown: another worker may have it mapped.
        if file.metadata().map_err(|e| failed(&e))?.len() < len {
            file.set_len(len).map_err(|e| failed(&e))?;
        }
        let (base, _) =
            crate::scoreboard::map_shared(&OwnedFd::from(file)).map_err(|e| failed(&e))?;
        // SAFETY: the mapping is page-aligned, at least BUCKETS u64s long, shared and never
        // unmapped (so 'static holds); zeros (a new file) are valid AtomicU64s, and every
        // process touches it through atomics only. clusterd only ever grows the file; one who
        // can write the data dir could truncate it and crash the workers with SIGBUS, as they
        // could delete the database: the data dir is the workers' own (0700).
        let slots = unsafe { std::slice::from_raw_parts(base.cast::<AtomicU64>(), BUCKETS) };
        let v: &'static Versions = Box::leak(Box::new(Versions { slots }));
        mapped.push((path, v));
        Ok(v)
    }

    /// The current version of `id`'s bucket.
    pub(crate) fn of(&self, id: &str) -> u64 {
        self.slots[bucket(id)].load(Ordering::Acquire)
    }

    /// Called after a change to `id` was committed.
    pub(crate) fn bump(&self, id: &str) {
        self.slots[bucket(id)].fetch_add(1, Ordering::Release);
    }
}

/// FNV-1a: the same in every build, so an old and a new image agree during an upgrade (std's
/// hasher promises no such thing).
fn bucket(id: &str) -> usize {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % BUCKETS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_is_seen_through_another_mapping_of_the_file() {
        let dir = std::env::temp_dir().join(format!("clusterd-versions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v = Versions::open(&dir).unwrap();
        assert!(
            std::ptr::eq(v, Versions::open(&dir).unwrap()),
            "one mapping"
        );
        // What another process sees: a mapping of its own of the same file.
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(dir.join(FILE_NAME))
            .unwrap();
        let (base, _) = crate::scoreboard::map_shared(&OwnedFd::from(file)).unwrap();
        // SAFETY: as in `Versions::open`.
        let other = unsafe { std::slice::from_raw_parts(base.cast::<AtomicU64>(), BUCKETS) };
        let before = v.of("abc");
        other[bucket("abc")].fetch_add(1, Ordering::Release);
        assert_eq!(v.of("abc"), before + 1);
        v.bump("abc");
        assert_eq!(other[bucket("abc")].load(Ordering::Acquire), before + 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn buckets_are_fnv_1a_in_every_build() {
        // FNV-1a 64 of "abc" is 0xe71fa2190541574b.
        assert_eq!(
            bucket("abc"),
            (0xe71f_a219_0541_574b_u64 % BUCKETS as u64) as usize
        );
    }
}
