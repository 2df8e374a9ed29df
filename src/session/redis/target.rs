//! Where a Redis store's data lives: one address, a Sentinel group's primary, or a Cluster;
//! and how the primary is looked up through the sentinels. Runs in workers.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

use super::*;

/// Why a connect attempt failed.
pub(super) enum Refused {
    /// Unreachable, timed out, refused: the next request tries again.
    Failed(String),
    /// The server does not speak RESP3 (it has no `HELLO`).
    NoResp3(String),
}

impl From<RedisError> for Refused {
    fn from(e: RedisError) -> Self {
        if e.kind() == redis::ErrorKind::RESP3NotSupported {
            Refused::NoResp3(e.to_string())
        } else {
            Refused::Failed(e.to_string())
        }
    }
}

/// Where the data lives.
pub(super) enum Target {
    /// One Redis at a fixed address.
    Direct(Client),
    /// The primary of a Sentinel-monitored group, looked up on every (re)connect.
    Sentinel(Sentinel),
    /// A Redis Cluster: the client learns the slots from any node and follows failovers.
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The same server as `client`, over RESP3 (for `CLIENT TRACKING` pushes).
pub(super) fn resp3(client: &Client) -> Result<Client, RedisError> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings))
}

/// `redis+cluster://[user:pass@]host:port[,host:port...]` (or `rediss+cluster://`): the seed
/// nodes as `redis://` URLs with the credentials.
pub(super) fn cluster_client(url: &str) -> Result<redis::cluster::ClusterClient, RedisError> {
    let (scheme, rest) = match url.split_once("+cluster://") {
        Some(("redis", rest)) => ("redis://", rest),
        Some(("rediss", rest)) => ("rediss://", rest),
        _ => {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid cluster URL",
                "must start with redis+cluster:// or rediss+cluster://".to_string(),
            )));
        }
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}{auth}{h}"))
        .collect();
    redis::cluster::ClusterClient::builder(nodes)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .build()
}

/// `redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/DB][?sentinel_username=U&sentinel_password=P]`.
/// The URL's credentials are the data nodes'; the sentinels' own come in the query.
/// `rediss+sentinel://` speaks TLS to the sentinels and to the data nodes.
pub(super) struct Sentinel {
    /// The sentinels, each as a client with the sentinels' credentials, if any.
    pub(super) sentinels: Vec<Client>,
    pub(super) service: String,
    /// `redis://` or `rediss://`, with the credentials, for the data node.
    scheme: &'static str,
    auth: String,
    db: String,
}

impl Sentinel {
    pub(super) fn parse(url: &str) -> Result<Sentinel, RedisError> {
        let invalid = |why: &str| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid sentinel URL",
                why.to_string(),
            ))
        };
        let (scheme, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
            ("redis://", r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            ("rediss://", r)
        } else {
            return Err(invalid(
                "must start with redis+sentinel:// or rediss+sentinel://",
            ));
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (format!("{auth}@"), rest),
            None => (String::new(), rest),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut sentinel_auth = (String::new(), String::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sentinel_username", v)) => sentinel_auth.0 = v.to_string(),
                Some(("sentinel_password", v)) => sentinel_auth.1 = v.to_string(),
                _ => {
                    return Err(invalid(
                        "the query takes sentinel_username and sentinel_password only",
                    ));
                }
            }
        }
        let sentinel_auth = match sentinel_auth {
            (u, p) if u.is_empty() && p.is_empty() => String::new(),
            (u, p) => format!("{u}:{p}@"),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no /SERVICE after the sentinels"))?;
        let (service, db) = match path.split_once('/') {
            Some((service, db)) => (service, db),
            None => (path, "0"),
        };
        if service.is_empty() {
            return Err(invalid("empty SERVICE"));
        }
        if db.parse::<u32>().is_err() {
            return Err(invalid("DB must be a number"));
        }
        let sentinels = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| Client::open(format!("{scheme}{sentinel_auth}{h}")))
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(invalid("no sentinel address"));
        }
        Ok(Sentinel {
            sentinels,
            service: service.to_string(),
            scheme,
            auth,
            db: db.to_string(),
        })
    }

    /// Asks every sentinel at once for the service's primary, and uses it only when the
    /// sentinels that answer agree (one sentinel that lies, or was compromised, must not get the
    /// data node's password or serve forged sessions). Then checks with ROLE that the node is a
    /// primary (a demoted one answers "slave"), so clusterd never writes to a replica.
    /// `config` is for the sentinels, `data` for the data node, over RESP3 if `resp3`.
    pub(super) async fn primary(
        &self,
        config: &AsyncConnectionConfig,
        data: &AsyncConnectionConfig,
        resp3: bool,
    ) -> Result<MultiplexedConnection, Refused> {
        let asked = self.sentinels.iter().map(|sentinel| {
            tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut c = sentinel
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            })
        });
        let answers: Vec<Option<(String, u16)>> = futures_util::future::join_all(asked)
            .await
            .into_iter()
            .filter_map(|a| a.ok().and_then(Result::ok))
            .collect();
        let (host, port) = agreed(&answers, self.sentinels.len())
            .map_err(|why| Refused::Failed(format!("sentinels for {:?}: {why}", self.service)))?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!("{}{}{host}:{port}/{}", self.scheme, self.auth, self.db);
        let mut client = Client::open(url)?;
        if resp3 {
            client = super::target::resp3(&client)?;
        }
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut c = client
                .get_multiplexed_async_connection_with_config(data)
                .await?;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await?;
            Ok::<_, RedisError>((c, role))
        })
        .await;
        match conn {
            Ok(Ok((c, role))) => {
                let is_primary =
                    matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master");
                if is_primary {
                    Ok(c)
                } else {
                    Err(Refused::Failed(format!(
                        "{host}:{port} is not the primary (yet)"
                    )))
                }
            }
            Ok(Err(e)) => Err(match Refused::from(e) {
                Refused::NoResp3(e) => Refused::NoResp3(e),
                Refused::Failed(e) => Refused::Failed(format!("primary {host}:{port}: {e}")),
            }),
            Err(_) => Err(Refused::Failed(format!(
                "primary {host}:{port}: connect timed out"
            ))),
        }
    }
}

