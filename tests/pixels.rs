//! Burned-in text, end to end: images with the patient's own name, ID and birth date drawn into
//! their pixels (DejaVu Sans, from Debian's fonts-dejavu-core) go through the real binary, and
//! what comes out is read by Debian's Tesseract, independently of the node's own reading.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::node::{text, Node, AE};
use common::*;
use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

const SITE: &str = "99.99";
const ROOT: &str = "1.2.826.0.1.3680043.10.474";
const NAME: &str = "HARTMANN^GRETA";
const ID: &str = "PX99317";
const BIRTH: &str = "19580412";
const US_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.6.1";
const US_MULTIFRAME: &str = "1.2.840.10008.5.1.4.1.1.3.1";
const CR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.1";
const SC_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.7";
const RLE: &str = "1.2.840.10008.1.2.5";
const JPEG_LOSSLESS: &str = "1.2.840.10008.1.2.4.57";
const JPEG_2000: &str = "1.2.840.10008.1.2.4.90";
const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";

/// What is drawn: the instance's own PHI, and a word that is not PHI.
const PHI_WORDS: [&str; 4] = ["HARTMANN", "GRETA", "PX99317", "1958-04-12"];

/// One image to make.
#[derive(Clone)]
struct Image {
    sop_class: &'static str,
    modality: &'static str,
    photometric: &'static str,
    bits_stored: u16,
    samples: u16,
    rows: usize,
    cols: usize,
    frames: usize,
    burned_in: Option<&'static str>,
    /// Words and where they go: (text, x, y, pixel height).
    text: Vec<(&'static str, usize, usize, f32)>,
    series: &'static str,
    instance: u32,
    image_type: &'static str,
    manufacturer: &'static str,
    /// Uniform noise over the whole range instead of the soft gradient (OCR reads "words" in it).
    noise: bool,
}

impl Image {
    fn new(sop_class: &'static str, modality: &'static str, photometric: &'static str) -> Image {
        Image {
            sop_class,
            modality,
            photometric,
            bits_stored: 8,
            samples: if photometric == "RGB" { 3 } else { 1 },
            rows: 240,
            cols: 320,
            frames: 1,
            burned_in: None,
            text: vec![
                ("HARTMANN GRETA", 12, 10, 16.0),
                ("PX99317", 200, 40, 14.0),
                ("1958-04-12", 12, 200, 13.0),
                ("ABDOMEN", 170, 150, 18.0),
            ],
            series: "1",
            instance: 1,
            image_type: "ORIGINAL\\PRIMARY",
            manufacturer: "Imaginary Devices",
            noise: false,
        }
    }

