//! clusterd under fire: hostile files in the data dir, and the other abuse cases of an attacker
//! or an unlucky operator. Started as root (CI), the data-dir cases also pass `--user nobody`,
//! the setting in which the master chowns the data dir's files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use crate::harness::*;

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts clusterd on `data` and expects it to refuse within 5 s with exit code 2 and a message
/// containing `words`.
fn refused(data: &std::path::Path, words: &[&str]) {
    let mut opts = Opts::default().workers(1).data(data).no_wait();
    if as_root() {
        opts = opts.arg("--user").arg("nobody");
    }
    let started = Instant::now();
    let mut c = Clusterd::start(opts);
    let code = c.wait_exit(Duration::from_secs(5));
    let log = c.log_text();
    assert_eq!(code, Some(2), "exit code; log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(5));
    for w in words {
        assert!(log.contains(w), "the message names {w:?}:\n{log}");
    }
}

#[test]
fn links_in_the_data_dir_are_refused_and_their_targets_untouched() {
    for name in [
        "sessions.sqlite3",
        "sessions.sqlite3-wal",
        "sessions.sqlite3-shm",
        "session.key",
    ] {
        let dir = TempDir::new("links");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A file only its owner (root, when CI runs this) may read or write.
        let target = dir.path().join("precious");
        std::fs::write(&target, b"").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = std::fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink(&target, data.join(name)).unwrap();

        refused(&data, &[name, "symbolic link"]);

        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode(), after.len()),
            (before.uid(), before.gid(), before.mode(), 0),
            "{name}: the link's target keeps owner, mode and size"
        );
    }
}

#[test]
fn a_fifo_as_the_session_key_stops_the_start_instead_of_hanging_it() {
    let dir = TempDir::new("fifo");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    nix::unistd::mkfifo(&data.join("session.key"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    refused(&data, &["session.key", "FIFO"]);
    // A configured key file that is a FIFO, too.
    let key = dir.path().join("key.fifo");
    nix::unistd::mkfifo(&key, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut c = Clusterd::start(
        Opts::default()
            .workers(1)
            .arg("--session-key-file")
            .arg(key.to_str().unwrap())
            .no_wait(),
    );
    assert_eq!(
        c.wait_exit(Duration::from_secs(5)),
        Some(2),
        "{}",
        c.log_text()
    );
    assert!(c.log_text().contains("FIFO"), "{}", c.log_text());
}

#[test]
fn the_embedded_store_is_created_private() {
    let c = Clusterd::start(Opts::default().workers(1));
    let db = c.data.join("sessions.sqlite3");
    let mode = std::fs::metadata(&db).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", db.display());
    assert_eq!(c.get("/healthz").status, 200);
}

/// Root without CAP_SETUID and CAP_SETGID (dropped from the bounding set by `setpriv` before
/// exec) cannot switch users: the workers report a configuration error and the master stops
/// with exit code 4 instead of forking them again and again.
#[test]
#[ignore = "needs root: run `cargo test -- --include-ignored` as root (CI does)"]
fn a_failed_privilege_drop_stops_the_service_with_exit_code_4() {
    let mut c = Clusterd::start(
        Opts::default()
            .workers(2)
            .arg("--user")
            .arg("nobody")
            .no_wait()
            .wrapped(&["setpriv", "--bounding-set", "-setuid,-setgid"]),
    );
    assert_eq!(
        c.wait_exit(Duration::from_secs(15)),
        Some(4),
        "{}",
        c.log_text()
    );
    let log = c.log_text();
    assert!(log.contains("dropping privileges"), "{log}");
    assert!(
        log.lines().filter(|l| l.contains("worker started")).count() <= 2,
        "no respawns:\n{log}"
    );
}
