//! The dashboard's memory: the last 5 minutes of requests per second, p50/p99 latency and
//! accept queue, per slot and for the cluster, one point a second, and the master's last 20
//! events (deaths, respawns, reloads, recycles, hang kills, with their reasons). The master
//! writes them into a shared memfd made before the first fork; the workers, which serve the
//! dashboard, read it. Nothing in it is trusted for memory safety: integers only.
//!
//! The points come from the scoreboard: each second the master takes the difference of every
//! worker's request count and duration histogram, sums them by slot, and reads the percentiles
//! off the summed histogram. The events are the master's own log lines, taken by a tracing
//! layer ([`EventLayer`]), so the dashboard says what the journal says.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::scoreboard::{Board, BoardError, DURATION_BUCKETS, map_shared, sealed_memfd};

/// Points kept (one more than shown: the place being overwritten): 5 minutes at one a second.
pub const POINTS: usize = 301;
/// Events kept (one more than shown: the place being overwritten).
pub const EVENTS: usize = 21;
/// Bytes of an event's text.
const EVENT_TEXT: usize = 31 * 8;
/// A latency that was not measured (no request in that second).
const NONE: u32 = u32::MAX;

#[repr(C)]
struct Header {
    /// Points written so far (the next goes at `points % POINTS`).
    points: AtomicU64,
    /// Events written so far.
    events: AtomicU64,
}

/// One second of one series.
#[repr(C)]
struct Point {
    /// Requests answered per second over the point's interval.
    requests: AtomicU32,
    /// Median and 99th percentile latency in microseconds ([`NONE`]: no request).
    p50_us: AtomicU32,
    p99_us: AtomicU32,
    /// The accept queue when the point was taken (the longest of the slot's sockets).
    queue: AtomicU32,
}

type Series = [Point; POINTS];

#[repr(C)]
struct Event {
    /// Wall clock, Unix milliseconds (for the dashboard's clock).
    at_ms: AtomicU64,
    text: [AtomicU64; EVENT_TEXT / 8],
}

/// The mapped history, as every process sees it.
#[derive(Clone, Copy)]
pub struct History {
    header: &'static Header,
    events: &'static [Event],
    cluster: &'static Series,
    slots: &'static [Series],
}

/// The memfd and its mapping, owned by the master.
pub struct Memory {
    _fd: std::os::fd::OwnedFd,
    history: History,
}

impl Memory {
    /// A history for `slots` slots (the scoreboard's records bound the slots in use).
    pub fn create(slots: usize) -> Result<Memory, BoardError> {
        let len = std::mem::size_of::<Header>().next_multiple_of(64)
            + EVENTS * std::mem::size_of::<Event>()
            + (1 + slots) * std::mem::size_of::<Series>();
        let fd = sealed_memfd(c"clusterd-history", len)?;
        let (base, _) = map_shared(&fd)?;
        let header_len = std::mem::size_of::<Header>().next_multiple_of(64);
        // SAFETY: the mapping is page-aligned and `len` long (sealed against shrinking), made
        // of the header, EVENTS events, then 1 + `slots` series at offsets that are multiples
        // of 8 (every part is a multiple of 8 bytes long); zero-filled, and all zeros is valid
        // for atomics; it lives as long as the process; other processes only use atomics.
        let history = unsafe {
            let events = base.add(header_len).cast::<Event>();
            let series = events.add(EVENTS).cast::<Series>();
            History {
                header: &*base.cast::<Header>(),
                events: std::slice::from_raw_parts(events, EVENTS),
                cluster: &*series,
                slots: std::slice::from_raw_parts(series.add(1), slots),
            }
        };
        let _ = MINE.set(history);
        RECORDS.store(true, Ordering::Relaxed);
        Ok(Memory { _fd: fd, history })
    }

    /// The history.
    pub fn history(&self) -> History {
        self.history
    }
}

/// The history every process of the master's tree sees (set before the first fork).
static MINE: OnceLock<History> = OnceLock::new();
/// Whether this process writes events: the master; a worker stops at boot.
static RECORDS: AtomicBool = AtomicBool::new(false);

/// The history, in any process forked after it was made.
pub fn get() -> Option<History> {
    MINE.get().copied()
}

/// Called by a new worker: the master's log lines are the master's to record.
pub fn in_worker() {
    RECORDS.store(false, Ordering::Relaxed);
}

/// One second's figures of a series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Requests per second.
    pub requests: u32,
    /// Median latency in microseconds, if any request was answered.
    pub p50_us: Option<u32>,
    /// 99th percentile latency in microseconds, if any request was answered.
    pub p99_us: Option<u32>,
    /// The accept queue when the point was taken.
    pub queue: u32,
}

impl Point {
    fn set(&self, f: Figures) {
        self.requests.store(f.requests, Ordering::Relaxed);
        self.p50_us
            .store(f.p50_us.unwrap_or(NONE), Ordering::Relaxed);
        self.p99_us
            .store(f.p99_us.unwrap_or(NONE), Ordering::Relaxed);
        self.queue.store(f.queue, Ordering::Relaxed);
    }

