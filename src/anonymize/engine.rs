//! Applies a compiled script to a data set, then the PS3.15 safety net, then the
//! de-identification attributes. No I/O: a data set and pseudonyms go in, a data set comes out.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::dicom::{never_kept, pad_text, trim_padding, DataSet, Element, Tag, Value, VR};

use super::lookup::{LookupTable, PATIENT_ID as PTID};
use super::options::{MethodCode, BASIC_PROFILE, RETAIN_MODIFIED_DATES};
use super::profile::{self, is_coded, is_free_text, is_registered_uid, names_a_class, tags};
use super::pseudonym::Pseudonyms;
use super::rules::{DateDirection, Op, Semantics};
use super::script::Script;
use super::text;
use super::transform::{is_time, round_age, shift_values, DateShift, Scrubber};
use super::unverifiable::{self, Unverifiable};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};

/// Something wrong with the instance itself: it goes to quarantine, never to the archive.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("missing or empty {}", .0.join(", "))]
    MissingAttributes(Vec<&'static str>),
    #[error("{0} is not valid text in its character set")]
    InvalidText(&'static str),
    /// Content the engine cannot check, under `project.unverifiable: quarantine | remove`.
    #[error("unverifiable content: {0}")]
    Unverifiable(String),
    /// The lookup table has no entry for a value the script looks up. Names the attribute and
    /// the key type, never the value (it is PHI).
    #[error("{what} has no {keytype}/ entry in the lookup table (project.lookup_table)")]
    LookupMiss { what: String, keytype: String },
}

/// What identifies an instance, its study and its patient, as the instance states it (PHI):
/// read once by [`Original::read`], recorded by the index as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Stripped PatientID; empty when absent or blank.
    pub patient_id: String,
    pub patient_name: Option<String>,
    pub sex: Option<String>,
    pub birth_date: Option<String>,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub sop_class_uid: String,
    pub accession: Option<String>,
    pub study_date: Option<String>,
    pub modality: Option<String>,
}

/// The values of the original instance the index and the walk need, read before anything changes:
/// its [`Identity`] (through `Deref`), and what its free text may be scrubbed of.
#[derive(Debug, Clone)]
pub struct Original {
    pub identity: Identity,
    scrubber: Scrubber,
    /// Under a character set with ISO 2022 code extensions: its codec, and a scrubber for the
    /// instance's needles decoded (see [`text::code_extension`]).
    extended: Option<(SpecificCharacterSet, Scrubber)>,
    /// The person names, whereabouts and institutions this instance states (trimmed raw
    /// values, sorted), for the index.
    stated: [Vec<Vec<u8>>; 3],
    /// Names and whereabouts other instances stated and this one does not (see
    /// [`Original::add_seen`]).
    seen: Option<Scrubber>,
}

impl std::ops::Deref for Original {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        &self.identity
    }
}

impl Original {
    /// Whether `word` is the patient's ID or one part of the patient's name, in any case.
    fn names_the_patient(&self, word: &[u8]) -> bool {
        let name = self.patient_name.as_deref().unwrap_or_default();
        std::iter::once(self.patient_id.as_str())
            .chain(name.split(['^', '=', ' ', ',']))
            .any(|part| !part.is_empty() && part.as_bytes().eq_ignore_ascii_case(word))
    }

    pub fn read(ds: &DataSet<'_>) -> Result<Original, EngineError> {
        let uid = |tag| ds.text(tag).filter(|v| !v.is_empty()).map(str::to_string);
        let (sop_class, sop, study, series) = (
            uid(tags::SOP_CLASS_UID),
            uid(tags::SOP_INSTANCE_UID),
            uid(tags::STUDY_INSTANCE_UID),
            uid(tags::SERIES_INSTANCE_UID),
        );
        let missing: Vec<&'static str> = [
            ("SOPClassUID", sop_class.is_none()),
            ("SOPInstanceUID", sop.is_none()),
            ("StudyInstanceUID", study.is_none()),
            ("SeriesInstanceUID", series.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(EngineError::MissingAttributes(missing));
        }
        let charset = ds.text(tags::SPECIFIC_CHARACTER_SET).unwrap_or_default();
        let decode = |tag, name| {
            ds.bytes(tag)
                .map(|raw| text::decode(charset, raw).map_err(|_| EngineError::InvalidText(name)))
                .transpose()
        };
        let patient_name = decode(tags::PATIENT_NAME, "PatientName (0010,0010)")?;
        let patient_id = decode(tags::PATIENT_ID, "PatientID (0010,0020)")?.unwrap_or_default();
        let mut found = Needles::default();
        found.collect(ds);
        let variants: Vec<Vec<u8>> =
            found.names.iter().flat_map(|n| text::case_variants(charset, n)).collect();
        // The instance's dates, as they are typed into comments ("born 15.01.1980", "seen
        // 2023-09-11"), are scrubbed like IDs: a date in free text is never shifted.
        found.dates.sort_unstable();
        found.dates.dedup();
        let dates: Vec<String> = found.dates.iter().flat_map(|d| date_spellings(d)).collect();
        let ids: Vec<&[u8]> = found.ids.into_iter().chain(dates.iter().map(|d| d.as_bytes())).collect();
        let extended = text::code_extension(charset).map(|cs| {
            let decoded = |raw: &[&[u8]]| -> Vec<String> {
                raw.iter().filter_map(|v| cs.decode(trim_padding(v)).ok()).collect()
            };
            let (names, whereabouts) = (decoded(&found.names), decoded(&found.whereabouts));
            let scrubber = Scrubber::with_phrases(
                names.iter().map(|n| n.as_bytes()),
                ids.iter().copied(),
                whereabouts.iter().map(|w| w.as_bytes()),
            );
            (cs, scrubber)
        });
        let owned = |values: &[&[u8]]| -> Vec<Vec<u8>> {
            let mut v: Vec<Vec<u8>> =
                values.iter().map(|v| trim_padding(v).to_vec()).filter(|v| !v.is_empty()).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let stated = [owned(&found.names), owned(&found.whereabouts), owned(&found.institutions)];
        let names = found.names.into_iter().chain(variants.iter().map(Vec::as_slice));
        let scrubber = Scrubber::with_phrases(names, ids, found.whereabouts);
        let plain = |tag| ds.text(tag).filter(|v| !v.is_empty()).map(str::to_string);
        let identity = Identity {
            patient_id: patient_id.trim().to_string(),
            patient_name,
            sex: plain(tags::PATIENT_SEX),
            birth_date: plain(tags::PATIENT_BIRTH_DATE),
            study_uid: study.unwrap_or_default(),
            series_uid: series.unwrap_or_default(),
            sop_uid: sop.unwrap_or_default(),
            sop_class_uid: sop_class.unwrap_or_default(),
            accession: plain(tags::ACCESSION_NUMBER),
            study_date: plain(tags::STUDY_DATE),
            modality: plain(tags::MODALITY),
        };
        Ok(Original { identity, scrubber, extended, stated, seen: None })
    }

    /// The person names, the whereabouts (institutions, addresses, telephone numbers) and,
    /// among them, the institutions this instance states, as raw values.
    pub fn stated(&self) -> &[Vec<Vec<u8>>; 3] {
        &self.stated
    }

    /// Also scrub kept free text of `names` and `places` (the patient's from its other
    /// instances, the site's institutions), which this instance may not state: a surname or an
    /// institution typed into a comment is found though only an earlier instance carried it.
    pub fn add_seen(&mut self, names: &[Vec<u8>], places: &[Vec<u8>]) {
        let new = |seen: &[Vec<u8>], own: &[Vec<u8>]| -> Vec<Vec<u8>> {
            seen.iter().filter(|v| own.binary_search(v).is_err()).cloned().collect()
        };
        let (names, places) = (new(names, &self.stated[0]), new(places, &self.stated[1]));
        if names.is_empty() && places.is_empty() {
            return;
        }
        let scrubber = Scrubber::with_phrases(
            names.iter().map(Vec::as_slice),
            std::iter::empty(),
            places.iter().map(Vec::as_slice),
        );
        self.seen = Some(scrubber);
    }

    /// What stands for the PatientID of a patient who has none, under the profile: the name and
    /// birth date when both are known, else the study. Two patients without an ID are never
    /// merged under one pseudonym (RSNA's script gives them all its default patient). The
    /// backslashes make it a value no single PatientID can be; like an ID, it stays in the index.
    fn key_without_id(&self) -> String {
        let name = self.patient_name.as_deref().map(str::trim).unwrap_or_default();
        match self.birth_date.as_deref().map(str::trim) {
            Some(birth) if !name.is_empty() && !birth.is_empty() => format!("\\name\\{name}\\{birth}"),
            _ => format!("\\study\\{}", self.study_uid),
        }
    }
}

/// The pseudonyms of the instance's identifying keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub patient_id: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub accession: Option<String>,
    /// Days added to every date (negative when dates move backward, or from a lookup table);
    /// `None` when the patient has no ID (RSNA's fixed 20000101 dates).
    pub date_offset: Option<i32>,
}

