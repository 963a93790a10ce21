//! Bodies on the wire, either direction: `Decoder` turns the bytes after a head into data
//! and trailers by the head's framing; `Encoder` frames outgoing data (chunk lines, or a
//! check against the announced length) and ends the body.

use super::chunked::{self, Decoded};
use super::error::{Error, Kind};
use super::framing::Framing;
use crate::http::fault::Side;
use bytes::BytesMut;
use http::HeaderMap;

/// Reads a body out of a connection's read buffer.
#[derive(Debug)]
pub struct Decoder {
    state: Read,
    side: Side,
}

#[derive(Debug)]
enum Read {
    Length(u64),
    Chunked(chunked::Decoder),
    Close,
    Done,
}

impl Decoder {
    /// A decoder for a body framed by `framing`, whose errors are `side`'s fault.
    pub fn new(framing: Framing, side: Side) -> Self {
        let state = match framing {
            Framing::None => Read::Done,
            Framing::Length(n) => Read::Length(n),
            Framing::Chunked => Read::Chunked(chunked::Decoder::default()),
            Framing::Close => Read::Close,
        };
        Self { state, side }
    }

    /// Decodes what `buf` holds, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match &mut self.state {
            Read::Done => Ok(Decoded::End),
            Read::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64);
                let data = buf.split_to(n as usize).freeze();
                *left -= n;
                if *left == 0 {
                    self.state = Read::Done;
                }
                Ok(Decoded::Data(data))
            }
            Read::Chunked(dec) => {
                let decoded = dec.decode(buf, self.side)?;
                if dec.is_done() {
                    self.state = Read::Done;
                }
                Ok(decoded)
            }
            Read::Close if buf.is_empty() => Ok(Decoded::NeedMore),
            Read::Close => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// The connection reached its end with nothing left in the buffer: the body's end if it
    /// is read to the close, else cut short.
    pub fn eof(&mut self) -> Result<(), Error> {
        match self.state {
            Read::Close | Read::Done => {
                self.state = Read::Done;
                Ok(())
            }
            _ => Err(Error::new(self.side, Kind::Truncated)),
        }
    }

    /// The whole body has been read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, Read::Done)
    }

    /// Bytes still to come, when the head said.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            Read::Length(n) => Some(n),
            Read::Done => Some(0),
            _ => None,
        }
    }
}

/// Frames an outgoing body: a chunk line before each data frame and CRLF after it, or a
/// count against the announced length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoder {
    /// A `Length` body counts down what it still owes.
    framing: Framing,
    /// Whose fault a body that breaks its length is: the sender of the message's source.
    side: Side,
}

impl Encoder {
    pub fn new(framing: Framing, side: Side) -> Self {
        Self { framing, side }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether the body is over (nothing more may be sent).
    pub fn is_ended(&self) -> bool {
        self.framing == Framing::None
    }

    /// Before a data frame of `len` (> 0) bytes: appends what goes before it to `out`,
    /// and returns what goes after it.
    pub fn data(&mut self, len: usize, out: &mut Vec<u8>) -> Result<&'static [u8], Error> {
        match &mut self.framing {
            Framing::None => Err(Error::new(self.side, Kind::Length)),
            Framing::Length(left) => {
                if len as u64 > *left {
                    return Err(Error::new(self.side, Kind::Length));
                }
                *left -= len as u64;
                Ok(b"")
            }
            Framing::Chunked => {
                chunked::size_line_into(out, len);
                Ok(b"\r\n")
            }
            Framing::Close => Ok(b""),
        }
    }

    /// Ends the body: appends the last chunk (with `trailers`, for chunked framing only) to
    /// `out`, or checks that the announced length was sent. Ending twice adds nothing.
    pub fn end(&mut self, trailers: Option<&HeaderMap>, out: &mut Vec<u8>) -> Result<(), Error> {
        match std::mem::replace(&mut self.framing, Framing::None) {
            Framing::None | Framing::Close | Framing::Length(0) => Ok(()),
            Framing::Length(_) => Err(Error::new(self.side, Kind::Length)),
            Framing::Chunked => {
                chunked::last_chunk(out, trailers.filter(|t| !t.is_empty()));
                Ok(())
            }
        }
    }
}
