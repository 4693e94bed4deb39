//! The node agent: everything `stratod` does, as a library so tests can drive it.
//!
//! A node has an id, a set of roles (kept in the config store at `node/<id>/roles/<role>`),
//! and the shared pieces the roles use: the bus, the config store, the controller database
//! and the container driver. [`supervisor`] runs each role and restarts it with back-off
//! when it fails; [`control`] serves the local control API that `kato` talks to.

pub mod bus_server;
pub mod cluster_join;
pub mod control;
pub mod core_db;
pub mod discovery;
pub mod node;
pub mod remote;
pub mod settings;
pub mod supervisor;

pub use node::{run, Options};
