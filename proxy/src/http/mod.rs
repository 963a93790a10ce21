//! HTTP: serving downstream connections (`server`, `h1`), choosing a route (`router`, `route`),
//! forwarding (`forward`, `headers`), streaming bodies (`body`), turning failures into
//! responses (`respond`), and the HTTP/1.1 wire pieces both in-task codecs share (`wire`).

pub mod attempts;
pub mod body;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod path;
pub mod respond;
pub mod route;
pub mod router;
pub mod server;
pub mod wire;
