//! The shipped profile on the classes of input issue 19 found in real variety, one regression test
//! per class, each through the pipeline as a received data set: what leaked, what was refused,
//! what was corrupted. Every test also shows that the same kind of valid input passes.

mod common;

use std::path::{Path, PathBuf};

use dicom_anon_gateway::config::Config;
use dicom_anon_gateway::dicom::{read_dataset, DataSet, Part10, Tag, TransferSyntax, Value, VR};
use dicom_anon_gateway::durability::Durability;
use dicom_anon_gateway::pipeline::{Admission, Body, Outcome, Pipeline};

use common::*;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";
const IMPLICIT: &str = "1.2.840.10008.1.2";

/// An implicit VR little endian element.
fn imp(tag: (u16, u16), value: &[u8]) -> Vec<u8> {
    let mut b = [tag.0.to_le_bytes(), tag.1.to_le_bytes()].concat();
    b.extend((value.len() as u32).to_le_bytes());
    b.extend(value);
    b
}

fn padded(v: &str, vr: &[u8; 2]) -> Vec<u8> {
    let mut b = v.as_bytes().to_vec();
    if b.len() % 2 == 1 {
        b.push(if vr == b"UI" { 0 } else { b' ' });
    }
    b
}

fn txt(tag: (u16, u16), vr: &[u8; 2], v: &str) -> Vec<u8> {
    el(tag, vr, &padded(v, vr))
}

/// A defined-length item holding `elements`.
fn item(elements: &[u8]) -> Vec<u8> {
    let mut b = vec![0xFE, 0xFF, 0x00, 0xE0];
    b.extend((elements.len() as u32).to_le_bytes());
    b.extend(elements);
    b
}

/// The identifying elements of a CT of patient DOE^JOHN, as (tag, VR, value), in tag order.
fn identity(sop: &str) -> Vec<((u16, u16), &'static [u8; 2], String)> {
    vec![
        ((0x0008, 0x0016), b"UI", CT.to_string()),
        ((0x0008, 0x0018), b"UI", sop.to_string()),
        ((0x0008, 0x0050), b"SH", "ACC90817263".to_string()),
        ((0x0008, 0x0060), b"CS", "CT".to_string()),
        ((0x0010, 0x0010), b"PN", "DOE^JOHN".to_string()),
        ((0x0010, 0x0020), b"LO", "MRN00482913".to_string()),
        ((0x0020, 0x000D), b"UI", "1.2.999.19.1".to_string()),
        ((0x0020, 0x000E), b"UI", "1.2.999.19.2".to_string()),
    ]
}

/// `identity` with `extra` elements (explicit VR) sorted in, replacing its own of the same tag.
fn explicit_body(sop: &str, extra: Vec<((u16, u16), Vec<u8>)>) -> Vec<u8> {
    let mut all: Vec<((u16, u16), Vec<u8>)> =
        identity(sop).into_iter().map(|(t, vr, v)| (t, txt(t, vr, &v))).collect();
    all.retain(|(t, _)| extra.iter().all(|(x, _)| x != t));
    all.extend(extra);
    all.sort_by_key(|(t, _)| *t);
    all.into_iter().flat_map(|(_, b)| b).collect()
}

/// `identity` with `extra` elements (implicit VR) sorted in.
fn implicit_body(sop: &str, extra: Vec<((u16, u16), Vec<u8>)>) -> Vec<u8> {
    let mut all: Vec<((u16, u16), Vec<u8>)> =
        identity(sop).into_iter().map(|(t, vr, v)| (t, imp(t, &padded(&v, vr)))).collect();
    all.extend(extra);
    all.sort_by_key(|(t, _)| *t);
    all.into_iter().flat_map(|(_, b)| b).collect()
}

struct Node {
    dir: tempfile::TempDir,
    pipeline: Pipeline,
    out: PathBuf,
    config: PathBuf,
}

fn node(script: &Path, extra: &str) -> Node {
    node_with(script, extra, "")
}

/// [`node`] with more top-level YAML (`top`) in its configuration.
fn node_with(script: &Path, extra: &str, top: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "972149", "1.2.826.0.1.3680043.10.474.2", script, extra);
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap() + top).unwrap();
    let out = dir.path().join("public");
    let pipeline = Pipeline::open(&Config::load(&config).unwrap(), &out, Durability::AtEnd).unwrap();
    Node { dir, pipeline, out, config }
}

