//! clusterd's session cache against the redis crate's `cache-aio`, on one Redis.
//!
//! `cache-aio-peer URL cost`: median time of a cached session read in each, over interleaved
//! rounds. clusterd's read answers the decoded session (`RedisStore::get`); the crate's answers
//! the record, so its figure includes the same JSON decode.
//!
//! `cache-aio-peer URL freeze REDIS_PID`: freezes Redis (SIGSTOP to that PID) and reads the
//! same session every 50 ms for 3 s through each, then thaws it. The rule clusterd keeps: from
//! 1 s after the fault on, nothing is served from a cache that Redis could not confirm.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use clusterd::session::redis::RedisStore;
use redis::AsyncConnectionConfig;
use redis::caching::CacheConfig;

const PREFIX: &str = "aio:";
const ID: &str = "0123456789abcdef0123456789abcdef";
/// A session as the demo writes it: actix-session's map of JSON-encoded values.
const RECORD: &str = r#"{"user":"\"alice\"","created":"1796515200","csrf":"\"6b1f0c2e9d4a7b38\""}"#;

type Conn = redis::aio::MultiplexedConnection;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, what) = match args.as_slice() {
        [_, url, what, ..] => (url.as_str(), what.as_str()),
        _ => usage(),
    };
    let client = redis::Client::open(format!("{url}?protocol=resp3")).expect("redis url");
    let config = AsyncConnectionConfig::new()
        .set_cache_config(CacheConfig::new())
        .set_response_timeout(Some(Duration::from_millis(400)));
    let mut crate_conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect with cache-aio");
    let store = RedisStore::new(url, PREFIX, 0)
        .expect("redis url")
        .with_cache(1000, None);
    let key = format!("{PREFIX}{ID}");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(RECORD)
        .arg("EX")
        .arg(3600)
        .query_async(&mut crate_conn)
        .await
        .expect("SET");
    // Fill both caches (clusterd's first read opens its connection, which a read under way
    // does not survive into the cache: the second fills it), and let a PING vouch for it.
    clusterd_read(&store).await.expect("clusterd read");
    clusterd_read(&store).await.expect("clusterd read");
    crate_read(&mut crate_conn, &key).await.expect("crate read");
    tokio::time::sleep(clusterd::session::VOUCH_EVERY * 2).await;
    match what {
        "cost" => cost(&store, &mut crate_conn, &key).await,
        "freeze" => match args.get(3).and_then(|p| p.parse::<u32>().ok()) {
            Some(pid) => freeze(&store, &mut crate_conn, &key, pid).await,
            None => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: cache-aio-peer REDIS_URL cost | cache-aio-peer REDIS_URL freeze REDIS_PID");
    std::process::exit(2)
}

async fn clusterd_read(store: &RedisStore) -> Result<bool, String> {
    match store.get(ID).await {
        Ok(Some(found)) => Ok(found.cached),
        Ok(None) => Err("no session".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn crate_read(conn: &mut Conn, key: &str) -> Result<(), String> {
    let record: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let record = record.ok_or("no session")?;
    serde_json::from_str::<HashMap<String, String>>(&record)
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn cost(store: &RedisStore, conn: &mut Conn, key: &str) {
    const READS: u32 = 200_000;
    const ROUNDS: usize = 7;
    let (mut ours, mut theirs, mut our_misses) = (Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..READS {
            // A hit does not yield; the PING that keeps clusterd's cache trusted must run.
            if i % 1_000 == 0 {
                tokio::task::yield_now().await;
            }
            our_misses += usize::from(!clusterd_read(store).await.expect("clusterd read"));
        }
        ours.push(start.elapsed().as_nanos() as f64 / f64::from(READS));
        let start = Instant::now();
        for i in 0..READS {
            if i % 1_000 == 0 {
                tokio::task::yield_now().await;
            }
            crate_read(conn, key).await.expect("crate read");
        }
        theirs.push(start.elapsed().as_nanos() as f64 / f64::from(READS));
    }
    let stats = conn.get_cache_statistics().expect("cache statistics");
    println!(
        "clusterd's session cache: {:.0} ns per read (median of {ROUNDS} rounds of {READS}; {our_misses} misses)",
        median(&mut ours)
    );
    println!(
        "redis crate cache-aio:    {:.0} ns per read, JSON decode included (median; its statistics: {} hits, {} misses)",
        median(&mut theirs),
        stats.hit,
        stats.miss
    );
}

async fn freeze(store: &RedisStore, conn: &mut Conn, key: &str, pid: u32) {
    signal(pid, "STOP");
    let fault = Instant::now();
    // The last read each served (from its cache) and the first it refused, in ms after the fault.
    let (mut ours, mut theirs) = ((None, None), (None, None));
    let (mut our_late, mut their_late) = (0, 0);
    while fault.elapsed() < Duration::from_secs(3) {
        let at = fault.elapsed().as_millis();
        let late = fault.elapsed() >= Duration::from_secs(1);
        match clusterd_read(store).await {
            Ok(_) => {
                ours.0 = Some(at);
                our_late += usize::from(late);
            }
            Err(_) => {
                ours.1.get_or_insert(at);
            }
        }
        match crate_read(conn, key).await {
            Ok(()) => {
                theirs.0 = Some(at);
                their_late += usize::from(late);
            }
            Err(_) => {
                theirs.1.get_or_insert(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, "CONT");
    let ms = |t: Option<u128>| t.map_or("never".into(), |t| format!("{t} ms"));
    println!(
        "Redis frozen for 3 s. clusterd's session cache: last answer {}, first refusal {}, answers from 1 s on: {our_late}",
        ms(ours.0),
        ms(ours.1)
    );
    println!(
        "redis crate cache-aio: last answer {}, first refusal {}, answers from 1 s on: {their_late}",
        ms(theirs.0),
        ms(theirs.1)
    );
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .arg(format!("-{which}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{which} {pid} failed");
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
