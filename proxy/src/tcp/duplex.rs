//! Copying a connection's bytes both ways, with buffers that grow with the traffic: each
//! direction starts with a small buffer and doubles it, up to [`MAX`], while reads keep
//! filling it, so a bulk transfer moves in large chunks (fewer syscalls and TLS records per
//! byte) and a chatty one stays small. A direction waiting to read with nothing left to
//! write holds no buffer at all (it is freed, and made again when the read is retried), so
//! an idle connection costs its sockets and task only.
//!
//! One copier for every byte stream the proxy carries: L4 (`protocol: tcp`) connections
//! and HTTP upgrades (WebSocket, CONNECT tunnels), which also end after an idle time.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A direction's first buffer.
const START: usize = 8 * 1024;
/// The largest a direction's buffer grows to.
pub const MAX: usize = 64 * 1024;
/// Full reads in a row before the buffer doubles.
const GROW_AFTER: u8 = 2;

/// Copies `a` → `b` and `b` → `a` until both sides have ended (each end is passed on as a
/// shutdown of the other side's write half). Returns the bytes copied each way.
pub async fn copy<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    copy_until_idle(a, b, None).await.map_err(|e| e.error)
}

/// A copy that stopped early: why, and the bytes copied each way until then.
#[derive(Debug)]
pub struct Stopped {
    pub error: io::Error,
    pub copied: (u64, u64),
}

/// [`copy`], ended (with `io::ErrorKind::TimedOut`) once no byte has moved either way for
/// `idle`.
pub async fn copy_until_idle<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> Result<(u64, u64), Stopped>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut to_b, mut to_a) = (Half::new(), Half::new());
    let (mut ab, mut ba) = (None, None);
    // The timer is moved forward only when it fires: traffic just notes when it moved.
    let mut timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let mut moved = 0u64;
    poll_fn(|cx| {
        let fail =
            |error, to_a: &Half, to_b: &Half| Poll::Ready(Err(Stopped { error, copied: (to_b.copied, to_a.copied) }));
        if ab.is_none()
            && let Poll::Ready(r) = to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))
        {
            match r {
                Ok(n) => ab = Some(n),
                Err(e) => return fail(e, &to_a, &to_b),
            }
        }
        if ba.is_none()
            && let Poll::Ready(r) = to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))
        {
            match r {
                Ok(n) => ba = Some(n),
                Err(e) => return fail(e, &to_a, &to_b),
            }
        }
        if let (Some(x), Some(y)) = (ab, ba) {
            return Poll::Ready(Ok((x, y)));
        }
        if let Some((idle, sleep)) = timer.as_mut() {
            while sleep.as_mut().poll(cx).is_ready() {
                let now = to_a.copied + to_b.copied;
                if now == moved {
                    return fail(io::ErrorKind::TimedOut.into(), &to_a, &to_b);
                }
                moved = now;
                sleep.as_mut().reset(Instant::now() + *idle);
            }
        }
        Poll::Pending
    })
    .await
}

/// One direction.
#[derive(Debug)]
struct Half {
    /// Empty (no capacity) while the direction waits to read with nothing to write.
    buf: Vec<u8>,
    /// The buffer's size when there is one.
    size: usize,
    /// `buf[pos..filled]` is read and not yet written.
    pos: usize,
    filled: usize,
    full_reads: u8,
    read_done: bool,
    need_flush: bool,
    copied: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: Vec::new(),
            size: START,
            pos: 0,
            filled: 0,
            full_reads: 0,
            read_done: false,
            need_flush: false,
            copied: 0,
        }
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, mut r: Pin<&mut R>, mut w: Pin<&mut W>) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.filled && !self.read_done {
                if self.buf.is_empty() {
                    self.buf = vec![0; self.size];
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing is left to write: the wait holds no buffer.
                        self.buf = Vec::new();
                        // Nothing to read now: what was written must not wait in the
                        // writer's buffer (a TLS stream keeps records until flushed).
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = rb.filled().len();
                if n == 0 {
                    self.read_done = true;
                } else {
                    (self.pos, self.filled) = (0, n);
                    self.grow_if_full(n);
                }
            }
            while self.pos < self.filled {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.filled]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(w.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }

    /// After a read of `n` bytes into an empty buffer: a full one (more was waiting) counts
    /// towards doubling the buffer.
    fn grow_if_full(&mut self, n: usize) {
        if n < self.buf.len() {
            self.full_reads = 0;
            return;
        }
        self.full_reads += 1;
        if self.full_reads >= GROW_AFTER && self.buf.len() < MAX {
            // The bytes just read are still to be written: keep them.
            self.buf.resize(self.buf.len() * 2, 0);
            self.size = self.buf.len();
            self.full_reads = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_passes_the_ends_and_grows_for_bulk() {
        let (mut client, mut proxy_a) = tokio::io::duplex(256 * 1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(256 * 1024);
        let copying = tokio::spawn(async move { copy(&mut proxy_a, &mut proxy_b).await });
        let bulk: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = bulk.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == bulk, "client → server, whole and in order, then the end");
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        assert_eq!(copying.await.unwrap().unwrap(), (3_000_000, 3));
    }

    #[tokio::test]
    async fn an_idle_copy_ends_after_its_idle_time_and_traffic_keeps_it() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let idle = Duration::from_millis(300);
        let copying = tokio::spawn(async move { copy_until_idle(&mut proxy_a, &mut proxy_b, Some(idle)).await });
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
        }
        assert!(!copying.is_finished(), "traffic every 100 ms for 800 ms is not idle");
        let quiet = std::time::Instant::now();
        let stopped = copying.await.unwrap().unwrap_err();
        assert!(quiet.elapsed() >= Duration::from_millis(200), "{:?}", quiet.elapsed());
        assert_eq!(stopped.error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(stopped.copied, (32, 0));
    }

    #[tokio::test]
    async fn a_direction_waiting_to_read_holds_no_buffer() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let mut h = Half::new();
        let poll = |h: &mut Half, a: &mut tokio::io::DuplexStream, b: &mut tokio::io::DuplexStream| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            h.poll(&mut cx, Pin::new(a), Pin::new(b)).is_pending()
        };
        assert!(poll(&mut h, &mut a, &mut b));
        assert_eq!(h.buf.capacity(), 0, "idle: no buffer");
        client.write_all(b"hi").await.unwrap();
        assert!(poll(&mut h, &mut a, &mut b));
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        assert_eq!(h.buf.capacity(), 0, "written and idle again: no buffer");
    }

    #[test]
    fn buffers_grow_only_while_reads_fill_them() {
        let mut h = Half::new();
        h.buf = vec![0; START];
        h.grow_if_full(START);
        assert_eq!(h.buf.len(), START, "one full read is not yet a trend");
        h.grow_if_full(START);
        assert_eq!(h.buf.len(), 2 * START);
        h.grow_if_full(100);
        h.grow_if_full(2 * START);
        assert_eq!(h.buf.len(), 2 * START, "a short read resets the count");
        for _ in 0..20 {
            let n = h.buf.len();
            h.grow_if_full(n);
        }
        assert_eq!(h.buf.len(), MAX);
    }
}
