//! De-identification: scripts, pseudonyms and the engine that applies them.

mod ctp;
mod engine;
pub mod lookup;
pub mod options;
mod patterns;
pub mod pixels;
pub mod profile;
pub mod pseudonym;
pub mod rules;
pub mod script;
mod shipped;
mod text;
pub mod transform;
pub mod unverifiable;

pub use engine::{Engine, EngineError, Identity, InstanceKeys, Keys, Labels, Original, Report};
pub use lookup::{LookupError, LookupTable};
pub use options::ProfileOptions;
pub use pseudonym::{AccessionFormat, Keyed, Pseudonyms, Rsna};
pub use rules::{DateDirection, Lookups, Op, Semantics, UnsupportedOps};
pub use script::{Script, ScriptError, Settings};
pub use unverifiable::Unverifiable;
