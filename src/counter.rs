//! Counters of the app's own, summed over the workers by `/metrics`: registered by name in the
//! master before the first fork (in [`crate::program::Service::build`]), incremented in the
//! workers with one relaxed atomic add on the worker's row of a shared memfd beside the
//! scoreboard (no lock, no system call), and monotonic: what a worker counted is folded into
//! the retired totals when its row is reused, so a death or a recycle takes nothing away.
//!
//! ```no_run
//! # use clusterd::counter;
//! // In `Service::build`, in the master:
//! let served = counter::counter("hello_greetings_total", "Greetings served");
//! // In a handler, in a worker:
//! served.inc();
//! ```

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Mutex, OnceLock};

use crate::scoreboard::{BoardError, map_shared, sealed_memfd};

/// Counters an app may register.
pub const MAX_APP_COUNTERS: usize = 64;

/// What every worker place counted since the master started (or since the upgrade that
/// brought this image), in a memfd of its own beside the scoreboard: one row per scoreboard
/// record, plus what the rows' earlier workers counted.
#[repr(C)]
struct Header {
    /// Which counter each index is, as [`layout`] of the image that last handed the slab on
    /// (first, so that any release can read it): a slab of another layout is not adopted.
    layout: AtomicU64,
    /// Odd while the master folds a row into `retired` (a sequence lock).
    fold_seq: AtomicU64,
    /// What workers whose rows were reused counted.
    retired: [AtomicU64; MAX_APP_COUNTERS],
}

type Row = [AtomicU64; MAX_APP_COUNTERS];

/// The mapped counters, as every process sees them.
#[derive(Clone, Copy)]
pub struct Board {
    header: &'static Header,
    rows: &'static [Row],
}

impl Board {
    /// Rows: one per scoreboard record.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// The counters' memfd and mapping, owned by the master.
pub struct Slab {
    fd: OwnedFd,
    board: Board,
}

impl Slab {
    /// Makes room for `n` workers.
    pub fn create(n: usize) -> Result<Slab, BoardError> {
        let len = std::mem::size_of::<Header>() + n.max(1) * std::mem::size_of::<Row>();
        Self::map(sealed_memfd(c"clusterd-counters", len)?)
    }