    fn get(&self) -> Figures {
        let us = |a: &AtomicU32| Some(a.load(Ordering::Relaxed)).filter(|v| *v != NONE);
        Figures {
            requests: self.requests.load(Ordering::Relaxed),
            p50_us: us(&self.p50_us),
            p99_us: us(&self.p99_us),
            queue: self.queue.load(Ordering::Relaxed),
        }
    }
}

impl History {
    /// Appends one second: the cluster's figures and each slot's (slots not listed get an
    /// empty point).
    fn push(&self, cluster: Figures, slots: &[(usize, Figures)]) {
        let at = self.header.points.load(Ordering::Relaxed) as usize % POINTS;
        self.cluster[at].set(cluster);
        for (i, series) in self.slots.iter().enumerate() {
            let f = slots.iter().find(|(s, _)| *s == i).map(|(_, f)| *f);
            series[at].set(f.unwrap_or_default());
        }
        self.header.points.fetch_add(1, Ordering::Release);
    }

    /// The points kept, oldest first: the cluster's, and each slot's that served in them.
    pub fn points(&self) -> (Vec<Figures>, Vec<(usize, Vec<Figures>)>) {
        let written = self.header.points.load(Ordering::Acquire) as usize;
        // The oldest place is the next one the master overwrites: left out, so a point is
        // never read half written.
        let n = written.min(POINTS - 1);
        let order = |series: &Series| -> Vec<Figures> {
            (written - n..written)
                .map(|i| series[i % POINTS].get())
                .collect()
        };
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, order(s)))
            .filter(|(_, s)| s.iter().any(|f| f.requests > 0 || f.p50_us.is_some()))
            .collect();
        (order(self.cluster), slots)
    }

    fn note(&self, text: &str) {
        let n = self.header.events.load(Ordering::Relaxed);
        let e = &self.events[n as usize % EVENTS];
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        e.at_ms.store(at, Ordering::Relaxed);
        let mut bytes = [0u8; EVENT_TEXT];
        let mut cut = text.len().min(EVENT_TEXT);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        bytes[..cut].copy_from_slice(&text.as_bytes()[..cut]);
        for (word, chunk) in e.text.iter().zip(bytes.chunks_exact(8)) {
            word.store(
                u64::from_le_bytes(chunk.try_into().unwrap_or_default()),
                Ordering::Relaxed,
            );
        }
        self.header.events.fetch_add(1, Ordering::Release);
    }

    /// The events kept, newest first: (Unix ms, text).
    pub fn events(&self) -> Vec<(u64, String)> {
        let n = self.header.events.load(Ordering::Acquire);
        // As for the points: the oldest place is the next one overwritten.
        (n.saturating_sub(EVENTS as u64 - 1)..n)
            .rev()
            .map(|i| {
                let e = &self.events[i as usize % EVENTS];
                let mut bytes = Vec::with_capacity(EVENT_TEXT);
                for w in &e.text {
                    bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
                let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
                (e.at_ms.load(Ordering::Relaxed), text)
            })
            .collect()
    }
}

/// The master's sampler: what each scoreboard record had counted at the last point.
#[derive(Default)]
pub struct Sampler {
    last: Vec<(i32, u64, [u64; DURATION_BUCKETS.len() + 1])>,
    at_ms: u64,
}

impl Sampler {
    /// When the next point is due (on the scoreboard's clock, ms).
    pub fn next_ms(&self) -> u64 {
        self.at_ms + 1000
    }

    /// Takes a point if a second has passed since the last one (`now_ms` on the scoreboard's
    /// clock).
    pub fn tick(&mut self, board: Board, history: History, now_ms: u64) {
        if now_ms < self.at_ms + 1000 {
            return;
        }
        let first = self.at_ms == 0;
        let elapsed_ms = now_ms - self.at_ms;
        self.at_ms = now_ms;
        self.last
            .resize(board.records.len(), (0, 0, Default::default()));
        let mut by_slot: Vec<(usize, u64, [u64; DURATION_BUCKETS.len() + 1], u32)> = Vec::new();
        let mut all = (0u64, [0u64; DURATION_BUCKETS.len() + 1], 0u32);
        for (i, r) in board.records.iter().enumerate() {
            let pid = r.pid.load(Ordering::Relaxed);
            let requests = r.requests.load(Ordering::Relaxed);
            let buckets: [u64; DURATION_BUCKETS.len() + 1] =
                std::array::from_fn(|b| r.duration[b].load(Ordering::Relaxed));
            let (last_pid, last_requests, last_buckets) = self.last[i];
            self.last[i] = (pid, requests, buckets);
            if pid == 0 {
                continue;
            }
            // A worker new in its record since the last point counted from zero.
            let (d_req, d_buckets) = if pid == last_pid {
                (
                    requests.saturating_sub(last_requests),
                    std::array::from_fn(|b| buckets[b].saturating_sub(last_buckets[b])),
                )
            } else {
                (requests, buckets)
            };
            let slot = r.slot.load(Ordering::Relaxed) as usize;
            let queue = r.accept_queue.load(Ordering::Relaxed) as u32;
            let entry = match by_slot.iter_mut().find(|e| e.0 == slot) {
                Some(e) => e,
                None => {
                    by_slot.push((slot, 0, [0; DURATION_BUCKETS.len() + 1], 0));
                    by_slot.last_mut().expect("just pushed")
                }
            };
            entry.1 += d_req;
            entry.3 = entry.3.max(queue);
            for (b, n) in d_buckets.iter().enumerate() {
                entry.2[b] += n;
                all.1[b] += n;
            }
            all.0 += d_req;
            all.2 = all.2.max(queue);
        }
        // The first point would count everything since the start as one second.
        if first {
            return;
        }
        // Per second, whatever the time since the last point (the master's turns are not
        // exactly a second apart).
        let figures = |requests: u64, buckets: &[u64], queue: u32| Figures {
            requests: (requests * 1000 / elapsed_ms.max(1)).min(u64::from(u32::MAX)) as u32,
            p50_us: percentile(buckets, 0.5).map(|s| (s * 1e6) as u32),
            p99_us: percentile(buckets, 0.99).map(|s| (s * 1e6) as u32),
            queue,
        };
        let slots: Vec<(usize, Figures)> = by_slot
            .iter()
            .map(|(slot, req, buckets, queue)| (*slot, figures(*req, buckets, *queue)))
            .collect();
        history.push(figures(all.0, &all.1, all.2), &slots);
    }
}