impl Node {
    /// The same node started again: a new pipeline on the same storage and index.
    fn restarted(self) -> Node {
        let Node { dir, pipeline, out, config } = self;
        drop(pipeline);
        let pipeline = Pipeline::open(&Config::load(&config).unwrap(), &out, Durability::AtEnd).unwrap();
        Node { dir, pipeline, out, config }
    }

    /// The stored output's bytes, or a panic naming the outcome.
    fn store(&self, body: &[u8], ts: &str, sop: &str) -> Vec<u8> {
        let admission = Admission {
            sop_class_uid: CT,
            sop_instance_uid: sop,
            modalities: &[],
            study_instance_uid: None,
            audit: None,
        };
        match self.pipeline.process_received(Body::Memory(body), &TransferSyntax::new(ts), &admission, "test")
        {
            Outcome::Stored(stored) => std::fs::read(self.out.join(&stored.path)).unwrap(),
            Outcome::Quarantined { reason, detail, .. } => panic!("quarantined as {reason}: {detail}"),
            Outcome::Refused(d) | Outcome::Conflict(d) | Outcome::Failed { detail: d, .. } => {
                panic!("not stored: {d}")
            }
        }
    }
}

/// The data set of a stored Part 10 file, read with our reader, owning its values.
fn parsed(file: &[u8]) -> DataSet<'static> {
    let p10 = Part10::parse(file).unwrap();
    into_owned(&read_dataset(p10.body, p10.meta.transfer_syntax.encoding()).unwrap())
}

