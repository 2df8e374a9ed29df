//! The scoreboard: one shared memory mapping, made by the master before its first fork, with a
//! fixed-size record per worker (after Apache's and unicorn's). Workers write their counters
//! and heartbeats with relaxed atomics, without locks or system calls; the master reads them
//! for `clusterd status`, hang detection and recycling, and any worker reads all of them to
//! serve `/metrics`. Nothing in it is trusted for memory safety: it holds integers only.
//!
//! The mapping is a `memfd`, so it also crosses the master's `execve` on an upgrade: the new
//! image maps the same file, and the workers it adopts keep writing where it reads.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};

/// Heartbeats per worker: one per server thread (more threads share the last).
pub const MAX_THREADS: usize = 16;
/// Upper bounds (seconds) of the request duration histogram's buckets; +Inf is implied.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What the master publishes about the whole cluster, at the start of the mapping.
#[repr(C)]
pub struct Header {
    /// Unplanned worker deaths since the master started.
    pub restarts: AtomicU64,
    /// Workers serving.
    pub ready: AtomicU64,
    /// Workers wanted.
    pub target: AtomicU64,
    /// 1 while a rolling restart (reload, upgrade or recycling) is under way.
    pub reloading: AtomicU64,
}

/// One worker's record. All zeros is a valid, empty record.
#[repr(C)]
pub struct Record {
    /// The worker's pid (0: the record is free).
    pub pid: AtomicI32,
    /// Worker id.
    pub id: AtomicU64,
    /// Its slot.
    pub slot: AtomicU64,
    /// `CLOCK_MONOTONIC` ms when it was forked.
    pub started_ms: AtomicU64,
    /// Its session store as it last reported: 0 unknown, 1 up, 2 down.
    pub store: AtomicU64,
    /// `CLOCK_MONOTONIC` milliseconds of each server thread's last tick (0: not started).
    pub heartbeat_ms: [AtomicU64; MAX_THREADS],
    /// Requests answered.
    pub requests: AtomicU64,
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub status: [AtomicU64; 5],
    /// Request durations: one count per bucket of [`DURATION_BUCKETS`] (not cumulative), and
    /// the last for +Inf.
    pub duration: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Sum of request durations in microseconds.
    pub duration_sum_us: AtomicU64,
    /// Open client connections.
    pub connections: AtomicI64,
    /// The accept queue of the worker's socket and its limit, as the master last saw them
    /// (for `/metrics` and the dashboard, which the workers serve).
    pub accept_queue: AtomicU64,
    /// The kernel's limit of that queue (the backlog).
    pub accept_queue_max: AtomicU64,
    /// The worker's oldest request in flight (see [`Record::set_request`]). These words were
    /// unused before, zero in every record of an older image: the layout, which an upgrade
    /// adopts from the previous image, is the same.
    pub request: [AtomicU64; REQUEST_WORDS],
}

/// Words of a record's request in flight: a stamp, then its text.
pub const REQUEST_WORDS: usize = 8;
/// Bytes of a request's text on the board ("METHOD /path", cut to fit).
pub const REQUEST_TEXT: usize = (REQUEST_WORDS - 1) * 8;

/// A worker's oldest request in flight, as the master reads it off the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightRequest {
    /// "METHOD /path" (no query), cut to [`REQUEST_TEXT`] bytes.
    pub what: String,
    /// `CLOCK_MONOTONIC` ms when its head was parsed.
    pub started_ms: u64,
}

impl Record {
    /// Empties the record for a new worker (the master, before the fork).
    pub fn reset(&self, id: u64, slot: usize) {
        let zero = |a: &AtomicU64| a.store(0, Ordering::Relaxed);
        self.pid.store(0, Ordering::Relaxed);
        self.id.store(id, Ordering::Relaxed);
        self.slot.store(slot as u64, Ordering::Relaxed);
        self.started_ms.store(now_ms(), Ordering::Relaxed);
        zero(&self.store);
        self.heartbeat_ms.iter().for_each(zero);
        zero(&self.requests);
        self.status.iter().for_each(zero);
        self.duration.iter().for_each(zero);
        zero(&self.duration_sum_us);
        self.connections.store(0, Ordering::Relaxed);
        zero(&self.accept_queue);
        zero(&self.accept_queue_max);
        self.request.iter().for_each(zero);
    }

