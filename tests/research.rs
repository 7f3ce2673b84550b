//! Research objects (SR, RTSTRUCT, SEG, GSPS, ECG, Enhanced MR, SC, PDF) through the offline
//! `anonymize` command with the shipped PS3.15 profile: content kept, every reference resolved,
//! no dciodvfy error the input did not have, no planted PHI anywhere in the output.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dicom_core::header::Header;
use dicom_core::Tag;
use dicom_object::{open_file, InMemDicomObject};

use common::research::*;
use common::*;

const SITE: &str = "972149";
const ROOT: &str = "1.2.826.0.1.3680043.10.474.2";

struct Run {
    _dir: tempfile::TempDir,
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    quarantine: PathBuf,
    stderr: String,
}

/// The study through the binary with `extra` config under `project:`.
fn run(extra: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let inputs = study(&dir.path().join("in"));
    let config = config(dir.path(), SITE, ROOT, &profile_script(), extra);
    let out = dir.path().join("out");
    let refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let result = anonymize(&config, &out, &refs);
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    let outputs = files_under(&out);
    let quarantine = dir.path().join("storage/private/quarantine");
    Run { _dir: dir, inputs, outputs, quarantine, stderr }
}

fn text(o: &InMemDicomObject, tag: Tag) -> Option<String> {
    let v = o.element(tag).ok()?.to_str().ok()?;
    Some(v.trim_end_matches(['\0', ' ']).to_string())
}

fn items(o: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    o.element(tag).ok().and_then(|e| e.items()).unwrap_or(&[])
}

/// Outputs (or inputs) by SOP class and instance number.
fn by_class(files: &[PathBuf]) -> BTreeMap<(String, String), (PathBuf, InMemDicomObject)> {
    files
        .iter()
        .map(|f| {
            let o = open_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).into_inner();
            let key =
                (text(&o, Tag(0x0008, 0x0016)).unwrap(), text(&o, Tag(0x0020, 0x0013)).unwrap_or_default());
            (key, (f.clone(), o))
        })
        .collect()
}

fn one<'a>(
    objects: &'a BTreeMap<(String, String), (PathBuf, InMemDicomObject)>,
    class: &str,
) -> &'a InMemDicomObject {
    let found: Vec<_> = objects.iter().filter(|((c, _), _)| c == class).collect();
    assert_eq!(found.len(), 1, "one output of class {class}");
    &found[0].1 .1
}

/// Every UI value at any depth, with its tag.
fn uids(o: &InMemDicomObject, out: &mut Vec<(Tag, String)>) {
    for e in o {
        if let Some(items) = e.items() {
            items.iter().for_each(|i| uids(i, out));
        } else if e.vr() == dicom_core::VR::UI {
            if let Ok(v) = e.to_str() {
                for u in v.split('\\') {
                    out.push((e.tag(), u.trim_end_matches(['\0', ' ']).to_string()));
                }
            }
        }
    }
}

