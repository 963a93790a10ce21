//! The Trellis resource model: the one schema shared by bootstrap files, the REST API and
//! discovery (DESIGN §3). It owns parsing (YAML or JSON, with the failing field's path in
//! every error) and validation of a whole config (references between resources, ranges),
//! and nothing else: no I/O beyond the text it is handed, no runtime state.

pub mod duration;
pub mod parse;
pub mod resources;
pub mod validate;

pub use duration::Duration;
pub use parse::{ParseError, parse_bootstrap};
pub use resources::*;
pub use validate::{ValidationError, validate};
