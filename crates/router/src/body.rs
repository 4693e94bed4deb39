//! Body types of the proxy: what the router answers with.

use bytes::Bytes;
use http_body_util::{Either, Full};

pub use crate::upstream::PooledBody;

/// What the router answers with: a backend's streamed body (which gives its connection back
/// to the pool once read) or a page of its own.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;