fn into_owned(ds: &DataSet<'_>) -> DataSet<'static> {
    use std::borrow::Cow;
    DataSet {
        elements: ds
            .elements
            .iter()
            .map(|e| dicom_anon_gateway::dicom::Element {
                tag: e.tag,
                vr: e.vr,
                value: match &e.value {
                    Value::Bytes(b) => Value::Bytes(Cow::Owned(b.to_vec())),
                    Value::Items(items) => Value::Items(items.iter().map(into_owned).collect()),
                    Value::Fragments(f) => {
                        Value::Fragments(f.iter().map(|x| Cow::Owned(x.to_vec())).collect())
                    }
                },
            })
            .collect(),
    }
}

fn assert_free_of(file: &[u8], planted: &[&str]) {
    for p in planted {
        assert!(!contains(file, p.as_bytes()), "{p} is in the output");
    }
}

/// Class 1: a public sequence that arrives as UN (its items in Implicit VR LE, PS3.5 §6.2.2) is
/// read as a sequence, so the rules clean its items; one that cannot be read is removed.
#[test]
fn a_sequence_sent_as_un_is_cleaned_inside_or_removed() {
    let n = node(&profile_script(), "");
    let inner = [
        imp((0x0008, 0x0050), b"ACC90817263 "),
        imp((0x0032, 0x1060), b"CT for DOE JOHN MRN00482913 "),
        imp((0x0040, 0x1001), b"RP66120934"),
    ]
    .concat();
    let defined = ((0x0040, 0x0275), el((0x0040, 0x0275), b"UN", &item(&inner)));
    let out = n.store(&explicit_body("1.2.999.19.3.1", vec![defined]), EXPLICIT, "1.2.999.19.3.1");
    assert_free_of(&out, &["DOE", "JOHN", "MRN00482913", "ACC90817263", "RP66120934"]);
    let ds = parsed(&out);
    let seq = ds.get(Tag(0x0040, 0x0275)).expect("the sequence is kept, cleaned");
    assert_eq!(seq.vr, VR::SQ);
    let Value::Items(items) = &seq.value else { panic!("not a sequence") };
    assert_eq!(items.len(), 1);
    assert!(items[0].text(Tag(0x0032, 0x1060)).is_some_and(|d| d.starts_with("CT for")), "{:?}", items[0]);

    // Undefined length, the form most nodes write.
    let mut undefined = el((0x0040, 0x0275), b"UN", &[]);
    undefined.truncate(undefined.len() - 4);
    undefined.extend(u32::MAX.to_le_bytes());
    undefined.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    undefined.extend(&inner);
    undefined.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let body = explicit_body("1.2.999.19.3.2", vec![((0x0040, 0x0275), undefined)]);
    assert_free_of(
        &n.store(&body, EXPLICIT, "1.2.999.19.3.2"),
        &["DOE", "JOHN", "MRN00482913", "ACC90817263"],
    );

    // Bytes that are no items: removed, never kept unread.
    let junk = ((0x0040, 0x0275), el((0x0040, 0x0275), b"UN", b"DOE^JOHN MRN00482913"));
    let out = n.store(&explicit_body("1.2.999.19.3.3", vec![junk]), EXPLICIT, "1.2.999.19.3.3");
    assert_free_of(&out, &["DOE", "JOHN", "MRN00482913"]);
    assert!(parsed(&out).get(Tag(0x0040, 0x0275)).is_none());

    // A kept description sent as UN is scrubbed like the LO it is.
    let described = ((0x0008, 0x1030), el((0x0008, 0x1030), b"UN", b"CT CHEST for JOHN DOE "));
    let out = n.store(&explicit_body("1.2.999.19.3.4", vec![described]), EXPLICIT, "1.2.999.19.3.4");
    assert_free_of(&out, &["DOE", "JOHN"]);
    assert!(parsed(&out).text(Tag(0x0008, 0x1030)).is_some_and(|d| d.starts_with("CT CHEST")));
}

/// Class 5: values real devices send are repaired, not refused: zero floats in Implicit VR, a
/// control byte in text, a person's name in another text VR.
#[test]
fn odd_values_of_valid_instances_are_repaired_not_refused() {
    let n = node(&profile_script(), "");
    let zeros = vec![
        ((0x0018, 0x9087), imp((0x0018, 0x9087), &[0; 8])),
        ((0x0018, 0x9089), imp((0x0018, 0x9089), &[0; 24])),
    ];
    let out = n.store(&implicit_body("1.2.999.19.5.1", zeros), IMPLICIT, "1.2.999.19.5.1");
    assert_eq!(parsed(&out).bytes(Tag(0x0018, 0x9089)), Some(&[0u8; 24][..]));

    let odd = vec![
        ((0x0008, 0x1070), txt((0x0008, 0x1070), b"LO", "COURTIER^ANNA")),
        ((0x0032, 0x1030), txt((0x0032, 0x1030), b"LO", "PAIN\rfor JOHN DOE")),
    ];
    let out = n.store(&explicit_body("1.2.999.19.5.2", odd), EXPLICIT, "1.2.999.19.5.2");
    assert_free_of(&out, &["COURTIER", "ANNA", "DOE", "JOHN"]);
    let ds = parsed(&out);
    assert!(ds.text(Tag(0x0032, 0x1030)).is_some_and(|r| r.starts_with("PAIN for")), "{ds:?}");
}

/// Class 4: the safety net leaves coded values alone (CS, code values and designators, the
/// manufacturer and model) and does not take common words or short codes for names in prose.
#[test]
fn coded_values_and_common_words_are_not_masked() {
    let n = node(&profile_script(), "");
    let t = txt;
    let code = [
        t((0x0008, 0x0100), b"SH", "T-D3000"),
        t((0x0008, 0x0102), b"SH", "TEST"),
        t((0x0008, 0x0104), b"LO", "Chest"),
    ]
    .concat();
    let sop = "1.2.999.19.4.1";
    let body = explicit_body(
        sop,
        vec![
            ((0x0008, 0x0060), t((0x0008, 0x0060), b"CS", "CT")),
            ((0x0008, 0x0070), t((0x0008, 0x0070), b"LO", "TOSHIBA_MEC")),
            ((0x0008, 0x0080), t((0x0008, 0x0080), b"LO", "TOSHIBA")),
            ((0x0008, 0x0081), t((0x0008, 0x0081), b"ST", "Here")),
            ((0x0008, 0x1030), t((0x0008, 0x1030), b"LO", "CT test here for OB")),
            ((0x0008, 0x1090), t((0x0008, 0x1090), b"LO", "Manufacturer name here")),
            ((0x0008, 0x2218), el((0x0008, 0x2218), b"SQ", &item(&code))),
            ((0x0010, 0x0010), t((0x0010, 0x0010), b"PN", "CQ500-CT-310^OB^TEST")),
            ((0x0010, 0x0020), t((0x0010, 0x0020), b"LO", "CQ500-CT-310")),
            ((0x0018, 0x5020), t((0x0018, 0x5020), b"LO", "OB_GENERAL")),
        ],
    );
    let ds = parsed(&n.store(&body, EXPLICIT, sop));
    assert_eq!(ds.text(Tag(0x0008, 0x0060)), Some("CT"));
    assert_eq!(ds.text(Tag(0x0008, 0x0070)), Some("TOSHIBA_MEC"));
    assert_eq!(ds.text(Tag(0x0008, 0x1090)), Some("Manufacturer name here"));
    assert_eq!(ds.text(Tag(0x0008, 0x1030)), Some("CT test here for OB"));
    assert_eq!(ds.text(Tag(0x0018, 0x5020)), Some("OB_GENERAL"));
    let Some(Value::Items(items)) = ds.get(Tag(0x0008, 0x2218)).map(|e| &e.value) else {
        panic!("AnatomicRegionSequence is kept: {ds:?}")
    };
    assert_eq!(items[0].text(Tag(0x0008, 0x0102)), Some("TEST"));
    // A coded value that is itself the patient's identifier is emptied, never masked.
    let n = node(&profile_script(), "");
    let sop = "1.2.999.19.4.2";
    let body = explicit_body(sop, vec![((0x0018, 0x0015), t((0x0018, 0x0015), b"CS", "MRN00482913"))]);
    let out = n.store(&body, EXPLICIT, sop);
    assert_free_of(&out, &["MRN00482913", "00482913"]);
    assert_eq!(parsed(&out).text(Tag(0x0018, 0x0015)), Some(""));
    // A one-word code stays whatever it spells: an SR's ValueType TEXT beside an observer named
    // "Enter text" (pydicom's reportsi_with_empty_number_tags.dcm).
    let n = node(&profile_script(), "");
    let sop = "1.2.999.19.4.3";
    let observer = [t((0x0040, 0xA040), b"CS", "TEXT"), t((0x0040, 0xA123), b"PN", "Enter text")].concat();
    let body = explicit_body(sop, vec![((0x0040, 0xA730), el((0x0040, 0xA730), b"SQ", &item(&observer)))]);
    let ds = parsed(&n.store(&body, EXPLICIT, sop));
    let Some(Value::Items(items)) = ds.get(Tag(0x0040, 0xA730)).map(|e| &e.value) else {
        panic!("ContentSequence is kept: {ds:?}")
    };
    assert_eq!(items[0].text(Tag(0x0040, 0xA040)), Some("TEXT"));
}

/// Class 8: under the profile, patients without a PatientID are told apart by name and birth
/// date, else by study; the RSNA script keeps its one default patient.
#[test]
fn patients_without_an_id_are_not_merged_under_the_profile() {
    let without_id = |n: u32, name: &str, birth: &str| {
        let sop = format!("1.2.999.19.8.{n}");
        let study = format!("1.2.999.19.8.{n}.1");
        let body = explicit_body(
            &sop,
            vec![
                ((0x0010, 0x0010), txt((0x0010, 0x0010), b"PN", name)),
                ((0x0010, 0x0020), txt((0x0010, 0x0020), b"LO", "")),
                ((0x0010, 0x0030), txt((0x0010, 0x0030), b"DA", birth)),
                ((0x0020, 0x000D), txt((0x0020, 0x000D), b"UI", &study)),
                ((0x0020, 0x000E), txt((0x0020, 0x000E), b"UI", &format!("{study}.1"))),
            ],
        );
        (sop, body)
    };
    let patient_of = |n: &Node, (sop, body): (String, Vec<u8>)| {
        parsed(&n.store(&body, EXPLICIT, &sop)).text(Tag(0x0010, 0x0020)).unwrap().to_string()
    };
    let profile = node(&profile_script(), "");
    let doe = patient_of(&profile, without_id(1, "DOE^JOHN", "19580312"));
    let roe = patient_of(&profile, without_id(2, "ROE^JANE", "19610101"));
    let doe_again = patient_of(&profile, without_id(3, "DOE^JOHN", "19580312"));
    let unnamed = patient_of(&profile, without_id(4, "", ""));
    let unnamed_other = patient_of(&profile, without_id(5, "", ""));
    assert_ne!(doe, roe);
    assert_eq!(doe, doe_again, "the same name and birth date are the same patient");
    assert_ne!(unnamed, unnamed_other, "without a name, each study is its own patient");
    assert!(![&doe, &roe, &unnamed].iter().any(|p| p.ends_with("-000000")), "{doe} {roe} {unnamed}");

    let rsna = node(&default_script(), "");
    let doe = patient_of(&rsna, without_id(1, "DOE^JOHN", "19580312"));
    let roe = patient_of(&rsna, without_id(2, "ROE^JANE", "19610101"));
    assert!(doe.ends_with("-000000") && roe == doe, "RSNA's rule: {doe} {roe}");
}

/// Class 3: a reference sequence the profile empties is kept with its UIDs mapped, a Type 3
/// sequence is removed rather than left with no items, a Type 2 one stays empty, and a Type 1C
/// attribute goes with its condition.
#[test]
fn references_are_kept_mapped_and_no_sequence_is_left_invalid() {
    let n = node(&profile_script(), "");
    let reference = item(
        &[
            txt((0x0008, 0x1150), b"UI", "1.2.840.10008.3.1.2.3.1"),
            txt((0x0008, 0x1155), b"UI", "1.2.999.19.1"),
        ]
        .concat(),
    );
    let requested = item(&el((0x0008, 0x1110), b"SQ", &reference));
    let institution =
        item(&[txt((0x0008, 0x0100), b"SH", "SPRNGFLD"), txt((0x0008, 0x0102), b"SH", "L")].concat());
    let sop = "1.2.999.19.31.1";
    let body = explicit_body(
        sop,
        vec![
            ((0x0008, 0x0082), el((0x0008, 0x0082), b"SQ", &institution)),
            ((0x0008, 0x1110), el((0x0008, 0x1110), b"SQ", &reference)),
            ((0x0010, 0x2297), txt((0x0010, 0x2297), b"PN", "ROE^RICHARD")),
            ((0x0010, 0x2298), txt((0x0010, 0x2298), b"CS", "FATHER")),
            ((0x0040, 0x0275), el((0x0040, 0x0275), b"SQ", &requested)),
            ((0x0040, 0xA088), el((0x0040, 0xA088), b"SQ", &institution)),
        ],
    );
    let out = n.store(&body, EXPLICIT, sop);
    assert_free_of(&out, &["1.2.999.19.1", "ROE", "SPRNGFLD"]);
    let ds = parsed(&out);
    let items = |ds: &DataSet<'static>, tag| match ds.get(tag).map(|e| &e.value) {
        Some(Value::Items(items)) => Some(items.clone()),
        _ => None,
    };
    let study_uid = ds.text(Tag(0x0020, 0x000D)).unwrap().to_string();
    let referenced = items(&ds, Tag(0x0008, 0x1110)).expect("ReferencedStudySequence kept");
    assert_eq!(referenced.len(), 1);
    assert_eq!(referenced[0].text(Tag(0x0008, 0x1155)), Some(study_uid.as_str()), "mapped as the study is");
    assert_eq!(referenced[0].text(Tag(0x0008, 0x1150)), Some("1.2.840.10008.3.1.2.3.1"));
    let request = items(&ds, Tag(0x0040, 0x0275)).expect("RequestAttributesSequence kept");
    let nested = items(&request[0], Tag(0x0008, 0x1110)).expect("its ReferencedStudySequence kept");
    assert_eq!(nested[0].text(Tag(0x0008, 0x1155)), Some(study_uid.as_str()));
    assert_eq!(items(&ds, Tag(0x0008, 0x0082)), None, "a Type 3 sequence is removed, not emptied");
    assert_eq!(items(&ds, Tag(0x0040, 0xA088)), Some(vec![]), "a Type 2 sequence is emptied");
    assert!(ds.get(Tag(0x0010, 0x2298)).is_none(), "ResponsiblePersonRole goes with ResponsiblePerson");
    assert!(ds.get(Tag(0x0010, 0x2297)).is_none(), "a person's patient has no responsible person");

    // Of an animal, Responsible Organization is Type 2C, and Responsible Person when there was one:
    // both stay, empty (deid-data's cat.dcm lost its organization to dciodvfy's complaint).
    let sop = "1.2.999.19.31.2";
    let body = explicit_body(
        sop,
        vec![
            ((0x0010, 0x2201), txt((0x0010, 0x2201), b"LO", "Canine species")),
            ((0x0010, 0x2297), txt((0x0010, 0x2297), b"PN", "ROE^RICHARD")),
            ((0x0010, 0x2298), txt((0x0010, 0x2298), b"CS", "OWNER")),
            ((0x0010, 0x2299), txt((0x0010, 0x2299), b"LO", "ROE KENNELS")),
        ],
    );
    let n = node(&profile_script(), "");
    let out = n.store(&body, EXPLICIT, sop);
    assert_free_of(&out, &["ROE"]);
    let ds = parsed(&out);
    assert_eq!(ds.text(Tag(0x0010, 0x2297)), Some(""));
    assert_eq!(ds.text(Tag(0x0010, 0x2299)), Some(""));
    assert!(ds.get(Tag(0x0010, 0x2298)).is_none(), "no role for an empty person");
}

