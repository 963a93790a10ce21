//! The process' memory allocator: mimalloc.
//!
//! Why not the system allocator: a proxied request makes a handful of short-lived
//! allocations (header maps, HPACK strings, h2 frames), and glibc's malloc spent 6–13% of
//! the proxy's instructions on them (the most in the sidecar pair, where HTTP/2 allocates
//! more). mimalloc is built to commit its arena's memory as it is used
//! (`.cargo/config.toml`): by default it commits eagerly on Linux, which put ~8 MB more
//! resident memory on an idle proxy.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