    fn bytes_per_sample(&self) -> usize {
        if self.bits_stored > 8 {
            2
        } else {
            1
        }
    }
}

/// Where a drawn word lies: x, y, width, height.
type Box = (usize, usize, usize, usize);

/// The coverage (0-255) of `text` drawn at (x, y) with height `px`, into a `cols` × `rows` map,
/// and the box it covers.
fn draw(
    map: &mut [u8],
    cols: usize,
    rows: usize,
    text: &str,
    x: usize,
    y: usize,
    px: f32,
) -> (usize, usize, usize, usize) {
    use std::sync::OnceLock;
    static FONT: OnceLock<fontdue::Font> = OnceLock::new();
    let font = FONT.get_or_init(|| {
        let path = tool("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "fonts-dejavu-core");
        fontdue::Font::from_bytes(std::fs::read(path).unwrap(), fontdue::FontSettings::default()).unwrap()
    });
    let ascent = (px * 0.8) as i32;
    let mut pen = x as f32;
    let (mut x1, mut y1) = (x, y);
    for ch in text.chars() {
        let (m, bitmap) = font.rasterize(ch, px);
        let left = pen as i32 + m.xmin;
        let top = y as i32 + ascent - (m.ymin + m.height as i32);
        for gy in 0..m.height {
            for gx in 0..m.width {
                let (px_, py) = (left + gx as i32, top + gy as i32);
                if px_ < 0 || py < 0 || px_ as usize >= cols || py as usize >= rows {
                    continue;
                }
                let i = py as usize * cols + px_ as usize;
                map[i] = map[i].max(bitmap[gy * m.width + gx]);
                x1 = x1.max(px_ as usize + 1);
                y1 = y1.max(py as usize + 1);
            }
        }
        pen += m.advance_width;
    }
    (x, y, x1 - x, y1 - y)
}

/// The native pixel data of `img`: a soft gradient with the words drawn bright over it (dark
/// for MONOCHROME1, whose high values display black), and the boxes the words cover.
fn pixels(img: &Image) -> (Vec<u8>, Vec<Box>) {
    let (rows, cols) = (img.rows, img.cols);
    let mut coverage = vec![0u8; rows * cols];
    let boxes: Vec<_> =
        img.text.iter().map(|&(t, x, y, px)| draw(&mut coverage, cols, rows, t, x, y, px)).collect();
    let max = (1u32 << img.bits_stored) - 1;
    let mut out = Vec::new();
    let mut seed = 0x9E37_79B9u32 ^ img.instance;
    for frame in 0..img.frames {
        for y in 0..rows {
            for x in 0..cols {
                let background = if img.noise {
                    // xorshift32
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed % (max + 1)
                } else {
                    ((x + y + frame * 3) % 64) as u32 * max / 400
                };
                let c = u32::from(coverage[y * cols + x]);
                let mut v = (background * (255 - c) + max * c) / 255;
                // MONOCHROME1 displays high values dark; the test palette maps index i to the
                // grey 255 - i (with a tint), so the darkest colour is the highest index.
                if matches!(img.photometric, "MONOCHROME1" | "PALETTE COLOR") {
                    v = max - v;
                }
                for s in 0..img.samples {
                    let v = if s == 1 { v * 9 / 10 } else { v };
                    if img.bytes_per_sample() == 2 {
                        out.extend_from_slice(&(v as u16).to_le_bytes());
                    } else {
                        out.push(v as u8);
                    }
                }
            }
        }
    }
    (out, boxes)
}

fn text_element(group: u16, element: u16, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(Tag(group, element), vr, PrimitiveValue::from(v))
}

fn us(group: u16, element: u16, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(Tag(group, element), VR::US, PrimitiveValue::from(v))
}

/// A Part 10 file of `img` in Explicit VR Little Endian (or, for any other `ts`, one fragment
/// that decodes to nothing), with the patient's PHI in the header as in the pixels.
fn write(dir: &Path, name: &str, img: &Image, ts: &str) -> PathBuf {
    // A compressed syntax gets one fragment that is no image at all.
    write_frames(dir, name, img, ts, vec![vec![0xFF, 0xD8, 0xFF, 0xDB, 0, 4, 1, 2, 0xFF, 0xD9]])
}

/// As `write`, with these compressed frames as the pixel data when `ts` is not Explicit LE.
fn write_frames(dir: &Path, name: &str, img: &Image, ts: &str, fragments: Vec<Vec<u8>>) -> PathBuf {
    let uid = |kind: &str| format!("1.2.999.31.{kind}.{}.{}", img.series, img.instance);
    let sop_uid = uid("3");
    let mut o = InMemDicomObject::new_empty();
    for e in [
        text_element(0x0008, 0x0008, VR::CS, img.image_type),
        text_element(0x0008, 0x0016, VR::UI, img.sop_class),
        text_element(0x0008, 0x0018, VR::UI, &sop_uid),
        text_element(0x0008, 0x0020, VR::DA, "20240301"),
        text_element(0x0008, 0x0030, VR::TM, "101010"),
        text_element(0x0008, 0x0050, VR::SH, "ACC4471"),
        text_element(0x0008, 0x0060, VR::CS, img.modality),
        text_element(0x0008, 0x0070, VR::LO, img.manufacturer),
        text_element(0x0008, 0x0090, VR::PN, ""),
        text_element(0x0010, 0x0010, VR::PN, NAME),
        text_element(0x0010, 0x0020, VR::LO, ID),
        text_element(0x0010, 0x0030, VR::DA, BIRTH),
        text_element(0x0010, 0x0040, VR::CS, "F"),
        text_element(0x0020, 0x000D, VR::UI, "1.2.999.31.1"),
        text_element(0x0020, 0x000E, VR::UI, &format!("1.2.999.31.2.{}", img.series)),
        text_element(0x0020, 0x0010, VR::SH, "S1"),
        text_element(0x0020, 0x0011, VR::IS, img.series),
        text_element(0x0020, 0x0013, VR::IS, &img.instance.to_string()),
        text_element(0x0020, 0x0020, VR::CS, ""),
        us(0x0028, 0x0002, img.samples),
        text_element(0x0028, 0x0004, VR::CS, img.photometric),
        us(0x0028, 0x0010, img.rows as u16),
        us(0x0028, 0x0011, img.cols as u16),
        us(0x0028, 0x0100, if img.bytes_per_sample() == 2 { 16 } else { 8 }),
        us(0x0028, 0x0101, img.bits_stored),
        us(0x0028, 0x0102, img.bits_stored - 1),
        us(0x0028, 0x0103, 0),
    ] {
        o.put(e);
    }
    if img.sop_class == SC_IMAGE {
        o.put(text_element(0x0008, 0x0064, VR::CS, "WSD"));
    }
    if img.samples == 3 {
        o.put(us(0x0028, 0x0006, 0));
    }
    if img.photometric == "PALETTE COLOR" {
        for (n, tint) in [(0x1101u16, 0u16), (0x1102, 8), (0x1103, 24)] {
            o.put(DataElement::new(Tag(0x0028, n), VR::US, PrimitiveValue::U16(vec![256, 0, 16].into())));
            let lut: Vec<u16> = (0..256u16).map(|i| (255 - i).saturating_sub(tint) * 257).collect();
            o.put(DataElement::new(Tag(0x0028, n + 0x100), VR::OW, PrimitiveValue::U16(lut.into())));
        }
    }
    if let Some(b) = img.burned_in {
        o.put(text_element(0x0028, 0x0301, VR::CS, b));
    }
    if img.frames > 1 {
        o.put(text_element(0x0028, 0x0008, VR::IS, &img.frames.to_string()));
        o.put(text_element(0x0018, 0x1063, VR::DS, "33.3"));
        o.put(DataElement::new(
            Tag(0x0028, 0x0009),
            VR::AT,
            PrimitiveValue::Tags(vec![Tag(0x0018, 0x1063)].into()),
        ));
    }
    if img.modality == "CR" {
        o.put(text_element(0x0018, 0x0015, VR::CS, "CHEST"));
        o.put(text_element(0x0018, 0x5101, VR::CS, "PA"));
    }
    let pixel_element = if ts != EXPLICIT_LE {
        DataElement::new(
            Tag(0x7FE0, 0x0010),
            VR::OB,
            PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
        )
    } else {
        let (bytes, _) = pixels(img);
        if img.bytes_per_sample() == 2 {
            let words: Vec<u16> = bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            DataElement::new(Tag(0x7FE0, 0x0010), VR::OW, PrimitiveValue::U16(words.into()))
        } else {
            DataElement::new(Tag(0x7FE0, 0x0010), VR::OB, PrimitiveValue::from(bytes))
        }
    };
    o.put(pixel_element);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid(img.sop_class)
        .media_storage_sop_instance_uid(&sop_uid)
        .implementation_class_uid("1.2.999.1")
        .build()
        .unwrap();
    let mut out = Vec::new();
    o.with_exact_meta(meta).write_all(&mut out).unwrap();
    put(dir, name, &out)
}

/// The native pixel bytes of a file (RLE and JPEG decompressed by DCMTK first).
fn native_pixels(file: &Path, scratch: &Path) -> Vec<u8> {
    let ts = dcmdump_value_meta(file);
    let decompress = match ts.as_str() {
        RLE => Some("/usr/bin/dcmdrle"),
        t if t.starts_with("1.2.840.10008.1.2.4.") => Some("/usr/bin/dcmdjpeg"),
        _ => None,
    };
    let file = match decompress {
        Some(program) => {
            let plain = scratch.join(format!("plain-{}", file.file_name().unwrap().to_string_lossy()));
            // +cp: colour by pixel, as the node writes it.
            let out = Command::new(tool(program, "dcmtk")).arg(file).arg(&plain).output().unwrap();
            assert!(
                out.status.success(),
                "{program} {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            plain
        }
        None => file.to_path_buf(),
    };
    let obj = dicom_object::open_file(&file).unwrap();
    obj.element(Tag(0x7FE0, 0x0010)).unwrap().to_bytes().unwrap().into_owned()
}

fn dcmdump_value_meta(file: &Path) -> String {
    // -Un: the UID itself, not its name.
    let out = Command::new(tool("/usr/bin/dcmdump", "dcmtk"))
        .args(["-Un", "-M", "+P", "TransferSyntaxUID"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split('[')
        .nth(1)
        .and_then(|v| v.split(']').next())
        .unwrap_or_default()
        .trim_end_matches('\0')
        .to_string()
}

/// What Tesseract reads in each frame, both polarities, at twice the size: upper-case letters
/// and digits only, so that `1958-04-12` reads as `19580412`.
fn ocr(pixels: &[u8], img: &Image, scratch: &Path) -> String {
    let (rows, cols) = (img.rows, img.cols);
    let per_frame = rows * cols * img.samples as usize * img.bytes_per_sample();
    let mut all = String::new();
    for frame in pixels.chunks(per_frame).take(img.frames) {
        let value = |i: usize| -> u32 {
            let o = i * img.bytes_per_sample();
            if img.bytes_per_sample() == 2 {
                u32::from(u16::from_le_bytes([frame[o], frame[o + 1]]))
            } else {
                u32::from(frame[o])
            }
        };
        let grey: Vec<u32> = (0..rows * cols)
            .map(|p| {
                (0..img.samples as usize).map(|s| value(p * img.samples as usize + s)).sum::<u32>()
                    / img.samples as u32
            })
            .collect();
        let max = grey.iter().copied().max().unwrap_or(1).max(1);
        for invert in [false, true] {
            let mut pgm = format!("P5\n{} {}\n255\n", cols * 2, rows * 2).into_bytes();
            for y in 0..rows * 2 {
                for x in 0..cols * 2 {
                    let mut g = (grey[(y / 2) * cols + x / 2] * 255 / max) as u8;
                    if matches!(img.photometric, "MONOCHROME1" | "PALETTE COLOR") != invert {
                        g = 255 - g;
                    }
                    pgm.push(g);
                }
            }
            let path = scratch.join("ocr.pgm");
            std::fs::write(&path, pgm).unwrap();
            let out = Command::new(tool("/usr/bin/tesseract", "tesseract-ocr"))
                .arg(&path)
                .args(["stdout", "--psm", "11"])
                .env("OMP_THREAD_LIMIT", "1")
                .output()
                .unwrap();
            assert!(out.status.success(), "tesseract: {}", String::from_utf8_lossy(&out.stderr));
            all.push_str(&String::from_utf8_lossy(&out.stdout));
            all.push('\n');
        }
    }
    all.chars().filter(|c| c.is_alphanumeric() || c.is_whitespace()).flat_map(char::to_uppercase).collect()
}

fn readable(text: &str, word: &str) -> bool {
    let want: String = word.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_uppercase).collect();
    text.contains(&want) || text.split_whitespace().collect::<String>().contains(&want)
}

fn anonymize_with(dir: &Path, extra: &str, inputs: &[&Path]) -> (PathBuf, std::process::Output) {
    let config = config(dir, SITE, ROOT, &profile_script(), extra);
    let out = dir.join("out");
    let run = anonymize(&config, &out, inputs);
    (out, run)
}

/// The one output in `out` (the public spool), or a failure naming what the run said.
fn only_output(out: &Path, run: &std::process::Output) -> PathBuf {
    let files: Vec<PathBuf> =
        files_under(out).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).collect();
    assert_eq!(files.len(), 1, "one output expected in {}: {:?}\n{}", out.display(), files, text(run));
    files[0].clone()
}

fn held_reasons(dir: &Path) -> Vec<String> {
    files_under(&dir.join("storage"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.to_string_lossy().contains("quarantine"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Every pixel that changed lies in (or within a margin of) a drawn word's box.
fn changes_only_near_text(before: &[u8], after: &[u8], img: &Image) {
    assert_eq!(before.len(), after.len());
    let (_, boxes) = pixels(img);
    let bytes = img.samples as usize * img.bytes_per_sample();
    let margin = 14;
    let mut changed = 0;
    for (p, (a, b)) in before.chunks(bytes).zip(after.chunks(bytes)).enumerate() {
        if a == b {
            continue;
        }
        changed += 1;
        let p = p % (img.rows * img.cols);
        let (x, y) = (p % img.cols, p / img.cols);
        let near = boxes.iter().any(|&(bx, by, bw, bh)| {
            x + margin >= bx && x < bx + bw + margin && y + margin >= by && y < by + bh + margin
        });
        assert!(near, "pixel ({x},{y}) changed far from any drawn word");
    }
    assert!(changed > 0, "no pixel changed");
}

/// Assert the whole promise for one image: the input shows its PHI to OCR, the output stored in
/// `public/` shows none, only pixels near the text changed, and the header says what was done.
fn check_cleaned(dir: &Path, img: &Image, input: &Path, output: &Path) {
    check_cleaned_from(dir, img, native_pixels(input, dir), input, output);
}

/// As `check_cleaned`, with the input's native pixels given (a syntax DCMTK cannot decompress).
fn check_cleaned_from(dir: &Path, img: &Image, before: Vec<u8>, input: &Path, output: &Path) {
    let after = native_pixels(output, dir);
    let seen = ocr(&before, img, dir);
    assert!(
        PHI_WORDS.iter().filter(|w| readable(&seen, w)).count() >= 3,
        "the test image must show its PHI to OCR before cleaning: {seen:?}"
    );
    let left = ocr(&after, img, dir);
    for word in PHI_WORDS.iter().chain(["ABDOMEN"].iter()) {
        assert!(!readable(&left, word), "{word} is still readable in {}: {left:?}", output.display());
    }
    changes_only_near_text(&before, &after, img);
    // NO is written only for an image read whole (at risk); a volume is read by sample.
    let at_risk = img.modality != "CT";
    let said = dcmdump_value(output, "BurnedInAnnotation");
    assert_eq!(said.as_deref(), if at_risk { Some("NO") } else { None }, "BurnedInAnnotation");
    let dump = Command::new(tool("/usr/bin/dcmdump", "dcmtk")).arg(output).output().unwrap();
    assert!(
        String::from_utf8_lossy(&dump.stdout).contains("113101"),
        "no Clean Pixel Data code in (0012,0064)"
    );
    let (old, new) = (dciodvfy_errors(input), dciodvfy_errors(output));
    let added: Vec<&String> = new.iter().filter(|e| !old.contains(e)).collect();
    assert!(added.is_empty(), "new dciodvfy errors in {}: {added:?}", output.display());
}

#[test]
fn text_burned_into_ultrasound_radiographs_and_captures_is_masked_and_nothing_else_changes() {
    let mut us_rgb = Image::new(US_IMAGE, "US", "RGB");
    us_rgb.burned_in = None;
    let mut cr = Image::new(CR_IMAGE, "CR", "MONOCHROME1");
    cr.bits_stored = 12;
    cr.rows = 300;
    cr.burned_in = Some("NO");
    cr.instance = 2;
    cr.series = "2";
    let mut cr2 = Image::new(CR_IMAGE, "CR", "MONOCHROME2");
    cr2.bits_stored = 16;
    cr2.instance = 3;
    cr2.series = "3";
    let mut sc = Image::new(SC_IMAGE, "OT", "MONOCHROME2");
    sc.burned_in = Some("YES");
    sc.instance = 4;
    sc.series = "4";
    let mut palette = Image::new(US_IMAGE, "US", "PALETTE COLOR");
    palette.instance = 5;
    palette.series = "5";
    for (name, img) in
        [("us", us_rgb), ("us-palette", palette), ("cr-mono1", cr), ("cr-mono2", cr2), ("sc", sc)]
    {
        let d = tempfile::tempdir().unwrap();
        let input = write(&d.path().join("in"), &format!("{name}.dcm"), &img, EXPLICIT_LE);
        let (out, run) = anonymize_with(d.path(), "", &[&input]);
        assert!(run.status.success(), "{name}: {}", text(&run));
        let output = only_output(&out, &run);
        check_cleaned(d.path(), &img, &input, &output);
    }
}

#[test]
fn every_frame_of_an_ultrasound_cine_is_read_and_masked() {
    let d = tempfile::tempdir().unwrap();
    let mut cine = Image::new(US_MULTIFRAME, "US", "RGB");
    cine.frames = 30;
    cine.rows = 120;
    cine.cols = 320;
    cine.text =
        vec![("HARTMANN GRETA", 10, 8, 15.0), ("PX99317", 200, 60, 14.0), ("1958-04-12", 10, 90, 14.0)];
    let input = write(&d.path().join("in"), "cine.dcm", &cine, EXPLICIT_LE);
    let (out, run) = anonymize_with(d.path(), "", &[&input]);
    assert!(run.status.success(), "{}", text(&run));
    let output = only_output(&out, &run);
    let (before, after) = (native_pixels(&input, d.path()), native_pixels(&output, d.path()));
    changes_only_near_text(&before, &after, &cine);
    let frame = before.len() / 30;
    for f in [0, 17, 29] {
        let one = Image { frames: 1, ..cine.clone() };
        let seen = ocr(&before[f * frame..(f + 1) * frame], &one, d.path());
        assert!(readable(&seen, "PX99317"), "frame {f} must show the ID before: {seen:?}");
        let left = ocr(&after[f * frame..(f + 1) * frame], &one, d.path());
        for word in PHI_WORDS {
            assert!(!readable(&left, word), "frame {f}: {word} still readable: {left:?}");
        }
        assert_ne!(
            before[f * frame..(f + 1) * frame],
            after[f * frame..(f + 1) * frame],
            "frame {f} unchanged"
        );
    }
}

#[test]
fn rle_images_are_decoded_masked_and_written_back_as_rle() {
    let d = tempfile::tempdir().unwrap();
    let mut cr = Image::new(CR_IMAGE, "CR", "MONOCHROME2");
    cr.bits_stored = 12;
    let native = write(&d.path().join("src"), "cr.dcm", &cr, EXPLICIT_LE);
    std::fs::create_dir_all(d.path().join("in")).unwrap();
    let input = d.path().join("in/cr-rle.dcm");
    let enc = Command::new(tool("/usr/bin/dcmcrle", "dcmtk")).arg(&native).arg(&input).output().unwrap();
    assert!(enc.status.success(), "dcmcrle: {}", String::from_utf8_lossy(&enc.stderr));
    let (out, run) = anonymize_with(d.path(), "", &[&input]);
    assert!(run.status.success(), "{}", text(&run));
    let output = only_output(&out, &run);
    assert_eq!(dcmdump_value_meta(&output), RLE, "the output stays RLE Lossless");
    check_cleaned(d.path(), &cr, &input, &output);
}

#[test]
fn jpeg_images_are_decoded_masked_and_written_uncompressed() {
    // Compressed by DCMTK: lossy Baseline (colour, YBR_FULL_422) and Lossless (12-bit grey).
    let mut us = Image::new(US_IMAGE, "US", "RGB");
    us.text =
        vec![("HARTMANN GRETA", 12, 10, 18.0), ("PX99317", 190, 40, 16.0), ("1958-04-12", 12, 200, 16.0)];
    let mut cr = Image::new(CR_IMAGE, "CR", "MONOCHROME2");
    cr.bits_stored = 12;
    for (name, img, option, ts) in [("us", us, "+eb", JPEG_BASELINE), ("cr", cr, "+el", JPEG_LOSSLESS)] {
        let d = tempfile::tempdir().unwrap();
        let native = write(&d.path().join("src"), &format!("{name}.dcm"), &img, EXPLICIT_LE);
        std::fs::create_dir_all(d.path().join("in")).unwrap();
        let input = d.path().join(format!("in/{name}-jpeg.dcm"));
        let enc = Command::new(tool("/usr/bin/dcmcjpeg", "dcmtk"))
            .arg(option)
            .arg(&native)
            .arg(&input)
            .output()
            .unwrap();
        assert!(enc.status.success(), "dcmcjpeg: {}", String::from_utf8_lossy(&enc.stderr));
        assert_eq!(dcmdump_value_meta(&input), ts);
        let (out, run) = anonymize_with(d.path(), "", &[&input]);
        assert!(run.status.success(), "{name}: {}", text(&run));
        let output = only_output(&out, &run);
        assert_eq!(dcmdump_value_meta(&output), EXPLICIT_LE, "{name}: written uncompressed");
        let lossy = dcmdump_value(&input, "LossyImageCompression");
        assert_eq!(dcmdump_value(&output, "LossyImageCompression"), lossy, "{name}: lossy history kept");
        if ts == JPEG_BASELINE {
            // DCMTK's and our decoder may round a sample differently: read, do not compare.
            let img = Image { photometric: "RGB", ..img };
            let seen = ocr(&native_pixels(&input, d.path()), &img, d.path());
            assert!(readable(&seen, "PX99317"), "the ID is readable before: {seen:?}");
            let left = ocr(&native_pixels(&output, d.path()), &img, d.path());
            for word in PHI_WORDS {
                assert!(!readable(&left, word), "{name}: {word} still readable: {left:?}");
            }
            assert_eq!(dcmdump_value(&output, "PhotometricInterpretation").as_deref(), Some("RGB"));
        } else {
            check_cleaned(d.path(), &img, &input, &output);
        }
    }
}

/// `img`'s pixels as a JPEG 2000 codestream made by OpenJPEG's own encoder (lossless; the
/// component transform on for colour, as DICOM's YBR_RCT says).
fn jpeg_2000(img: &Image, dir: &Path) -> Vec<u8> {
    let (bytes, _) = pixels(img);
    let (magic, max) = if img.samples == 3 { ("P6", 255) } else { ("P5", (1u32 << img.bits_stored) - 1) };
    let mut pnm = format!("{magic}\n{} {}\n{max}\n", img.cols, img.rows).into_bytes();
    if img.bytes_per_sample() == 2 {
        // PNM's 16-bit samples are big endian.
        pnm.extend(bytes.chunks(2).flat_map(|c| [c[1], c[0]]));
    } else {
        pnm.extend(&bytes);
    }
    let source = dir.join(if img.samples == 3 { "src.ppm" } else { "src.pgm" });
    std::fs::write(&source, pnm).unwrap();
    let coded = dir.join("coded.j2k");
    let out = Command::new(tool("/usr/bin/opj_compress", "libopenjp2-tools"))
        .arg("-i")
        .arg(&source)
        .arg("-o")
        .arg(&coded)
        .output()
        .unwrap();
    assert!(out.status.success(), "opj_compress: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(coded).unwrap()
}

#[test]
fn jpeg_2000_images_are_decoded_masked_and_written_uncompressed() {
    let us = Image::new(US_IMAGE, "US", "RGB");
    let mut cr = Image::new(CR_IMAGE, "CR", "MONOCHROME2");
    cr.bits_stored = 12;
    for (name, img, coded_as) in [("us", us, "YBR_RCT"), ("cr", cr, "MONOCHROME2")] {
        let d = tempfile::tempdir().unwrap();
        let codestream = jpeg_2000(&img, d.path());
        let header = Image { photometric: coded_as, ..img.clone() };
        let input =
            write_frames(&d.path().join("in"), &format!("{name}.dcm"), &header, JPEG_2000, vec![codestream]);
        let (out, run) = anonymize_with(d.path(), "", &[&input]);
        assert!(run.status.success(), "{name}: {}", text(&run));
        let output = only_output(&out, &run);
        assert_eq!(dcmdump_value_meta(&output), EXPLICIT_LE, "{name}: written uncompressed");
        let photometric = if img.samples == 3 { "RGB" } else { "MONOCHROME2" };
        assert_eq!(dcmdump_value(&output, "PhotometricInterpretation").as_deref(), Some(photometric));
        // Lossless: the drawn pixels are what was coded, so every unmasked one must be equal.
        check_cleaned_from(d.path(), &img, pixels(&img).0, &input, &output);
    }
}

#[test]
fn a_ct_series_without_text_is_written_unchanged_and_one_with_text_is_read_whole() {
    let d = tempfile::tempdir().unwrap();
    let inputs: Vec<PathBuf> = (1..=3)
        .map(|n| {
            let mut ct = Image::new(common::CT_IMAGE, "CT", "MONOCHROME2");
            ct.bits_stored = 12;
            ct.text = vec![];
            ct.instance = n;
            // Noise, where Tesseract reads "words" of low confidence: none may be masked.
            ct.noise = true;
            write(&d.path().join("in"), &format!("ct{n}.dcm"), &ct, EXPLICIT_LE)
        })
        .collect();
    let (out, run) = anonymize_with(d.path(), "", &[&d.path().join("in")]);
    assert!(run.status.success(), "{}", text(&run));
    let outputs: Vec<PathBuf> =
        files_under(&out).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).collect();
    assert_eq!(outputs.len(), 3);
    let mut before: Vec<Vec<u8>> = inputs.iter().map(|p| native_pixels(p, d.path())).collect();
    let mut after: Vec<Vec<u8>> = outputs.iter().map(|p| native_pixels(p, d.path())).collect();
    before.sort();
    after.sort();
    assert_eq!(before, after, "a CT series without text is written bit for bit");
    let dump = Command::new(tool("/usr/bin/dcmdump", "dcmtk")).args(&outputs).output().unwrap();
    assert!(!String::from_utf8_lossy(&dump.stdout).contains("113101"), "nothing was cleaned");

    // A dose screen in a CT series: the same series, text drawn; it differs in image type, so
    // it is read even though it is not the first of its series.
    let d = tempfile::tempdir().unwrap();
    let mut screen = Image::new(common::CT_IMAGE, "CT", "MONOCHROME2");
    screen.image_type = "DERIVED\\SECONDARY\\SCREEN SAVE";
    screen.instance = 2;
    let mut plain = Image::new(common::CT_IMAGE, "CT", "MONOCHROME2");
    plain.text = vec![];
    write(&d.path().join("in"), "a-plain.dcm", &plain, EXPLICIT_LE);
    let input = write(&d.path().join("in"), "b-screen.dcm", &screen, EXPLICIT_LE);
    let (out, run) = anonymize_with(d.path(), "", &[&d.path().join("in/a-plain.dcm"), &input]);
    assert!(run.status.success(), "{}", text(&run));
    let outputs: Vec<PathBuf> =
        files_under(&out).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).collect();
    let masked: Vec<&PathBuf> =
        outputs.iter().filter(|p| native_pixels(p, d.path()) != native_pixels(&input, d.path())).collect();
    let cleaned =
        masked.into_iter().find(|p| dcmdump_value(p, "ImageType").is_some_and(|t| t.contains("SCREEN")));
    let cleaned = cleaned.expect("the dose screen was masked");
    check_cleaned(d.path(), &screen, &input, cleaned);
}

/// A tesseract that answers the start-up probe like the real one and then `behaviour` on images.
fn fake_tesseract(dir: &Path, behaviour: &str) -> PathBuf {
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version|--list-langs) exec /usr/bin/tesseract \"$@\";; esac\n{behaviour}\n"
    );
    let path = put(dir, "tesseract", script.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn images_whose_pixels_cannot_be_read_are_held_with_a_reason() {
    let img = Image::new(US_IMAGE, "US", "RGB");
    // A syntax the stage does not decode, and JPEG and JPEG 2000 streams that do not decode.
    for (ts, says) in [(JPEG_LS, JPEG_LS), (JPEG_BASELINE, "JPEG: "), (JPEG_2000, "JPEG 2000: ")] {
        let d = tempfile::tempdir().unwrap();
        let input = write(&d.path().join("in"), "us-compressed.dcm", &img, ts);
        let (out, run) = anonymize_with(d.path(), "", &[&input]);
        assert!(files_under(&out).iter().all(|p| p.extension().is_none_or(|e| e != "dcm")), "{}", text(&run));
        let held = held_reasons(d.path());
        assert!(held.iter().any(|j| j.contains("Pixel_Unverified") && j.contains(says)), "{ts}: {held:?}");
    }

    // An OCR engine that is killed, and one that hangs past its limit.
    for (behaviour, limit, says) in [("kill -9 $$", 60, "failed"), ("exec sleep 30", 1, "limit")] {
        let d = tempfile::tempdir().unwrap();
        let engine = fake_tesseract(d.path(), behaviour);
        let input = write(&d.path().join("in"), "us.dcm", &img, EXPLICIT_LE);
        let extra = format!("  pixels:\n    tesseract: {}\n    timeout_s: {limit}\n", engine.display());
        let (out, run) = anonymize_with(d.path(), &extra, &[&input]);
        assert!(files_under(&out).iter().all(|p| p.extension().is_none_or(|e| e != "dcm")), "{}", text(&run));
        let held = held_reasons(d.path());
        assert!(
            held.iter().any(|j| j.contains("Pixel_Unverified") && j.contains(says)),
            "{behaviour}: {held:?}"
        );

        // unverifiable: keep archives it as it came, without claiming it was read.
        let d = tempfile::tempdir().unwrap();
        let input = write(&d.path().join("in"), "us.dcm", &img, EXPLICIT_LE);
        let extra = format!("{extra}  unverifiable: keep\n");
        let (out, run) = anonymize_with(d.path(), &extra, &[&input]);
        assert!(run.status.success(), "{}", text(&run));
        let output = only_output(&out, &run);
        assert_eq!(native_pixels(&output, d.path()), native_pixels(&input, d.path()));
        assert_ne!(dcmdump_value(&output, "BurnedInAnnotation").as_deref(), Some("NO"));
    }
}

#[test]
fn keep_words_survive_and_mask_phi_keeps_words_that_are_not_phi() {
    let mut img = Image::new(SC_IMAGE, "OT", "MONOCHROME2");
    img.text.push(("ANTERIOR", 12, 110, 18.0));
    for (mode, kept) in [("mask_all", vec!["ANTERIOR"]), ("mask_phi", vec!["ANTERIOR", "ABDOMEN"])] {
        let d = tempfile::tempdir().unwrap();
        let input = write(&d.path().join("in"), "sc.dcm", &img, EXPLICIT_LE);
        let extra = format!("  pixels:\n    text: {mode}\n    keep_words: [ANTERIOR, cm]\n");
        let (out, run) = anonymize_with(d.path(), &extra, &[&input]);
        assert!(run.status.success(), "{mode}: {}", text(&run));
        let output = only_output(&out, &run);
        let before = ocr(&native_pixels(&input, d.path()), &img, d.path());
        let after = ocr(&native_pixels(&output, d.path()), &img, d.path());
        for word in &kept {
            assert!(readable(&before, word), "{word} must be readable before: {before:?}");
            assert!(readable(&after, word), "{mode}: {word} must survive: {after:?}");
        }
        for word in PHI_WORDS {
            assert!(!readable(&after, word), "{mode}: {word} still readable: {after:?}");
        }
        if mode == "mask_all" {
            assert!(!readable(&after, "ABDOMEN"), "mask_all masks every word not kept: {after:?}");
        }
    }
}

#[test]
fn ctp_pixel_scripts_and_deid_filters_black_out_their_regions() {
    let ctp = "Sites' signatures (see the CTP wiki)\n{ Manufacturer.containsIgnoreCase(\"imaginary\") * Modality.equals(\"CT\") }\n  (0,0,100,20)  (-50,-10,50,10)\n{ true. } (0,0,1,1)\n";
    let deid = "FORMAT dicom\n%filter graylist\nLABEL Imaginary CT\n  contains Manufacturer imaginary\n  + equals Modality CT\n  coordinates 0,0,100,20\n  ctpcoordinates -50,-10,50,10\n";
    for (file, rules) in [("pixel.script", ctp), ("deid.dicom", deid)] {
        let d = tempfile::tempdir().unwrap();
        let rules = put(d.path(), file, rules.as_bytes());
        let mut ct = Image::new(common::CT_IMAGE, "CT", "MONOCHROME2");
        ct.text = vec![];
        let input = write(&d.path().join("in"), "ct.dcm", &ct, EXPLICIT_LE);
        let extra = format!("  pixels:\n    regions: {}\n", rules.display());
        let (out, run) = anonymize_with(d.path(), &extra, &[&input]);
        assert!(run.status.success(), "{file}: {}", text(&run));
        let output = only_output(&out, &run);
        let (before, after) = (native_pixels(&input, d.path()), native_pixels(&output, d.path()));
        for y in 0..ct.rows {
            for x in 0..ct.cols {
                let i = y * ct.cols + x;
                let in_region = (x < 100 && y < 20) || (x >= ct.cols - 50 && y >= ct.rows - 10);
                if in_region {
                    assert_eq!(after[i], 0, "{file}: ({x},{y}) not blacked out");
                } else {
                    assert_eq!(after[i], before[i], "{file}: ({x},{y}) changed outside the regions");
                }
            }
        }
    }
    // A rule file that does not parse stops the start, naming the file and the line.
    let d = tempfile::tempdir().unwrap();
    let rules = put(d.path(), "bad.script", b"\n{ Modality.resembles(\"US\") } (0,0,1,1)\n");
    let extra = format!("  pixels:\n    regions: {}\n", rules.display());
    let ct = Image::new(common::CT_IMAGE, "CT", "MONOCHROME2");
    let input = write(&d.path().join("in"), "ct.dcm", &ct, EXPLICIT_LE);
    let (_, run) = anonymize_with(d.path(), &extra, &[&input]);
    assert!(!run.status.success());
    let said = text(&run);
    assert!(said.contains("bad.script") && said.contains("line 2") && said.contains("resembles"), "{said}");
}

#[test]
fn the_node_keeps_serving_while_the_ocr_engine_is_killed() {
    let d = tempfile::tempdir().unwrap();
    let engine = fake_tesseract(d.path(), "kill -9 $$");
    let yaml = format!(
        "project:\n  name: TEST_PROJECT\n  site_id: \"{SITE}\"\n  uid_root: \"{ROOT}\"\n  script: {}\n  pixels:\n    tesseract: {}\n\
         scp:\n  ae_title: {AE}\n  host: 127.0.0.1\n  port: 0\nstorage:\n  dir: {}\n  min_free_bytes: 0\nhttp:\n  listen: 127.0.0.1:0\nlogging:\n  level: info\n",
        profile_script().display(),
        engine.display(),
        d.path().join("storage").display()
    );
    let config = put(d.path(), "node.yaml", yaml.as_bytes());
    let node = Node::start_with(d.path(), &config);
    let send = |img: &Image, name: &str| {
        let file = std::fs::read(write(&d.path().join("in"), name, img, EXPLICIT_LE)).unwrap();
        let body = dicom_anon_gateway::dicom::Part10::parse(&file).unwrap().body.to_vec();
        let sop = format!("1.2.999.31.3.{}.{}", img.series, img.instance);
        rawscu::store_raw(node.port, AE, img.sop_class, &sop, &body)
    };
    let us = Image::new(US_IMAGE, "US", "RGB");
    let mut ct = Image::new(common::CT_IMAGE, "CT", "MONOCHROME2");
    ct.text = vec![];
    ct.series = "9";
    assert_eq!(send(&us, "us.dcm"), 0xC000, "the held image is refused: {}", node.log());
    assert_eq!(send(&ct, "ct.dcm"), 0x0000, "the node goes on: {}", node.log());
    assert_eq!(send(&us, "us.dcm"), 0xC000, "and holds the next one too: {}", node.log());
    let held = files_under(&node.quarantine())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("Pixel_Unverified"));
    assert_eq!(held.filter(|p| p.extension().is_some_and(|e| e == "dcm")).count(), 2);
    assert_eq!(
        files_under(&node.public()).iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")).count(),
        1
    );
    let log = node.log();
    assert!(!log.contains("HARTMANN") && !log.contains(ID), "PHI in the log");
    let status = node.stop();
    assert!(status.success(), "the node exits cleanly");
}

#[test]
fn held_images_are_listed_and_stored_by_a_retry_once_the_engine_works() {
    let d = tempfile::tempdir().unwrap();
    let img = Image::new(US_IMAGE, "US", "RGB");
    let input = write(&d.path().join("in"), "us.dcm", &img, EXPLICIT_LE);
    let broken = fake_tesseract(d.path(), "kill -9 $$");
    let (out, _) =
        anonymize_with(d.path(), &format!("  pixels:\n    tesseract: {}\n", broken.display()), &[&input]);
    assert!(files_under(&out).is_empty());
    let config = d.path().join("config.yaml");
    let list = || binary().args(["quarantine", "list", "--config"]).arg(&config).output().unwrap();
    let listed = text(&list());
    assert!(listed.contains("Pixel_Unverified") && listed.contains("1 held"), "{listed}");

    // The engine repaired (the config names the real one again): the retry stores it, clean.
    let config = common::config(d.path(), SITE, ROOT, &profile_script(), "");
    let retry = binary()
        .args(["quarantine", "retry", "--reason", "Pixel_Unverified", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(retry.status.success(), "{}", text(&retry));
    assert!(text(&retry).contains("stored 1; held again 0"), "{}", text(&retry));
    let listed = text(&list());
    assert!(listed.contains("0 held"), "{listed}");
    let public: Vec<PathBuf> = files_under(&d.path().join("storage/public"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert_eq!(public.len(), 1, "{public:?}");
    let left = ocr(&native_pixels(&public[0], d.path()), &img, d.path());
    for word in PHI_WORDS {
        assert!(!readable(&left, word), "{word} still readable after the retry: {left:?}");
    }
}

#[test]
fn the_node_masks_what_it_receives_and_its_audit_row_counts_what_was_masked() {
    let d = tempfile::tempdir().unwrap();
    let yaml = format!(
        "project:\n  name: TEST_PROJECT\n  site_id: \"{SITE}\"\n  uid_root: \"{ROOT}\"\n  script: {}\n\
         scp:\n  ae_title: {AE}\n  host: 127.0.0.1\n  port: 0\nstorage:\n  dir: {}\n  min_free_bytes: 0\nhttp:\n  listen: 127.0.0.1:0\nlogging:\n  level: debug\n",
        profile_script().display(),
        d.path().join("storage").display()
    );
    let config = put(d.path(), "node.yaml", yaml.as_bytes());
    let node = Node::start_with(d.path(), &config);
    let img = Image::new(US_IMAGE, "US", "RGB");
    let input = write(&d.path().join("in"), "us.dcm", &img, EXPLICIT_LE);
    let body =
        dicom_anon_gateway::dicom::Part10::parse(&std::fs::read(&input).unwrap()).unwrap().body.to_vec();
    assert_eq!(
        rawscu::store_raw(node.port, AE, US_IMAGE, "1.2.999.31.3.1.1", &body),
        0x0000,
        "{}",
        node.log()
    );
    let public: Vec<PathBuf> = files_under(&node.public())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert_eq!(public.len(), 1);
    check_cleaned(d.path(), &img, &input, &public[0]);
    // Operations see the stage: counted on /metrics and on the status page.
    let scrape = ureq::get(format!("{}/metrics", node.http_base()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(scrape.contains("dicom_anon_pixel_reads_total{outcome=\"masked\"} 1"), "{scrape}");
    assert!(scrape.contains("dicom_anon_pixel_reads_in_progress 0"), "{scrape}");
    assert!(scrape.contains("dicom_anon_pixel_read_seconds_count 1"), "{scrape}");
    let page = ureq::get(node.http_base()).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(page.contains("id=\"pixels-masked\">1<"), "{page}");
    let ready = ureq::get(format!("{}/readyz", node.http_base()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(ready.contains("\"pixel_reads_in_progress\":0"), "{ready}");
    let log = node.log();
    // The node read it with its resident worker (the library loaded once), not a process per image.
    assert!(log.contains("(resident)") && log.contains("OCR ready"), "{log}");
    assert!(node.stop().success());
    let csv = d.path().join("audit.csv");
    let export =
        binary().args(["audit", "export", "--config"]).arg(&config).arg("--out").arg(&csv).output().unwrap();
    assert!(export.status.success(), "{}", text(&export));
    let audit = std::fs::read_to_string(&csv).unwrap();
    let row = audit.lines().nth(1).unwrap_or_default();
    assert!(row.contains("0x0000") && row.contains("frames=1 regions=0 words="), "{audit}");
    for phi in ["HARTMANN", "GRETA", ID, "19580412", "1958-04-12"] {
        assert!(!audit.contains(phi) && !log.contains(phi), "{phi} in the audit trail or the log");
    }
}
