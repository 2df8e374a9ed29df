//! Sessions shared by every worker, in Redis and in the embedded store; the login app.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

const T: Duration = Duration::from_secs(15);
const JSON: (&str, &str) = ("content-type", "application/json");
const DEMO_LOGIN: &[u8] = br#"{"username":"alice","password":"wonderland"}"#;

fn me(c: &Clusterd, cookie: &str) -> Response {
    request(c.addr, "GET", "/me", &[("cookie", cookie)], b"").unwrap()
}

/// POST /login as the demo user, whatever the answer.
fn demo_login(c: &Clusterd) -> Response {
    post(c, "/login", &[JSON], DEMO_LOGIN)
}

fn post(c: &Clusterd, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(c.addr, "POST", path, headers, body).unwrap()
}

/// 50 requests on fresh connections with one cookie, plus one on a connection to each worker:
/// all 200, and so served by every worker.
fn assert_logged_in_everywhere(c: &Clusterd, cookie: &str) {
    for i in 0..50 {
        let r = me(c, cookie);
        assert_eq!(r.status, 200, "request {i}: {} {}", r.status, r.text());
        assert_eq!(r.json()["user"], "alice");
    }
    // Every session test runs two workers (`c.workers()` would also count workers still
    // draining after a reload).
    for (id, mut conn) in connection_per_worker(c.addr, 2) {
        let r = conn.get("/me", &[("cookie", cookie)]).unwrap();
        assert_eq!(r.status, 200, "worker {id}: {} {}", r.status, r.text());
        assert_eq!(r.json()["worker_id"].as_u64(), Some(id));
    }
}

fn store_opts(redis: Option<&Redis>) -> Opts {
    let o = Opts::default().workers(2);
    match redis {
        Some(r) => o.redis(r),
        None => o,
    }
}

fn login_is_shared_by_every_worker(redis: Option<&Redis>) {
    let c = Clusterd::start(store_opts(redis));
    assert!(c.log_text().contains(if redis.is_some() {
        "store=redis"
    } else {
        "store=embedded sqlite"
    }));
    let cookie = c.login("alice", "wonderland");
    assert_logged_in_everywhere(&c, &cookie);
    if let Some(r) = redis {
        assert_eq!(
            r.keys("clusterd:session:*").len(),
            1,
            "one session record in Redis"
        );
    }
    let out = post(&c, "/logout", &[("cookie", &cookie)], b"");
    assert_eq!(out.status, 200);
    for (id, mut conn) in connection_per_worker(c.addr, 2) {
        let r = conn.get("/me", &[("cookie", &cookie)]).unwrap();
        assert_eq!(r.status, 401, "worker {id} after logout: {}", r.text());
    }
    for _ in 0..20 {
        assert_eq!(me(&c, &cookie).status, 401);
    }
    if let Some(r) = redis {
        assert!(
            r.keys("clusterd:session:*").is_empty(),
            "logout deleted the record"
        );
    }
}

#[test]
fn login_is_shared_by_every_worker_in_redis() {
    let redis = Redis::start();
    login_is_shared_by_every_worker(Some(&redis));
}

#[test]
fn login_is_shared_by_every_worker_in_the_embedded_store() {
    login_is_shared_by_every_worker(None);
}

fn session_survives_restarts(redis: Option<&Redis>) {
    let data = TempDir::new("restart-data");
    let c = Clusterd::start(store_opts(redis).data(data.path()));
    let cookie = c.login("alice", "wonderland");

    // A worker killed with SIGKILL.
    let victim = c.workers()[0];
    signal(victim, Signal::SIGKILL);
    eventually(T, "replacement", || {
        (c.workers().len() == 2 && !c.workers().contains(&victim)).then_some(())
    });
    c.wait_ready(T);
    assert_logged_in_everywhere(&c, &cookie);

    // A rolling restart.
    let g = c.generation();
    c.signal(Signal::SIGHUP);
    c.wait_reloaded(T, g);
    assert_logged_in_everywhere(&c, &cookie);

    // A master restart on the same data dir (and Redis): the generated key is kept.
    let port = c.port;
    let mut c = c;
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit(T), Some(0));
    drop(c);
    let c = Clusterd::start(store_opts(redis).data(data.path()).port(port));
    assert_logged_in_everywhere(&c, &cookie);
}

