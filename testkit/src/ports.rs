//! Ports for the processes a test starts.

/// A port nobody listens on right now, for a process the test starts to bind.
///
/// Taken below the kernel's ephemeral range (32768–60999 by default): a port that
/// `bind(0)` returns there may be handed to another test's outgoing connection (or its
/// own `bind(0)`) before the process binds it, which failed a CI run with "Address already
/// in use". Each test binary starts at an offset from its PID and counts up, so the tests
/// running in parallel inside it never get the same port; ports in use are skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id() % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(port).expect("ports are below 32000");
        // Free over UDP too: an HTTP/3 listener binds both.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// `127.0.0.1:` a [`free_port`].
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A fresh listen address for a proxy listener.
pub fn listen_addr() -> std::net::SocketAddr {
    free_addr()
}
