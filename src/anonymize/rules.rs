//! The vocabulary of a compiled script: what a rule does to an attribute ([`Op`]), what it takes
//! from the lookup table, and the choices that shape how rules apply. A leaf: the loaders (RSNA/CTP
//! scripts, the profile's options, lookup tables) and the engine all speak it, and it imports none
//! of them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The lookup table's key type of the patient pseudonym (`@lookup(this,ptid)`).
pub const PATIENT_ID: &str = "ptid";
/// The key type RSNA 19 uses for date offsets (`@lookup(this,dateoffset)`).
pub const DATE_OFFSET: &str = "dateoffset";

/// What to do with one attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Blank text or `@keep`: keep the value (the safety net still checks it); a sequence's items
    /// get the rules.
    Keep,
    Remove,
    /// Zero length: how PS3.15 treats Type 2 attributes that carry PHI.
    Empty,
    /// A dummy value valid for the element's VR (PS3.15 action D): see `profile::dummy`.
    Dummy,
    /// Map through the UID pseudonym.
    Uid,
    /// Replace with the patient's pseudonym (PatientID and PatientName).
    PatientId,
    /// Replace a non-empty accession number with its hash.
    Accession,
    /// Shift dates by the patient's offset.
    HashDate,
    /// Round an age (AS) to a multiple of this many units.
    Round(u32),
    /// Set this literal value.
    Set(String),
    /// Replace the value by its entry under this key type in the lookup table.
    Lookup(String),
}

/// What one rule takes from the lookup table (`@lookup`, see `ctp.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The patient's pseudonym: the `ptid` entry of the PatientID.
    PatientId,
    /// The patient's date offset: the entry of the PatientID under this key type.
    DateOffset(String),
    /// The element's own value, under this key type.
    Value(String),
}

/// Everything a script takes from the lookup table. When it looks up the patient's pseudonym or
/// date offset anywhere, that pseudonym and offset hold for the whole instance (`@ptid` and
/// `@hashdate` rules and the safety net's date shift too), so one instance never carries two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    pub patient_id: bool,
    /// The key type of the date offset.
    pub date_offset: Option<String>,
    /// Key types of value lookups.
    pub values: BTreeSet<String>,
}

impl Lookups {
    pub fn any(&self) -> bool {
        self.patient_id || self.date_offset.is_some() || !self.values.is_empty()
    }

    /// Every key type the table must have entries for.
    pub fn keytypes(&self) -> BTreeSet<String> {
        let mut all = self.values.clone();
        all.extend(self.date_offset.clone());
        if self.patient_id {
            all.insert(PATIENT_ID.to_string());
        }
        all
    }
}

/// What to do with an operation this engine does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsupportedOps {
    /// Refuse to load the script.
    #[default]
    Fail,
    /// Treat each as `@remove()`, with one warning each.
    Remove,
}

/// How attributes without a rule are treated.
///
/// Chosen by `project.script_semantics` when set; else by the root element's
/// `semantics="rsna|ctp"`; else `ctp` when the script has a `<p>` parameter or uses a function only
/// CTP has (`@hashuid`, `@process`, `@date`, `@hash`, `@param`, `@if`, ...), `rsna` otherwise (RSNA's
/// own scripts use neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Semantics {
    /// RSNA Anonymizer: a whitelist; an attribute without a rule is removed, at every depth.
    Rsna,
    /// CTP DicomAnonymizer: an attribute without a rule is kept (through the safety net), unless an
    /// `<r>` rule removes its kind; rules apply at every depth.
    Ctp,
}

/// Which way dates move (`project.date_shift`). Absent: backward under a profile script and in
/// keyed mode, so that no shifted date lies after the date it was; forward otherwise, as RSNA's
/// Anonymizer does (a study up to ten years in the future), which its script keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DateDirection {
    Backward,
    Forward,
}
