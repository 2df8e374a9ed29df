//! Redis Sentinel: a primary, a replica and three sentinels (quorum 2, down-after 1 s) on
//! loopback ports; clusterd finds the primary through the sentinels and follows a failover.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// One `redis-server --sentinel` with its own (rewritable) config file, stopped by pid.
struct SentinelProcess {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl SentinelProcess {
    fn start(primary: u16) -> Self {
        let dir = TempDir::new("sentinel");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor svc 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds svc 1000\n\
                 sentinel failover-timeout svc 5000\n\
                 sentinel parallel-syncs svc 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let redis = Redis::binary();
        let child = Command::new(redis)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a sentinel");
        eventually(Duration::from_secs(10), "the sentinel answering", || {
            (redis_cli(port, &["PING"]).trim() == "PONG").then_some(())
        });
        SentinelProcess {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, its replica in sync, three sentinels that know both and each other, and the
/// `redis+sentinel://` URL of the group.
fn group() -> (Redis, Redis, Vec<SentinelProcess>, String) {
    let primary = Redis::start();
    let replica_of = primary.port.to_string();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
    eventually(Duration::from_secs(10), "the replica in sync", || {
        redis_cli(replica.port, &["INFO", "replication"])
            .contains("master_link_status:up")
            .then_some(())
    });
    let sentinels: Vec<SentinelProcess> = (0..3)
        .map(|_| SentinelProcess::start(primary.port))
        .collect();
    eventually(
        Duration::from_secs(15),
        "the sentinels know the replica and each other",
        || {
            let s = redis_cli(sentinels[0].port, &["SENTINEL", "master", "svc"]);
            (s.contains("num-slaves\n1") && s.contains("num-other-sentinels\n2")).then_some(())
        },
    );
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/svc/0", hosts.join(","));
    (primary, replica, sentinels, url)
}

#[test]
fn a_failover_by_hand_moves_writes_to_the_new_primary_at_once() {
    let (primary, replica, sentinels, url) = group();
    let c = Clusterd::start(Opts::default().workers(1).arg("--redis-url").arg(url));
    let before = c.login("alice", "wonderland");
    redis_cli(primary.port, &["WAIT", "1", "2000"]);
    // The old primary stays up and becomes a replica: only +switch-master (or a READONLY
    // reply) tells clusterd to move.
    redis_cli(sentinels[0].port, &["SENTINEL", "FAILOVER", "svc"]);
    eventually(Duration::from_secs(15), "the replica promoted", || {
        redis_cli(replica.port, &["ROLE"])
            .starts_with("master")
            .then_some(())
    });
    c.wait_log(Duration::from_secs(15), "sentinel: the primary changed");
    let after = eventually(
        Duration::from_secs(10),
        "a login on the new primary",
        || {
            request(
                c.addr,
                "POST",
                "/login",
                &[("content-type", "application/json")],
                br#"{"username":"alice","password":"wonderland"}"#,
            )
            .ok()
            .filter(|r| r.status == 200)
        },
    );
    assert!(after.cookie().is_some());
    let on_new = redis_cli(replica.port, &["KEYS", "clusterd:session:*"]);
    assert_eq!(
        on_new.lines().count(),
        2,
        "both sessions on the new primary: {on_new}"
    );
    assert_eq!(
        request(c.addr, "GET", "/me", &[("cookie", &before)], b"")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_failover_behind_sentinel_logs_nobody_out() {
    let (mut primary, replica, _sentinels, url) = group();
    // Not --redis-wait-replicas: after the failover the new primary has no replica left, and
    // durable logins would (rightly) be refused; `durable_logins_wait_for_a_replica` covers it.
    let c = Clusterd::start(Opts::default().workers(2).arg("--redis-url").arg(url));

    let cookies: Vec<String> = (0..20).map(|_| c.login("alice", "wonderland")).collect();
    // Every session on the replica before the primary goes.
    redis_cli(primary.port, &["WAIT", "1", "2000"]);

    let killed = Instant::now();
    primary.stop();
    let mut first_bad: Option<Duration> = None;
    let mut last_bad: Option<Duration> = None;
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut good_in_a_row = 0;
    while Instant::now() < deadline && good_in_a_row < 20 {
        let asked = Instant::now();
        let r = request(c.addr, "GET", "/me", &[("cookie", &cookies[0])], b"").unwrap();
        slowest = slowest.max(asked.elapsed());
        if r.status == 200 {
            good_in_a_row += 1;
        } else {
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(r.json()["error"].is_string());
            good_in_a_row = 0;
            first_bad.get_or_insert(killed.elapsed());
            last_bad = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        good_in_a_row >= 20,
        "no steady 200s within 30 s of the kill:\n{}",
        c.log_text()
    );
    let window = match (first_bad, last_bad) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    eprintln!(
        "failover: non-200 from {first_bad:?} to {last_bad:?} after the kill; slowest answer {slowest:?}"
    );
    assert!(window <= Duration::from_secs(10), "window {window:?}");
    assert!(
        slowest <= Duration::from_millis(1500),
        "slowest {slowest:?}"
    );
    for cookie in &cookies {
        let r = request(c.addr, "GET", "/me", &[("cookie", cookie)], b"").unwrap();
        assert_eq!(
            r.status,
            200,
            "a session from before the failover: {}",
            r.text()
        );
    }
    // Writes reach the new primary: a login and a logout.
    let fresh = c.login("alice", "wonderland");
    let r = request(c.addr, "POST", "/logout", &[("cookie", &fresh)], b"").unwrap();
    assert_eq!(r.status, 200);
    let r = request(c.addr, "GET", "/me", &[("cookie", &fresh)], b"").unwrap();
    assert_eq!(r.status, 401);
    let role = redis_cli(replica.port, &["ROLE"]);
    assert!(
        role.starts_with("master"),
        "the replica was promoted: {role}"
    );
}

#[test]
fn durable_logins_wait_for_a_replica() {
    let primary = Redis::start();
    let c = Clusterd::start(
        Opts::default()
            .workers(1)
            .redis(&primary)
            .arg("--redis-wait-replicas")
            .arg("1"),
    );
    let body = br#"{"username":"alice","password":"wonderland"}"#;
    let json = [("content-type", "application/json")];
    // No replica: the login is refused rather than answered for a session a failover could lose.
    let r = request(c.addr, "POST", "/login", &json, body).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        redis_cli(primary.port, &["KEYS", "clusterd:session:*"]).trim(),
        "",
        "the unreplicated session was deleted"
    );
    let replica_of = primary.port.to_string();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
    // In sync as the primary sees it (the replica is counted by WAIT once it is online).
    eventually(Duration::from_secs(10), "the replica online", || {
        redis_cli(primary.port, &["INFO", "replication"])
            .contains("state=online")
            .then_some(())
    });
    // The WAIT is bounded (300 ms): on a loaded machine one attempt may miss it, and answers
    // 503 as it should; the login succeeds once the replica acknowledges in time.
    let r = eventually(Duration::from_secs(10), "a durable login", || {
        request(c.addr, "POST", "/login", &json, body)
            .ok()
            .filter(|r| r.status == 200)
    });
    let cookie = r.cookie().unwrap();
    let id_keys = redis_cli(replica.port, &["KEYS", "clusterd:session:*"]);
    assert_eq!(
        id_keys.lines().count(),
        1,
        "the session is on the replica: {id_keys}"
    );
    assert_eq!(
        request(c.addr, "GET", "/me", &[("cookie", &cookie)], b"")
            .unwrap()
            .status,
        200
    );
    // A logout is as durable as a login: with no replica to acknowledge it, 503.
    let mut replica = replica;
    replica.stop();
    let out = request(c.addr, "POST", "/logout", &[("cookie", &cookie)], b"").unwrap();
    assert_eq!(out.status, 503, "{}", out.text());
    assert!(out.header("retry-after").is_some());
}

/// One of three listed sentinels lies: it monitors another Redis under the same service name
/// (as a compromised or misconfigured one would). Listed first, it was believed; now the
/// sentinels that answer must agree, and the liar's primary never hears from clusterd.
#[test]
fn a_lying_sentinel_gets_no_command_to_its_primary() {
    let (primary, _replica, sentinels, _) = group();
    let fake = Redis::start();
    let liar = SentinelProcess::start(fake.port);
    let url = format!(
        "redis+sentinel://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/svc/0",
        liar.port, sentinels[0].port, sentinels[1].port
    );
    let c = Clusterd::start(Opts::default().workers(2).arg("--redis-url").arg(&url));
    let cookie = c.login("alice", "wonderland");
    for _ in 0..10 {
        let r = request(c.addr, "GET", "/me", &[("cookie", &cookie)], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        redis_cli(primary.port, &["KEYS", "clusterd:session:*"])
            .lines()
            .count(),
        1,
        "the session is on the real primary"
    );
    let stats = redis_cli(fake.port, &["INFO", "commandstats"]);
    for cmd in [
        "cmdstat_role:",
        "cmdstat_hello:",
        "cmdstat_auth:",
        "cmdstat_set:",
        "cmdstat_get:",
        "cmdstat_getex:",
        "cmdstat_evalsha:",
        "cmdstat_eval:",
        "cmdstat_select:",
    ] {
        assert!(
            !stats.contains(cmd),
            "the liar's primary got {cmd}\n{stats}"
        );
    }
}

/// `rediss+sentinel://`: TLS to the sentinels as well as to the data node, and the sentinels'
/// own password from the URL's query (the data node has none here).
#[test]
fn tls_sentinels_with_a_password_of_their_own() {
    use crate::sessions::{make_ca, openssl};
    let dir = TempDir::new("tls-sentinel");
    let d = dir.path();
    make_ca(d, "ca");
    openssl(
        d,
        "req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1",
    );
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        "x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out srv.crt",
    );
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    let tls = |port: &str| -> Vec<String> {
        [
            "--tls-port",
            port,
            "--tls-cert-file",
            &path("srv.crt"),
            "--tls-key-file",
            &path("srv.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let primary_tls = free_port().to_string();
    let args = tls(&primary_tls);
    let primary = Redis::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // One sentinel, TLS only, with a password, watching the primary over TLS.
    let sentinel_tls = free_port();
    let conf = d.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\nbind 127.0.0.1\ndir {}\ntls-port {sentinel_tls}\ntls-cert-file {}\n\
             tls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n\
             requirepass sentinel-secret\n\
             sentinel monitor svc 127.0.0.1 {primary_tls} 1\n",
            d.display(),
            path("srv.crt"),
            path("srv.key"),
            path("ca.crt")
        ),
    )
    .unwrap();
    let mut sentinel = Command::new(Redis::binary())
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a sentinel");
    let url = |query: &str| format!("rediss+sentinel://127.0.0.1:{sentinel_tls}/svc/0{query}");
    let with = |query: &str| {
        Clusterd::start(
            Opts::default()
                .workers(1)
                .arg("--redis-url")
                .arg(url(query))
                .env("SSL_CERT_FILE", path("ca.crt")),
        )
    };
    let c = with("?sentinel_password=sentinel-secret");
    let cookie = eventually(
        Duration::from_secs(15),
        "a login through the TLS sentinel",
        || {
            let body = br#"{"username":"alice","password":"wonderland"}"#;
            request(
                c.addr,
                "POST",
                "/login",
                &[("content-type", "application/json")],
                body,
            )
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.cookie())
        },
    );
    assert_eq!(
        request(c.addr, "GET", "/me", &[("cookie", &cookie)], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(primary.keys("clusterd:session:*").len(), 1);
    // Without the sentinels' password they do not answer: 503, not a guess.
    let refused = with("");
    let body = br#"{"username":"alice","password":"wonderland"}"#;
    let r = request(
        refused.addr,
        "POST",
        "/login",
        &[("content-type", "application/json")],
        body,
    )
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}
