//! The queue of wire pieces an outgoing request is written from (head, body frames and
//! their chunk lines), written with as few (vectored) writes as the socket takes.

use bytes::{Buf, Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

const QUEUE: usize = 8;

/// Wire pieces waiting to be written (empty slots cost nothing to copy or drop).
#[derive(Debug, Clone, Default)]
pub struct Queue {
    parts: [Option<Bytes>; QUEUE],
    start: usize,
    end: usize,
}

impl Queue {
    /// Adds a piece (merged into the last one when the queue is full).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.end == QUEUE {
            let last = self.parts[QUEUE - 1].take().unwrap_or_default();
            let mut merged = BytesMut::with_capacity(last.len() + b.len());
            merged.extend_from_slice(&last);
            merged.extend_from_slice(&b);
            self.parts[QUEUE - 1] = Some(merged.freeze());
            return;
        }
        self.parts[self.end] = Some(b);
        self.end += 1;
    }

    /// An empty queue whose first slot is kept for a piece that comes last
    /// ([`Queue::put_front`]): a request's head, finished after its first body pieces.
    pub fn with_front_room() -> Self {
        Self { start: 1, end: 1, ..Self::default() }
    }

    /// Puts `b` before the queued pieces, in the slot [`Queue::with_front_room`] kept (once:
    /// a queue made otherwise has no such slot, and this panics rather than drop a piece).
    pub fn put_front(&mut self, b: Bytes) {
        self.start -= 1;
        self.parts[self.start] = Some(b);
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Writes every queued piece, dropping each once written.
    pub fn poll_write<W: AsyncWrite + Unpin>(&mut self, w: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        let polled = self.poll_write_from(w, cx, &mut sent);
        self.advance(sent);
        if let Poll::Ready(Ok(())) = polled {
            self.start = 0;
            self.end = 0;
        }
        polled
    }

    /// Writes the queued pieces from byte `sent` on, counting what is written in `sent`, and
    /// leaves the queue as it is (a request kept for a second try is written this way).
    pub fn poll_write_from<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        cx: &mut Context<'_>,
        sent: &mut usize,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut slices = [IoSlice::new(&[]); QUEUE];
            let mut n = 0;
            let mut skip = *sent;
            for p in self.parts[self.start..self.end].iter().flatten() {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                slices[n] = IoSlice::new(&p[skip..]);
                skip = 0;
                n += 1;
            }
            if n == 0 {
                return Pin::new(&mut *w).poll_flush(cx);
            }
            let written = if n > 1 && w.is_write_vectored() {
                ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n]))?
            } else {
                ready!(Pin::new(&mut *w).poll_write(cx, &slices[0]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += written;
        }
    }

    fn advance(&mut self, mut n: usize) {
        while self.start < self.end {
            let p = self.parts[self.start].get_or_insert_default();
            let k = n.min(p.len());
            p.advance(k);
            n -= k;
            if !p.is_empty() {
                break;
            }
            self.parts[self.start] = None;
            self.start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most 3 bytes a write, and is not ready every other time.
    #[derive(Default)]
    struct Trickle {
        got: Vec<u8>,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(3);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn kept_queue_is_written_whole_again_after_partial_writes() {
        let mut q = Queue::default();
        for p in ["GET / HTTP/1.1\r\n", "a", "", "host: h\r\n\r\n"] {
            q.push(Bytes::from_static(p.as_bytes()));
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..2 {
            let (mut w, mut sent) = (Trickle::default(), 0);
            while q.poll_write_from(&mut w, &mut cx, &mut sent).is_pending() {}
            assert_eq!(w.got, b"GET / HTTP/1.1\r\nahost: h\r\n\r\n");
            assert_eq!(sent, w.got.len());
        }
        // The consuming write empties the queue.
        let mut w = Trickle::default();
        while q.poll_write(&mut w, &mut cx).is_pending() {}
        assert_eq!(w.got, b"GET / HTTP/1.1\r\nahost: h\r\n\r\n");
        assert!(q.is_empty());
    }

    #[test]
    fn the_front_slot_kept_takes_the_last_piece_first() {
        let mut q = Queue::with_front_room();
        for i in 0..QUEUE + 1 {
            q.push(Bytes::from(vec![b'a' + i as u8]));
        }
        q.put_front(Bytes::from_static(b"head:"));
        let all: Vec<u8> = q.parts[q.start..q.end].iter().flatten().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all, b"head:abcdefghi");
    }

    #[test]
    fn full_queue_merges() {
        let mut q = Queue::default();
        for i in 0..QUEUE + 3 {
            q.push(Bytes::from(vec![b'a' + i as u8]));
        }
        let all: Vec<u8> = q.parts[q.start..q.end].iter().flatten().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all, b"abcdefghijk");
        q.advance(9);
        assert_eq!(q.parts[q.start].as_deref(), Some(&b"jk"[..]));
    }
}