/// [`Keys`] but the patient's pseudonym, which the index may still have to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceKeys {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub accession: Option<String>,
    pub date_offset: Option<i32>,
}

impl InstanceKeys {
    /// The whole keys, once the patient's pseudonym is known.
    pub fn of_patient(self, patient_id: String) -> Keys {
        let InstanceKeys { study_uid, series_uid, sop_uid, accession, date_offset } = self;
        Keys { patient_id, study_uid, series_uid, sop_uid, accession, date_offset }
    }
}

/// What one instance's anonymization produced besides the data set.
#[derive(Debug, Clone)]
pub struct Report {
    pub keys: Keys,
    /// Every UID replaced in this instance, original first: the index keeps them.
    pub uid_map: Vec<(String, String)>,
    /// Tags the safety net had to change after the script kept them.
    pub caught: Vec<Tag>,
}

/// Names written into the de-identification attributes.
#[derive(Debug, Clone)]
pub struct Labels {
    pub project_name: String,
    pub site_id: String,
}

pub struct Engine {
    script: Script,
    pseudonyms: Arc<dyn Pseudonyms>,
    labels: Labels,
    /// Pre-assigned pseudonyms (`project.lookup_table`), when the script looks any up.
    lookup: Option<LookupTable>,
    /// Tags the safety net has already reported, so each is logged once per process.
    reported: Mutex<HashSet<Tag>>,
}

impl Engine {
    pub fn new(script: Script, pseudonyms: Arc<dyn Pseudonyms>, labels: Labels) -> Engine {
        Engine { script, pseudonyms, labels, lookup: None, reported: Mutex::new(HashSet::new()) }
    }

    /// Take pre-assigned pseudonyms from `table`. The caller has checked that it has entries for
    /// every key type the script uses (`Script::lookups`).
    pub fn with_lookup(self, table: LookupTable) -> Engine {
        Engine { lookup: Some(table), ..self }
    }

    /// The patient's pseudonym from the lookup table, when the script looks it up (`ptid`);
    /// `None` leaves it to the index or the keyed scheme.
    pub fn assigned_patient_id(&self, original: &Original) -> Result<Option<String>, EngineError> {
        if !self.script.lookups.patient_id {
            return Ok(None);
        }
        let id = self.lookup.as_ref().and_then(|t| t.get(PTID, &original.patient_id));
        id.map(|id| Some(id.to_string())).ok_or_else(|| patient_miss(PTID))
    }

    /// Whether the rule for `tag` at the top level keeps its value as it is: the only rule whose
    /// result depends on the value (a dummy, an empty or a set value does not).
    pub fn keeps_value(&self, tag: Tag) -> bool {
        matches!(self.rule(tag, VR::OB).as_deref(), Some(Op::Keep))
    }

    /// Read what the index and the walk need, and apply the project's policy for content the
    /// engine cannot check (`project.unverifiable`), before anything is recorded.
    pub fn read(&self, ds: &DataSet<'_>) -> Result<Original, EngineError> {
        let mut original = Original::read(ds)?;
        if self.script.profile && original.patient_id.is_empty() {
            original.identity.patient_id = original.key_without_id();
        }
        let Some(what) = unverifiable::find(ds) else { return Ok(original) };
        match self.script.unverifiable {
            Unverifiable::Quarantine => {
                tracing::warn!(
                    content = what,
                    "unverifiable content quarantined (project.unverifiable: quarantine)"
                );
                Err(EngineError::Unverifiable(what.to_string()))
            }
            Unverifiable::Remove => {
                tracing::warn!(content = what, "unverifiable content removed by policy: the instance is not archived (project.unverifiable: remove)");
                Err(EngineError::Unverifiable(format!("{what}; removed by project.unverifiable: remove")))
            }
            Unverifiable::Keep => {
                tracing::warn!(
                    content = what,
                    "unverifiable content kept unchecked (project.unverifiable: keep)"
                );
                Ok(original)
            }
        }
    }

