//! Password hashing off the request path: a small pool of threads per worker with a bounded
//! queue. Runs in workers (created after `fork`, in `DemoApp::init`).
//!
//! argon2 costs milliseconds of CPU and about 19 MiB of memory per verification (the memory
//! cost in the hash). Run on actix's blocking pool, 300 parallel logins started up to 512
//! threads per worker and took 3.4 GiB. Here each worker has `threads` hashing threads, so the
//! memory is bounded by threads × workers × 19 MiB, and at most `queue` logins wait; the next one
//! is answered 503 with Retry-After at once. The threads run at the lowest priority (nice 19,
//! SCHED_BATCH), so when logins and signed-in traffic compete for CPU the signed-in requests win
//! (see [`NICE`]). A job whose login has gone (the client hung up) is dropped
//! unverified.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// The pool is busy: every thread is hashing and the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// A bounded pool of low-priority threads.
#[derive(Clone)]
pub struct Hasher {
    jobs: SyncSender<Job>,
    /// One permit per thread and per queue place: a login takes one before it does anything
    /// else, so one that would be shed costs nothing (no store write, no queue).
    places: Arc<tokio::sync::Semaphore>,
}

/// A place in the pool, held from before the throttle check until the hash is done.
pub struct Place {
    jobs: SyncSender<Job>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Hasher {
    /// Starts `threads` threads that share a queue of `queue` jobs.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        // The channel never fills: no more jobs than permits exist at once.
        let (jobs, rx) = sync_channel::<Job>(queue + threads);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("hasher-{i}"))
                .spawn(move || run(rx))?;
        }
        Ok(Hasher {
            jobs,
            places: Arc::new(tokio::sync::Semaphore::new(queue + threads)),
        })
    }

    /// Takes a place (a thread or a queue slot), or fails at once with [`Busy`].
    pub fn place(&self) -> Result<Place, Busy> {
        let permit = Arc::clone(&self.places)
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        Ok(Place {
            jobs: self.jobs.clone(),
            _permit: permit,
        })
    }

    /// Takes a place and runs `f` there: [`Place::run`].
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        self.place()?.run(f).await
    }
}

impl Place {
    /// Runs `f` on a hashing thread and waits for its result. The place is given back when
    /// this returns.
    pub async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The login's request was dropped while it queued (its client hung up): nobody
            // waits for this answer, so the verification would be CPU spent on nothing.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => rx.await.map_err(|_| Busy),
            // Only if the threads are gone (the worker is exiting).
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn run(rx: Arc<Mutex<Receiver<Job>>>) {
    lower_priority();
    loop {
        // The lock is held only while waiting for the next job, not while running it.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            // The worker is exiting.
            Err(_) => return,
        }
    }
}

/// The hashing threads' niceness: the lowest priority. A nice-19 thread weighs 15 against a
/// server thread's 1024, so logins pay for signed-in traffic's latency: measured on 2 cores
/// under a `/me` load that kept both busy (`bench/login-under-load.sh`), a login took 6 - 8 s.
/// Nice 10 (weight 110) brought that to about 1 s, but `/me` p99 during the 300-login storms
/// then reached 8.6, 9.8 and 13.8 ms in 16 storms with Redis, against at most 5.4 ms at nice 19
/// in 16; the storm figure is the one the service promises.
pub const NICE: i32 = 19;

/// SCHED_BATCH and nice [`NICE`] for the calling thread (Linux applies both per thread). Failure
/// only costs latency, so it is logged, not fatal.
///
/// Not `SCHED_IDLE`, though a CPU running only such threads counts as idle when the kernel
/// places a waking server thread: measured on 2 cores, it gained little for signed-in requests
/// during login storms (worst `/me` p99 5.9 against 7.9 ms in eight alice storms each, 4.7
/// against 6.4 ms in eight 300-name storms) and starved the logins themselves: under a `/me`
/// load that kept both cores busy a login waited the whole 9 - 11 s of the load.
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread, with a parameter struct that outlives
    // the call.
    unsafe {
        let param = nix::libc::sched_param { sched_priority: 0 };
        if nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &param) != 0 {
            warn_once(&format!(
                "SCHED_BATCH for the hashing thread: {}",
                std::io::Error::last_os_error()
            ));
        }
        // With PRIO_PROCESS and 0, Linux changes the calling thread only.
        if nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, NICE) != 0 {
            warn_once(&format!(
                "nice {NICE} for the hashing thread: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}

/// A failed priority change, logged once per worker: hashing then competes with requests at
/// full priority (a seccomp filter that denies the calls, as `SystemCallFilter=~@resources`
/// would without the unit's exception).
fn warn_once(what: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "{what}; password hashing runs at full priority and may slow other requests"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Gives `h`'s one thread a job that blocks until the returned sender is used, and waits
    /// until the thread runs it.
    async fn occupy(
        h: &Hasher,
    ) -> (
        tokio::task::JoinHandle<Result<(), Busy>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn({
            let h = h.clone();
            async move {
                h.run(move || {
                    started_tx.send(()).unwrap();
                    hold_rx.recv().unwrap();
                })
                .await
            }
        });
        // Let the task submit its job, until the thread runs it.
        while started_rx.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        (job, hold_tx)
    }

    #[test]
    fn a_full_queue_answers_busy_at_once() {
        runtime().block_on(async {
            let h = Hasher::new(1, 1).unwrap();
            // The thread blocks in the first job; the second fills the queue.
            let (first, release) = occupy(&h).await;
            let second = tokio::spawn({
                let h = h.clone();
                async move { h.run(|| 2).await }
            });
            tokio::task::yield_now().await;
            assert_eq!(
                h.run(|| 3).await,
                Err(Busy),
                "third: thread busy, queue full"
            );
            release.send(()).unwrap();
            assert_eq!(first.await.unwrap(), Ok(()));
            assert_eq!(second.await.unwrap(), Ok(2));
            assert_eq!(h.run(|| 4).await, Ok(4), "free again");
        });
    }

    #[test]
    fn hashing_threads_run_at_sched_batch_and_their_niceness() {
        let h = Hasher::new(1, 0).unwrap();
        // SAFETY: queries about the calling (hashing) thread.
        let got = runtime().block_on(h.run(|| unsafe {
            (
                nix::libc::sched_getscheduler(0),
                nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0),
            )
        }));
        assert_eq!(got, Ok((nix::libc::SCHED_BATCH, NICE)));
    }

    #[test]
    fn a_job_whose_caller_has_gone_is_not_run() {
        runtime().block_on(async {
            let h = Hasher::new(1, 1).unwrap();
            let (first, release) = occupy(&h).await;
            // Queued behind the first, then given up (as when a client hangs up).
            let ran = Arc::new(AtomicBool::new(false));
            let queued = tokio::spawn({
                let (h, ran) = (h.clone(), Arc::clone(&ran));
                async move { h.run(move || ran.store(true, Ordering::SeqCst)).await }
            });
            tokio::task::yield_now().await;
            queued.abort();
            assert!(queued.await.unwrap_err().is_cancelled());
            release.send(()).unwrap();
            first.await.unwrap().unwrap();
            // The thread has passed the dropped job once it runs the next one.
            assert_eq!(h.run(|| 5).await, Ok(5));
            assert!(!ran.load(Ordering::SeqCst));
        });
    }
}