#[test]
fn session_survives_worker_kill_reload_and_restart_in_redis() {
    let redis = Redis::start();
    session_survives_restarts(Some(&redis));
}

#[test]
fn session_survives_worker_kill_reload_and_restart_in_the_embedded_store() {
    session_survives_restarts(None);
}

#[test]
fn redis_acl_user_database_and_prefix_come_from_the_configuration() {
    // The ACL user may touch only keys under app:, so a wrong prefix or a failed AUTH shows.
    let redis = Redis::start_with(&["--user", "clusterd", "on", ">s3cret", "~app:*", "+@all"]);
    let url = format!("redis://clusterd:s3cret@127.0.0.1:{}/2", redis.port);
    let c = Clusterd::start(
        Opts::default()
            .arg("--redis-url")
            .arg(&url)
            .arg("--session-prefix")
            .arg("app:session:"),
    );
    assert!(
        !c.log_text().contains("s3cret"),
        "the password stays out of the log"
    );
    let cookie = c.login("alice", "wonderland");
    assert_logged_in_everywhere(&c, &cookie);
    let keys = redis.cli(&["-n", "2", "--raw", "KEYS", "app:session:*"]);
    assert_eq!(
        keys.lines().filter(|l| !l.is_empty()).count(),
        1,
        "one session in database 2: {keys}"
    );
    assert!(redis.keys("*").is_empty(), "nothing in database 0");
    // The same user with a prefix outside its key pattern is refused: 503, not a 500 or a hang.
    let wrong = Clusterd::start(Opts::default().arg("--redis-url").arg(&url));
    let r = demo_login(&wrong);
    assert_eq!(r.status, 503, "{}", r.text());
}

/// Runs openssl with `args` (split at spaces); the TLS test makes its certificates with it.
pub(crate) fn openssl(dir: &Path, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = std::process::Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("openssl not found: install it with `apt-get install -y openssl`");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `name.key`, `name.crt`.
pub(crate) fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!(
            "req -x509 -newkey rsa:2048 -nodes -days 2 -keyout {name}.key -out {name}.crt -subj /CN={name}"
        ),
    );
}

#[test]
fn rediss_urls_speak_tls_and_verify_the_server() {
    let dir = TempDir::new("tls");
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other");
    openssl(
        d,
        "req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1",
    );
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        "x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out srv.crt",
    );
    let tls_port = free_port().to_string();
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    let (crt, key, ca) = (path("srv.crt"), path("srv.key"), path("ca.crt"));
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &crt,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    // rustls trusts the CAs in SSL_CERT_FILE (as the system store would hold a real one).
    let c = Clusterd::start(
        Opts::default()
            .arg("--redis-url")
            .arg(&url)
            .env("SSL_CERT_FILE", &ca),
    );
    let cookie = c.login("alice", "wonderland");
    assert_logged_in_everywhere(&c, &cookie);
    assert_eq!(
        redis.keys("clusterd:session:*").len(),
        1,
        "the session went over TLS into Redis"
    );
    // A server whose certificate does not chain to a trusted CA is refused.
    let untrusted = Clusterd::start(
        Opts::default()
            .arg("--redis-url")
            .arg(&url)
            .env("SSL_CERT_FILE", path("other.crt")),
    );
    let r = demo_login(&untrusted);
    assert_eq!(r.status, 503, "{}", r.text());
}

#[test]
fn another_host_sharing_redis_and_the_key_sees_the_login() {
    let redis = Redis::start();
    let dir = TempDir::new("shared-key");
    let key = dir.path().join("session.key");
    std::fs::write(&key, (0..96u8).collect::<Vec<_>>()).unwrap();
    let a = Clusterd::start(
        Opts::default()
            .redis(&redis)
            .arg("--session-key-file")
            .arg(key.to_str().unwrap()),
    );
    let b = Clusterd::start(
        Opts::default()
            .redis(&redis)
            .arg("--session-key-file")
            .arg(key.to_str().unwrap()),
    );
    let cookie = a.login("alice", "wonderland");
    assert_logged_in_everywhere(&b, &cookie);
    // A host with another key cannot read the cookie: anonymous, not an error.
    let other = Clusterd::start(Opts::default().redis(&redis));
    assert_eq!(me(&other, &cookie).status, 401);
}

