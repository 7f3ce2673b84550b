//! Seeded mutation test: thousands of broken versions of PHI-laden instances through every entry
//! point of the pipeline (a data set received in memory, one spilled to disk, a Deflated one, a file
//! offline). Whatever the mutation, the outcome is an instance stored or a data fault in quarantine:
//! never a panic, never an environment fault, and every stored output re-parses (with our reader and
//! with dicom-object) and holds none of the planted PHI.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use dicom_anon_gateway::config::Config;
use dicom_anon_gateway::dicom::{read_dataset, Encoding, Part10, TransferSyntax};
use dicom_anon_gateway::durability::Durability;
use dicom_anon_gateway::pipeline::{Admission, Body, Outcome, Pipeline};
use dicom_anon_gateway::queue::Reason;

use common::*;

const DEFLATED_TS: &str = "1.2.840.10008.1.2.1.99";

/// A valid instance to mutate: its Part 10 bytes, where its data set starts, and who it is.
struct Base {
    file: Vec<u8>,
    body_at: usize,
    patient: Patient,
    sop_class: String,
    sop_uid: String,
    ts: String,
}

impl Base {
    fn new(patient: Patient, shape: Shape) -> Base {
        let file = instance(&patient, &shape);
        let p10 = Part10::parse(&file).unwrap();
        let body_at = p10.body_offset(&file);
        let ts = p10.meta.transfer_syntax.uid.clone();
        Base {
            sop_class: sop_class(&shape).into(),
            sop_uid: sop_uid(&patient, &shape),
            file,
            body_at,
            patient,
            ts,
        }
    }

    fn body(&self) -> &[u8] {
        &self.file[self.body_at..]
    }

    fn encoding(&self) -> Encoding {
        TransferSyntax::new(&self.ts).encoding()
    }
}

/// Where an element header lies in a body: its start, where its length field is and how wide.
#[derive(Clone, Copy)]
struct Header {
    at: usize,
    len_at: usize,
    len_width: usize,
    top_level: bool,
    /// A primitive element (not a sequence or an item).
    leaf: bool,
    end: usize,
}

/// Every element and item header of a valid body, nested ones included.
fn headers(body: &[u8], explicit: bool) -> Vec<Header> {
    let mut out = Vec::new();
    walk(body, 0, body.len(), explicit, true, &mut out);
    out
}

fn walk(b: &[u8], mut pos: usize, end: usize, explicit: bool, top: bool, out: &mut Vec<Header>) -> usize {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while pos + 8 <= end {
        let (group, element) = (u16_at(pos), u16_at(pos + 2));
        if group == 0xFFFE {
            // An item delimiter ends an undefined-length item.
            return pos + 8;
        }
        let vr = [b[pos + 4], b[pos + 5]];
        let long = explicit
            && matches!(
                &vr,
                b"OB"
                    | b"OW"
                    | b"SQ"
                    | b"UN"
                    | b"UT"
                    | b"UC"
                    | b"UR"
                    | b"OF"
                    | b"OD"
                    | b"OL"
                    | b"OV"
                    | b"SV"
                    | b"UV"
            );
        let (len_at, len_width, header) = match (explicit, long) {
            (false, _) => (pos + 4, 4, 8),
            (true, true) => (pos + 8, 4, 12),
            (true, false) => (pos + 6, 2, 8),
        };
        let len = if len_width == 4 { u32_at(len_at) } else { u16_at(len_at) as u32 };
        let sequence = (explicit && &vr == b"SQ") || (!explicit && is_sequence(group, element));
        let value_at = pos + header;
        let next = if sequence {
            walk_items(
                b,
                value_at,
                if len == u32::MAX { end } else { value_at + len as usize },
                len == u32::MAX,
                explicit,
                out,
            )
        } else if len == u32::MAX {
            // Encapsulated pixel data is not mutated structurally here.
            end
        } else {
            value_at + len as usize
        };
        out.push(Header { at: pos, len_at, len_width, top_level: top, leaf: !sequence, end: next });
        pos = next;
    }
    pos
}