    /// The operation for an element: the script's rule, changed by the profile options, else
    /// what the script's semantics do with an attribute it does not name; `None` removes.
    fn rule(&self, tag: Tag, vr: VR) -> Option<Cow<'_, Op>> {
        let script = &self.script;
        let own = script.op(tag);
        if script.profile {
            if let Some(op) = script.options.replace(tag, vr, own) {
                return Some(Cow::Owned(op));
            }
        }
        if let Some(op) = own {
            return Some(Cow::Borrowed(op));
        }
        let removals = script.removals;
        let unspecified_removed = match script.semantics {
            Semantics::Rsna => true,
            Semantics::Ctp => {
                removals.unspecified
                    || (tag.0 & 0xFF00 == 0x5000 && removals.curves)
                    || (tag.0 & 0xFF00 == 0x6000 && removals.overlays)
                    // A value of unknown type cannot be checked.
                    || vr == VR::UN
                    // Nor can an attribute the standard does not define: it may be a known one
                    // whose tag a broken writer (or a flipped bit) changed.
                    || !crate::dicom::in_dictionary(tag)
            }
        };
        (!unspecified_removed).then_some(Cow::Borrowed(&Op::Keep))
    }

    pub fn pseudonyms(&self) -> &dyn Pseudonyms {
        &*self.pseudonyms
    }

    /// The instance's keys once `anon_patient_id` is known (from the index or the keyed scheme).
    /// Fails when the script takes the date offset from the lookup table and it has none.
    pub fn keys(&self, original: &Original, anon_patient_id: &str) -> Result<Keys, EngineError> {
        Ok(self.instance_keys(original)?.of_patient(anon_patient_id.to_string()))
    }

    /// The pseudonyms of `original`'s keys that do not depend on its patient's: the index records
    /// them before it settles the patient's (see [`InstanceKeys::of_patient`]).
    pub fn instance_keys(&self, original: &Original) -> Result<InstanceKeys, EngineError> {
        let p = &*self.pseudonyms;
        let date_offset = match &self.script.lookups.date_offset {
            Some(keytype) => {
                let offset = self.lookup.as_ref().and_then(|t| t.offset(keytype, &original.patient_id));
                Some(offset.ok_or_else(|| patient_miss(keytype))?)
            }
            // Hash offsets are below 3652 days. Backward, they start at one day: a shift of
            // none would keep the dates.
            None => (!original.patient_id.is_empty()).then(|| {
                let days = p.date_offset(&original.patient_id) as i32;
                match self.script.date_shift {
                    DateDirection::Forward => days,
                    DateDirection::Backward => -days - 1,
                }
            }),
        };
        Ok(InstanceKeys {
            study_uid: p.uid(&original.study_uid),
            series_uid: p.uid(&original.series_uid),
            sop_uid: p.uid(&original.sop_uid),
            accession: original.accession.as_deref().map(|a| p.accession(a.trim())),
            date_offset,
        })
    }

    /// De-identify `ds` in place, with the `keys` that [`Engine::keys`] gave for `original`.
    /// Fails (and `ds` is not to be used) when a value the script looks up has no entry.
    pub fn apply(
        &self,
        ds: &mut DataSet<'_>,
        original: &Original,
        keys: Keys,
    ) -> Result<Report, EngineError> {
        let anon_patient_id = keys.patient_id.as_str();
        let mut walk = Walk {
            engine: self,
            original,
            anon_patient_id,
            shift: keys.date_offset.map_or(DateShift::Default, DateShift::Days),
            uids: HashMap::new(),
            caught: Vec::new(),
            dates_changed: false,
            dates_replaced: false,
            miss: None,
        };
        walk.dataset(ds);
        let Walk { uids, mut caught, dates_changed, dates_replaced, miss, .. } = walk;
        if let Some(miss) = miss {
            return Err(miss);
        }

        if ds.get(tags::PATIENT_ID).is_none() && self.script.op(tags::PATIENT_ID).is_some() {
            // RSNA adds a missing PatientID so that every output names its (default) patient.
            ds.put_text(tags::PATIENT_ID, VR::LO, anon_patient_id);
        }
        if dates_changed {
            ds.put_text(tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, VR::CS, "MODIFIED");
        } else if dates_replaced {
            ds.put_text(tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, VR::CS, "REMOVED");
        }
        self.put_deidentification(ds, dates_changed);

        caught.sort();
        caught.dedup();
        self.report_caught(&caught);
        Ok(Report { keys, uid_map: uids.into_iter().collect(), caught })
    }

    /// The CID 7050 codes for what was applied: a profile script's options; for other CTP
    /// scripts the Basic Profile and, when dates moved, our shift; for RSNA scripts what the
    /// RSNA-derived script was written for.
    fn method_codes(&self, dates_changed: bool) -> Vec<MethodCode> {
        let script = &self.script;
        match (script.profile, script.semantics) {
            (true, _) => script.options.codes(),
            (false, Semantics::Ctp) if dates_changed => vec![BASIC_PROFILE, RETAIN_MODIFIED_DATES],
            (false, Semantics::Ctp) => vec![BASIC_PROFILE],
            (false, Semantics::Rsna) => profile::RSNA_METHOD_CODES.to_vec(),
        }
    }

    fn put_deidentification(&self, ds: &mut DataSet<'_>, dates_changed: bool) {
        ds.put_text(tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
        let method =
            format!("{} {} script {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), self.script.name);
        ds.put_text(tags::DEIDENTIFICATION_METHOD, VR::LO, truncate(&method, 64));
        let items = self
            .method_codes(dates_changed)
            .iter()
            .map(|(code, meaning)| {
                let mut item = DataSet::default();
                item.put_text(tags::CODE_VALUE, VR::SH, code);
                item.put_text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM");
                item.put_text(tags::CODE_MEANING, VR::LO, meaning);
                item
            })
            .collect();
        ds.put(Element { tag: tags::DEIDENTIFICATION_METHOD_CODES, vr: VR::SQ, value: Value::Items(items) });
        ds.put_text(tags::RSNA_CREATOR, VR::LO, "RSNA");
        ds.put_text(tags::RSNA_SITE_ID, VR::SH, truncate(&self.labels.site_id, 16));
        ds.put_text(tags::RSNA_PROJECT_NAME, VR::SH, truncate(&self.labels.project_name, 16));
    }

    fn report_caught(&self, caught: &[Tag]) {
        let Ok(mut reported) = self.reported.lock() else { return };
        for &tag in caught {
            if reported.insert(tag) {
                tracing::info!(tag = %format!("({:04X},{:04X})", tag.0, tag.1), "safety net changed a value the script kept (logged once per tag)");
            }
        }
    }
}

/// The lookup table has no `keytype` entry for the instance's PatientID.
fn patient_miss(keytype: &str) -> EngineError {
    EngineError::LookupMiss { what: "PatientID (0010,0020)".into(), keytype: keytype.into() }
}

/// Cut at a character boundary; SH and LO limits are in characters and our text is ASCII.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

struct Walk<'e> {
    engine: &'e Engine,
    original: &'e Original,
    anon_patient_id: &'e str,
    shift: DateShift,
    uids: HashMap<String, String>,
    caught: Vec<Tag>,
    dates_changed: bool,
    /// A date was replaced by a dummy (PS3.15 D without the modified-dates option).
    dates_replaced: bool,
    /// The first value that fails the instance: a lookup that found no entry, kept text that
    /// cannot be decoded.
    miss: Option<EngineError>,
}

