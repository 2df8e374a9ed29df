//! Benchmark helper for `bench/respawn.sh`: with a clusterd master running one worker, kills
//! the worker with SIGKILL and times how long until the first 200 from its replacement (the
//! request waits in the socket's backlog meanwhile). Repeats, then prints the median. Works for
//! any server whose `/healthz` JSON has `worker_pid` (the Node peer's does).
//! Usage: `bench_respawn MASTER_PID ADDR [SAMPLES]`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn only_child(master: i32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .expect("reading children");
    let pids: Vec<i32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "run the master with --workers 1 (children: {pids:?})"
    );
    pids[0]
}

/// GET /healthz; returns the serving worker's pid on a 200 within `timeout`.
fn healthz(addr: SocketAddr, timeout: Duration) -> Option<i32> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    let at = text.find("\"worker_pid\":")? + "\"worker_pid\":".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Per-attempt timeout after the kill.
const RETRY: Duration = Duration::from_millis(50);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let master: i32 = args.get(1).expect("MASTER_PID").parse().unwrap();
    let addr: SocketAddr = args.get(2).expect("ADDR").parse().unwrap();
    let samples: usize = args.get(3).map_or(20, |s| s.parse().unwrap());
    let mut times = Vec::new();
    for _ in 0..samples {
        // Past the master's minimum uptime, so the respawn is immediate, not backed off.
        std::thread::sleep(Duration::from_millis(1200));
        let old = only_child(master);
        assert_eq!(
            healthz(addr, Duration::from_secs(5)),
            Some(old),
            "the worker serves before the kill"
        );
        let t = Instant::now();
        kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
        let took = loop {
            // A server that queues the connection answers this first request as soon as the
            // replacement serves. One that refuses, resets or holds it (Node's primary keeps
            // connections it cannot hand to a worker) costs a retry after RETRY at most, which
            // bounds the error of its figure. The old worker may also still answer in the
            // microseconds before SIGKILL lands: ask again then too.
            match healthz(addr, RETRY) {
                Some(pid) if pid != old => break t.elapsed(),
                _ => {}
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no replacement after 10 s"
            );
        };
        times.push(took);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "respawn latency over {} kills: median {:.2} ms, min {:.2} ms, max {:.2} ms",
        times.len(),
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}
