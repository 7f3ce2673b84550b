//! The scripts shipped in `config/`, built into the binary, so that a node installed without the
//! source tree (a package, an image, a copied binary) still has them: a config naming a shipped
//! script by a path that does not exist gets the built-in copy, which is the same text.

/// (file name, text) of each shipped script.
const SCRIPTS: [(&str, &str); 2] = [
    ("ps315-basic-profile.script", include_str!("../../config/ps315-basic-profile.script")),
    ("default-anonymizer.script", include_str!("../../config/default-anonymizer.script")),
];

/// The built-in text of the shipped script called `file_name`, if it is one.
pub fn script(file_name: &str) -> Option<&'static str> {
    SCRIPTS.iter().find(|(name, _)| *name == file_name).map(|(_, text)| *text)
}