#[test]
fn redis_outage_gives_503_fast_and_recovers_without_a_restart() {
    let mut redis = Redis::start();
    let c = Clusterd::start(Opts::default().workers(2).redis(&redis));
    let cookie = c.login("alice", "wonderland");
    redis.stop();
    for _ in 0..10 {
        let t = Instant::now();
        let r = me(&c, &cookie);
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(took < Duration::from_secs(1), "503 took {took:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("unavailable"));
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(demo_login(&c).status, 503);
    eventually(T, "/healthz degraded", || {
        let r = c.get("/healthz");
        (r.status == 200
            && r.json()["status"] == "degraded"
            && r.json()["store"]["status"] == "down")
            .then_some(())
    });
    redis.restart();
    // Redis restarted empty (no persistence): the old session is gone, a new login works.
    eventually(T, "login works again", || {
        (demo_login(&c).status == 200).then_some(())
    });
    let cookie = c.login("alice", "wonderland");
    assert_logged_in_everywhere(&c, &cookie);
    eventually(T, "/healthz ok", || {
        (c.get("/healthz").json()["status"] == "ok").then_some(())
    });
}

#[test]
fn a_redis_that_stops_answering_gives_503_within_a_second() {
    let redis = Redis::start();
    let c = Clusterd::start(Opts::default().workers(2).redis(&redis));
    let cookie = c.login("alice", "wonderland");
    redis.freeze(true);
    for _ in 0..6 {
        let t = Instant::now();
        let r = me(&c, &cookie);
        let took = t.elapsed();
        redis_thawed_on_panic(&redis, || {
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(took < Duration::from_secs(1), "503 took {took:?}");
        });
    }
    redis.freeze(false);
    eventually(T, "sessions work again", || {
        (me(&c, &cookie).status == 200).then_some(())
    });
    assert_logged_in_everywhere(&c, &cookie);
}

/// Runs `f`; if it panics, thaws Redis first so its Drop can stop it.
fn redis_thawed_on_panic(redis: &Redis, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        redis.freeze(false);
        std::panic::resume_unwind(e);
    }
}

#[test]
fn workers_start_degraded_when_redis_is_down() {
    let port = free_port();
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .arg("--redis-url")
            .arg(format!("redis://127.0.0.1:{port}")),
    );
    assert_eq!(c.workers().len(), 2);
    assert_eq!(c.get("/healthz").json()["status"], "degraded");
    let r = demo_login(&c);
    assert_eq!(r.status, 503);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        c.log_lines("worker died").is_empty(),
        "no crash loop: {}",
        c.log_text()
    );
}

#[test]
fn session_ids_are_unique_across_workers() {
    let redis = Redis::start();
    let c = Clusterd::start(Opts::default().workers(2).redis(&redis));
    let mut cookies = HashSet::new();
    // 50 logins through each worker: ids minted by two forks of one process must still differ.
    for (id, mut conn) in connection_per_worker(c.addr, 2) {
        for _ in 0..50 {
            let r = conn
                .send("POST", "/login", &[JSON], DEMO_LOGIN)
                .unwrap_or_else(|e| panic!("login {}: {e}; log:\n{}", cookies.len(), c.log_text()));
            assert_eq!((r.status, r.worker()), (200, Some(id)));
            cookies.insert(r.cookie().unwrap());
        }
    }
    assert_eq!(cookies.len(), 100);
    assert_eq!(
        redis.keys("clusterd:session:*").len(),
        100,
        "100 logins, 100 distinct session ids"
    );
}

#[test]
fn login_renews_the_session_id() {
    let redis = Redis::start();
    let c = Clusterd::start(Opts::default().redis(&redis));
    let first = c.login("alice", "wonderland");
    let keys_before: HashSet<String> = redis.keys("clusterd:session:*").into_iter().collect();
    let r = post(&c, "/login", &[JSON, ("cookie", &first)], DEMO_LOGIN);
    assert_eq!(r.status, 200);
    let second = r.cookie().unwrap();
    assert_ne!(first, second);
    let keys_after: HashSet<String> = redis.keys("clusterd:session:*").into_iter().collect();
    assert_eq!(keys_after.len(), 1, "the old record was deleted");
    assert!(keys_before.is_disjoint(&keys_after), "a new id");
    assert_eq!(me(&c, &first).status, 401);
    assert_eq!(me(&c, &second).status, 200);
}