/// The primary the sentinels that answered agree on: named by more than half of them, and by
/// at least two when two or more sentinels are listed. `listed` is how many the URL names.
fn agreed(answers: &[Option<(String, u16)>], listed: usize) -> Result<(String, u16), String> {
    if answers.is_empty() {
        return Err("no sentinel answered".into());
    }
    let mut votes: Vec<(&(String, u16), usize)> = Vec::new();
    for addr in answers.iter().flatten() {
        match votes.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, n)) => *n += 1,
            None => votes.push((addr, 1)),
        }
    }
    let Some(&(best, n)) = votes.iter().max_by_key(|(_, n)| *n) else {
        return Err("the sentinels do not know the service".into());
    };
    let needed = (answers.len() / 2 + 1).max(listed.min(2));
    if n >= needed {
        Ok(best.clone())
    } else {
        let named: Vec<String> = votes
            .iter()
            .map(|((h, p), n)| format!("{h}:{p} ({n})"))
            .collect();
        Err(format!(
            "no agreement ({} of {} answered; named {}; {needed} needed)",
            answers.len(),
            listed,
            named.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> Option<(String, u16)> {
        Some(("127.0.0.1".into(), port))
    }

    #[test]
    fn a_primary_needs_the_agreement_of_the_sentinels_that_answer() {
        assert_eq!(agreed(&[a(1), a(1), a(2)], 3), Ok(("127.0.0.1".into(), 1)));
        assert!(agreed(&[a(2), a(1)], 3).is_err(), "one against one");
        assert!(
            agreed(&[a(2)], 3).is_err(),
            "one of three listed is not enough"
        );
        assert_eq!(agreed(&[a(1)], 1), Ok(("127.0.0.1".into(), 1)));
        assert_eq!(agreed(&[a(1), a(1)], 3), Ok(("127.0.0.1".into(), 1)));
        assert!(agreed(&[], 3).is_err());
        assert!(agreed(&[None, None], 2).is_err());
    }

    #[test]
    fn sentinel_urls_carry_the_sentinels_own_credentials_and_tls() {
        let s = Sentinel::parse(
            "rediss+sentinel://:datapw@h1:26379,h2:26379/svc/2?sentinel_password=spw",
        )
        .unwrap();
        assert_eq!((s.service.as_str(), s.db.as_str()), ("svc", "2"));
        assert_eq!((s.scheme, s.auth.as_str()), ("rediss://", ":datapw@"));
        let info = s.sentinels[0].get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("spw"));
        assert!(matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }));
        let plain = Sentinel::parse("redis+sentinel://h1:26379/svc").unwrap();
        assert_eq!(
            plain.sentinels[0]
                .get_connection_info()
                .redis_settings()
                .password(),
            None
        );
        assert!(Sentinel::parse("redis+sentinel://h1/svc?other=1").is_err());
    }
}
