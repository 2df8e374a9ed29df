//! The command line: bad values are refused with exit code 2 and a message naming the option.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::harness::*;

/// Runs clusterd and returns its exit code and stderr. A case that unexpectedly starts serving
/// is killed after ten seconds (and then fails its exit-code assertion).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = TempDir::new("cli");
    let log = dir.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn bad_values_exit_2_naming_the_option() {
    let dir = TempDir::new("cli-files");
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "wokers = 3\n").unwrap();
    let zero_toml = dir.path().join("zero.toml");
    std::fs::write(&zero_toml, "workers = 0\n").unwrap();
    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, "too short").unwrap();
    let bad_users = dir.path().join("users");
    std::fs::write(&bad_users, "alice:plaintext\n").unwrap();
    // (arguments, environment, what the message must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--workers", "0"], vec![], "--workers"),
        (vec!["--workers", "many"], vec![], "--workers"),
        (vec!["--bind", "nowhere"], vec![], "--bind"),
        (vec!["--graceful-timeout=-1"], vec![], "--graceful-timeout"),
        (vec!["--backlog", "0"], vec![], "--backlog"),
        (vec!["--threads", "0"], vec![], "--threads"),
        (vec!["--cookie-secure", "maybe"], vec![], "--cookie-secure"),
        (vec!["--no-such-flag"], vec![], "--no-such-flag"),
        (vec![], vec![("CLUSTERD_WORKERS", "zero")], "--workers"),
        (vec![], vec![("REDIS_URL", "http://example")], "redis-url"),
        (
            vec!["--config", bad_toml.to_str().unwrap()],
            vec![],
            "wokers",
        ),
        (
            vec!["--config", zero_toml.to_str().unwrap()],
            vec![],
            "workers",
        ),
        (
            vec!["--config", "/nonexistent/clusterd.toml"],
            vec![],
            "/nonexistent/clusterd.toml",
        ),
        (
            vec!["--session-key-file", short_key.to_str().unwrap()],
            vec![],
            "at least 64",
        ),
        (
            vec!["--users", bad_users.to_str().unwrap()],
            vec![],
            "line 1",
        ),
        (vec!["--group", "nogroup"], vec![], "--user"),
    ];
    for (args, env, needle) in cases {
        let (code, stderr) = run(&args, &env);
        assert_eq!(
            code,
            Some(2),
            "{args:?} {env:?}: exit {code:?}, stderr: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?} {env:?}: stderr does not name {needle:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(&["--bind", &addr], &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("binding {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn hash_password_prints_an_argon2_hash() {
    let out = Command::new(BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "empty stdin is refused");
}

#[test]
fn check_config_says_ok_or_why_not_and_binds_nothing() {
    let dir = TempDir::new("check-config");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let out = Command::new(BIN)
        .args(["--check-config", "--bind", &bind, "--data-dir", data])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    assert!(
        std::net::TcpListener::bind(&bind).is_ok(),
        "the port stays free"
    );
    assert!(
        !std::path::Path::new(data).exists(),
        "nothing written to the data dir"
    );

    let users = dir.path().join("users");
    std::fs::write(&users, "alice:not-a-hash\n").unwrap();
    let out = Command::new(BIN)
        .args(["--check-config", "--data-dir", data, "--users"])
        .arg(&users)
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("loading users"), "{stderr}");
}

#[test]
fn help_lists_the_operator_options() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--control-socket",
        "--metrics-bind",
        "--worker-timeout",
        "--max-requests",
        "--max-requests-jitter",
        "--max-worker-memory",
        "--max-workers",
        "--check-config",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
    for sub in ["status", "scale", "reload"] {
        assert!(help.contains(sub), "{sub} missing:\n{help}");
    }
}
