#!/usr/bin/env python3
"""Images with burned-in PHI for scripts/bench-pixels.sh (pydicom and Pillow; DejaVu from Debian).

    make-pixel-corpus.py DIR US_COUNT CR_COUNT CT_COUNT

DIR/us: 640x480 RGB ultrasound, DIR/cr: 2000x2500 16-bit MONOCHROME2 radiographs, both with the
patient's name, ID and birth date drawn at three sizes; DIR/ct: 512x512 CT of one series, no text.
DIR/truth.json: per file, the planted words and their boxes (x, y, w, h).
"""
import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
US_CLASS, CR_CLASS, CT_CLASS = "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.2"


def dataset(sop_class, modality, n, patient):
    name, pid, birth = patient
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.999.77.1." + str(hash(pid) % 10**8)
    ds.SeriesInstanceUID = ds.StudyInstanceUID + "." + modality_number(modality)
    ds.Modality = modality
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = birth
    ds.StudyDate = "20240301"
    ds.InstanceNumber = n
    return ds


def modality_number(modality):
    return {"US": "1", "CR": "2", "CT": "3"}[modality]


def save(ds, path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def draw_words(img, patient, scale, rng):
    name, pid, birth = patient
    words = [name.replace("^", " "), pid, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
    draw = ImageDraw.Draw(img)
    boxes = []
    w, h = img.size
    for i, text in enumerate(words):
        size = int([14, 18, 24][i % 3] * scale)
        font = ImageFont.truetype(FONT, size)
        x = rng.randint(5, max(6, w - size * len(text)))
        y = int(h * [0.03, 0.45, 0.9][i]) if i < 3 else rng.randint(5, h - size)
        fill = 255 if img.mode == "L" else (255, 255, 200)
        draw.text((x, y), text, font=font, fill=fill)
        box = draw.textbbox((x, y), text, font=font)
        boxes.append({"text": text, "box": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    return boxes


def main():
    out, us_count, cr_count, ct_count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(7)
    truth = {}
    names = ["HARTMANN^GRETA", "OKONKWO^CHIDI", "LINDQVIST^ASTRID", "MORENO^JAVIER"]
    for kind in ("us", "cr", "ct"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for n in range(us_count):
        patient = (names[n % 4], f"PX{90000 + n}", f"19{50 + n % 40}0{1 + n % 9}1{n % 9}")
        img = Image.new("RGB", (640, 480))
        px = img.load()
        for y in range(0, 480, 2):
            for x in range(0, 640, 2):
                v = rng.randint(0, 70) if (x - 320) ** 2 + (y - 300) ** 2 < 200**2 else 0
                px[x, y] = (v, v, v)
        boxes = draw_words(img, patient, 1.0, rng)
        ds = dataset(US_CLASS, "US", n, patient)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 480, 640, 8, 8, 7, 0
        ds.PixelData = img.tobytes()
        path = out / "us" / f"us{n:04}.dcm"
        save(ds, path)
        truth[str(path)] = {"words": boxes, "size": [640, 480]}
    for n in range(cr_count):
        patient = (names[n % 4], f"CR{70000 + n}", "19610203")
        img = Image.linear_gradient("L").resize((2000, 2500)).point(lambda v: v // 2)
        boxes = draw_words(img, patient, 3.0, rng)
        ds = dataset(CR_CLASS, "CR", n, patient)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 2500, 2000, 16, 12, 11, 0
        ds.PixelData = b"".join((v * 16).to_bytes(2, "little") for v in img.tobytes())
        path = out / "cr" / f"cr{n:04}.dcm"
        save(ds, path)
        truth[str(path)] = {"words": boxes, "size": [2000, 2500]}
    noise = bytes(rng.randint(0, 255) for _ in range(512 * 512 * 2))
    for n in range(ct_count):
        ds = dataset(CT_CLASS, "CT", n, ("CTPATIENT^ONE", "CT1", "19700101"))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 512, 512, 16, 12, 11, 0
        ds.ImageType = "ORIGINAL\\PRIMARY\\AXIAL"
        ds.PixelData = noise
        save(ds, out / "ct" / f"ct{n:04}.dcm")
    (out / "truth.json").write_text(json.dumps(truth))


if __name__ == "__main__":
    main()