/// Class 6: under the profile, dates move backward by the patient's offset (never into the
/// future, never left as they were); RSNA's script keeps its forward shift; the config chooses.
#[test]
fn dates_move_backward_under_the_profile_and_forward_under_rsna() {
    let study_date = |n: &Node, sop: &str| {
        let body = explicit_body(sop, vec![((0x0008, 0x0020), txt((0x0008, 0x0020), b"DA", "20210314"))]);
        let ds = parsed(&n.store(&body, EXPLICIT, sop));
        ds.text(Tag(0x0008, 0x0020)).unwrap().to_string()
    };
    let profile = study_date(&node(&profile_script(), ""), "1.2.999.19.6.1");
    assert!(profile.len() == 8 && profile.as_str() < "20210314", "{profile}");
    assert!(profile.as_str() >= "20110314", "at most ten years: {profile}");
    let rsna = study_date(&node(&default_script(), ""), "1.2.999.19.6.2");
    assert!(rsna.as_str() > "20210314", "{rsna}");
    let forward = study_date(&node(&profile_script(), "  date_shift: forward\n"), "1.2.999.19.6.3");
    assert!(forward.as_str() > "20210314", "{forward}");
    // Keyed pseudonyms are no RSNA archive's: backward there too, whatever the script.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), b"a-project-secret-of-some-length\n").unwrap();
    let keyed = format!("  pseudonyms: keyed\n  secret_file: {}\n", secret.path().display());
    let keyed = study_date(&node(&default_script(), &keyed), "1.2.999.19.6.4");
    assert!(keyed.as_str() < "20210314", "{keyed}");
}