impl Walk<'_> {
    fn dataset(&mut self, ds: &mut DataSet<'_>) {
        let person = ds.get(tags::RESPONSIBLE_PERSON).is_some();
        let organization = ds.get(tags::RESPONSIBLE_ORGANIZATION).is_some();
        ds.elements.retain_mut(|e| self.element(e));
        // Of an animal, Responsible Organization is Type 2C, and Responsible Person when a person
        // is responsible (PS3.3 C.7.1.1): what the rules removed stays, empty.
        let animal = ds.get(tags::PATIENT_SPECIES_DESCRIPTION).is_some()
            || ds.get(tags::PATIENT_SPECIES_CODES).is_some();
        if animal && (person || organization) {
            if ds.get(tags::RESPONSIBLE_ORGANIZATION).is_none() {
                ds.put_text(tags::RESPONSIBLE_ORGANIZATION, VR::LO, "");
            }
            if person && ds.get(tags::RESPONSIBLE_PERSON).is_none() {
                ds.put_text(tags::RESPONSIBLE_PERSON, VR::PN, "");
            }
        }
        // A Type 1C attribute whose condition went with the values it depended on goes too.
        for (dependent, condition) in profile::CONDITIONAL {
            if ds
                .get(*condition)
                .is_none_or(|c| matches!(&c.value, Value::Bytes(b) if trim_padding(b).is_empty()))
            {
                ds.elements.retain(|e| e.tag != *dependent);
            }
        }
    }

    /// Apply the rule for one element; `false` removes it.
    fn element(&mut self, e: &mut Element<'_>) -> bool {
        let tag = e.tag;
        // Private groups, group lengths (stale once values change), command elements (they belong
        // to a DIMSE message, never to a data set), file meta and padding always go.
        if never_kept(tag) {
            return false;
        }
        let engine = self.engine;
        let Some(op) = engine.rule(tag, e.vr) else { return false };
        // A value still of unknown type (the reader gives UN back its VR where the dictionary
        // knows it, and reads a UN sequence's items) cannot be checked, so it is never kept.
        if e.vr == VR::UN && matches!(&*op, Op::Keep) && !matches!(e.value, Value::Items(_)) {
            return false;
        }
        if let Value::Items(items) = &mut e.value {
            match &*op {
                Op::Remove => return false,
                // A reference carries UIDs that map consistently: emptied, it breaks the link
                // between objects that research needs. It is kept, its items cleaned.
                Op::Empty
                    if items.iter().any(|item| item.get(tags::REFERENCED_SOP_INSTANCE_UID).is_some()) =>
                {
                    items.iter_mut().for_each(|item| self.dataset(item))
                }
                // A sequence with no items is valid only where the IOD makes it Type 2; elsewhere
                // (Type 3) the profile's "zero length" is its absence.
                Op::Empty if engine.script.profile && !profile::may_be_empty(tag) => return false,
                Op::Empty => items.clear(),
                // A dummy sequence is the sequence with every item cleaned by the rules.
                _ => items.iter_mut().for_each(|item| self.dataset(item)),
            }
            return true;
        }
        match &*op {
            Op::Remove => return false,
            Op::Empty => e.value = Value::Bytes(Cow::Borrowed(&[])),
            Op::Keep => self.safety_net(e),
            Op::Dummy => self.dummy(e),
            Op::Uid => {
                self.map_uids(e);
            }
            Op::PatientId => set(e, self.anon_patient_id),
            Op::Accession => {
                let raw = value_str(e);
                if !raw.is_empty() {
                    set(e, &self.engine.pseudonyms.accession(&raw));
                }
            }
            Op::HashDate => {
                self.shift_dates(e);
            }
            Op::Round(width) => {
                let rounded = round_age(&value_str(e), *width).unwrap_or_default();
                set(e, &rounded);
            }
            Op::Set(v) => set(e, v),
            Op::Lookup(keytype) => self.look_up(e, keytype),
        }
        true
    }

    /// Replace a value by its lookup-table entry (CTP compares trimmed values). An empty value
    /// stays empty: it names no one.
    fn look_up(&mut self, e: &mut Element<'_>, keytype: &str) {
        let raw = value_str(e);
        if raw.is_empty() {
            return;
        }
        match self.engine.lookup.as_ref().and_then(|t| t.get(keytype, &raw)) {
            Some(value) => set(e, value),
            None => {
                e.value = Value::Bytes(Cow::Borrowed(&[]));
                self.miss.get_or_insert_with(|| EngineError::LookupMiss {
                    what: crate::dicom::tag_str(e.tag),
                    keytype: keytype.to_string(),
                });
            }
        }
    }

    /// PS3.15 action D: a value valid for the VR that says nothing. UIDs get their pseudonym (so
    /// references stay consistent), numbers are kept, bulk data is emptied.
    fn dummy(&mut self, e: &mut Element<'_>) {
        match (e.vr, profile::dummy(e.vr)) {
            (VR::UI, _) => {
                self.map_uids(e);
            }
            (vr, Some(value)) => {
                if matches!(vr, VR::DA | VR::DT) {
                    self.dates_replaced = true;
                }
                set(e, value);
            }
            (VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN | VR::UR, None) => {
                e.value = Value::Bytes(Cow::Borrowed(&[]));
            }
            (_, None) => {}
        }
    }

    /// PS3.15 Basic Profile checks on a value the script kept.
    fn safety_net(&mut self, e: &mut Element<'_>) {
        let changed = match e.vr {
            VR::UI if names_a_class(e.tag) => false,
            VR::UI => self.map_uids(e),
            VR::PN if e.tag == tags::PATIENT_NAME => {
                let changed = value_str(e) != self.anon_patient_id;
                set(e, self.anon_patient_id);
                changed
            }
            VR::PN => {
                let changed = !value_str(e).is_empty();
                e.value = Value::Bytes(Cow::Borrowed(&[]));
                changed
            }
            // Codes are not prose: see `coded`. Before the UR rule: a URN code value is a code.
            vr if matches!(vr, VR::CS | VR::AE) || is_coded(e.tag) => self.coded(e),
            VR::DA | VR::DT => self.shift_dates(e),
            // A time of day identifies no one, but only a time may stay: anything else is emptied.
            VR::TM if !is_time(&value_str(e)) => {
                e.value = Value::Bytes(Cow::Borrowed(&[]));
                true
            }
            // A URL names a host and often a study UID; nothing in a research copy needs it.
            VR::UR => {
                let changed = !value_str(e).is_empty();
                e.value = Value::Bytes(Cow::Borrowed(&[]));
                changed
            }
            vr if is_free_text(vr) => self.free_text(e),
            _ => false,
        };
        if changed {
            self.caught.push(e.tag);
        }
    }

    /// Kept free text with every name and identifier of the instance masked (prose loses more:
    /// see [`Scrubber::scrub_prose`]). Text that switches to a multi-byte set is scrubbed as it
    /// reads, decoded, and written back in its character set; text that cannot be decoded fails
    /// the instance. `true` if the value changed.
    fn free_text(&mut self, e: &mut Element<'_>) -> bool {
        let Value::Bytes(b) = &e.value else { return false };
        let prose = is_prose(e.tag, e.vr);
        let scrub = |s: &Scrubber, text: &[u8]| if prose { s.scrub_prose(text) } else { s.scrub(text) };
        let original = self.original;
        let clean = match &original.extended {
            Some((cs, decoded)) if b.contains(&0x1B) => match cs.decode(trim_padding(b)) {
                Ok(text) => scrub(decoded, text.as_bytes()).map(|clean| {
                    // What was read decodes and re-encodes; masks are ASCII.
                    let encoded = cs.encode(&String::from_utf8_lossy(&clean));
                    encoded.map(back_to_ascii).unwrap_or_else(|_| b"***".to_vec())
                }),
                Err(_) => {
                    self.miss.get_or_insert(EngineError::InvalidText("a kept text value"));
                    Some(Vec::new())
                }
            },
            _ => {
                let own = scrub(&original.scrubber, b);
                let seen = original.seen.as_ref().and_then(|s| s.scrub(own.as_deref().unwrap_or(b)));
                seen.or(own)
            }
        };
        let Some(clean) = clean else { return false };
        e.value = Value::Bytes(Cow::Owned(pad_text(e.vr, clean)));
        true
    }

    /// A coded value (CS, AE title, code value or designator, manufacturer, model) is left as it
    /// is: masking a token inside it ("CT" of PatientID "CQ500-CT-310" in Modality) writes a
    /// value its VR forbids or another code. Only a value that is itself identifying, every word
    /// of it a name or identifier of the instance, is emptied. A CS value that is one word of
    /// letters is a code unless it is a part of the patient's own name: ValueType `TEXT` stays
    /// though an observer is named "Enter text" (emptied, a Type 1 attribute broke the SR), while
    /// BodyPartExamined `JOHN` of patient DOE^JOHN goes. `true` if it was emptied.
    fn coded(&mut self, e: &mut Element<'_>) -> bool {
        let Value::Bytes(b) = &e.value else { return false };
        let word = trim_padding(b);
        let one_word = !word.is_empty() && word.iter().all(|c| c.is_ascii_alphabetic() || *c == b'_');
        if e.vr == VR::CS && one_word && !self.original.names_the_patient(word) {
            return false;
        }
        let Some(masked) = self.original.scrubber.scrub(b) else { return false };
        let identifying =
            masked.iter().all(|c| matches!(c, b'*' | b' ' | b'^' | b'_' | b'-' | b'.' | b',' | 0));
        if identifying {
            e.value = Value::Bytes(Cow::Borrowed(&[]));
        }
        identifying
    }

    /// Map every unregistered UID in the value; `true` if any changed.
    fn map_uids(&mut self, e: &mut Element<'_>) -> bool {
        let raw = value_str(e);
        if raw.is_empty() || raw.split('\\').all(|u| is_registered_uid(u.trim())) {
            return false;
        }
        let mapped: Vec<String> = raw
            .split('\\')
            .map(|u| {
                let u = u.trim_matches(['\0', ' ']);
                if u.is_empty() || is_registered_uid(u) {
                    return u.to_string();
                }
                let pseudonyms = &self.engine.pseudonyms;
                self.uids.entry(u.to_string()).or_insert_with(|| pseudonyms.uid(u)).clone()
            })
            .collect();
        set(e, &mapped.join("\\"));
        true
    }

    /// Shift a DA or DT value; an unparseable one is emptied. `true` if the value changed.
    fn shift_dates(&mut self, e: &mut Element<'_>) -> bool {
        let raw = value_str(e);
        if raw.is_empty() {
            return false;
        }
        let shifted = match e.vr {
            VR::DA | VR::DT => shift_values(&raw, e.vr == VR::DT, self.shift).unwrap_or_default(),
            _ => String::new(),
        };
        let changed = shifted != raw;
        if changed {
            self.dates_changed = true;
            set(e, &shifted);
        }
        changed
    }
}

