//! A per-thread stock of read and write buffers for the in-task HTTP/1.1 codecs, and the
//! read that holds no buffer while it waits.
//!
//! A connection needs its buffers only while bytes are moving: a keep-alive connection
//! between requests, an SSE stream between events and a pooled upstream connection hold
//! none (as nginx frees an idle connection's buffer). A read that finds its buffer empty
//! and the socket not ready gives the buffer back; the next read tries the socket with a
//! buffer on the stack and only takes one from the stock (or allocates) when bytes have
//! come. The stock makes that hand-over cheap: a busy worker takes back the buffers it was
//! given, so a request costs no allocation for them (as `header_maps` does for maps). A
//! worker is one thread, so the stock takes no lock.
//!
//! Works for any `AsyncRead` (plain TCP and TLS alike): only `poll_read` is used.

use crate::http::recycle;
use bytes::BytesMut;
use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, ReadBuf};

/// Size of a new read buffer and of the stack buffer a waiting read uses.
pub const CHUNK: usize = 8 * 1024;
/// Buffers kept per thread (each at most `MAX_KEPT`); more are freed.
const STOCK: usize = 64;
/// Buffers grown past this are freed rather than kept.
const MAX_KEPT: usize = 16 * 1024;
/// Write buffers grown past this are freed rather than kept. Room for the downstream
/// writer's largest copied body frame (16 KiB) with its head, so a busy worker serving
/// medium bodies does not allocate one per response.
const MAX_WRITE_KEPT: usize = 20 * 1024;
/// Room a new write buffer starts with: a response head.
const WRITE_START: usize = 1024;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty read buffer with room for at least `CHUNK` bytes.
pub fn take_read() -> BytesMut {
    // A buffer given back may still be shared with bytes handed out of it (a response body
    // on its way downstream): `try_reclaim` then fails, and it is dropped (freed by the
    // last holder). Two tries, then a new one.
    for _ in 0..2 {
        let Some(mut b) = recycle::take(&READ) else { break };
        if b.try_reclaim(CHUNK) {
            return b;
        }
    }
    BytesMut::with_capacity(CHUNK)
}

/// Gives back an empty read buffer (a non-empty or oversized one is kept by the caller or
/// freed).
pub fn give_read(buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 || buf.capacity() > MAX_KEPT {
        return;
    }
    recycle::keep(&READ, buf, STOCK);
}

/// An empty write buffer.
pub fn take_write() -> Vec<u8> {
    recycle::take(&WRITE).unwrap_or_else(|| Vec::with_capacity(WRITE_START))
}

/// Gives back a write buffer; its contents are dropped.
pub fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_WRITE_KEPT {
        return;
    }
    buf.clear();
    recycle::keep(&WRITE, buf, STOCK);
}

/// Reads from `io` into `buf`, making room for `grow` more bytes when it has less than
/// `min` free. With `release` (for waits that may be long: between requests, between
/// events), an empty `buf` that finds nothing to read is given back, and while `buf` has
/// no buffer the read goes to a stack buffer: one is taken only when bytes came. Without
/// it (a short wait), an empty `buf` with no room takes a buffer and keeps it. Returns the
/// bytes read (0: EOF).
pub fn poll_read<S: AsyncRead + ?Sized>(
    io: Pin<&mut S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    (min, grow): (usize, usize),
    release: bool,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < min && !buf.try_reclaim(grow) {
        if !buf.is_empty() {
            buf.reserve(grow);
        } else if release {
            // An empty buffer short of room (the tail of one whose bytes were handed out,
            // e.g. after a response head) is not kept for the wait either: it goes back to
            // the stock, which reuses it whole once those bytes are dropped.
            give_read(std::mem::take(buf));
            return poll_read_unbuffered(io, cx, buf);
        } else {
            // A short wait: the buffer would be kept anyway, so take it now and read into
            // it (no copy through the stack).
            *buf = take_read();
            if grow > buf.capacity() {
                buf.reserve(grow);
            }
        }
    }
    let polled = tokio_util::io::poll_read_buf(io, cx, buf);
    if release && polled.is_pending() && buf.is_empty() && buf.capacity() <= MAX_KEPT {
        give_read(std::mem::take(buf));
    }
    polled
}