#[test]
fn every_object_class_keeps_its_research_content() {
    let r = run("");
    let out = by_class(&r.outputs);
    assert_eq!(out.len(), r.inputs.len() - 1, "all but the PDF are archived: {}", r.stderr);
    // Type 2 in every series: present and empty (PS3.15 Z), neither removed nor a made-up name.
    for (key, (_, o)) in &out {
        assert_eq!(text(o, Tag(0x0008, 0x1070)).as_deref(), Some(""), "OperatorsName in {key:?}");
    }

    let sr = one(&out, COMPREHENSIVE_SR);
    let tree = items(sr, Tag(0x0040, 0xA730));
    assert_eq!(tree.len(), 5, "SR content tree");
    let value_of = |vt: &str, tag| {
        let item = tree.iter().find(|i| text(i, Tag(0x0040, 0xA040)).as_deref() == Some(vt)).unwrap();
        text(item, tag).unwrap_or_default()
    };
    assert!(value_of("TEXT", Tag(0x0040, 0xA160)).starts_with("Discussed with Dr"), "TEXT kept, cleaned");
    assert!(!value_of("PNAME", Tag(0x0040, 0xA123)).is_empty(), "PNAME has a dummy (Type 1)");
    assert_eq!(value_of("DATE", Tag(0x0040, 0xA121)).len(), 8, "DATE shifted, not removed");
    assert!(value_of("UIDREF", Tag(0x0040, 0xA124)).starts_with(ROOT));
    assert_eq!(items(sr, Tag(0x0040, 0xA375)).len(), 1, "evidence kept");

    let rt = one(&out, RT_STRUCTURE_SET);
    let roi = &items(rt, Tag(0x3006, 0x0039))[0];
    let contour = &items(roi, Tag(0x3006, 0x0040))[0];
    assert_eq!(text(contour, Tag(0x3006, 0x0050)).as_deref(), Some("0\\0\\1\\2\\0\\1\\2\\2\\1"));
    assert_eq!(items(contour, Tag(0x3006, 0x0016)).len(), 1, "ContourImageSequence");
    assert_eq!(text(&items(rt, Tag(0x3006, 0x0020))[0], Tag(0x3006, 0x0026)).as_deref(), Some("GTV"));
    assert_eq!(items(rt, Tag(0x3006, 0x0080)).len(), 1, "RTROIObservationsSequence");

    let seg = one(&out, SEGMENTATION);
    assert_eq!(text(&items(seg, Tag(0x0062, 0x0002))[0], Tag(0x0062, 0x0005)).as_deref(), Some("Tumour"));
    let frames = items(seg, Tag(0x5200, 0x9230));
    assert_eq!(frames.len(), CT_IMAGES as usize);
    for f in frames {
        let derivation = &items(f, Tag(0x0008, 0x9124))[0];
        assert_eq!(items(derivation, Tag(0x0008, 0x2112)).len(), 1, "SourceImageSequence per frame");
    }

    let pr = one(&out, GSPS);
    let annotation = &items(pr, Tag(0x0070, 0x0001))[0];
    let label = text(&items(annotation, Tag(0x0070, 0x0008))[0], Tag(0x0070, 0x0006)).unwrap();
    assert!(label.starts_with("Lesion of ***"), "{label}");

    let ecg = one(&out, TWELVE_LEAD_ECG);
    let waveform = &items(ecg, Tag(0x5400, 0x0100))[0];
    assert_eq!(items(waveform, Tag(0x003A, 0x0200)).len(), 12, "channels");
    let data = waveform.element(Tag(0x5400, 0x1010)).unwrap().to_bytes().unwrap();
    assert_eq!(data.len(), 100 * 12 * 2, "WaveformData");

    let mr = one(&out, ENHANCED_MR);
    let description = text(mr, Tag(0x0008, 0x103E));
    assert_eq!(description.as_deref(), Some("MR by ***"), "descriptions keep their meaning");
    let frames = items(mr, Tag(0x5200, 0x9230));
    assert_eq!(frames.len(), 2);
    for f in frames {
        let content = &items(f, Tag(0x0020, 0x9111))[0];
        for tag in [Tag(0x0018, 0x9074), Tag(0x0018, 0x9151)] {
            let v = text(content, tag).unwrap_or_default();
            assert!(v.len() == 14 && !v.starts_with(STUDY_DATE), "per-frame datetime shifted: {v:?}");
        }
    }
    assert_eq!(items(mr, Tag(0x5200, 0x9229)).len(), 1, "shared functional groups");

    let sc = one(&out, SECONDARY_CAPTURE);
    assert_eq!(text(sc, Tag(0x0008, 0x0064)).as_deref(), Some("WSD"), "ConversionType (Type 1)");
}

#[test]
fn every_reference_resolves_to_an_output_instance() {
    let r = run("");
    let out = by_class(&r.outputs);
    let top = |tag| out.values().filter_map(|(_, o)| text(o, tag)).collect::<BTreeSet<_>>();
    let sops = top(Tag(0x0008, 0x0018));
    let series = top(Tag(0x0020, 0x000E));
    let studies = top(Tag(0x0020, 0x000D));
    let frames_of_reference = top(Tag(0x0020, 0x0052));
    assert_eq!(studies.len(), 1);
    let mut checked = 0;
    for (path, o) in out.values() {
        let mut all = Vec::new();
        uids(o, &mut all);
        for (tag, uid) in all {
            if uid.is_empty() || uid.starts_with("1.2.840.10008.") {
                continue;
            }
            assert!(uid.starts_with(ROOT), "{}: {tag} {uid} is not a pseudonym", path.display());
            let target = match (tag.0, tag.1) {
                // RT Referenced Study items name the study by its UID.
                (0x0008, 0x1155) => sops.union(&studies).cloned().collect(),
                (0x0020, 0x000E) => series.clone(),
                (0x0020, 0x000D) => studies.clone(),
                (0x0020, 0x0052) | (0x3006, 0x0024) => frames_of_reference.clone(),
                (0x0040, 0xA124) => studies.union(&series).cloned().collect(),
                _ => continue,
            };
            assert!(target.contains(&uid), "{}: {tag} {uid} points at no output", path.display());
            checked += 1;
        }
    }
    // Tops (15 SOP, series, study, FoR values) plus the references (SR 3, RT 6, SEG 4, GSPS 5).
    assert!(checked >= 45, "only {checked} references were checked: were references deleted?");
}