fn walk_items(
    b: &[u8],
    mut pos: usize,
    end: usize,
    undefined: bool,
    explicit: bool,
    out: &mut Vec<Header>,
) -> usize {
    while pos + 8 <= end {
        let tag = (u16::from_le_bytes([b[pos], b[pos + 1]]), u16::from_le_bytes([b[pos + 2], b[pos + 3]]));
        let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]);
        if tag == (0xFFFE, 0xE0DD) {
            return pos + 8;
        }
        let item_end = if len == u32::MAX {
            walk(b, pos + 8, end, explicit, false, out)
        } else {
            walk(b, pos + 8, pos + 8 + len as usize, explicit, false, out);
            pos + 8 + len as usize
        };
        out.push(Header {
            at: pos,
            len_at: pos + 4,
            len_width: 4,
            top_level: false,
            leaf: false,
            end: item_end,
        });
        pos = item_end;
    }
    if undefined {
        end
    } else {
        pos
    }
}

fn is_sequence(group: u16, element: u16) -> bool {
    use dicom_core::dictionary::{DataDictionary, VirtualVr};
    matches!(
        dicom_dictionary_std::StandardDataDictionary.by_tag(dicom_core::Tag(group, element)).map(|e| e.vr),
        Some(VirtualVr::Exact(dicom_core::VR::SQ))
    )
}

/// One mutation of `body`, chosen by `rng`; its name goes into the tally.
fn mutate(
    rng: &mut fastrand::Rng,
    body: &[u8],
    explicit: bool,
    header_region: usize,
) -> (Vec<u8>, &'static str) {
    let mut b = body.to_vec();
    let hs = headers(body, explicit);
    let pick = |rng: &mut fastrand::Rng| hs[rng.usize(..hs.len())];
    let kind = rng.u8(..10);
    let name = match kind {
        0 | 1 => {
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..header_region.min(b.len()));
                b[at] ^= 1 << rng.u8(..8);
            }
            "bit flip"
        }
        2 | 3 => {
            let h = pick(rng);
            let old = if h.len_width == 4 {
                u32::from_le_bytes(b[h.len_at..h.len_at + 4].try_into().unwrap())
            } else {
                u16::from_le_bytes(b[h.len_at..h.len_at + 2].try_into().unwrap()) as u32
            };
            let new = match rng.u8(..7) {
                0 => old.wrapping_add(2),
                1 => old.wrapping_add(rng.u32(1..400)),
                2 => old.saturating_sub(rng.u32(1..8)),
                3 => 0,
                4 => u32::MAX,
                5 => rng.u32(..),
                _ => old.wrapping_add((body.len() - h.end) as u32),
            };
            if h.len_width == 4 {
                b[h.len_at..h.len_at + 4].copy_from_slice(&new.to_le_bytes());
            } else {
                b[h.len_at..h.len_at + 2].copy_from_slice(&(new as u16).to_le_bytes());
            }
            "length lie"
        }
        4 => {
            b.truncate(rng.usize(..b.len()));
            "truncation"
        }
        5 => {
            let h = pick(rng);
            let mut nest = Vec::new();
            for _ in 0..rng.usize(40..80) {
                nest.extend([0x08, 0x00, 0x40, 0x11]);
                if explicit {
                    nest.extend([b'S', b'Q', 0, 0]);
                }
                nest.extend([0xFF; 4]);
                nest.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
            }
            b.splice(h.at..h.at, nest);
            "deep nesting"
        }
        6 => {
            let top: Vec<Header> = hs.iter().copied().filter(|h| h.top_level).collect();
            let i = rng.usize(..top.len().saturating_sub(1).max(1));
            if let (Some(x), Some(y)) = (top.get(i), top.get(i + 1)) {
                let (first, second) = (body[x.at..x.end].to_vec(), body[y.at..y.end].to_vec());
                b.splice(x.at..y.end, second.into_iter().chain(first));
            }
            "reordering"
        }
        7 => {
            let top: Vec<Header> = hs.iter().copied().filter(|h| h.top_level).collect();
            let h = top[rng.usize(..top.len())];
            let copy = body[h.at..h.end].to_vec();
            b.splice(h.end..h.end, copy);
            "duplicate element"
        }
        8 => {
            let at = rng.usize(..header_region.min(b.len()));
            let n = rng.usize(1..16).min(b.len() - at);
            b.drain(at..at + n);
            "deleted bytes"
        }
        _ => {
            let at = rng.usize(..header_region.min(b.len()));
            let junk: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
            b.splice(at..at, junk);
            "inserted bytes"
        }
    };
    (b, name)
}