/// Class 2: kept free text loses what a careful reader would remove although the instance does
/// not state it (telephone numbers in groups, e-mail addresses, dates in prose), and the
/// instance's names however their bytes hide them (full-width, soft hyphen, written together).
#[test]
fn free_text_loses_identifiers_by_shape_and_names_however_written() {
    let n = node(&profile_script(), "");
    let sop = "1.2.999.19.2.1";
    let comments = "Call +1 555 0147 2291 or +44 1632 960418, j.roe@example.org. Seen 13/03/2019, \
                    05/21/2019, April 2, 2019, 2 avril 2019 for \u{FF2A}\u{FF2F}\u{FF28}\u{FF2E} D\u{AD}OE \
                    (JohnDoe). CT 120 kV 0.5 mm.";
    let body = explicit_body(
        sop,
        vec![
            ((0x0008, 0x0005), txt((0x0008, 0x0005), b"CS", "ISO_IR 192")),
            ((0x0032, 0x4000), txt((0x0032, 0x4000), b"LT", comments)),
        ],
    );
    let out = n.store(&body, EXPLICIT, sop);
    let planted = [
        "555",
        "0147",
        "2291",
        "1632",
        "960418",
        "example.org",
        "2019",
        "\u{FF2A}",
        "JOHN",
        "John",
        "D\u{AD}OE",
    ];
    let kept = parsed(&out).text(Tag(0x0032, 0x4000)).unwrap().to_string();
    // Short digit groups may occur in the UID pseudonyms: the text is what is judged.
    assert_free_of(kept.as_bytes(), &planted);
    assert!(kept.starts_with("Call ") && kept.ends_with("CT 120 kV 0.5 mm."), "{kept}");
}

