//! The parts of the `strato` client that other code reuses without running the client:
//! the `stackato.yml` / `manifest.yml` reader (the `manifest` fuzz target drives it) and
//! the usage errors it returns. The binary (`main.rs`) uses these modules from here.

pub mod error;
pub mod manifest;
