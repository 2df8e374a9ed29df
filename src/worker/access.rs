//! `--access-log`: a line per request in the log stream, formatted and written by a thread of
//! the worker's own, so that a server thread only hands a small record over a bounded channel
//! and never waits for the log's pipe (a slow journal). Runs in workers.
//!
//! Every 10 ms the writer takes the lines waiting and writes them in batches of whole lines
//! under `PIPE_BUF` (4 KiB), one `write(2)` each, so they never interleave mid-line with other
//! processes' lines. It sleeps instead of waiting on the channel: a server thread handing a line
//! over then never makes a system call to wake it (waking it per request cost a third of the
//! throughput on 2 cores). When the writer falls
//! [`QUEUE`] lines behind, further lines are dropped, counted, and the count logged once it
//! catches up: the log must not slow the service down.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

/// Lines that may wait for the writer.
pub const QUEUE: usize = 8192;
/// How often the writer looks for lines (so a line reaches the log within about this long).
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// A batch is written before it would pass this many bytes: a pipe write up to `PIPE_BUF` is
/// atomic (a line is at most ~1.3 KiB, see [`MAX_PATH`]).
const PIPE_BUF: usize = 4096;
/// Longest path written (longer ones are cut, at a character boundary, and end in `...`).
const MAX_PATH: usize = 1024;

/// One request, as the server thread hands it over.
pub struct Entry {
    /// The client (the resolved one behind trusted proxies), if known.
    pub client: Option<IpAddr>,
    /// The request method.
    pub method: actix_web::http::Method,
    /// The path, without the query (which may carry secrets).
    pub path: String,
    /// The answer's status.
    pub status: u16,
    /// The body's size, when it was known before it was sent.
    pub bytes: Option<u64>,
    /// From the request's head to its answer.
    pub duration: Duration,
    /// The worker's id.
    pub worker: u64,
}