/// Class 2, ISO 2022: a name in JIS X 0208 between escape sequences is found in the text as it
/// reads, family and given name written together included, and the text is written back in its
/// character set.
#[test]
fn names_in_iso_2022_text_are_found_decoded() {
    let n = node(&profile_script(), "");
    let sop = "1.2.999.19.2.2";
    // 山田^太郎 and "CT 山田太郎様" / "MR 山田" in ISO 2022 IR 87.
    let name = "Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B";
    let body = explicit_body(
        sop,
        vec![
            ((0x0008, 0x0005), txt((0x0008, 0x0005), b"CS", "ISO 2022 IR 6\\ISO 2022 IR 87")),
            ((0x0008, 0x1030), txt((0x0008, 0x1030), b"LO", "CT \x1b$B;3EDB@O:MM\x1b(B")),
            ((0x0008, 0x103E), txt((0x0008, 0x103E), b"LO", "MR \x1b$B;3ED\x1b(B")),
            ((0x0010, 0x0010), txt((0x0010, 0x0010), b"PN", name)),
        ],
    );
    let ds = parsed(&n.store(&body, EXPLICIT, sop));
    assert_eq!(ds.bytes(Tag(0x0008, 0x1030)), Some(&b"CT ***\x1b$BMM\x1b(B"[..]));
    assert_eq!(ds.text(Tag(0x0008, 0x103E)), Some("MR ***"));
}