/// The planted strings that must not be in an output made from `mutated_body`. A string is
/// forbidden while every element that states it is still there byte for byte (tag, VR, length and
/// value; counted, since names recur in nested items). A mutation that rewrote one of them made a
/// different data set: a bit flip that turns DeviceSerialNumber into ContrastBolusRoute states the
/// serial number as a route, and nobody can tell. Judged on bytes, not by a parser, so a reader bug
/// cannot excuse itself: an element swallowed whole by a lying length before it is still there.
fn forbidden(base: &Base, mutated_body: &[u8], region: usize) -> Vec<Vec<u8>> {
    let body = base.body();
    let planted = phi_strings(&base.patient);
    // Only elements that state some planted string matter; all of them lie before the pixel data.
    let leaves: Vec<&[u8]> = headers(body, base.encoding().explicit_vr)
        .into_iter()
        .filter(|h| h.leaf && h.at < region)
        .map(|h| &body[h.at..h.end])
        .filter(|leaf| planted.iter().any(|s| contains(leaf, s)))
        .collect();
    let searched = &mutated_body[..mutated_body.len().min(region + 4096)];
    let count = |hay: &[u8], needle: &[u8]| memchr::memmem::find_iter(hay, needle).count();
    let intact: Vec<bool> = leaves
        .iter()
        .map(|leaf| count(searched, leaf) >= count(&body[..region.min(body.len())], leaf))
        .collect();
    planted
        .into_iter()
        .filter(|s| leaves.iter().zip(&intact).filter(|(leaf, _)| contains(leaf, s)).all(|(_, ok)| *ok))
        .collect()
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, usize>,
    kinds: BTreeMap<&'static str, usize>,
    stored: usize,
    problems: Vec<String>,
}

