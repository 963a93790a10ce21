//! Where a redirected connection was going: iptables' REDIRECT keeps the original
//! destination in conntrack, and SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST for IPv6) reads it
//! back. A connection that was not redirected has none: its own local address is where it
//! was going.

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The original destination of `stream` (IPv4-mapped addresses as plain IPv4).
pub fn of(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    let original = match local.ip().to_canonical() {
        std::net::IpAddr::V4(_) => sock.original_dst_v4(),
        std::net::IpAddr::V6(_) => sock.original_dst_v6(),
    };
    let addr = original.ok().and_then(|a| a.as_socket()).unwrap_or(local);
    Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}

/// Whether `orig` is the listener bound at `listener` itself: following it would loop.
pub fn is_listener(orig: SocketAddr, listener: SocketAddr) -> bool {
    orig.port() == listener.port()
        && (listener.ip().is_unspecified() || orig.ip() == listener.ip().to_canonical() || orig.ip().is_loopback())
}

/// Where an inbound connection goes in its pod: the app on loopback, at the original port.
pub fn app(orig: SocketAddr) -> SocketAddr {
    let ip = if orig.is_ipv4() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    };
    SocketAddr::new(ip, orig.port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_listener_itself_is_a_loop() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_listener(a("127.0.0.1:4140"), a("127.0.0.1:4140")));
        assert!(is_listener(a("10.250.0.2:4143"), a("0.0.0.0:4143")));
        assert!(is_listener(a("10.250.0.2:4143"), a("[::]:4143")));
        assert!(!is_listener(a("10.250.0.3:4140"), a("127.0.0.1:4140")), "another pod's port 4140");
        assert!(!is_listener(a("10.250.0.2:8080"), a("0.0.0.0:4143")));
        assert_eq!(app(a("10.250.0.2:8080")), a("127.0.0.1:8080"));
        assert_eq!(app(a("[fd00::2]:8080")), a("[::1]:8080"));
    }

    #[tokio::test]
    async fn a_connection_not_redirected_was_going_to_its_local_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(of(&s), Some(addr));
    }
}
