//! Server configuration: the declarative TOML schema (`schema`), loading it
//! from a file with environment overrides and `*_file` secrets (`load`), and
//! the checks that need more than types (`validate`).
//!
//! Nothing here opens sockets or stores: the result is plain data that
//! `crate::run` turns into a running server.

mod load;
mod net;
mod schema;
mod secret;
mod validate;

pub use load::{load_file, load_str, ConfigError, ConfigErrors};
pub use net::{canonical_ip, IpNet};
pub use schema::*;
pub use secret::Secret;
