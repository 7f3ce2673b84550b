#!/usr/bin/env python3
"""The real-variety corpus of tests/variety.rs: DICOM files other people wrote, from pip packages.

    corpus.py build DIR      copy the corpus into DIR (one folder per source) and write DIR/manifest.json
    corpus.py inspect DIR    print the same per-file facts for every DICOM file under DIR as JSON

Sources (installed by scripts/test.sh, never downloaded by this script): the test files inside the
pydicom and pynetdicom wheels, deid-data's images (its cine zips unpacked), and studies made offline
with dicomgenerator carrying PHI we plant (marked "planted": every value of theirs must be gone),
and nine files of issue 19's classes made from pydicom's (folder "adversarial": UN sequences, free
text, ISO 2022, values a strict reader refuses, patients without an ID), their planted values listed
as kind "adversarial".
Only files present in the installed packages are used: pydicom's get_testdata_file() would try the
network for the names in its urls.json, so the package folder is walked instead.

The facts, read with pydicom (which reads UN sequences and odd encodings our test crates refuse):
the identifying values (patient name and its parts, IDs, birth date, accession, institution, every
person name and its parts, addresses, telephone numbers, study dates, instance UIDs), the Referenced
SOP Instance UIDs, and the coded values (every CS, CodeValue, CodingSchemeDesignator, Manufacturer,
ManufacturerModelName) by their path in the data set. Values are given as text and as the bytes the
file holds them in, so the leak search looks for both.
"""

import json
import warnings
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pydicom
import pydicom.multival
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Name parts and values too common or too short to mean anything when found in an output.
GENERIC = {
    "", "ANON", "ANONYMOUS", "ANONYMIZED", "ANONYMISED", "ANONYMIZE", "NONE", "UNKNOWN", "TEST", "TESTS",
    "PATIENT", "PHANTOM", "NAME", "DOCTOR", "DR", "MR", "MRS", "MS", "MD", "PHD", "JR", "SR", "MISS",
    "REMOVED", "DEIDENTIFIED", "NULL", "NA", "N/A", "XXX", "ID", "NO", "YES", "OTHER",
}

PATIENT_NAME_TAGS = {0x00100010, 0x00101001, 0x00101060, 0x00101005}  # name, other names, mother's birth name, birth name
ID_TAGS = {0x00100020, 0x00101000, 0x00101002, 0x00100021}  # PatientID, OtherPatientIDs(+Seq), IssuerOfPatientID
DATE_TAGS = {0x00100030: "birth_date", 0x00080020: "study_date"}
INSTITUTION_TAGS = {0x00080080, 0x00080081, 0x00081040}  # name, address, department
ADDRESS_TAGS = {0x00101040}
PHONE_TAGS = {0x00102154, 0x00080094}  # PatientTelephoneNumbers, ReferringPhysicianTelephoneNumbers
UID_TAGS = {0x0020000D, 0x0020000E, 0x00080018, 0x00200052}
CODED_LO = {0x00080100, 0x00080102, 0x00080070, 0x00081090}  # CodeValue, CodingSchemeDesignator, Manufacturer, Model


def site_packages(module):
    return Path(module.__file__).parent


def copy_tree(src, dst, keep):
    n = 0
    for p in sorted(src.rglob("*")):
        if p.is_file() and keep(p):
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
            n += 1
    return n


def dicomish(p):
    skip_ext = {".py", ".pyc", ".json", ".txt", ".dump", ".gz", ".icc", ".md", ".zip", ".jpg"}
    return p.suffix.lower() not in skip_ext and "README" not in p.name and "__pycache__" not in p.parts


