//! Redis Cluster: three primaries with a replica each on loopback ports; sessions spread over
//! every primary, and a primary's failover to its replica loses none.

use std::time::Duration;

use crate::harness::*;

#[test]
fn sessions_spread_over_a_redis_cluster_and_survive_a_primary_failover() {
    let mut nodes: Vec<Redis> = (0..6)
        .map(|_| {
            Redis::start_cluster_node(&[
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
    let out = std::process::Command::new("redis-cli")
        .args(&create)
        .output()
        .expect("redis-cli (apt-get install -y redis-server)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ok = |n: &Redis| redis_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok");
    eventually(
        Duration::from_secs(45),
        "the cluster ok on every node",
        || nodes.iter().all(ok).then_some(()),
    );
    let primaries: Vec<usize> = (0..6)
        .filter(|i| redis_cli(nodes[*i].port, &["ROLE"]).starts_with("master"))
        .collect();
    assert_eq!(primaries.len(), 3);
    eventually(Duration::from_secs(45), "every replica in sync", || {
        (0..6)
            .filter(|i| !primaries.contains(i))
            .all(|i| {
                redis_cli(nodes[i].port, &["INFO", "replication"]).contains("master_link_status:up")
            })
            .then_some(())
    });

    let url = format!("redis+cluster://{}", addrs[..3].join(","));
    let c = Clusterd::start(Opts::default().workers(2).arg("--redis-url").arg(url));
    let cookies: Vec<String> = (0..30).map(|_| c.login("alice", "wonderland")).collect();
    for i in &primaries {
        let keys = redis_cli(nodes[*i].port, &["KEYS", "clusterd:session:*"]);
        assert!(
            keys.lines().count() > 0,
            "primary {} holds sessions",
            nodes[*i].port
        );
        redis_cli(nodes[*i].port, &["WAIT", "1", "2000"]);
    }

    // One primary dies; its replica takes over its slots.
    let victim = primaries[0];
    let killed = std::time::Instant::now();
    nodes[victim].stop();
    eventually(
        Duration::from_secs(45),
        "every session answering 200 again",
        || {
            cookies
                .iter()
                .all(|cookie| {
                    request(c.addr, "GET", "/me", &[("cookie", cookie)], b"")
                        .is_ok_and(|r| r.status == 200)
                })
                .then_some(())
        },
    );
    eprintln!(
        "cluster failover: every session 200 again {:?} after the kill",
        killed.elapsed()
    );
    // Writes work after the failover: a new login and its logout.
    let fresh = c.login("alice", "wonderland");
    let r = request(c.addr, "POST", "/logout", &[("cookie", &fresh)], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        request(c.addr, "GET", "/me", &[("cookie", &fresh)], b"")
            .unwrap()
            .status,
        401
    );
}