/// Reads into a stack buffer; what came goes into a buffer from the stock.
fn poll_read_unbuffered<S: AsyncRead + ?Sized>(
    io: Pin<&mut S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut probe = [MaybeUninit::<u8>::uninit(); CHUNK];
    let mut rb = ReadBuf::uninit(&mut probe);
    ready!(io.poll_read(cx, &mut rb))?;
    let got = rb.filled();
    if !got.is_empty() {
        *buf = take_read();
        buf.extend_from_slice(got);
    }
    Poll::Ready(Ok(got.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Buf;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn waiting_read_holds_no_buffer() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let mut buf = take_read();
        // Nothing to read: the empty buffer goes back.
        let waker = std::task::Waker::noop();
        let polled = poll_read(Pin::new(&mut b), &mut Context::from_waker(waker), &mut buf, (1024, CHUNK), true);
        assert!(polled.is_pending());
        assert_eq!(buf.capacity(), 0);
        // Bytes arrive: read through the stack into a buffer from the stock.
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = poll_fn(|cx| poll_read(Pin::new(&mut b), cx, &mut buf, (1024, CHUNK), true)).await.unwrap();
        assert_eq!(n, 18);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n\r\n");
        assert!(buf.capacity() >= CHUNK);
        // More than a stack buffer at once: the rest comes on the next reads.
        let big = vec![b'x'; CHUNK * 2 + 5];
        a.write_all(&big).await.unwrap();
        buf.advance(18);
        let mut got = 0;
        while got < big.len() {
            got += poll_fn(|cx| poll_read(Pin::new(&mut b), cx, &mut buf, (1024, CHUNK), true)).await.unwrap();
        }
        assert_eq!(buf.len(), big.len());
        drop(a);
        buf.clear();
        let n = poll_fn(|cx| poll_read(Pin::new(&mut b), cx, &mut buf, (1024, CHUNK), true)).await.unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn waiting_read_gives_back_a_buffer_short_of_room() {
        let (_a, mut b) = tokio::io::duplex(64);
        let mut buf = take_read();
        buf.extend_from_slice(&[7u8; 100]);
        let head = buf.split().freeze();
        assert!(buf.is_empty() && buf.capacity() < CHUNK);
        let waker = std::task::Waker::noop();
        let polled = poll_read(Pin::new(&mut b), &mut Context::from_waker(waker), &mut buf, (CHUNK, 2 * CHUNK), true);
        assert!(polled.is_pending());
        assert_eq!(buf.capacity(), 0, "not kept for the wait");
        assert_eq!(&head[..], &[7u8; 100][..], "bytes handed out stay intact");
        drop(head);
        assert!(take_read().capacity() >= CHUNK, "reused whole once its bytes are dropped");
    }

    #[test]
    fn short_wait_keeps_a_buffer() {
        let (_a, mut b) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let waker = std::task::Waker::noop();
        let polled = poll_read(Pin::new(&mut b), &mut Context::from_waker(waker), &mut buf, (CHUNK, CHUNK), false);
        assert!(polled.is_pending());
        assert!(buf.capacity() >= CHUNK, "taken at once and kept while waiting");
    }

    #[test]
    fn shared_buffers_are_not_reused_while_shared() {
        let mut b = take_read();
        b.extend_from_slice(&[1u8; CHUNK]);
        let held = b.split().freeze();
        give_read(b);
        let again = take_read();
        assert!(again.capacity() >= CHUNK);
        assert_eq!(&held[..], &[1u8; CHUNK][..], "bytes handed out stay intact");
        let mut w = take_write();
        w.extend_from_slice(b"head");
        give_write(w);
        assert!(take_write().is_empty());
    }
}