#[test]
fn tampered_truncated_and_foreign_cookies_are_anonymous() {
    let c = Clusterd::start(Opts::default());
    let cookie = c.login("alice", "wonderland");
    let (name, value) = cookie.split_once('=').unwrap();
    let mut flipped = value.as_bytes().to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let cases = [
        format!("{name}={}", String::from_utf8(flipped).unwrap()),
        format!("{name}={}", &value[..value.len() / 2]),
        format!("{name}="),
        format!("{name}=not-a-session"),
        format!("{name}={}", "x".repeat(4000)),
        format!("{name}=%%%; other=1"),
        "garbage without equals".to_string(),
    ];
    for cookie in cases {
        let r = me(&c, &cookie);
        assert_eq!(
            r.status,
            401,
            "cookie {cookie:?}: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(r.json()["error"], "not logged in");
    }
}

#[test]
fn cookie_flags_follow_the_configuration() {
    let c = Clusterd::start(Opts::default().workers(1));
    let r = demo_login(&c);
    let set = r.header("set-cookie").unwrap().to_string();
    for flag in [
        "clusterd_session=",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/",
        "Max-Age=1800",
    ] {
        assert!(set.contains(flag), "{flag} missing in {set}");
    }
    let c = Clusterd::start(
        Opts::default()
            .workers(1)
            .arg("--cookie-secure")
            .arg("false")
            .arg("--cookie-name")
            .arg("sid"),
    );
    let r = demo_login(&c);
    let set = r.header("set-cookie").unwrap().to_string();
    assert!(set.starts_with("sid="), "{set}");
    assert!(!set.contains("Secure"), "{set}");
    assert!(set.contains("HttpOnly"));
}

#[test]
fn idle_timeout_is_renewed_by_use_and_the_lifetime_is_absolute() {
    let redis = Redis::start();
    let c = Clusterd::start(
        Opts::default()
            .redis(&redis)
            .arg("--session-idle-timeout")
            .arg("2")
            .arg("--session-max-lifetime")
            .arg("4"),
    );
    let cookie = c.login("alice", "wonderland");
    let key = redis.keys("clusterd:session:*").pop().unwrap();
    let ttl: i64 = redis.cli(&["TTL", &key]).trim().parse().unwrap();
    assert!(
        (1..=2).contains(&ttl),
        "store TTL matches the idle timeout: {ttl}"
    );
    // Used every 700 ms for 2.8 s: longer than the idle timeout, so only renewal keeps it.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(me(&c, &cookie).status, 200);
    }
    // Past the absolute lifetime (4 s from login), even a session in use ends.
    eventually(
        Duration::from_secs(4),
        "session ended by its lifetime",
        || {
            let r = me(&c, &cookie);
            (r.status == 401).then_some(())
        },
    );
    // And an idle one ends after the idle timeout.
    let cookie = c.login("alice", "wonderland");
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(me(&c, &cookie).status, 401);
}

#[test]
fn failed_logins_are_throttled_across_workers() {
    let c = Clusterd::start(Opts::default().workers(2));
    let wrong = br#"{"username":"alice","password":"nope"}"#;
    let right = DEMO_LOGIN;
    let mut conns = connection_per_worker(c.addr, 2);
    // Three failures through one worker, two through the other: only a shared counter reaches
    // five.
    for i in [0, 0, 0, 1, 1] {
        let r = conns[i].1.send("POST", "/login", &[JSON], wrong).unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
    }
    for (id, conn) in &mut conns {
        let r = conn.send("POST", "/login", &[JSON], right).unwrap();
        assert_eq!(
            r.status,
            429,
            "worker {id}: even the right password waits: {}",
            r.text()
        );
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
    }
    // Another user is not affected.
    let r = post(
        &c,
        "/login",
        &[JSON],
        br#"{"username":"bob","password":"x"}"#,
    );
    assert_eq!(r.status, 401);
}

#[test]
fn wrong_user_and_wrong_password_look_the_same() {
    let c = Clusterd::start(Opts::default().workers(1));
    let a = post(
        &c,
        "/login",
        &[JSON],
        br#"{"username":"alice","password":"nope"}"#,
    );
    let b = post(
        &c,
        "/login",
        &[JSON],
        br#"{"username":"mallory","password":"nope"}"#,
    );
    assert_eq!((a.status, b.status), (401, 401));
    assert_eq!(a.body, b.body);
}