impl Tally {
    fn check(&mut self, case: &str, outcome: Outcome, out: &Path, forbidden: &[Vec<u8>]) {
        match outcome {
            Outcome::Stored(stored) => {
                self.stored += 1;
                *self.outcomes.entry("stored".into()).or_default() += 1;
                let bytes = std::fs::read(out.join(&stored.path)).unwrap();
                let reparsed = Part10::parse(&bytes).map_err(|e| e.to_string()).and_then(|p| {
                    read_dataset(p.body, p.meta.transfer_syntax.encoding())
                        .map(drop)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = reparsed {
                    self.problems.push(format!("{case}: the stored output does not re-parse: {e}"));
                }
                if let Err(e) = dicom_object::from_reader(&bytes[128..]) {
                    self.problems.push(format!("{case}: dicom-object cannot read the stored output: {e}"));
                }
                for s in forbidden {
                    if contains(&bytes, s) {
                        self.problems.push(format!(
                            "{case}: PHI {:?} in {}",
                            String::from_utf8_lossy(s),
                            stored.path.display()
                        ));
                    }
                }
            }
            Outcome::Quarantined { reason, path, detail } => {
                *self.outcomes.entry(format!("quarantined {reason}")).or_default() += 1;
                if reason == Reason::ProcessingError {
                    self.problems.push(format!("{case}: a panic: {detail}"));
                }
                if !path.exists() {
                    self.problems
                        .push(format!("{case}: quarantined as {reason} but {} is missing", path.display()));
                }
            }
            Outcome::Refused(d) | Outcome::Conflict(d) | Outcome::Failed { detail: d, .. } => {
                self.problems.push(format!("{case}: an environment fault or refusal for bad data: {d}"));
            }
        }
    }
}

fn pipeline(dir: &Path, script: &Path) -> (Pipeline, std::path::PathBuf) {
    let config = config(dir, "972149", "1.2.826.0.1.3680043.10.474.2", script, "");
    let config = Config::load(&config).unwrap();
    let out = dir.join("public");
    (Pipeline::open(&config, &out, Durability::AtEnd).unwrap(), out)
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn thousands_of_mutations_end_stored_clean_or_quarantined_under_the_shipped_profile() {
    run(&profile_script(), 0x5EED_0007, 1);
}

#[test]
fn mutations_end_stored_clean_or_quarantined_under_the_rsna_script() {
    run(&default_script(), 0x5EED_0008, 4);
}

/// Mutate and run `1 / fraction` of the full set of cases under `script`, from `seed`.
fn run(script: &Path, seed: u64, fraction: usize) {
    let d = tempfile::tempdir().unwrap();
    let (pipeline, out) = pipeline(d.path(), script);
    let small: Vec<Base> = [smith(), yamada(), mueller()]
        .into_iter()
        .flat_map(|p| {
            [EXPLICIT_LE, IMPLICIT_LE]
                .map(|ts| Base::new(p.clone(), Shape { transfer_syntax: ts, ..Shape::default() }))
        })
        .collect();
    // Over the in-memory size: received ones are spilled, offline ones read from the file.
    let large = Base::new(smith(), Shape { rows: 1100, instance: 2, ..Shape::default() });
    let large_header = large.body().len() - 1100 * 1100 * 2;

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tally = Tally::default();
    let entries: [(&str, usize); 4] =
        [("memory", 1500), ("offline", 600), ("deflated", 400), ("spilled", 120)];
    for (entry, cases) in entries {
        for n in 0..cases / fraction {
            let base = match entry {
                "spilled" => &large,
                // Deflated is Explicit VR Little Endian underneath (PS3.5 §A.5).
                "deflated" => &small[2 * rng.usize(..small.len() / 2)],
                _ => &small[rng.usize(..small.len())],
            };
            let explicit = base.encoding().explicit_vr;
            let region = if entry == "spilled" { large_header } else { base.body().len() };
            let (body, kind) = mutate(&mut rng, base.body(), explicit, region);
            *tally.kinds.entry(kind).or_default() += 1;
            let case = format!("{entry} #{n} ({kind})");
            let mut file = base.file[..base.body_at].to_vec();
            file.extend_from_slice(&body);
            let forbidden = forbidden(base, &body, region);
            let admission = Admission {
                sop_class_uid: &base.sop_class,
                sop_instance_uid: &base.sop_uid,
                modalities: &[],
                study_instance_uid: None,
                audit: None,
            };
            let outcome = match entry {
                "memory" => pipeline.process_received(
                    Body::Memory(&body),
                    &TransferSyntax::new(&base.ts),
                    &admission,
                    "mutation",
                ),
                "deflated" if explicit => pipeline.process_received(
                    Body::Memory(&deflate(&body)),
                    &TransferSyntax::new(DEFLATED_TS),
                    &admission,
                    "mutation",
                ),
                "spilled" => {
                    let spill = put(d.path(), "spill", &body);
                    pipeline.process_received(
                        Body::File { path: &spill, offset: 0 },
                        &TransferSyntax::new(&base.ts),
                        &admission,
                        "mutation",
                    )
                }
                _ => {
                    let input = put(d.path(), "input.dcm", &file);
                    pipeline.process_file(&input, "mutation")
                }
            };
            let before = tally.problems.len();
            tally.check(&case, outcome, &out, &forbidden);
            if tally.problems.len() > before {
                // Kept for whoever debugs it: the Part 10 file that made the problem.
                let dump = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutation-failures");
                put(&dump, &format!("{entry}-{n}.dcm"), &file);
            }
        }
    }
    println!("mutations by kind: {:?}", tally.kinds);
    println!("outcomes: {:?}", tally.outcomes);
    assert!(tally.problems.is_empty(), "{} problems:\n{}", tally.problems.len(), tally.problems.join("\n"));
    // The generator must be able to make both kinds of outcome, or it tests nothing.
    assert!(
        tally.stored > 100 / fraction,
        "only {} mutated instances were stored: {:?}",
        tally.stored,
        tally.outcomes
    );
    assert!(
        tally.outcomes.keys().filter(|k| k.starts_with("quarantined")).count() >= 2,
        "{:?}",
        tally.outcomes
    );
}
