//! The demo page and the operator's dashboard in a real headless Chromium (Debian's `chromium`
//! and `chromium-driver`), driven through WebDriver with fantoccini; clusterd is the real
//! binary on a loopback port. Its own test target, so CI can give it its own time bound.
//! `CLUSTERD_SCREENSHOTS=DIR` also saves a screenshot of each page there (for the README).

#[path = "../integration/harness.rs"]
mod harness;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use harness::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, stopped by its pid.
struct Driver {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Driver {
    fn start() -> Driver {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} missing: apt-get install -y chromium chromium-driver (package {package})"
            );
        }
        let dir = TempDir::new("chromedriver");
        let port = free_port();
        // Its own process group, so Drop stops the browsers it starts with it, also when a
        // test fails before it closed its session.
        let child = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("driver.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let addr = ([127, 0, 0, 1], port).into();
        eventually(Duration::from_secs(20), "chromedriver answering", || {
            request(addr, "GET", "/status", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        Driver {
            child,
            port,
            _dir: dir,
        }
    }

    /// A browser session: headless, no network beyond loopback, its console log kept.
    async fn browser(&self, profile: &Path) -> Client {
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=900,700",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }

    /// The browser console's SEVERE entries so far (chromedriver's log endpoint).
    async fn severe(&self, client: &Client) -> Vec<String> {
        let id = client.session_id().await.unwrap().expect("a session id");
        let addr = ([127, 0, 0, 1], self.port).into();
        let r = request(
            addr,
            "POST",
            &format!("/session/{id}/se/log"),
            &[("content-type", "application/json")],
            br#"{"type":"browser"}"#,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].to_string())
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group by its id (chromedriver's pid): chromedriver and its Chromium processes.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn text(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Clicks the element with this id.
async fn click(client: &Client, id: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Types a user name and password into the page's login form.
async fn fill_login(client: &Client, user: &str, password: &str) {
    let form = client
        .find(Locator::Css("form[action='/login']"))
        .await
        .expect("the login form");
    for (name, value) in [("username", user), ("password", password)] {
        form.find(Locator::Css(&format!("input[name='{name}']")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
}

/// Waits (10 s at most) until the text of `css` satisfies `done`; returns it.
async fn eventually_async(client: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..40 {
        last = text(client, css).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{css} never matched: {last}");
}

async fn screenshot(client: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("CLUSTERD_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(name), png).unwrap();
    }
}

#[test]
fn sign_in_through_the_form_stay_signed_in_on_reload_and_log_out() {
    let c = Clusterd::start(Opts::default().workers(2));
    let driver = Driver::start();
    let profile = TempDir::new("chromium");
    block_on(async {
        let b = driver.browser(profile.path()).await;
        let url = format!("http://127.0.0.1:{}/", c.port);
        b.goto(&url).await.unwrap();
        fill_login(&b, "alice", "wonderland").await;
        screenshot(&b, "page-login.png").await;
        click(&b, "login").await;

        assert_eq!(text(&b, "#user").await, "alice");
        let pid: i32 = text(&b, "#pid").await.parse().unwrap();
        assert!(
            c.workers().contains(&pid),
            "{pid} is a live worker: {:?}",
            c.workers()
        );
        assert_eq!(
            b.current_url().await.unwrap().as_str(),
            url,
            "redirected back to /"
        );
        screenshot(&b, "page-signed-in.png").await;

        // Reloads: still signed in, whichever worker serves.
        let mut pids = std::collections::HashSet::from([pid]);
        for _ in 0..8 {
            b.refresh().await.unwrap();
            assert_eq!(
                text(&b, "#user").await,
                "alice",
                "still signed in after a reload"
            );
            pids.insert(text(&b, "#pid").await.parse::<i32>().unwrap());
        }
        assert!(pids.iter().all(|p| c.workers().contains(p)), "{pids:?}");

        click(&b, "logout").await;
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("input[name='username']"))
            .await
            .expect("the form again after logging out");
        assert!(b.find(Locator::Id("user")).await.is_err(), "signed out");

        let severe = driver.severe(&b).await;
        assert!(severe.is_empty(), "console errors: {severe:?}");

        // A wrong password: the form again with the reason, under 401, which is the one
        // console entry Chromium makes of it (a page loaded with an error status).
        fill_login(&b, "alice", "nope").await;
        click(&b, "login").await;
        assert!(
            text(&b, "#error")
                .await
                .contains("Wrong user name or password")
        );
        let severe = driver.severe(&b).await;
        assert!(
            severe.len() == 1 && severe[0].contains("/login") && severe[0].contains("401"),
            "only the 401 page load: {severe:?}"
        );
        b.close().await.unwrap();
    });
}

/// The `data-points` (values drawn) of the first line of a chart, read in one script (the
/// page redraws its charts every 2 s, which would make a found element stale).
async fn drawn(client: &Client, css: &str) -> usize {
    let script =
        "const e = document.querySelector(arguments[0]); return e ? e.dataset.points : null";
    client
        .execute(script, vec![serde_json::json!(css)])
        .await
        .unwrap()
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_dashboard_lists_every_live_worker() {
    let port = free_port();
    let c = Clusterd::start(
        Opts::default()
            .workers(3)
            .arg("--metrics-bind")
            .arg(format!("127.0.0.1:{port}")),
    );
    // Traffic over a few seconds: the charts get points.
    let addr = c.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = request(addr, "GET", "/healthz", &[], b"");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let driver = Driver::start();
    let profile = TempDir::new("chromium");
    block_on(async {
        let b = driver.browser(profile.path()).await;
        b.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
        for pid in c.workers() {
            b.wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Id(&format!("worker-{pid}")))
                .await
                .unwrap_or_else(|e| panic!("worker {pid} on the dashboard: {e}"));
        }
        assert!(text(&b, "#summary").await.contains("3/3 workers ready"));
        // A worker killed and replaced: the new pid appears within a few refreshes.
        let victim = c.workers()[0];
        signal(victim, nix::sys::signal::Signal::SIGKILL);
        let fresh = eventually(Duration::from_secs(10), "a replacement", || {
            let now = c.workers();
            (now.len() == 3 && !now.contains(&victim)).then_some(now)
        });
        for pid in fresh {
            b.wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Id(&format!("worker-{pid}")))
                .await
                .unwrap_or_else(|e| panic!("worker {pid} on the dashboard: {e}"));
        }
        // The history: the cluster's charts have points, each worker row its three sparklines,
        // and the events name the death and the respawn with their reasons.
        let mut points = 0;
        for _ in 0..40 {
            points = drawn(&b, "#chart-rps path").await;
            if points >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(points >= 3, "the requests chart drew {points} points");
        assert!(drawn(&b, "#chart-latency path").await >= 1);
        let events = eventually_async(&b, "#events", |t| {
            t.contains("worker died") && t.contains(&format!("pid={victim}"))
        })
        .await;
        assert!(events.contains("worker started"), "{events}");
        let sparks = b
            .find_all(Locator::Css("#workers svg.spark"))
            .await
            .unwrap();
        assert_eq!(sparks.len(), 3 * 3, "three sparklines per worker");
        let latency = b
            .find_all(Locator::Css(
                "#workers tr:first-child td:nth-last-child(2) path",
            ))
            .await
            .unwrap();
        assert_eq!(latency.len(), 2, "a worker's p50 and p99");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap();
        // Give the table a second turn so the req/s column is filled in for the screenshot, in
        // a window tall enough for the charts, the table and the events.
        b.set_window_size(1400, 1000).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        screenshot(&b, "dashboard.png").await;
        let severe = driver.severe(&b).await;
        assert!(severe.is_empty(), "console errors: {severe:?}");
        b.close().await.unwrap();
    });
}
