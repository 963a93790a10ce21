//! The body of an upstream response, whichever client read it: the in-task HTTP/1.1 client
//! or the HTTP/2 client (`h2`).

use crate::http::body::BodyError;
use crate::upstream::h1::H1Body;
use crate::upstream::h2::RecvBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// An upstream response body.
#[derive(Debug)]
pub enum ResponseBody {
    H1(H1Body),
    H2(RecvBody),
    /// An MCP answer watched for JSON-RPC errors (`mcp.errors_are_failures` routes only).
    Mcp(Box<crate::mcp::watch::Watched>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::H1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::UpstreamH1),
            Self::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::UpstreamH2),
            Self::Mcp(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H1(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
            Self::Mcp(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::H1(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
            Self::Mcp(b) => b.size_hint(),
        }
    }
}