/// What the scrubber looks for in kept text, gathered from the whole instance, sequences
/// included: what a person could retype into free text.
#[derive(Default)]
struct Needles<'a> {
    /// Person names (PN values).
    names: Vec<&'a [u8]>,
    /// Identifiers, one per value.
    ids: Vec<&'a [u8]>,
    /// Institutions, addresses and telephone numbers, whole values.
    whereabouts: Vec<&'a [u8]>,
    /// Of the whereabouts, the institutions' names and addresses: the site's.
    institutions: Vec<&'a [u8]>,
    /// Dates (`YYYYMMDD`) of DA values and of the date part of DT values.
    dates: Vec<&'a [u8]>,
}

impl<'a> Needles<'a> {
    fn collect(&mut self, ds: &'a DataSet<'_>) {
        for e in &ds.elements {
            match &e.value {
                Value::Items(items) => items.iter().for_each(|item| self.collect(item)),
                Value::Bytes(b) if e.vr == VR::PN => self.names.push(b),
                Value::Bytes(b) if profile::is_identifier(e.tag) => self.ids.extend(b.split(|&c| c == b'\\')),
                Value::Bytes(b) if profile::is_whereabouts(e.tag) => {
                    self.whereabouts.push(b);
                    if profile::is_institution(e.tag) {
                        self.institutions.push(b);
                    }
                }
                Value::Bytes(b) if matches!(e.vr, VR::DA | VR::DT) => {
                    self.dates.extend(b.split(|&c| c == b'\\').filter_map(|v| v.trim_ascii().get(..8)))
                }
                _ => {}
            }
        }
    }
}