    /// Maps the counters of the previous image of this process (an upgrade).
    pub fn adopt(fd: RawFd) -> Result<Slab, BoardError> {
        let fd = crate::fd::adopt(fd).ok_or(BoardError::adopting())?;
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> Result<Slab, BoardError> {
        let (base, len) = map_shared(&fd)?;
        if len < std::mem::size_of::<Header>() {
            return Err(BoardError::too_short());
        }
        let n = len.saturating_sub(std::mem::size_of::<Header>()) / std::mem::size_of::<Row>();
        // SAFETY: the mapping is page-aligned and at least a header and `n` rows long; the
        // header's size is a multiple of 8, so the rows are aligned; all zeros is a valid value
        // of both (atomics only), and other processes change them only through atomics.
        let board = unsafe {
            Board {
                header: &*base.cast::<Header>(),
                rows: std::slice::from_raw_parts(
                    base.add(std::mem::size_of::<Header>()).cast::<Row>(),
                    n,
                ),
            }
        };
        Ok(Slab { fd, board })
    }

    /// The memfd, for the upgrade state.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The mapping.
    pub fn board(&self) -> Board {
        self.board
    }

    /// Records which counter each index is, before the slab crosses an upgrade.
    pub fn mark_layout(&self) {
        self.board.header.layout.store(layout(), Ordering::Relaxed);
    }

    /// Whether the slab's indices mean the counters this image registered.
    pub fn same_layout(&self) -> bool {
        self.board.header.layout.load(Ordering::Relaxed) == layout()
    }

    /// Before row `i` gets a new worker (whose previous one was reaped): adds what it counted
    /// to the retired totals and empties it, as one step for readers.
    pub fn fold(&self, i: usize) {
        let (h, Some(row)) = (self.board.header, self.board.rows.get(i)) else {
            return;
        };
        h.fold_seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (total, n) in h.retired.iter().zip(row) {
            total.fetch_add(n.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
        h.fold_seq.fetch_add(1, Ordering::Release);
    }
}

/// A hash of the registered counters in index order (and of the slab's shape): two images
/// agree on it only if every index means the same counter to both.
pub fn layout() -> u64 {
    use std::hash::{Hash, Hasher};
    let all = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    // SipHash with fixed keys: the same in every image of every build.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    (MAX_APP_COUNTERS, std::mem::size_of::<Header>()).hash(&mut h);
    for d in all.iter() {
        (&d.name, &d.labels, d.unit == Unit::Seconds).hash(&mut h);
    }
    h.finish() | 1
}

/// The counters and this worker's row, set once when a worker boots.
static MINE: OnceLock<(Board, usize)> = OnceLock::new();

/// Called by a new worker: its row is `i`.
pub(crate) fn set_mine(board: Board, i: usize) {
    let _ = MINE.set((board, i));
}

fn mine() -> Option<&'static Row> {
    MINE.get().and_then(|(b, i)| b.rows.get(*i))
}

/// The counters, from inside a worker (for `/metrics`).
pub(crate) fn board() -> Option<Board> {
    MINE.get().map(|(b, _)| *b)
}

/// What a counter measures, and so how `/metrics` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Events: shown as counted.
    Count,
    /// Time, added with [`Counter::add_duration`] in microseconds and shown in seconds.
    Seconds,
}

/// One registered counter.
#[derive(Debug, Clone, PartialEq)]
pub struct Desc {
    /// Its Prometheus name, without the `_total` the exposition adds.
    pub name: String,
    /// Its help text.
    pub help: String,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// Its unit.
    pub unit: Unit,
}

static REGISTRY: Mutex<Vec<Desc>> = Mutex::new(Vec::new());

/// A counter's handle: cheap to copy into handlers.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<usize>);

/// Registers (or finds) a counter without labels. See [`register`].
pub fn counter(name: &str, help: &str) -> Counter {
    register(name, help, &[], Unit::Count)
}

/// Registers a counter, or returns the one registered with the same name and labels (a reload
/// registers again). In the master, before the first fork: a counter registered in a worker, or
/// beyond [`MAX_APP_COUNTERS`], or with a name Prometheus would refuse, counts nothing and
/// says so in the log.
pub fn register(name: &str, help: &str, labels: &[(&str, &str)], unit: Unit) -> Counter {
    let name = name.strip_suffix("_total").unwrap_or(name);
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !valid {
        tracing::error!(
            name,
            "counter name is not a Prometheus name; it counts nothing"
        );
        return Counter(None);
    }
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut all = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = all
        .iter()
        .position(|d| d.name == name && d.labels == labels)
    {
        return Counter(Some(i));
    }
    if mine().is_some() {
        tracing::error!(
            name,
            "counter registered in a worker (register it in Service::build, before the fork); it counts nothing"
        );
        return Counter(None);
    }
    if all.len() >= MAX_APP_COUNTERS {
        tracing::error!(
            name,
            max = MAX_APP_COUNTERS,
            "too many counters; this one counts nothing"
        );
        return Counter(None);
    }
    all.push(Desc {
        name: name.to_string(),
        help: help.to_string(),
        labels,
        unit,
    });
    Counter(Some(all.len() - 1))
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        if let (Some(i), Some(row)) = (self.0, mine()) {
            row[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds a duration, in microseconds (for a [`Unit::Seconds`] counter).
    pub fn add_duration(&self, d: std::time::Duration) {
        self.add(d.as_micros() as u64);
    }
}

/// Every registered counter and its total over the board: what retired workers counted plus
/// what every record holds now. Read under the header's fold sequence, so a record being
/// folded is counted once, never twice or not at all.
pub fn totals(board: Board) -> Vec<(Desc, u64)> {
    let all = REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let h = board.header;
    loop {
        let before = h.fold_seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let sums: Vec<u64> = (0..all.len())
            .map(|i| {
                h.retired[i].load(Ordering::Relaxed)
                    + board
                        .rows
                        .iter()
                        .map(|r| r[i].load(Ordering::Relaxed))
                        .sum::<u64>()
            })
            .collect();
        fence(Ordering::Acquire);
        if h.fold_seq.load(Ordering::Relaxed) == before {
            return all.into_iter().zip(sums).collect();
        }
    }
}
