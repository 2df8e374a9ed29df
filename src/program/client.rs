//! `status|scale|reload`: clients of the master's control socket. Runs in a short-lived process
//! of its own, never in the master.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::Service;
use super::wait::{self, Outcome};
use crate::config::{Args, ClusterConfig, Config, WaitArgs};
use crate::master::control;

/// Where the master puts its control socket: `--control-socket`, else the default
/// (`control::default_path`: systemd's `RuntimeDirectory=`, root's own directory, or the data
/// dir of a master that is not root).
pub fn control_path(cluster: &ClusterConfig) -> PathBuf {
    cluster.control_socket.clone().unwrap_or_else(|| {
        let runtime = std::env::var_os("RUNTIME_DIRECTORY").map(PathBuf::from);
        control::default_path(
            &cluster.data_dir,
            runtime.as_deref(),
            nix::unistd::geteuid().is_root(),
        )
    })
}

/// The socket a client talks to: the one given, else where a master with these options would
/// put it, else the service's (`/run/clusterd/control.sock`): the first that exists.
fn find<S: Service>(args: &Args, given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    // As the master chooses its data dir (see `Loader`).
    let state = std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| Some(super::options::default_data_dir::<S>().into()));
    let config = Config::load(args, state.as_deref()).map_err(|e| e.to_string())?;
    if let Some(p) = config.cluster.control_socket {
        return Ok(p);
    }
    let candidates = [
        control_path(&config.cluster),
        PathBuf::from("/run/clusterd/control.sock"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no control socket at {} or {}: is the service running? pass --control-socket PATH",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

fn ask<S: Service>(
    args: &Args,
    given: Option<&Path>,
    line: &str,
) -> Result<serde_json::Value, String> {
    ask_at(&find::<S>(args, given)?, line)
}

/// Asks the master at `path`; a refusal is an error.
fn ask_at(path: &Path, line: &str) -> Result<serde_json::Value, String> {
    let answer = control::ask(path, line)?;
    if answer["ok"] == serde_json::Value::Bool(false) {
        return Err(answer["error"].as_str().unwrap_or("refused").to_string());
    }
    Ok(answer)
}

fn done(name: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `status [--json]`.
pub(super) fn status<S: Service>(args: &Args, given: Option<&Path>, json: bool) -> ExitCode {
    done(
        S::NAME,
        ask::<S>(args, given, "status").map(|doc| {
            if json {
                println!("{doc}");
            } else {
                print!("{}", table(&doc));
            }
        }),
    )
}

/// `scale N [--wait]`.
pub(super) fn scale<S: Service>(
    args: &Args,
    given: Option<&Path>,
    workers: usize,
    w: WaitArgs,
) -> ExitCode {
    let name = S::NAME;
    let asked = ask::<S>(args, given, &format!("scale {workers}"));
    let result = asked.and_then(|answer| {
        // The master may have clamped the count to --max-workers.
        let target = answer["workers"].as_u64().unwrap_or(workers as u64);
        println!("{name}: scaling to {target} workers");
        match w.wait {
            true => settle::<S>(args, given, w, |doc| wait::scale(target, doc)),
            false => Ok(()),
        }
    });
    done(name, result)
}

/// `reload [--wait]`.
pub(super) fn reload<S: Service>(args: &Args, given: Option<&Path>, w: WaitArgs) -> ExitCode {
    let name = S::NAME;
    let result = (|| {
        let before = match w.wait {
            true => Some(wait::Before::of(&ask::<S>(args, given, "status")?)),
            false => None,
        };
        ask::<S>(args, given, "reload")?;
        match before {
            None => {
                println!("{name}: reloading (see `{name} status`)");
                Ok(())
            }
            Some(before) => settle::<S>(args, given, w, |doc| wait::reload(&before, doc)),
        }
    })();
    done(name, result)
}

/// Polls the master until `judge` decides (`--wait`), and prints the outcome.
fn settle<S: Service>(
    args: &Args,
    given: Option<&Path>,
    w: WaitArgs,
    judge: impl Fn(&serde_json::Value) -> Outcome,
) -> Result<(), String> {
    let timeout = std::time::Duration::from_secs(w.timeout);
    // Found once: the config is not read again on every poll.
    let path = find::<S>(args, given)?;
    let what = wait::poll(timeout, || ask_at(&path, "status"), judge)?;
    println!("{}: {what}", S::NAME);
    Ok(())
}

/// The status document as a person reads it: the master's line, then a line per worker.
fn table(doc: &serde_json::Value) -> String {
    let m = &doc["master"];
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut out = format!(
        "master pid {}, up {} s: {}\n",
        text(&m["pid"]),
        text(&m["uptime_s"]),
        text(&m["status"])
    );
    out += &format!(
        "{:>4} {:>8} {:>9} {:>8} {:>8} {:>5} {:>9} {:>9} {:>8} {:>9} {:>5}  {}\n",
        "SLOT",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "CONNS",
        "QUEUE",
        "REQUESTS",
        "RSS",
        "HEARTBEAT",
        "STORE",
        "OLDEST REQUEST"
    );
    for w in doc["workers"].as_array().into_iter().flatten() {
        let rss = w["rss_bytes"]
            .as_u64()
            .map_or("-".into(), |b| format!("{} MiB", b >> 20));
        let beat = w["heartbeat_age_ms"]
            .as_u64()
            .map_or("-".into(), |ms| format!("{ms} ms"));
        let queue = match (w["queue"].as_u64(), w["queue_max"].as_u64()) {
            (Some(n), Some(max)) => format!("{n}/{max}"),
            _ => "-".into(),
        };
        let oldest = &w["oldest_request"];
        let oldest = match oldest["age_ms"].as_u64() {
            Some(ms) => format!(
                "{} {} ({:.1} s)",
                text(&oldest["method"]),
                text(&oldest["path"]),
                ms as f64 / 1000.0
            ),
            None => "-".into(),
        };
        out += &format!(
            "{:>4} {:>8} {:>9} {:>7}s {:>8} {:>5} {:>9} {:>9} {:>8} {:>9} {:>5}  {}\n",
            text(&w["slot"]),
            text(&w["pid"]),
            text(&w["state"]),
            text(&w["uptime_s"]),
            text(&w["restarts"]),
            text(&w["connections"]),
            queue,
            text(&w["requests"]),
            rss,
            beat,
            text(&w["store"]),
            oldest,
        );
    }
    if let Some(counters) = doc["counters"].as_object().filter(|c| !c.is_empty()) {
        out += "counters (all workers):\n";
        for (name, n) in counters {
            out += &format!("  {name} {}\n", text(n));
        }
    }
    out
}