# Planted PHI for the dicomgenerator studies: unusual enough that any hit in an output is a leak.
PLANTED = [
    dict(name="Quenthorpe^Marisol^Ysolde", pid="VX88412Q", birth="19610923", acc="ACQZ77310",
         inst="Hospital Zandvoort Quenthorpe", ref="Brackwater^Odalys", op="Fennimore^Jurgis",
         phone="+31 20 555 0199", address="Kalverstraat 17 Zandvoort"),
    dict(name="Oyelaran^Thaddeus", pid="KP-530021-Z", birth="19480117", acc="ACQX40551",
         inst="Sint Wendelinus Kliniek", ref="Marchbanks^Ileana", op="Dusenbury^Caspian",
         phone="+44 1632 960418", address="14 Ormsby Lane Wexcombe"),
    dict(name="Vandersloot^Henrike^M", pid="NL00771943", birth="19790302", acc="ACQW12893",
         inst="Radiologie Centrum Oosterwold", ref="Quillfeather^Bartholomew", op="Rasmussen-Tiwari^Ebbe",
         phone="+1 555 0147 2291", address="Poststraat 3 Oosterwold"),
]


def make_generated(dst):
    """Three patients, two studies each, two series of three CT images: 36 instances with planted PHI,
    plus per study a KOS-like reference from the second series to the first (ReferencedImageSequence)."""
    import factory.random
    from dicomgenerator.factory import CTDatasetFactory

    factory.random.reseed_random(19)
    n = 0
    for pi, p in enumerate(PLANTED):
        for st in range(2):
            study = generate_uid(entropy_srcs=[f"variety-study-{pi}-{st}"])
            frame = generate_uid(entropy_srcs=[f"variety-frame-{pi}-{st}"])
            first_series_sops = []
            for se in range(2):
                series = generate_uid(entropy_srcs=[f"variety-series-{pi}-{st}-{se}"])
                for k in range(3):
                    ds = CTDatasetFactory(PatientName=p["name"], PatientID=p["pid"])
                    sop = generate_uid(entropy_srcs=[f"variety-sop-{pi}-{st}-{se}-{k}"])
                    ds.SOPInstanceUID = sop
                    ds.StudyInstanceUID = study
                    ds.SeriesInstanceUID = series
                    ds.FrameOfReferenceUID = frame
                    ds.SeriesNumber = se + 1
                    ds.InstanceNumber = k + 1
                    ds.PatientBirthDate = p["birth"]
                    ds.AccessionNumber = p["acc"]
                    ds.InstitutionName = p["inst"]
                    ds.ReferringPhysicianName = p["ref"]
                    ds.OperatorsName = p["op"]
                    ds.PatientTelephoneNumbers = p["phone"]
                    ds.PatientAddress = p["address"]
                    ds.StudyDate = f"201{st + 1}0{pi + 3}1{k}"
                    ds.SeriesDate = ds.StudyDate
                    ds.StudyDescription = "CT THORAX"
                    if se == 1:
                        refs = []
                        for r in first_series_sops:
                            item = Dataset()
                            item.ReferencedSOPClassUID = ds.SOPClassUID
                            item.ReferencedSOPInstanceUID = r
                            refs.append(item)
                        ds.ReferencedImageSequence = refs
                    else:
                        first_series_sops.append(sop)
                    meta = FileMetaDataset()
                    meta.MediaStorageSOPClassUID = ds.SOPClassUID
                    meta.MediaStorageSOPInstanceUID = sop
                    meta.TransferSyntaxUID = ExplicitVRLittleEndian
                    ds.file_meta = meta
                    target = dst / f"patient{pi}" / f"study{st}" / f"series{se}" / f"ct{k}.dcm"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    ds.save_as(target, enforce_file_format=True)
                    n += 1
    return n


def implicit_le(ds):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def un_sequence(tag, items, undefined):
    """A sequence as a sender that lost its VR writes it (PS3.5 6.2.2): explicit VR UN, items in
    implicit VR little endian, of undefined or defined length."""
    body = b""
    for item in items:
        content = implicit_le(item)
        if undefined:
            body += b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + content + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        else:
            body += b"\xfe\xff\x00\xe0" + len(content).to_bytes(4, "little") + content
    if undefined:
        body += b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    length = b"\xff\xff\xff\xff" if undefined else len(body).to_bytes(4, "little")
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + b"UN\x00\x00" + length + body