#[test]
fn dciodvfy_finds_no_error_the_input_did_not_have() {
    let r = run("");
    let inputs = by_class(&r.inputs);
    let outputs = by_class(&r.outputs);
    let mut report = Vec::new();
    for (key, (output, _)) in &outputs {
        let (input, _) = &inputs[key];
        let before: BTreeSet<String> = dciodvfy_errors(input).into_iter().collect();
        let after: BTreeSet<String> = dciodvfy_errors(output).into_iter().collect();
        let new: Vec<&String> = after.difference(&before).collect();
        report.push(format!(
            "{} #{}: {} before, {} after, new {new:?}",
            key.0,
            key.1,
            before.len(),
            after.len()
        ));
        assert!(new.is_empty(), "{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn no_planted_phi_is_anywhere_in_the_output() {
    let r = run("");
    assert!(!r.outputs.is_empty());
    for output in &r.outputs {
        let bytes = std::fs::read(output).unwrap().to_ascii_lowercase();
        let path = output.to_string_lossy().to_ascii_lowercase();
        for phi in planted_phi() {
            let phi = phi.to_ascii_lowercase();
            assert!(!contains(&bytes, phi.as_bytes()), "{phi:?} in {}", output.display());
            assert!(!path.contains(&phi), "{phi:?} in the path {path}");
        }
    }
}

#[test]
fn documents_are_quarantined_as_unverifiable_unless_the_policy_keeps_them() {
    let r = run("");
    let held = files_under(&r.quarantine.join("Unverifiable_Content"));
    assert_eq!(held.iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).count(), 1, "{}", r.stderr);
    let objects = by_class(&r.outputs);
    assert!(objects.keys().all(|(class, _)| class != ENCAPSULATED_PDF));

    let removed = run("  unverifiable: remove\n");
    assert!(removed.stderr.contains("removed by policy"), "{}", removed.stderr);
    assert_eq!(files_under(&removed.quarantine.join("Unverifiable_Content")).len(), 2, "instance and reason");

    let kept = run("  unverifiable: keep\n");
    let objects = by_class(&kept.outputs);
    assert!(objects.keys().any(|(class, _)| class == ENCAPSULATED_PDF), "{}", kept.stderr);
    assert!(kept.stderr.contains("unverifiable content kept"), "{}", kept.stderr);
}

#[test]
fn method_codes_list_exactly_the_options_applied() {
    let codes = |r: &Run| {
        let out = by_class(&r.outputs);
        let ct = &out[&(common::CT_IMAGE.to_string(), "1".to_string())].1;
        items(ct, Tag(0x0012, 0x0064)).iter().filter_map(|i| text(i, Tag(0x0008, 0x0100))).collect::<Vec<_>>()
    };
    assert_eq!(codes(&run("")), ["113100", "113103", "113104", "113105", "113107", "113108"]);
    let basic = run(
        "  profile_options: { retain_modified_dates: false, clean_descriptors: false, clean_structured_content: false, clean_graphics: false, retain_patient_characteristics: false }\n",
    );
    assert_eq!(codes(&basic), ["113100"]);
    let out = by_class(&basic.outputs);
    let sr = one(&out, COMPREHENSIVE_SR);
    assert!(sr.element(Tag(0x0040, 0xA730)).is_err(), "no content tree without Clean Structured Content");
    let ct = &out[&(common::CT_IMAGE.to_string(), "1".to_string())].1;
    assert_eq!(
        text(ct, Tag(0x0008, 0x0020)).as_deref(),
        Some(""),
        "StudyDate emptied (Z) without the dates option"
    );
    assert!(
        ct.element(Tag(0x0008, 0x1030)).is_err(),
        "StudyDescription removed (X) without Clean Descriptors"
    );
    assert_eq!(text(ct, Tag(0x0010, 0x0040)).as_deref(), Some(""), "PatientSex emptied (Z)");
}