    /// Publishes the worker's oldest request in flight (`None`: nothing in flight). A seqlock:
    /// the stamp (start ms and a sequence number, never 0) is cleared first and written last,
    /// so a reader that sees the same stamp before and after the text read a whole one. Only
    /// the worker writes it, under its own lock.
    pub fn set_request(&self, request: Option<(u64, u16, &[u8])>) {
        let stamp = &self.request[0];
        stamp.store(0, Ordering::Relaxed);
        let Some((started_ms, seq, text)) = request else {
            return;
        };
        std::sync::atomic::fence(Ordering::Release);
        let mut bytes = [0u8; REQUEST_TEXT];
        let n = text.len().min(REQUEST_TEXT);
        bytes[..n].copy_from_slice(&text[..n]);
        for (word, chunk) in self.request[1..].iter().zip(bytes.chunks_exact(8)) {
            word.store(
                u64::from_le_bytes(chunk.try_into().unwrap_or_default()),
                Ordering::Relaxed,
            );
        }
        stamp.store(
            (started_ms << 16 | u64::from(seq)).max(1),
            Ordering::Release,
        );
    }

    /// The worker's oldest request in flight, if it published one and it was not being
    /// rewritten while read.
    pub fn request(&self) -> Option<InFlightRequest> {
        let stamp = self.request[0].load(Ordering::Acquire);
        if stamp == 0 {
            return None;
        }
        let mut bytes = Vec::with_capacity(REQUEST_TEXT);
        for word in &self.request[1..] {
            bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        std::sync::atomic::fence(Ordering::Acquire);
        if self.request[0].load(Ordering::Relaxed) != stamp {
            return None;
        }
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        Some(InFlightRequest {
            what: String::from_utf8_lossy(&bytes[..end]).into_owned(),
            started_ms: stamp >> 16,
        })
    }

    /// The oldest heartbeat among the threads that have ticked, as an age in ms at `now_ms`;
    /// `None` before the first tick.
    pub fn heartbeat_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.heartbeat_ms
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .filter(|h| *h != 0)
            .min()
            .map(|oldest| now_ms.saturating_sub(oldest))
    }

    /// Counts one answered request.
    pub fn count_request(&self, status: u16, took: std::time::Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// `CLOCK_MONOTONIC` in milliseconds: the same clock in every process of the machine.
pub fn now_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
    })
}

/// Errors making or mapping the scoreboard.
#[derive(Debug, thiserror::Error)]
#[error("scoreboard: {op}: {source}")]
pub struct BoardError {
    op: &'static str,
    source: nix::Error,
}

impl BoardError {
    pub(crate) fn adopting() -> BoardError {
        BoardError {
            op: "adopting the inherited descriptor",
            source: nix::Error::EBADF,
        }
    }

    pub(crate) fn too_short() -> BoardError {
        BoardError {
            op: "mapping a board shorter than its header",
            source: nix::Error::EINVAL,
        }
    }
}

/// The mapping: a [`Header`], then the records.
pub struct Scoreboard {
    fd: OwnedFd,
    board: Board,
}

/// The mapped board, as every process sees it.
#[derive(Clone, Copy)]
pub struct Board {
    /// The cluster's figures.
    pub header: &'static Header,
    /// One record per worker place.
    pub records: &'static [Record],
}

/// Bytes before the first record (a multiple of Record's alignment).
const HEADER_LEN: usize = std::mem::size_of::<Header>().next_multiple_of(64);

impl Scoreboard {
    /// Makes a board of `n` records.
    pub fn create(n: usize) -> Result<Self, BoardError> {
        let len = HEADER_LEN + n.max(1) * std::mem::size_of::<Record>();
        Self::map(sealed_memfd(c"clusterd-scoreboard", len)?)
    }

