//! DICOMweb (PS3.18) on the HTTP listener: STOW-RS, the way studies arrive over HTTP. Each part
//! of a request goes through the same pipeline as a C-STORE's data set.

pub mod multipart;
mod response;
pub mod stow;

pub use response::{Failure, Reply, Stow};
pub use stow::{Progress, Receiver, Request};