/// The worker's access log: a channel to its writer thread.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: AtomicU64,
    /// Set by [`AccessLog::finish`]: the writer drains the channel once more and ends.
    done: std::sync::atomic::AtomicBool,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AccessLog {
    /// Starts the writer thread; the log lives as long as the worker process.
    pub fn start() -> &'static AccessLog {
        let (tx, rx) = sync_channel(QUEUE);
        let log: &'static AccessLog = Box::leak(Box::new(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            done: std::sync::atomic::AtomicBool::new(false),
            writer: std::sync::Mutex::new(None),
        }));
        match std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&rx, log))
        {
            Ok(handle) => *log.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the access log's thread; no access log");
            }
        }
        log
    }

    /// Writes what is still waiting and stops the writer (the worker is ending).
    pub fn finish(&self) {
        // Release: the lines the server threads handed over before are seen by the last drain.
        self.done.store(true, Ordering::Release);
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = writer {
            let _ = handle.join();
        }
    }

    /// Hands a request's record over; never waits.
    pub fn record(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: every [`FLUSH_EVERY`], the lines waiting, in batches of one write each.
/// It sleeps rather than waits on the channel, so a request never pays for waking it.
fn write_lines(rx: &Receiver<Entry>, log: &AccessLog) {
    let mut out = Writer::new();
    let mut batch = String::with_capacity(PIPE_BUF);
    let mut line = String::with_capacity(512);
    loop {
        // Read before draining: lines handed over before `finish` are all written.
        let last = log.done.load(Ordering::Acquire);
        if !last {
            std::thread::sleep(FLUSH_EVERY);
        }
        loop {
            match rx.try_recv() {
                Ok(e) => {
                    line.clear();
                    out.line(&mut line, e);
                    if batch.len() + line.len() > PIPE_BUF {
                        let _ = std::io::stderr().write_all(batch.as_bytes());
                        batch.clear();
                    }
                    batch.push_str(&line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if !batch.is_empty() {
            let _ = std::io::stderr().write_all(batch.as_bytes());
            batch.clear();
        }
        let dropped = log.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "the access log fell behind; lines were dropped");
        }
        if last {
            return;
        }
    }
}

/// Formats entries as the log's other lines look: the role and the format are the process's,
/// the timestamp's date and time are made once a second.
struct Writer {
    json: bool,
    timestamps: bool,
    role: String,
    /// `2026-12-06T01:29:44` and the second it is of.
    second: (u64, String),
}

impl Writer {
    fn new() -> Writer {
        Writer {
            json: crate::log::format() == crate::log::Format::Json,
            timestamps: crate::log::timestamps(),
            role: crate::log::role(),
            second: (u64::MAX, String::new()),
        }
    }

    /// `2026-12-06T01:29:44.749865Z`, now.
    fn timestamp(&mut self, out: &mut String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if self.second.0 != now.as_secs() {
            self.second = (now.as_secs(), crate::log::date_time(now.as_secs()));
        }
        let _ = write!(out, "{}.{:06}Z", self.second.1, now.subsec_micros());
    }

    /// `access client=... method=... path=... status=... bytes=... duration_ms=... worker=...`
    /// after the usual head, or a JSON object with those keys.
    fn line(&mut self, out: &mut String, e: Entry) {
        let mut path = e.path;
        if path.len() > MAX_PATH {
            let mut cut = MAX_PATH;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            path.truncate(cut);
            path.push_str("...");
        }
        let ms = e.duration.as_secs_f64() * 1000.0;
        let bytes = e.bytes.map_or("null".to_string(), |b| b.to_string());
        if self.json {
            out.push_str("{\"timestamp\":\"");
            self.timestamp(out);
            let _ = write!(
                out,
                "\",\"level\":\"INFO\",\"role\":{},\"target\":\"access\",\"message\":\"access\",",
                serde_json::Value::from(self.role.as_str())
            );
            let client = e.client.map_or("null".to_string(), |c| format!("\"{c}\""));
            let _ = writeln!(
                out,
                "\"client\":{client},\"method\":{},\"path\":{},\"status\":{},\"bytes\":{bytes},\"duration_ms\":{ms:.3},\"worker\":{}}}",
                serde_json::Value::from(e.method.as_str()),
                serde_json::Value::from(path),
                e.status,
                e.worker
            );
        } else {
            if self.timestamps {
                self.timestamp(out);
                out.push(' ');
            }
            let client = e.client.map_or("-".to_string(), |c| c.to_string());
            let _ = writeln!(
                out,
                " INFO [{}] access client={client} method={} path={path} status={} bytes={} duration_ms={ms:.3} worker={}",
                self.role,
                e.method,
                e.status,
                e.bytes.map_or("-".to_string(), |b| b.to_string()),
                e.worker
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: String) -> Entry {
        Entry {
            client: Some("192.0.2.7".parse().unwrap()),
            method: actix_web::http::Method::POST,
            path,
            status: 401,
            bytes: Some(42),
            duration: Duration::from_micros(1500),
            worker: 3,
        }
    }

    /// A writer for worker 3's lines: JSON with timestamps, or plain without.
    fn writer(json: bool) -> Writer {
        Writer {
            json,
            timestamps: json,
            role: "worker 3".into(),
            second: (u64::MAX, String::new()),
        }
    }

    #[test]
    fn a_line_names_every_field_in_order_and_cuts_long_paths() {
        let mut w = writer(false);
        let mut l = String::new();
        w.line(&mut l, entry("/login".into()));
        assert_eq!(
            l,
            " INFO [worker 3] access client=192.0.2.7 method=POST path=/login status=401 bytes=42 duration_ms=1.500 worker=3\n"
        );
        let mut long = String::new();
        w.line(&mut long, entry("/é".repeat(600)));
        assert!(
            long.len() < PIPE_BUF / 2 && long.contains("..."),
            "{}",
            long.len()
        );
    }

    #[test]
    fn a_json_line_is_one_object_with_typed_fields() {
        let mut w = writer(true);
        let mut l = String::new();
        w.line(&mut l, entry("/a\"b".into()));
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(
            (v["status"].as_u64(), v["bytes"].as_u64()),
            (Some(401), Some(42))
        );
        assert_eq!(v["duration_ms"].as_f64(), Some(1.5));
        assert_eq!(
            (v["client"].as_str(), v["worker"].as_u64()),
            (Some("192.0.2.7"), Some(3))
        );
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{l}");
        assert_eq!(v["timestamp"].as_str().unwrap().len(), 27, "{l}");
    }
}