def renewed(source, name, label, **values):
    """A copy of one of pydicom's files as a new instance of a new patient."""
    ds = pydicom.dcmread(site_packages(pydicom) / "data" / source)
    for key, uid in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"), ("SOPInstanceUID", "sop")):
        setattr(ds, key, generate_uid(entropy_srcs=[f"variety-adversarial-{label}-{uid}"]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = name
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def make_adversarial(dst):
    """Files of issue 19's classes, made from pydicom's CT_small.dcm, MR_small_implicit.dcm and
    chrH31.dcm. Each maps its path to the values planted in it (searched for in its output)."""
    dst.mkdir(parents=True, exist_ok=True)
    planted = {}

    # Class 1: RequestAttributesSequence encoded as UN, undefined and defined length.
    for undefined in (True, False):
        label = "un-undefined" if undefined else "un-defined"
        ds = renewed("test_files/CT_small.dcm", "Brisingamen^Odalys", label, PatientID=f"ADV-{label}-4471")
        # pydicom writes a known sequence as SQ: a placeholder of an unknown tag just before it.
        ds.add_new(0x00400274, "UN", b"PLACEHOLDER!")
        item = Dataset()
        item.AccessionNumber = "ACQUN4471"
        item.RequestedProcedureID = "RP4471"
        item.RequestedProcedureDescription = "CT for Odalys Brisingamen"
        item.ScheduledProcedureStepID = "SPS4471"
        path = dst / f"{label}.dcm"
        ds.save_as(path, enforce_file_format=True)
        raw = path.read_bytes()
        marker = b"\x40\x00\x74\x02UN\x00\x00\x0c\x00\x00\x00PLACEHOLDER!"
        assert raw.count(marker) == 1, label
        path.write_bytes(raw.replace(marker, un_sequence(0x00400275, [item], undefined)))
        planted[path] = ["Brisingamen", "Odalys", "ACQUN4471", f"ADV-{label}-4471"]

    # Class 2: identifiers in kept free text that the instance's own values do not give.
    ds = renewed("test_files/CT_small.dcm", "Wexcombe^Ilsabet", "free-text", PatientID="ADV-FT-5521",
                 PatientTelephoneNumbers="+44 1632 960418")
    ds.ImageComments = ("Ilsabet Wexcombe, tel +44 1632 960418 or +1 555 0147 2291, ilsabet.wexcombe@example.org; "
                        "seen 13/03/2019 and April 2, 2019 at Kliniek Vossenberg")
    path = dst / "free-text.dcm"
    ds.save_as(path, enforce_file_format=True)
    planted[path] = ["Wexcombe", "Ilsabet", "1632 960418", "555 0147 2291", "ilsabet.wexcombe@example.org",
                     "13/03/2019", "April 2, 2019", "Vossenberg"]
    # ... an institution another instance of the same patient named.
    ds = renewed("test_files/CT_small.dcm", "Wexcombe^Ilsabet", "free-text-2", PatientID="ADV-FT-5521",
                 InstitutionName="Kliniek Vossenberg")
    path = dst / "free-text-institution.dcm"
    ds.save_as(path, enforce_file_format=True)
    planted[path] = ["Wexcombe", "Vossenberg"]
    # ... names in ISO 2022 (JIS X 0208) in free text.
    ds = renewed("charset_files/chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう", "iso2022", PatientID="ADV-JIS-6631")
    ds.ImageComments = "山田太郎様の検査"
    path = dst / "iso2022-text.dcm"
    ds.save_as(path, enforce_file_format=True)
    planted[path] = ["Yamada", "山田", "太郎"]

    # Class 5: valid values the strict reader refused: FD 0.0 in implicit VR, OperatorsName as LO,
    # a CR in a text value.
    ds = renewed("test_files/MR_small_implicit.dcm", "Halvorsen^Tindra", "fd-zero", PatientID="ADV-FD-7741")
    ds.DiffusionBValue = 0.0
    ds.DiffusionGradientOrientation = [0.0, 0.0, 0.0]
    path = dst / "fd-zero-implicit.dcm"
    ds.save_as(path, enforce_file_format=True)
    planted[path] = ["Halvorsen", "Tindra", "ADV-FD-7741"]
    ds = renewed("test_files/CT_small.dcm", "Fennick^Rowan", "operators-lo", PatientID="ADV-LO-8811")
    ds.add_new(0x00081070, "LO", "Quarrington^Edme")
    ds.ReasonForStudy = "pain\rleft side"
    path = dst / "operators-lo-cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    planted[path] = ["Fennick", "Quarrington", "ADV-LO-8811"]

    # Class 8: two patients without a PatientID.
    for label, name, birth in (("no-id-a", "Ostrander^Wilhelmina", "19500101"), ("no-id-b", "Pemberton^Cosmo", "19620202")):
        ds = renewed("test_files/CT_small.dcm", name, label, PatientID="", PatientBirthDate=birth)
        path = dst / f"{label}.dcm"
        ds.save_as(path, enforce_file_format=True)
        planted[path] = name.split("^")
    return planted


def build(dst):
    import deid_data
    import pynetdicom

    dst.mkdir(parents=True, exist_ok=True)
    counts = {}
    pyd = site_packages(pydicom) / "data"
    counts["pydicom"] = sum(
        copy_tree(pyd / sub, dst / "pydicom" / sub, dicomish) for sub in ("test_files", "charset_files", "palettes")
    )
    counts["pynetdicom"] = copy_tree(
        site_packages(pynetdicom) / "tests" / "dicom_files", dst / "pynetdicom", dicomish
    )
    deid = site_packages(deid_data) / "data"
    n = copy_tree(deid, dst / "deid-data", dicomish)
    for z in sorted(deid.rglob("*.zip")):
        with zipfile.ZipFile(z) as zf:
            for info in zf.infolist():
                if info.is_dir() or "__MACOSX" in info.filename:
                    continue
                target = dst / "deid-data" / z.relative_to(deid).with_suffix("") / Path(info.filename).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
                n += 1
    counts["deid-data"] = n
    counts["dicomgenerator"] = make_generated(dst / "dicomgenerator")
    adversarial = make_adversarial(dst / "adversarial")
    counts["adversarial"] = len(adversarial)
    files = {}
    for p in sorted(dst.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            facts = inspect_file(p)
            facts["source"] = p.relative_to(dst).parts[0]
            facts["planted"] = facts["source"] == "dicomgenerator"
            if p in adversarial:
                charset = pydicom.dcmread(p, stop_before_pixels=True).get("SpecificCharacterSet", "ISO_IR 6")
                encodings = pydicom.charset.convert_encodings(charset)
            for text in adversarial.get(p, []):
                facts["phi"].append({"kind": "adversarial", "tag": "", "text": text,
                                     "bytes": encodings_of(text, encodings)})
            files[str(p.relative_to(dst))] = facts
    (dst / "manifest.json").write_text(json.dumps({"counts": counts, "files": files}, indent=0))
    print(json.dumps(counts))


def text_of(elem):
    v = elem.value
    if v is None:
        return []
    if isinstance(v, (list, pydicom.multival.MultiValue)):
        return [str(x) for x in v if x is not None and str(x) != ""]
    s = str(v)
    return [s] if s else []


def encodings_of(s, encodings):
    """A value as bytes: encoded in the file's character set (ISO 2022 escapes included), in UTF-8
    and in Latin-1."""
    out = set()
    for enc in ("utf-8", "latin-1"):
        try:
            out.add(s.encode(enc).hex())
        except UnicodeEncodeError:
            pass
    try:
        encoded = pydicom.charset.encode_string(s, encodings)
        out.add(encoded.hex())
        # In running ISO 2022 text the return to ASCII comes later, or not at all.
        if encoded.endswith(b"\x1b(B"):
            out.add(encoded[:-3].hex())
    except Exception:
        pass
    return sorted(out)


def name_parts(s):
    parts = []
    for group in s.split("="):
        for comp in group.split("^"):
            for word in comp.replace(",", " ").split():
                parts.append(word)
    return parts


def walk(ds, path, encodings, facts):
    try:
        elems = list(ds)
    except Exception as e:  # pydicom reads lazily: a broken value surfaces here
        facts["errors"].append(f"{path}: {e}")
        return
    for elem in elems:
        try:
            tag = int(elem.tag)
            here = f"{path}{tag >> 16:04X},{tag & 0xFFFF:04X}"
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    walk(item, f"{here}[{i}]/", encodings, facts)
                continue
            if tag == 0x00080005:
                continue
            phi = facts["phi"]
            kind = None
            if elem.VR == "PN":
                kind = "patient_name" if tag in PATIENT_NAME_TAGS else "person_name"
            elif tag in ID_TAGS:
                kind = "patient_id"
            elif tag == 0x00080050:
                kind = "accession"
            elif tag in DATE_TAGS:
                kind = DATE_TAGS[tag]
            elif tag in INSTITUTION_TAGS:
                kind = "institution"
            elif tag in ADDRESS_TAGS:
                kind = "address"
            elif tag in PHONE_TAGS:
                kind = "phone"
            elif tag in UID_TAGS:
                kind = "uid"
            if kind:
                for s in text_of(elem):
                    phi.append({"kind": kind, "tag": here, "text": s, "bytes": encodings_of(s, encodings)})
                    if elem.VR == "PN":
                        for part in name_parts(s):
                            # A word of a Latin name shorter than 4 letters (initials, "RIS", "CT1")
                            # means nothing alone; two CJK characters are a name.
                            if len(part) >= (4 if part.isascii() else 2):
                                phi.append({"kind": kind + "_part", "tag": here, "text": part,
                                            "bytes": encodings_of(part, encodings)})
            if tag == 0x00081155:
                facts["refs"].extend(text_of(elem))
            if elem.VR == "DA":
                facts["dates"].extend(text_of(elem))
            elif elem.VR == "DT":
                facts["dates"].extend(v[:8] for v in text_of(elem))
            if elem.VR == "CS" or tag in CODED_LO:
                facts["coded"][here] = "\\".join(text_of(elem))
        except Exception as e:
            facts["errors"].append(f"{path}{elem.tag}: {e}")


def inspect_file(p):
    facts = {"dicom": False, "sop_class": "", "sop": "", "study": "", "series": "", "patient_id": "",
             "patient_name": "", "birth_date": "", "modality": "", "transfer_syntax": "", "phi": [], "refs": [],
             "coded": {}, "dates": [], "errors": []}
    try:
        ds = pydicom.dcmread(p, force=False)
    except Exception as e:
        facts["errors"].append(f"read: {e}")
        return facts
    facts["dicom"] = True
    meta = getattr(ds, "file_meta", None)
    facts["transfer_syntax"] = str(meta.get("TransferSyntaxUID", "")) if meta else ""
    for key, attr in (("sop_class", "SOPClassUID"), ("sop", "SOPInstanceUID"), ("study", "StudyInstanceUID"),
                      ("series", "SeriesInstanceUID"), ("patient_id", "PatientID"), ("modality", "Modality"),
                      ("patient_name", "PatientName"), ("birth_date", "PatientBirthDate")):
        try:
            facts[key] = str(ds.get(attr, "") or "")
        except Exception as e:
            facts["errors"].append(f"{attr}: {e}")
    try:
        encodings = pydicom.charset.convert_encodings(ds.get("SpecificCharacterSet", "ISO_IR 6"))
    except Exception:
        encodings = ["iso8859"]
    # Where the top-level pixel data's value lies, for the leak search to skip (pixel samples are
    # not text, and a 100 MB cine would dominate the test's time); not in a Deflated file.
    try:
        raw = ds.get_item(0x7FE00010)
        if raw is not None and facts["transfer_syntax"] != "1.2.840.10008.1.2.1.99" and raw.value_tell:
            facts["pixels"] = [raw.value_tell, raw.length]
    except Exception as e:
        facts["errors"].append(f"pixels: {e}")
    walk(ds, "", encodings, facts)
    # Generic placeholders are not identifying; keep the rest.
    facts["phi"] = [f for f in facts["phi"] if f["text"].strip().upper() not in GENERIC]
    return facts


def inspect(root):
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".json":
            files[str(p)] = inspect_file(p)
    print(json.dumps({"files": files}))


def main():
    warnings.simplefilter("ignore")
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "inspect"):
        sys.exit(__doc__)
    root = Path(sys.argv[2])
    if sys.argv[1] == "build":
        build(root)
    else:
        inspect(root)


if __name__ == "__main__":
    main()