    /// Maps a board made by the previous image of this process (an upgrade).
    pub fn adopt(fd: RawFd) -> Result<Self, BoardError> {
        let fd = crate::fd::adopt(fd).ok_or(BoardError {
            op: "adopting the inherited descriptor",
            source: nix::Error::EBADF,
        })?;
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> Result<Self, BoardError> {
        let (base, len) = map_shared(&fd)?;
        let n = len.saturating_sub(HEADER_LEN) / std::mem::size_of::<Record>();
        // SAFETY: the mapping is page-aligned, so the header at its start and the records at
        // HEADER_LEN (a multiple of 64) are aligned; it is at least HEADER_LEN + n records long;
        // zero-filled by the kernel (all zeros is a valid Header and Record: atomics only); and
        // shared memory that other processes change only through atomics.
        let board = unsafe {
            Board {
                header: &*base.cast::<Header>(),
                records: std::slice::from_raw_parts(base.add(HEADER_LEN).cast::<Record>(), n),
            }
        };
        Ok(Scoreboard { fd, board })
    }

    /// The memfd, for the upgrade state.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The board.
    pub fn board(&self) -> Board {
        self.board
    }
}

/// A memfd of `len` bytes whose size is fixed for good: a worker (or anything that gets at the
/// descriptor through /proc) that truncated it would make every reader of the mapping, the
/// master first, die of SIGBUS.
pub(crate) fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> Result<OwnedFd, BoardError> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let err = |op| move |source| BoardError { op, source };
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(err("memfd_create"))?;
    nix::unistd::ftruncate(&fd, len as i64).map_err(err("ftruncate"))?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(err("sealing the memfd"))?;
    Ok(fd)
}

/// Maps all of `fd` shared, for the life of the process; its start and its length.
pub(crate) fn map_shared(fd: &OwnedFd) -> Result<(*mut u8, usize), BoardError> {
    let err = |op| move |source| BoardError { op, source };
    let len = nix::sys::stat::fstat(fd).map_err(err("fstat"))?.st_size as usize;
    let size = std::num::NonZeroUsize::new(len).ok_or(BoardError {
        op: "mapping an empty board",
        source: nix::Error::EINVAL,
    })?;
    use nix::sys::mman::{MapFlags, ProtFlags, mmap};
    // SAFETY: a fresh shared mapping of the memfd, never unmapped (it lives as long as the
    // process, so the 'static references made from it stay valid); the file is `len` long and
    // sealed against shrinking.
    let ptr = unsafe {
        mmap(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }
    .map_err(err("mmap"))?;
    Ok((ptr.as_ptr().cast::<u8>(), len))
}

/// The board and this worker's record, set once when a worker boots.
static MINE: OnceLock<(Board, usize)> = OnceLock::new();

/// Called by a new worker: its record is `index` on `board`.
pub fn set_mine(board: Board, index: usize) {
    let _ = MINE.set((board, index));
}

/// This worker's record, if it has one (not in tests that serve without a master).
pub fn mine() -> Option<&'static Record> {
    MINE.get().and_then(|(b, i)| b.records.get(*i))
}

/// The whole board, from inside a worker (for `/metrics`).
pub fn board() -> Option<Board> {
    MINE.get().map(|(b, _)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_flight_reads_back_cut_to_fit() {
        let board = Scoreboard::create(1).unwrap();
        let r = &board.board().records[0];
        assert_eq!(r.request(), None);
        r.set_request(Some((1234, 7, b"GET /orders")));
        let got = r.request().unwrap();
        assert_eq!((got.what.as_str(), got.started_ms), ("GET /orders", 1234));
        let long = format!("POST /{}", "x".repeat(100));
        r.set_request(Some((99, 8, long.as_bytes())));
        assert_eq!(r.request().unwrap().what, long[..REQUEST_TEXT]);
        r.set_request(None);
        assert_eq!(r.request(), None);
    }

    #[test]
    fn the_board_cannot_be_truncated() {
        let board = Scoreboard::create(4).unwrap();
        // SAFETY: `board` owns the descriptor and outlives this borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(board.fd()) };
        assert_eq!(nix::unistd::ftruncate(fd, 0), Err(nix::Error::EPERM));
        let records = board.board().records.len();
        assert!(records >= 4, "{records}");
    }
}
