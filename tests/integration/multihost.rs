//! Several hosts behind a real nginx: clusterd masters on loopback ports sharing one Redis and
//! one cookie key file. Round robin, the seed's layout (a port per worker behind `ip_hash`), and
//! a whole host killed under load while nginx retries the others.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

/// nginx in the foreground with its own config, stopped by pid.
struct Nginx {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl Nginx {
    /// Proxies a free loopback port to `upstream` (the body of an `upstream {}` block).
    fn start(upstream: &str) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx missing: apt-get install -y nginx");
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.path().display();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
                 upstream hosts {{ {upstream} keepalive 16; }}\n\
                 server {{\n  listen 127.0.0.1:{port};\n  location / {{\n\
                   proxy_pass http://hosts;\n   proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n   proxy_connect_timeout 1s;\n\
                   proxy_next_upstream error timeout http_502 http_503;\n  }}\n }}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let addr = ([127, 0, 0, 1], port).into();
        eventually(Duration::from_secs(10), "nginx answering", || {
            request(addr, "GET", "/healthz", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        Nginx {
            port,
            child,
            _dir: dir,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master by pid: it stops its workers and exits.
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Three hosts sharing `redis` and one key file.
fn hosts(redis: &Redis, key: &std::path::Path, workers: usize) -> Vec<Clusterd> {
    (0..3)
        .map(|_| {
            Clusterd::start(
                Opts::default()
                    .workers(workers)
                    .redis(redis)
                    .arg("--session-key-file")
                    .arg(key.to_str().unwrap())
                    // nginx connects from here and names the client in X-Forwarded-For.
                    .arg("--trusted-proxies")
                    .arg("127.0.0.1"),
            )
        })
        .collect()
}

fn shared_key(dir: &TempDir) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("session.key");
    std::fs::write(
        &key,
        (0..64u8)
            .map(|i| i.wrapping_mul(37) ^ 0x5a)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

fn login_via(addr: std::net::SocketAddr) -> String {
    let r = request(
        addr,
        "POST",
        "/login",
        &[("content-type", "application/json")],
        br#"{"username":"alice","password":"wonderland"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.cookie().unwrap()
}

#[test]
fn three_hosts_behind_nginx_round_robin_share_every_session() {
    let redis = Redis::start();
    let dir = TempDir::new("multihost");
    let key = shared_key(&dir);
    let hs = hosts(&redis, &key, 1);
    let upstream: String = hs
        .iter()
        .map(|h| format!("server 127.0.0.1:{};", h.port))
        .collect();
    let nginx = Nginx::start(&upstream);
    let cookie = login_via(nginx.addr());
    let mut served = std::collections::HashSet::new();
    for _ in 0..60 {
        let r = request(nginx.addr(), "GET", "/me", &[("cookie", &cookie)], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let pid = r.json()["worker_pid"].as_i64().unwrap() as i32;
        let host = hs
            .iter()
            .position(|h| h.workers().contains(&pid))
            .expect("a host's worker");
        served.insert(host);
    }
    assert_eq!(served.len(), 3, "every host served: {served:?}");
    let r = request(nginx.addr(), "POST", "/logout", &[("cookie", &cookie)], b"").unwrap();
    assert_eq!(r.status, 200);
    for h in &hs {
        let r = request(h.addr, "GET", "/me", &[("cookie", &cookie)], b"").unwrap();
        assert_eq!(r.status, 401, "logged out on host {}", h.port);
    }
}

#[test]
fn per_worker_ports_behind_ip_hash() {
    let redis = Redis::start();
    // Two consecutive free ports: the workers' slots 0 and 1.
    let port = eventually(Duration::from_secs(5), "two free ports in a row", || {
        let p = free_port();
        std::net::TcpListener::bind(("127.0.0.1", p + 1))
            .ok()
            .map(|_| p)
    });
    let c = Clusterd::start(
        Opts::default()
            .workers(2)
            .port(port)
            .redis(&redis)
            .arg("--sockets")
            .arg("per-worker-port"),
    );
    let nginx = Nginx::start(&format!(
        "ip_hash; server 127.0.0.1:{port}; server 127.0.0.1:{};",
        port + 1
    ));
    let cookie = login_via(nginx.addr());
    for _ in 0..30 {
        let r = request(nginx.addr(), "GET", "/me", &[("cookie", &cookie)], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    drop(c);
}

#[test]
fn a_host_killed_under_load_loses_no_request_and_no_session() {
    let redis = Redis::start();
    let dir = TempDir::new("multihost-kill");
    let key = shared_key(&dir);
    let mut hs = hosts(&redis, &key, 1);
    let upstream: String = hs
        .iter()
        .map(|h| format!("server 127.0.0.1:{};", h.port))
        .collect();
    let nginx = Nginx::start(&upstream);
    let cookies: Vec<String> = (0..10).map(|_| login_via(nginx.addr())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let loops = request_loop(
        nginx.addr(),
        "/me",
        vec![("cookie".into(), cookies[0].clone())],
        4,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(500));
    // The whole host: master and workers, SIGKILL to its process group.
    let victim = hs.remove(1);
    drop(victim);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let stats = join_loops(loops);
    stats.assert_clean(100);
    for cookie in &cookies {
        let r = request(nginx.addr(), "GET", "/me", &[("cookie", cookie)], b"").unwrap();
        assert_eq!(r.status, 200, "no session lost");
    }
}

/// Behind the proxy every client would be one client (the proxy's address): the throttle must
/// key on the client nginx names. One client's guesses lock that client out, not everyone.
#[test]
fn behind_nginx_one_guessing_client_does_not_lock_out_the_others() {
    let redis = Redis::start();
    let dir = TempDir::new("proxied");
    let key = shared_key(&dir);
    let hosts = hosts(&redis, &key, 1);
    let upstream: String = hosts
        .iter()
        .map(|h| format!("server 127.0.0.1:{};", h.port))
        .collect();
    let nginx = Nginx::start(&upstream);
    let json = [("content-type", "application/json")];
    let login = |from: [u8; 4], password: &str| {
        let body = format!(r#"{{"username":"alice","password":"{password}"}}"#);
        request_from(from, nginx.addr(), "POST", "/login", &json, body.as_bytes())
            .unwrap()
            .status
    };
    let guesses: Vec<u16> = (0..25).map(|_| login([127, 0, 6, 1], "wrong")).collect();
    assert_eq!(
        guesses.iter().filter(|s| **s == 401).count(),
        5,
        "{guesses:?}"
    );
    assert_eq!(guesses.last(), Some(&429));
    assert_eq!(login([127, 0, 6, 2], "wonderland"), 200, "another client");
    assert_eq!(
        login([127, 0, 6, 1], "wonderland"),
        429,
        "the guessing client"
    );
    assert!(
        hosts
            .iter()
            .any(|h| !h.log_lines("client=127.0.6.1").is_empty()),
        "the log names the client, not the proxy"
    );
}
