//! Options, merging and validation; the defaults `--help` shows against the ones applied.

use clap::CommandFactory;

use super::*;

fn file(text: &str) -> Args {
    toml::from_str(text).unwrap()
}

/// The error reading a config file with `text` in it.
fn file_error(text: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "clusterd-config-{}-{}",
        std::process::id(),
        text.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let err = Args::from_file(&path).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

/// What `load` does with a flag set and a file: flags over the file over the defaults.
fn merge(args: &Args, file: Args, state: Option<&Path>) -> Result<Config, ConfigError> {
    Config::from_args(args.clone().or(file), state)
}

#[test]
fn defaults_apply_when_nothing_is_given() {
    let c = merge(&Args::default(), Args::default(), None).unwrap();
    assert_eq!(c.cluster.bind.to_string(), DEFAULT_BIND);
    assert!(c.cluster.workers >= 1);
    assert_eq!(c.cluster.threads, 1);
    assert_eq!(c.cluster.graceful_timeout, Duration::from_secs(30));
    assert_eq!(c.cluster.data_dir, PathBuf::from("clusterd-data"));
    assert_eq!(c.cluster.health_path.as_deref(), Some("/healthz"));
}

#[test]
fn flags_win_over_file_and_file_over_defaults() {
    let args = Args {
        workers: Some(3),
        ..Args::default()
    };
    let c = merge(
        &args,
        file("workers = 5\nthreads = 2\nbind = \"[::1]:9000\""),
        None,
    )
    .unwrap();
    assert_eq!(c.cluster.workers, 3);
    assert_eq!(c.cluster.threads, 2);
    assert_eq!(c.cluster.bind, "[::1]:9000".parse().unwrap());
}

#[test]
fn state_directory_is_the_default_data_dir() {
    let c = merge(
        &Args::default(),
        Args::default(),
        Some(Path::new("/var/lib/x")),
    )
    .unwrap();
    assert_eq!(c.cluster.data_dir, PathBuf::from("/var/lib/x"));
}

#[test]
fn bad_file_values_name_the_option() {
    let err = merge(&Args::default(), file("workers = 0"), None).unwrap_err();
    assert!(err.to_string().contains("workers"), "{err}");
    let err = file_error("bind = \"nowhere\"");
    assert!(err.contains("bind"), "{err}");
    let err = merge(&Args::default(), file("health-path = \"healthz\""), None).unwrap_err();
    assert!(err.to_string().contains("health-path"), "{err}");
}

#[test]
fn sockets_come_from_flag_file_or_default_and_need_a_restart() {
    let c = merge(&Args::default(), Args::default(), None).unwrap();
    assert_eq!(c.cluster.sockets, SocketMode::PerWorker);
    let f = merge(&Args::default(), file("sockets = \"shared\""), None).unwrap();
    assert_eq!(f.cluster.sockets, SocketMode::Shared);
    let args = Args {
        sockets: Some(SocketMode::PerWorkerPort),
        ..Args::default()
    };
    let a = merge(&args, file("sockets = \"shared\""), None).unwrap();
    assert_eq!(
        a.cluster.sockets,
        SocketMode::PerWorkerPort,
        "the flag wins"
    );
    let err = file_error("sockets = \"many\"");
    assert!(err.contains("sockets"), "{err}");
    assert_eq!(c.needs_restart(&f), vec!["sockets"]);
}

#[test]
fn keys_that_are_not_clusterds_are_left_for_the_app_with_their_line() {
    let dir = std::env::temp_dir().join(format!("clusterd-config-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "workers = 2\ngreeting = \"hi\"\n").unwrap();
    let (args, rest) = Args::from_file(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(args.workers, Some(2));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].key, "greeting");
    assert_eq!(rest[0].at, " (line 2: greeting = \"hi\")");
    let err = file_error("workers = 2\nconfig = \"x\"\n");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn restart_only_settings_are_reported() {
    let a = merge(&Args::default(), Args::default(), None).unwrap();
    let mut b = a.clone();
    b.cluster.workers += 1;
    b.cluster.graceful_timeout = Duration::from_secs(5);
    assert!(a.needs_restart(&b).is_empty());
    b.cluster.bind = "127.0.0.1:1".parse().unwrap();
    b.cluster.health_path = None;
    assert_eq!(a.needs_restart(&b), vec!["bind"]);
    b.cluster.group = Some("nogroup".into());
    b.cluster.data_dir = "/elsewhere".into();
    assert_eq!(a.needs_restart(&b), vec!["bind", "group", "data-dir"]);
}

#[test]
fn a_bad_value_in_the_file_names_its_line() {
    let err = file_error("threads = 2\nworkers = \"many\"\n");
    assert!(err.contains("line 2: workers = \"many\""), "{err}");
}

#[test]
fn every_default_in_help_is_the_one_applied() {
    let d = merge(&Args::default(), Args::default(), None).unwrap();
    let c = &d.cluster;
    let secs = |t: Duration| t.as_secs().to_string();
    let cpus = validate::cpus();
    // What each option's help says its default is, and whether that is what applies.
    let applied = |id: &str, shown: &str| -> bool {
        match id {
            "bind" => shown == c.bind.to_string(),
            "workers" => shown == "CPUs available to the process" && c.workers == cpus,
            "threads" => shown == c.threads.to_string(),
            "graceful_timeout" => shown == secs(c.graceful_timeout),
            "read_timeout" => shown == secs(c.read_timeout),
            "sockets" => shown == c.sockets.to_string(),
            "balance" => shown == c.balance.to_string(),
            "backlog" => shown == c.backlog.to_string(),
            "data_dir" => {
                shown == "$STATE_DIRECTORY, else ./clusterd-data"
                    && c.data_dir == Path::new("clusterd-data")
                    && merge(&Args::default(), Args::default(), Some(Path::new("/s")))
                        .unwrap()
                        .cluster
                        .data_dir
                        == Path::new("/s")
            }
            "health_path" => c.health_path.as_deref() == Some(shown),
            "access_log" => shown == "false" && !c.access_log,
            "group" => shown == "the user's group" && c.group.is_none(),
            "control_socket" => {
                shown
                    == "$RUNTIME_DIRECTORY/control.sock, else for root /run/clusterd/control-HASH.sock (HASH: of the data dir), else control.sock in the data dir"
                    && c.control_socket.is_none()
            }
            "metrics_bind" => shown == "off" && c.metrics_bind.is_none(),
            "metrics_allowed_hosts" => shown == "none" && c.metrics_allowed_hosts.is_empty(),
            "trusted_proxies" => shown == "none" && c.trusted_proxies.is_empty(),
            "proxy_protocol" => shown == "false" && !c.proxy_protocol,
            "worker_timeout" => shown == secs(c.worker_timeout),
            "max_requests" => shown == c.max_requests.to_string(),
            "max_requests_jitter" => shown == c.max_requests_jitter.to_string(),
            "max_worker_memory" => shown == (c.max_worker_memory >> 20).to_string(),
            "max_workers" => {
                shown == "4 per CPU, at least 16" && c.max_workers == (4 * cpus).max(16)
            }
            "log_format" => shown == "plain",
            _ => false,
        }
    };
    let cmd = Cli::command();
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let Some(at) = help.find("[default: ") else {
            continue;
        };
        let shown = help[at + 10..].trim_end_matches(']');
        let id = arg.get_id().as_str();
        assert!(applied(id, shown), "--{id}: help says [default: {shown}]");
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} defaults found in --help");
}
