//! The PROXY protocol (`--proxy-protocol`): a proxy in front (HAProxy `send-proxy-v2`, nginx
//! stream `proxy_protocol on`) opens every connection with a header naming the client. Runs in
//! workers, when actix hands over a new connection.
//!
//! The listening socket gets `TCP_DEFER_ACCEPT`, so the kernel hands a connection over only once
//! its first data arrived (or the read timeout passed): a proxy writes the header first, in one
//! segment, so it is there to be read without waiting. The header is parsed from a peek (`ppp`,
//! versions 1 and 2) and exactly its bytes are consumed; what follows is the client's HTTP. A
//! connection that does not start with a whole, valid header is shut down unanswered.

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use ppp::{HeaderResult, v1, v2};

/// The longest header taken: v1's limit is 107 bytes; v2's 16 plus addresses and a few TLVs.
const MAX_HEADER: usize = 536;

/// Asks the kernel to hold new connections until data arrives, for at most `wait`.
pub(super) fn defer_accept(listener: RawFd, wait: Duration) -> std::io::Result<()> {
    let secs = wait.as_secs().max(1) as nix::libc::c_int;
    // SAFETY: a plain setsockopt with an int the kernel copies in; `listener` is the worker's
    // listening socket.
    let rc = unsafe {
        nix::libc::setsockopt(
            listener,
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            (&secs as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes the PROXY header off the start of the connection on `fd`: the client it names, or
/// `None` for a proxy's own connection (v2 LOCAL, v1 UNKNOWN: the peer is the client); the
/// reason when there is no whole, valid header.
pub(super) fn take_header(fd: RawFd) -> Result<Option<IpAddr>, String> {
    let mut buf = [0u8; MAX_HEADER];
    let peeked = recv(fd, &mut buf, nix::libc::MSG_PEEK)?;
    let (len, client) = match HeaderResult::parse(&buf[..peeked]) {
        HeaderResult::V1(Ok(h)) => (
            h.header.len(),
            match h.addresses {
                v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                v1::Addresses::Unknown => None,
            },
        ),
        HeaderResult::V2(Ok(h)) => (
            h.len(),
            match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => Some(IpAddr::V4(a.source_address)),
                (_, v2::Addresses::IPv6(a)) => Some(IpAddr::V6(a.source_address)),
                _ => None,
            },
        ),
        _ => return Err("the connection does not start with a whole PROXY header".into()),
    };
    // Exactly the header: the rest is the client's request.
    let taken = recv(fd, &mut buf[..len], 0)?;
    if taken != len {
        return Err("the PROXY header could not be read whole".into());
    }
    Ok(client.map(|ip| ip.to_canonical()))
}

/// One non-blocking `recv`; nothing there (or the end) is an error here.
fn recv(fd: RawFd, buf: &mut [u8], flags: nix::libc::c_int) -> Result<usize, String> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is the connection actix handed over.
    let n = unsafe {
        nix::libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | nix::libc::MSG_DONTWAIT,
        )
    };
    match n {
        n if n > 0 => Ok(n as usize),
        0 => Err("the connection closed before a PROXY header".into()),
        _ => Err(format!(
            "no PROXY header: {}",
            std::io::Error::last_os_error()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    use super::*;

    /// A connected pair of TCP sockets on loopback.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (c, l.accept().unwrap().0)
    }

    #[test]
    fn a_v1_header_names_the_client_and_only_it_is_consumed() {
        let (mut c, mut s) = pair();
        c.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            take_header(s.as_raw_fd()),
            Ok(Some("203.0.113.7".parse().unwrap()))
        );
        let mut rest = [0u8; 16];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn a_v2_header_names_the_client() {
        let (mut c, s) = pair();
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]); // PROXY, TCP over IPv4, 12 bytes
        h.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x15, 0xb3, 0, 80]);
        c.write_all(&h).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            take_header(s.as_raw_fd()),
            Ok(Some("198.51.100.9".parse().unwrap()))
        );
    }

    #[test]
    fn plain_http_or_nothing_is_refused() {
        let (mut c, s) = pair();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(take_header(s.as_raw_fd()).is_err());
        let (_c, s) = pair();
        assert!(take_header(s.as_raw_fd()).is_err());
    }
}
