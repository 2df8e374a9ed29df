//! Who the client is: the connection's peer, or, behind a proxy the operator trusts
//! (`--trusted-proxies`), the address that proxy names in `X-Forwarded-For`. Runs in workers;
//! every request gets a [`ClientAddr`] before the app sees it, so the app's throttle and logs
//! key on the person, not on the proxy in front of everyone.

use std::net::IpAddr;
use std::sync::OnceLock;

use actix_web::HttpMessage;
use ipnet::IpNet;

/// The client of a request, as `resolve` decided; read it with [`client_addr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client a PROXY protocol header named for a connection (`None`: the proxy's own), kept
/// in the connection's extensions.
#[derive(Debug, Clone, Copy)]
pub(super) struct Proxied(pub(super) Option<IpAddr>);

/// This worker's trusted proxies, set once after `fork`.
static TRUSTED: OnceLock<Vec<IpNet>> = OnceLock::new();

/// Sets the trusted proxies (the worker, once, before it serves).
pub(super) fn set_trusted(proxies: Vec<IpNet>) {
    let _ = TRUSTED.set(proxies);
}

/// The client of `req`: the address clusterd resolved, else the connection's peer.
pub fn client_addr(req: &actix_web::HttpRequest) -> Option<IpAddr> {
    req.extensions()
        .get::<ClientAddr>()
        .map(|c| c.0)
        .or_else(|| req.peer_addr().map(|a| a.ip()))
}

/// Resolves and records the client of a request entering the worker.
pub(super) fn record(req: &actix_web::dev::ServiceRequest) {
    let proxied = req.conn_data::<Proxied>().and_then(|p| p.0);
    let Some(peer) = proxied.or_else(|| req.peer_addr().map(|a| a.ip())) else {
        return;
    };
    let trusted = TRUSTED.get().map_or(&[][..], Vec::as_slice);
    let client = if trusted.is_empty() {
        if proxied.is_none() {
            // The peer, which `client_addr` falls back to anyway: nothing to record.
            return;
        }
        peer
    } else {
        let hops: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        resolve(peer, &hops, trusted)
    };
    req.extensions_mut().insert(ClientAddr(client));
}

/// From a trusted peer, the rightmost `X-Forwarded-For` hop that is not itself trusted (each
/// proxy appends the address it saw, so everything left of the first untrusted hop may be
/// the client's own invention); from anyone else, the peer. A hop that is not an address ends
/// the walk at the last good one.
pub fn resolve(peer: IpAddr, hops: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer;
    for hop in hops.iter().rev() {
        if !is_trusted(&client) {
            break;
        }
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => client = ip.to_canonical(),
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_from_a_trusted_peer() {
        let trusted: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let proxy = ip("127.0.0.1");
        assert_eq!(
            resolve(proxy, &["203.0.113.7"], &trusted),
            ip("203.0.113.7")
        );
        // A client that sends its own X-Forwarded-For cannot choose its address.
        assert_eq!(
            resolve(proxy, &["1.2.3.4", " 203.0.113.7"], &trusted),
            ip("203.0.113.7")
        );
        // Through two trusted proxies.
        assert_eq!(
            resolve(proxy, &["203.0.113.7", "10.1.2.3"], &trusted),
            ip("203.0.113.7")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(resolve(proxy, &[], &trusted), proxy);
        assert_eq!(resolve(proxy, &["nonsense"], &trusted), proxy);
        // From an untrusted peer the header is ignored.
        assert_eq!(
            resolve(ip("198.51.100.1"), &["203.0.113.7"], &trusted),
            ip("198.51.100.1")
        );
    }
}