/// Text a person writes sentences into: report and comment text, descriptions and labels. Codes,
/// names of things and versions are not prose: their numbers stay.
fn is_prose(tag: Tag, vr: VR) -> bool {
    matches!(vr, VR::ST | VR::LT | VR::UT) || super::options::is_descriptor(tag)
}

/// A date (`YYYYMMDD`) as people write it: ISO, day first and month first, with the common
/// separators. Empty when the value is not a date.
fn date_spellings(da: &[u8]) -> Vec<String> {
    let da = std::str::from_utf8(da).unwrap_or_default().trim();
    if da.len() != 8 || !da.bytes().all(|b| b.is_ascii_digit()) {
        return Vec::new();
    }
    let (y, m, d) = (&da[..4], &da[4..6], &da[6..]);
    let mut out = vec![da.to_string()];
    for sep in ['-', '.', '/'] {
        out.push(format!("{y}{sep}{m}{sep}{d}"));
        out.push(format!("{d}{sep}{m}{sep}{y}"));
        out.push(format!("{m}{sep}{d}{sep}{y}"));
    }
    out
}

/// `encoded` ISO 2022 text that ends in ASCII, as a DICOM value must (PS3.5 §6.1.2.5.3): the
/// encoder leaves the last set it switched to designated, and the padding after it would be
/// read in that set.
fn back_to_ascii(mut encoded: Vec<u8>) -> Vec<u8> {
    let last_escape = encoded.iter().rposition(|&b| b == 0x1B);
    if last_escape.is_some_and(|at| !encoded[at + 1..].starts_with(b"(B")) {
        encoded.extend_from_slice(b"\x1b(B");
    }
    encoded
}

/// The trimmed value as text; values we act on (UIDs, dates, ages, IDs) are ASCII.
fn value_str(e: &Element<'_>) -> String {
    match &e.value {
        Value::Bytes(b) => String::from_utf8_lossy(trim_padding(b)).into_owned(),
        _ => String::new(),
    }
}

