//! Where a Redis store's data lives: one address, a Sentinel group's primary, or a Cluster;
//! and how the primary is looked up through the sentinels. Runs in workers.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

use super::*;

/// Where the data lives.
pub(super) enum Target {
    /// One Redis at a fixed address.
    Direct(Client),
    /// The primary of a Sentinel-monitored group, looked up on every (re)connect.
    Sentinel(Sentinel),
    /// A Redis Cluster: the client learns the slots from any node and follows failovers.
    Cluster(Box<redis::cluster::ClusterClient>),
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

/// `redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/DB]`.
pub(super) struct Sentinel {
    /// The sentinels, each as a client (no credentials: those are the data nodes').
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
            .map(|h| Client::open(format!("redis://{h}")))
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

    /// Asks the sentinels, in turn, for the service's primary; the first that answers wins.
    /// Then checks with ROLE that the node is a primary (a demoted one answers "slave"), so
    /// clusterd never writes to a replica.
    pub(super) async fn primary(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, String> {
        let mut last = String::from("no sentinel answered");
        for sentinel in &self.sentinels {
            let asked = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut c = sentinel
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            })
            .await;
            let (host, port) = match asked {
                Ok(Ok(Some(addr))) => addr,
                Ok(Ok(None)) => {
                    last = format!("sentinels do not know the service {:?}", self.service);
                    continue;
                }
                Ok(Err(e)) => {
                    last = format!("sentinel: {e}");
                    continue;
                }
                Err(_) => {
                    last = "sentinel timed out".into();
                    continue;
                }
            };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let url = format!("{}{}{host}:{port}/{}", self.scheme, self.auth, self.db);
            let client = Client::open(url).map_err(|e| e.to_string())?;
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut c = client
                    .get_multiplexed_async_connection_with_config(config)
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
                        return Ok(c);
                    }
                    last = format!("{host}:{port} is not the primary (yet)");
                }
                Ok(Err(e)) => last = format!("primary {host}:{port}: {e}"),
                Err(_) => last = format!("primary {host}:{port}: connect timed out"),
            }
        }
        Err(last)
    }
}
