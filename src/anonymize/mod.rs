//! De-identification: scripts, pseudonyms and the engine that applies them.

mod engine;
pub mod profile;
pub mod pseudonym;
pub mod script;
mod text;
pub mod transform;

pub use engine::{Engine, EngineError, Keys, Labels, Original, Report};
pub use pseudonym::{AccessionFormat, Keyed, Pseudonyms, Rsna};
pub use script::{Op, Script, ScriptError, UnsupportedOps};