fn set(e: &mut Element<'_>, text: &str) {
    e.value = Value::Bytes(Cow::Owned(pad_text(e.vr, text.as_bytes().to_vec())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anonymize::pseudonym::{AccessionFormat, Rsna};
    use crate::anonymize::script::Settings;

    const ROOT: &str = "1.2.826.0.1.3680043.10.474";
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const ANON_PATIENT: &str = "99-000001";

    fn engine_with(script: Script) -> Engine {
        let pseudonyms = Arc::new(Rsna::new("99", ROOT, AccessionFormat::Hex16).unwrap());
        Engine::new(script, pseudonyms, Labels { project_name: "TRIAL".into(), site_id: "99".into() })
    }

    /// The shipped PS3.15 profile with the shipped options.
    fn profile_engine() -> Engine {
        let name = "ps315-basic-profile.script";
        let text = crate::anonymize::shipped::script(name).unwrap();
        engine_with(Script::parse(text, name, &Settings::default()).unwrap())
    }

    fn text(ds: &DataSet<'_>, tag: (u16, u16)) -> Option<String> {
        ds.text(Tag(tag.0, tag.1)).map(str::to_string)
    }

    fn item(values: &[((u16, u16), VR, &str)]) -> DataSet<'static> {
        let mut ds = DataSet::default();
        for &(tag, vr, v) in values {
            ds.put_text(Tag(tag.0, tag.1), vr, v);
        }
        ds
    }

    /// A CT instance with PHI in the usual places, and a reference to `referenced`.
    fn instance(sop: &str, referenced: &str) -> DataSet<'static> {
        let mut ds = item(&[
            ((0x0008, 0x0016), VR::UI, CT),
            ((0x0008, 0x0018), VR::UI, sop),
            ((0x0008, 0x0020), VR::DA, "20230911"),
            ((0x0008, 0x0050), VR::SH, "ACC123"),
            ((0x0008, 0x0060), VR::CS, "CT"),
            ((0x0008, 0x0080), VR::LO, "General Hospital"),
            ((0x0008, 0x0090), VR::PN, "WELBY^MARCUS"),
            ((0x0008, 0x1030), VR::LO, "CT head, John Doe MRN-0042"),
            ((0x0009, 0x0010), VR::LO, "ACME 1.0"),
            ((0x0009, 0x1001), VR::LO, "DOE^JOHN"),
            ((0x0010, 0x0010), VR::PN, "DOE^JOHN"),
            ((0x0010, 0x0020), VR::LO, "MRN-0042"),
            ((0x0010, 0x0030), VR::DA, "19800115"),
            ((0x0010, 0x0040), VR::CS, "M"),
            ((0x0020, 0x000D), VR::UI, "1.2.3.1"),
            ((0x0020, 0x000E), VR::UI, "1.2.3.1.1"),
            ((0x0020, 0x0052), VR::UI, "1.2.3.9"),
        ]);
        let reference = item(&[((0x0008, 0x1150), VR::UI, CT), ((0x0008, 0x1155), VR::UI, referenced)]);
        ds.put(Element { tag: Tag(0x0008, 0x1140), vr: VR::SQ, value: Value::Items(vec![reference]) });
        ds
    }

    /// `ds` through the engine as the pipeline runs it.
    fn anonymize(engine: &Engine, ds: &mut DataSet<'_>) -> Report {
        let original = engine.read(ds).unwrap();
        let keys = engine.keys(&original, ANON_PATIENT).unwrap();
        engine.apply(ds, &original, keys).unwrap()
    }

    #[test]
    fn the_profile_replaces_the_patients_phi_and_removes_private_data() {
        let engine = profile_engine();
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        let report = anonymize(&engine, &mut ds);
        assert_eq!(text(&ds, (0x0010, 0x0010)).as_deref(), Some(ANON_PATIENT), "PatientName");
        assert_eq!(text(&ds, (0x0010, 0x0020)).as_deref(), Some(ANON_PATIENT), "PatientID");
        assert_eq!(text(&ds, (0x0008, 0x0080)).as_deref(), Some(""), "InstitutionName emptied");
        assert_eq!(text(&ds, (0x0008, 0x0090)).as_deref(), Some(""), "ReferringPhysicianName emptied");
        assert_ne!(text(&ds, (0x0010, 0x0030)).as_deref(), Some("19800115"), "birth date");
        assert_eq!(
            text(&ds, (0x0010, 0x0040)).as_deref(),
            Some("M"),
            "sex retained (patient characteristics)"
        );
        assert_eq!(text(&ds, (0x0008, 0x0060)).as_deref(), Some("CT"));
        assert!(ds.get(Tag(0x0009, 0x0010)).is_none() && ds.get(Tag(0x0009, 0x1001)).is_none(), "private");
        let accession = engine.pseudonyms().accession("ACC123");
        assert_eq!(text(&ds, (0x0008, 0x0050)), Some(accession));
        let description = text(&ds, (0x0008, 0x1030)).unwrap();
        assert!(description.starts_with("CT head"), "the description is kept: {description}");
        for phi in ["John", "Doe", "MRN-0042"] {
            assert!(!description.contains(phi), "{phi} in {description:?}");
        }
        assert_eq!(report.keys.patient_id, ANON_PATIENT);
        // Every value left: nothing of the patient's name, ID or birth date.
        let mut out = Vec::new();
        crate::dicom::write_dataset(&ds, crate::dicom::Encoding::EXPLICIT_LE, &mut out).unwrap();
        for phi in [&b"DOE"[..], b"JOHN", b"MRN-0042", b"19800115", b"General", b"WELBY"] {
            assert!(
                !out.windows(phi.len()).any(|w| w.eq_ignore_ascii_case(phi)),
                "{}",
                String::from_utf8_lossy(phi)
            );
        }
    }

    #[test]
    fn uids_map_to_their_pseudonyms_the_same_in_every_instance_and_reference() {
        let engine = profile_engine();
        let p = engine.pseudonyms();
        let mut first = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        let mut second = instance("1.2.3.1.1.2", "1.2.3.1.1.1");
        let report = anonymize(&engine, &mut first);
        anonymize(&engine, &mut second);
        for ds in [&first, &second] {
            assert_eq!(text(ds, (0x0008, 0x0016)).as_deref(), Some(CT), "a class UID is no instance's");
            assert_eq!(text(ds, (0x0020, 0x000D)), Some(p.uid("1.2.3.1")));
            assert_eq!(text(ds, (0x0020, 0x000E)), Some(p.uid("1.2.3.1.1")));
            assert_eq!(text(ds, (0x0020, 0x0052)), Some(p.uid("1.2.3.9")), "frame of reference");
        }
        let referenced = |ds: &DataSet<'_>| match &ds.get(Tag(0x0008, 0x1140)).unwrap().value {
            Value::Items(items) => (text(&items[0], (0x0008, 0x1155)), text(&items[0], (0x0008, 0x1150))),
            _ => panic!("the reference sequence is no longer a sequence"),
        };
        // Each instance's reference names the other's new UID.
        assert_eq!(referenced(&first), (text(&second, (0x0008, 0x0018)), Some(CT.into())));
        assert_eq!(referenced(&second).0, text(&first, (0x0008, 0x0018)));
        assert_eq!(text(&first, (0x0008, 0x0018)), Some(report.keys.sop_uid.clone()));
        assert_ne!(report.keys.sop_uid, "1.2.3.1.1.1");
        assert!(report.keys.sop_uid.starts_with(ROOT), "{}", report.keys.sop_uid);
        // The report lists every UID replaced, for the index.
        let mut mapped = report.uid_map.clone();
        mapped.sort();
        let want: Vec<(String, String)> = ["1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.9"]
            .iter()
            .map(|u| (u.to_string(), p.uid(u)))
            .collect();
        assert_eq!(mapped, want);
    }

    #[test]
    fn dates_move_by_the_patients_offset_and_say_so() {
        let engine = profile_engine();
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        let report = anonymize(&engine, &mut ds);
        let offset = report.keys.date_offset.expect("a patient with an ID has an offset");
        let p = engine.pseudonyms();
        assert_eq!(offset, -(p.date_offset("MRN-0042") as i32) - 1, "backward under the profile");
        let study =
            chrono::NaiveDate::from_ymd_opt(2023, 9, 11).unwrap() + chrono::Duration::days(offset.into());
        assert_eq!(text(&ds, (0x0008, 0x0020)), Some(study.format("%Y%m%d").to_string()));
        assert_eq!(text(&ds, (0x0028, 0x0303)).as_deref(), Some("MODIFIED"));
    }

    #[test]
    fn the_de_identification_attributes_say_what_was_applied_and_by_whom() {
        let engine = profile_engine();
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        anonymize(&engine, &mut ds);
        assert_eq!(text(&ds, (0x0012, 0x0062)).as_deref(), Some("YES"), "PatientIdentityRemoved");
        let method = text(&ds, (0x0012, 0x0063)).unwrap();
        assert!(method.contains("ps315-basic-profile.script") && method.len() <= 64, "{method}");
        let Value::Items(codes) = &ds.get(Tag(0x0012, 0x0064)).unwrap().value else {
            panic!("DeidentificationMethodCodeSequence is no sequence")
        };
        let values: Vec<String> = codes.iter().filter_map(|c| text(c, (0x0008, 0x0100))).collect();
        for code in ["113100", "113103", "113104", "113105", "113107", "113108"] {
            assert!(values.iter().any(|v| v == code), "{code} missing from {values:?}");
        }
        assert!(!values.iter().any(|v| v == "113109"), "device identity is not retained");
        assert!(codes.iter().all(|c| text(c, (0x0008, 0x0102)).as_deref() == Some("DCM")));
        assert_eq!(text(&ds, (0x0013, 0x0010)).as_deref(), Some("RSNA"));
        assert_eq!(text(&ds, (0x0013, 0x1001)).as_deref(), Some("99"));
        assert_eq!(text(&ds, (0x0013, 0x1003)).as_deref(), Some("TRIAL"));
    }

    #[test]
    fn an_instance_without_its_uids_or_with_a_document_is_refused_before_anything_changes() {
        let engine = profile_engine();
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        ds.elements.retain(|e| e.tag != Tag(0x0008, 0x0018) && e.tag != Tag(0x0020, 0x000E));
        assert_eq!(
            engine.read(&ds).unwrap_err(),
            EngineError::MissingAttributes(vec!["SOPInstanceUID", "SeriesInstanceUID"])
        );
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        ds.put(Element { tag: Tag(0x0042, 0x0011), vr: VR::OB, value: Value::Bytes(Cow::Borrowed(b"%PDF")) });
        assert!(matches!(engine.read(&ds), Err(EngineError::Unverifiable(_))), "quarantined by default");
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        ds.put_text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        ds.put(Element {
            tag: tags::PATIENT_NAME,
            vr: VR::PN,
            value: Value::Bytes(Cow::Borrowed(b"DO\xFFE")),
        });
        assert_eq!(engine.read(&ds).unwrap_err(), EngineError::InvalidText("PatientName (0010,0010)"));
    }

    #[test]
    fn a_patient_without_an_id_is_keyed_by_name_and_birth_date_else_by_study() {
        let engine = profile_engine();
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        ds.put_text(tags::PATIENT_ID, VR::LO, "  ");
        assert_eq!(engine.read(&ds).unwrap().patient_id, "\\name\\DOE^JOHN\\19800115");
        ds.elements.retain(|e| e.tag != tags::PATIENT_BIRTH_DATE);
        assert_eq!(engine.read(&ds).unwrap().patient_id, "\\study\\1.2.3.1");
    }

    /// A script that keeps what it must not: the safety net changes it and reports the tag.
    #[test]
    fn the_safety_net_catches_phi_a_script_keeps() {
        let script = r#"<script semantics="ctp">
            <e en="T" t="00080018" n="SOPInstanceUID">@keep()</e>
            <e en="T" t="00080090" n="ReferringPhysicianName">@keep()</e>
            <e en="T" t="00081030" n="StudyDescription">@keep()</e>
            <e en="T" t="00100010" n="PatientName">@keep()</e>
            <e en="T" t="00100020" n="PatientID">@keep()</e>
            <e en="T" t="0020000D" n="StudyInstanceUID">@keep()</e>
            <e en="T" t="00080060" n="Modality">@keep()</e>
        </script>"#;
        let engine = engine_with(Script::parse(script, "leaky.script", &Settings::default()).unwrap());
        let mut ds = instance("1.2.3.1.1.1", "1.2.3.1.1.2");
        let report = anonymize(&engine, &mut ds);
        let p = engine.pseudonyms();
        assert_eq!(text(&ds, (0x0008, 0x0018)), Some(p.uid("1.2.3.1.1.1")), "a kept UID is mapped");
        assert_eq!(text(&ds, (0x0010, 0x0010)).as_deref(), Some(ANON_PATIENT), "a kept PatientName");
        assert_eq!(text(&ds, (0x0008, 0x0090)).as_deref(), Some(""), "another kept name is emptied");
        let description = text(&ds, (0x0008, 0x1030)).unwrap();
        assert!(!description.contains("Doe") && !description.contains("MRN-0042"), "{description}");
        assert_eq!(text(&ds, (0x0008, 0x0060)).as_deref(), Some("CT"), "a code stays");
        // What the script does not name is kept under CTP semantics, and checked all the same:
        // dates move forward by the patient's offset, IDs and institutions in text are masked.
        let offset = p.date_offset("MRN-0042") as i64;
        assert_eq!(report.keys.date_offset, Some(offset as i32), "forward for a plain CTP script");
        let birth = chrono::NaiveDate::from_ymd_opt(1980, 1, 15).unwrap() + chrono::Duration::days(offset);
        assert_eq!(text(&ds, (0x0010, 0x0030)), Some(birth.format("%Y%m%d").to_string()));
        for tag in [(0x0010, 0x0020), (0x0008, 0x0050), (0x0008, 0x0080)] {
            let masked = text(&ds, tag).unwrap();
            assert!(!masked.is_empty() && masked.bytes().all(|b| b == b'*'), "{tag:04X?}: {masked:?}");
        }
        let caught: Vec<Tag> = [
            (0x0008, 0x0018),
            (0x0008, 0x0020),
            (0x0008, 0x0050),
            (0x0008, 0x0080),
            (0x0008, 0x0090),
            (0x0008, 0x1030),
            (0x0008, 0x1155),
            (0x0010, 0x0010),
            (0x0010, 0x0020),
            (0x0010, 0x0030),
            (0x0020, 0x000D),
            (0x0020, 0x000E),
            (0x0020, 0x0052),
        ]
        .map(|(g, e)| Tag(g, e))
        .to_vec();
        assert_eq!(report.caught, caught, "every tag the net changed, once, in order, items included");
        // Not a profile script: it claims the Basic Profile, and modified dates since they moved.
        let Value::Items(codes) = &ds.get(tags::DEIDENTIFICATION_METHOD_CODES).unwrap().value else {
            panic!("no method code sequence")
        };
        let values: Vec<String> = codes.iter().filter_map(|c| text(c, (0x0008, 0x0100))).collect();
        assert_eq!(values, ["113100", "113107"]);
        assert_eq!(engine.method_codes(false), vec![BASIC_PROFILE]);
    }
}