#[test]
fn bad_input_gets_a_clear_4xx() {
    let c = Clusterd::start(Opts::default().workers(2));
    let form = ("content-type", "application/x-www-form-urlencoded");
    let long_user = format!(r#"{{"username":"{}","password":"x"}}"#, "a".repeat(200));
    let huge = vec![b'{'; 5000];
    // (method, path, headers, body, expected status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("POST", "/login", vec![JSON], b"{not json".to_vec(), 400),
        ("POST", "/login", vec![JSON], b"".to_vec(), 400),
        (
            "POST",
            "/login",
            vec![JSON],
            br#"{"username":"alice"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/login",
            vec![JSON],
            br#"{"username":1,"password":2}"#.to_vec(),
            400,
        ),
        ("POST", "/login", vec![JSON], br#"[1,2,3]"#.to_vec(), 400),
        ("POST", "/login", vec![JSON], long_user.into_bytes(), 400),
        (
            "POST",
            "/login",
            vec![JSON],
            br#"{"username":"","password":"x"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/login",
            vec![JSON],
            br#"{"username":"a\u0000b","password":"x"}"#.to_vec(),
            400,
        ),
        ("POST", "/login", vec![JSON], huge, 413),
        (
            "POST",
            "/login",
            vec![("content-type", "text/plain")],
            b"username=alice".to_vec(),
            415,
        ),
        ("POST", "/login", vec![], b"x".to_vec(), 415),
        (
            "POST",
            "/login",
            vec![form],
            b"username=alice".to_vec(),
            400,
        ),
        ("POST", "/login", vec![form], b"%zz=%zz".to_vec(), 400),
        ("GET", "/login", vec![], Vec::new(), 405),
        ("DELETE", "/me", vec![], Vec::new(), 405),
        ("GET", "/nowhere", vec![], Vec::new(), 404),
        ("GET", "/me", vec![], Vec::new(), 401),
    ];
    for (method, path, headers, body, want) in cases {
        let r = request(c.addr, method, path, &headers, &body).unwrap();
        assert_eq!(
            r.status,
            want,
            "{method} {path} {:?}: {}",
            String::from_utf8_lossy(&body[..body.len().min(60)]),
            r.text()
        );
        assert!(
            r.json()["error"].is_string(),
            "JSON error body for {method} {path}: {}",
            r.text()
        );
    }
    // A form login works.
    let r = post(&c, "/login", &[form], b"username=alice&password=wonderland");
    assert_eq!(r.status, 200, "{}", r.text());
    // A declared body far over the limit is refused without waiting for it.
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"POST /login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = read_response(&mut std::io::BufReader::new(s)).unwrap();
    assert_eq!(r.status, 413);
    // Bytes that are not HTTP get actix's bare 400 and a closed connection.
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(c.addr).unwrap();
        std::io::Write::write_all(&mut s, raw).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = read_response(&mut std::io::BufReader::new(s)).unwrap();
        assert!(
            (400..500).contains(&r.status),
            "{:?}: {}",
            String::from_utf8_lossy(raw),
            r.status
        );
    }
    // Nothing above was a crash.
    assert!(c.log_lines("worker died").is_empty(), "{}", c.log_text());
}

fn hash(password: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn users_file(dir: &Path, lines: &str) -> String {
    let p = dir.join("users");
    std::fs::write(&p, lines).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn users_come_from_the_users_file() {
    let dir = TempDir::new("users");
    let h = hash("s3cret pass");
    assert!(h.starts_with("$argon2id$"), "{h}");
    let file = users_file(dir.path(), &format!("# ops team\nbob:{h}\n"));
    let c = Clusterd::start(Opts::default().workers(1).arg("--users").arg(&file));
    assert!(
        c.log_lines("demo user").is_empty(),
        "no demo-user warning with a users file"
    );
    let r = post(
        &c,
        "/login",
        &[JSON],
        br#"{"username":"bob","password":"s3cret pass"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = demo_login(&c);
    assert_eq!(r.status, 401, "no demo user when a users file is set");
}