/// The PatientComments "seen by Courtier at Ziekenhuis Noord" of an instance of `patient` in
/// `study`, as `n` stored it: what the scrub left of the name and the place.
fn comment(n: &Node, sop: &str, patient: &str, study: &str) -> String {
    let body = explicit_body(
        sop,
        vec![
            ((0x0010, 0x0020), txt((0x0010, 0x0020), b"LO", patient)),
            ((0x0010, 0x4000), txt((0x0010, 0x4000), b"LT", "seen by Courtier at Ziekenhuis Noord")),
            ((0x0020, 0x000D), txt((0x0020, 0x000D), b"UI", study)),
            ((0x0020, 0x000E), txt((0x0020, 0x000E), b"UI", &format!("{study}.1"))),
        ],
    );
    let ds = parsed(&n.store(&body, EXPLICIT, sop));
    ds.text(Tag(0x0010, 0x4000)).unwrap().to_string()
}

/// Class 2, the index: a name an earlier instance of the patient stated, and an institution any
/// instance stated, are found in free text that does not state them, after a restart too.
#[test]
fn names_and_places_earlier_instances_stated_are_found() {
    let n = node(&profile_script(), "");
    let first = explicit_body(
        "1.2.999.19.2.3",
        vec![
            ((0x0008, 0x0080), txt((0x0008, 0x0080), b"LO", "Ziekenhuis Noord")),
            ((0x0008, 0x1070), txt((0x0008, 0x1070), b"PN", "COURTIER^ANNA")),
        ],
    );
    n.store(&first, EXPLICIT, "1.2.999.19.2.3");
    let n = n.restarted();
    assert_eq!(comment(&n, "1.2.999.19.2.4", "MRN00482913", "1.2.999.19.1"), "seen by *** at ***");
    // Another patient: the site's institution goes, the first patient's operator is no name here.
    assert_eq!(comment(&n, "1.2.999.19.2.5", "MRN777", "1.2.999.19.9"), "seen by Courtier at ***");
}

/// Class 2 on a shared PostgreSQL index: what one node stored is known to the other, which
/// remembers nothing of its own about it.
#[test]
fn names_and_places_another_node_stored_are_found_on_a_shared_index() {
    let d = tempfile::tempdir().unwrap();
    let pg = common::postgres::Postgres::start(d.path());
    let url = d.path().join("index-url");
    std::fs::write(&url, pg.url()).unwrap();
    let on_pg = |id: &str| {
        format!("index: {{ backend: postgres, url_file: {} }}\nnode: {{ id: {id} }}\n", url.display())
    };
    let a = node_with(&profile_script(), "", &on_pg("a"));
    let b = node_with(&profile_script(), "", &on_pg("b"));
    // Before anything was stored, the comment has nothing to find.
    assert_eq!(
        comment(&b, "1.2.999.19.3.1", "MRN00482913", "1.2.999.19.1"),
        "seen by Courtier at Ziekenhuis Noord"
    );
    let first = explicit_body(
        "1.2.999.19.2.3",
        vec![
            ((0x0008, 0x0080), txt((0x0008, 0x0080), b"LO", "Ziekenhuis Noord")),
            ((0x0008, 0x1070), txt((0x0008, 0x1070), b"PN", "COURTIER^ANNA")),
        ],
    );
    a.store(&first, EXPLICIT, "1.2.999.19.2.3");
    assert_eq!(comment(&b, "1.2.999.19.3.2", "MRN00482913", "1.2.999.19.1"), "seen by *** at ***");
    assert_eq!(comment(&b, "1.2.999.19.3.3", "MRN777", "1.2.999.19.9"), "seen by Courtier at ***");
}
