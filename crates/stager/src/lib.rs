//! The stager: turns an uploaded app package into a droplet.
//!
//! A staging request names a package (a zip, by sha256); the stager extracts it safely,
//! runs the app's `pre-staging` hooks, a buildpack's detect/compile/release and the
//! `post-staging` hooks inside one unprivileged container ([`stage`]), and stores the result
//! as a content-addressed droplet in a [`BlobStore`]. Built-in buildpacks for Python,
//! Node.js, static sites and Procfile apps use the host's runtimes and reach package
//! registries through the host's proxy and CA settings. [`run`] is the bus-facing role.

pub mod app_config;
pub mod buildpacks;
pub mod config;
pub mod droplet;
pub mod extract;
pub mod release;
mod role;
pub mod script;
pub mod stage;

pub use config::StagerConfig;
pub use droplet::StagingInfo;
pub use role::run;
pub use stage::{Stager, StagingLine};
pub use strato_blobs::{BlobKind, BlobStore};