/// The `q` quantile (0..1) in seconds of a histogram of [`DURATION_BUCKETS`] counts (not
/// cumulative; the last is +Inf), interpolated linearly inside its bucket; the +Inf bucket
/// reads as its lower bound. `None` for an empty histogram.
pub fn percentile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let mut below = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= target {
            let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
            let Some(upper) = DURATION_BUCKETS.get(i) else {
                return Some(lower);
            };
            let within = (target - below as f64) / *n as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        below += n;
    }
    DURATION_BUCKETS.last().copied()
}

/// Records the master's log lines about its workers as events: every warning and error, and
/// the notable informational lines (starts, stops, reloads, recycles, steering). Installed
/// with the subscriber; inert until the master makes the history, and in workers.
pub struct EventLayer;

/// Informational lines that are events.
const NOTABLE: &[&str] = &[
    "worker started",
    "worker stopped",
    "reload complete",
    "recycling complete",
    "recycling the worker",
    "worker count changed",
    "graceful stop",
    "re-executing the master",
    "master re-executed",
    "steering new connections away",
    "the slot keeps up again",
];

/// An event's message and fields as one line: "message (key=value ...)".
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let sep = if self.fields.is_empty() { "" } else { " " };
            self.fields += &format!("{sep}{}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let sep = if self.fields.is_empty() { "" } else { " " };
            self.fields += &format!("{sep}{}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !RECORDS.load(Ordering::Relaxed) {
            return;
        }
        let Some(history) = get() else { return };
        let level = *event.metadata().level();
        if level > tracing::Level::INFO {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        if level == tracing::Level::INFO && !NOTABLE.iter().any(|n| line.message.starts_with(n)) {
            return;
        }
        let text = if line.fields.is_empty() {
            line.message
        } else {
            format!("{} ({})", line.message, line.fields)
        };
        history.note(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_inside_their_bucket() {
        let mut b = [0u64; DURATION_BUCKETS.len() + 1];
        assert_eq!(percentile(&b, 0.5), None);
        // 100 requests between 1 and 2.5 ms: the median halfway.
        b[2] = 100;
        let p50 = percentile(&b, 0.5).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-9, "{p50}");
        // One slow request past the last bound: p99 stays in the fast bucket, max reads 2.5 s.
        b[DURATION_BUCKETS.len()] = 1;
        assert!(percentile(&b, 0.99).unwrap() <= 0.0025);
        assert_eq!(percentile(&b, 1.0), Some(2.5));
    }

    #[test]
    fn points_and_events_come_back_in_order_and_wrap() {
        let m = Memory::create(2).unwrap();
        let h = m.history();
        for i in 0..(POINTS as u32 + 5) {
            let f = Figures {
                requests: i,
                ..Figures::default()
            };
            h.push(f, &[(1, f)]);
        }
        let (cluster, slots) = h.points();
        // 306 points written, 300 shown (the place being overwritten is not).
        assert_eq!(cluster.len(), 300);
        assert_eq!((cluster[0].requests, cluster[299].requests), (6, 305));
        assert_eq!(slots.len(), 1, "slot 0 never served");
        assert_eq!(slots[0].0, 1);
        for i in 0..25 {
            h.note(&format!("event {i} {}", "é".repeat(100)));
        }
        let events = h.events();
        assert_eq!(events.len(), 20);
        assert!(events[0].1.starts_with("event 24 "), "{:?}", events[0]);
        assert!(events[19].1.starts_with("event 5 "));
        assert!(events[0].1.len() <= EVENT_TEXT);
    }
}
