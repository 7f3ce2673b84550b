//! Burned-in text: every image that may carry it is read before it is published, and what can be
//! read is blacked out; an image that cannot be read is held with a reason.
//!
//! The stage runs in the pipeline before anything of the instance is recorded:
//! 1. [`risk`] sorts the image: at risk (read in full) or a volume (read by sample);
//! 2. the frames are decoded: native pixel data in place, RLE Lossless per frame; any other
//!    syntax cannot be read, so the image is held;
//! 3. the project's [`regions`] rules black out their rectangles;
//! 4. [`ocr`] reads every frame in both polarities; each word is blacked out (`mask_all`, but for
//!    the keep list) or each word that spells the instance's own PHI (`mask_phi`);
//! 5. what was masked is read once more: if a name, ID or date of the instance is still
//!    readable, the image is held (`Burned_In_Text`).
//!
//! Only masked pixels change; RLE frames that changed are encoded again, the others are kept as
//! they came.

pub mod image;
mod jpeg;
mod jpeg2000;
pub mod ocr;
pub mod ocr_worker;
mod phi;
pub mod regions;
pub mod risk;
mod rle;
mod ybr422;

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dicom::{DataSet, Element, Tag, TransferSyntax, Value, VR};

use super::profile::tags;
use super::Original;
use image::{Geometry, Rect};
use ocr::{Grey, Ocr, Word};
use regions::{Rules, RulesError};
use risk::{Risk, Sampler};

pub use dicom_dictionary_std::tags::PIXEL_DATA;
use dicom_dictionary_std::tags::PLANAR_CONFIGURATION;

const PHOTOMETRIC: Tag = Tag(0x0028, 0x0004);
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Why an image was not cleaned. Every one holds the instance.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PixelError {
    #[error("pixel data cannot be laid out: {0}")]
    Geometry(String),
    #[error("pixel data cannot be decoded: {0}")]
    Codec(String),
    #[error("OCR: {0}")]
    Ocr(String),
    #[error("{0}")]
    Unsupported(String),
    /// Text spelling the instance's own PHI was still readable after masking.
    #[error("burned-in text still readable after masking ({0} words)")]
    StillReadable(usize),
}

impl PixelError {
    /// Text that could be read but not removed, rather than pixels that could not be read.
    pub fn is_readable_text(&self) -> bool {
        matches!(self, PixelError::StillReadable(_))
    }
}

/// Which words OCR finds are blacked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextMode {
    /// Every word, but for the keep list: what a person reads is gone.
    #[default]
    MaskAll,
    /// Only words that spell the instance's own names, IDs and dates.
    MaskPhi,
}

/// How volumes (CT, MR, PT, NM, ...) are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Volumes {
    /// The first image of each series, any image whose type or size differs, and every image of
    /// a series in which text was found.
    #[default]
    Sample,
    /// Every image.
    All,
}

/// `project.pixels`: the burned-in text stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PixelConfig {
    /// The Tesseract program; found on PATH when not a path.
    pub tesseract: PathBuf,
    /// Images the node reads at once (each is one OCR process on one core); the offline commands
    /// read one per core.
    pub workers: usize,
    /// Seconds one OCR read may take before the engine is killed and the image held.
    pub timeout_s: u64,
    /// Address space of one OCR process, in MiB.
    pub memory_mb: u64,
    pub text: TextMode,
    /// Words kept under `mask_all` (orientation markers, units, scale labels), any case.
    pub keep_words: Vec<String>,
    /// Words OCR reads with less confidence than this (0-100) are taken for noise under
    /// `mask_all` (Tesseract reads "words" of 20-50 in speckle and noise; printed text reads
    /// 80-96); a word that spells PHI is masked whatever its confidence.
    pub min_confidence: f32,
    /// Modalities read in full.
    pub at_risk_modalities: Vec<String>,
    /// SOP classes read in full (with the classes under each UID).
    pub at_risk_sop_classes: Vec<String>,
    pub volumes: Volumes,
    /// A CTP `DicomPixelAnonymizer.script` or a deid recipe with a `%filter` section.
    pub regions: Option<PathBuf>,
    /// The most pixel data one image may have to be read: an image at risk with more is held, a
    /// volume with more passes unread. The stage holds about three copies of it at once.
    pub max_pixel_bytes: u64,
}

impl Default for PixelConfig {
    fn default() -> Self {
        PixelConfig {
            tesseract: PathBuf::from("tesseract"),
            workers: 1,
            timeout_s: 60,
            memory_mb: 1024,
            text: TextMode::default(),
            keep_words: ["L", "R", "A", "P", "H", "F", "S", "I", "CM", "MM", "HZ", "KHZ", "MHZ", "DB", "FPS"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            min_confidence: 60.0,
            at_risk_modalities: risk::AT_RISK_MODALITIES.iter().map(|s| s.to_string()).collect(),
            at_risk_sop_classes: risk::AT_RISK_CLASSES.iter().map(|s| s.to_string()).collect(),
            volumes: Volumes::default(),
            regions: None,
            max_pixel_bytes: 64 << 20,
        }
    }
}

/// What the stage did to one image that it read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaning {
    pub frames: usize,
    /// Rectangles of region rules blacked out, over all frames.
    pub regions: usize,
    /// Words blacked out, over all frames.
    pub words: usize,
    /// Every frame was read by OCR (only then is BurnedInAnnotation NO written).
    pub read: bool,
    /// Compressed pixel data was written back uncompressed: the instance goes out in Explicit
    /// VR Little Endian.
    pub decompressed: bool,
}

impl Cleaning {
    pub fn changed(&self) -> bool {
        self.regions + self.words > 0
    }
}

pub struct PixelStage {
    config: PixelConfig,
    ocr: Ocr,
    /// Why OCR cannot run on this machine, found once at start.
    ocr_missing: Option<String>,
    /// The engine's version line (resident or per image), for the start's log line.
    engine: String,
    rules: Rules,
    sampler: Sampler,
    keep: Vec<String>,
}

/// Frames to work on, as native samples.
struct Frames {
    geometry: Geometry,
    data: Vec<Vec<u8>>,
    changed: Vec<bool>,
    /// How the pixel data came, so it can be put back the same way.
    codec: Codec,
}

/// A codec's frame decoder: compressed frame and header geometry in, native frame out.
type Decoder = fn(&[u8], &Geometry) -> Result<Vec<u8>, PixelError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Native,
    Rle,
    /// Decoded by a codec we do not encode with (JPEG, JPEG 2000): written native when masked.
    Decoded,
    /// Native YBR_FULL_422, expanded to a sample per pixel and packed back in place.
    Ybr422,
}

impl PixelStage {
    /// Load the region rules and find the OCR engine.
    pub fn new(config: &PixelConfig) -> Result<PixelStage, RulesError> {
        let rules = match &config.regions {
            Some(path) => Rules::load(path)?,
            None => Rules::default(),
        };
        let mut ocr = Ocr::new(
            &config.tesseract,
            Duration::from_secs(config.timeout_s.max(1)),
            config.memory_mb.saturating_mul(1 << 20),
            config.workers,
        );
        let (engine, ocr_missing) = match ocr.probe() {
            Ok(version) => (version, None),
            Err(e) => (String::new(), Some(e.to_string())),
        };
        let keep = config.keep_words.iter().map(|w| phi::normalize(w)).collect();
        Ok(PixelStage {
            config: config.clone(),
            ocr,
            engine,
            ocr_missing,
            rules,
            sampler: Sampler::default(),
            keep,
        })
    }

    /// Said once at start: which engine reads pixels, or that images at risk will be held.
    pub fn announce(&self) {
        match &self.ocr_missing {
            None => {
                tracing::info!(regions = self.rules.len(), engine = %self.engine, "burned-in text: OCR ready")
            }
            Some(why) => tracing::warn!(
                error = %why,
                "burned-in text: no OCR engine, so every image at risk is held (install tesseract-ocr and tesseract-ocr-eng)"
            ),
        }
    }

    /// Whether `ds` (its header) has pixels this stage will read; sampling counts the image
    /// as seen, so ask once per instance.
    fn wants(&self, ds: &DataSet<'_>, series_uid: &str) -> Option<Risk> {
        ds.get(PIXEL_DATA)?;
        let risk = self.classify(ds);
        self.reads(&risk, || self.sampler.wants(ds, series_uid)).then_some(risk)
    }

    fn classify(&self, ds: &DataSet<'_>) -> Risk {
        risk::classify(ds, &self.config.at_risk_modalities, &self.config.at_risk_sop_classes)
    }

    /// Whether an image of `risk` is read: at risk always, a volume when the project reads all
    /// of them or `sampled` takes it.
    fn reads(&self, risk: &Risk, sampled: impl FnOnce() -> bool) -> bool {
        matches!(risk, Risk::AtRisk(_)) || self.config.volumes == Volumes::All || sampled()
    }

    /// Whether an image with this header and `pixel_bytes` of pixel data, left out of `ds`
    /// (still in a file), will be read: the pipeline then brings the pixel data into memory.
    /// Counts nothing as seen. An image at risk too large to read is an error (held); a volume
    /// too large to read passes unread.
    pub fn will_read(
        &self,
        ds: &DataSet<'_>,
        series_uid: &str,
        pixel_bytes: u64,
    ) -> Result<bool, PixelError> {
        let risk = self.classify(ds);
        let wanted = self.reads(&risk, || self.sampler.would_want(ds, series_uid));
        if !wanted || pixel_bytes <= self.config.max_pixel_bytes {
            return Ok(wanted);
        }
        let too_large = PixelError::Unsupported(format!(
            "pixel data of {pixel_bytes} bytes is more than project.pixels.max_pixel_bytes ({}) lets the stage read",
            self.config.max_pixel_bytes
        ));
        match risk {
            Risk::AtRisk(_) => Err(too_large),
            Risk::Volume => {
                tracing::warn!(error = %too_large, "volume image passed without its pixels read");
                Ok(false)
            }
        }
    }

    /// Read and clean the pixel data of `ds` in place. `None`: not read (no pixel data, or a
    /// volume image outside the sample or one that could not be read).
    pub fn clean(
        &self,
        ds: &mut DataSet<'_>,
        ts: &TransferSyntax,
        original: &Original,
    ) -> Result<Option<Cleaning>, PixelError> {
        let Some(risk) = self.wants(ds, &original.series_uid) else { return Ok(None) };
        match self.read_and_mask(ds, ts, original, &risk) {
            Ok(cleaning) => Ok(Some(cleaning)),
            // A volume is read by sample because text in it is rare: one that cannot be read (a
            // syntax not decoded here, such as the common JPEG Lossless CT, or an engine that
            // fails on it) passes unread, said in the log, and keeps its BurnedInAnnotation.
            // An image at risk is held, and so is any image whose PHI could be read but not
            // masked.
            Err(e) if risk == Risk::Volume && !e.is_readable_text() => {
                tracing::warn!(error = %e, "volume image passed without its pixels read");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read_and_mask(
        &self,
        ds: &mut DataSet<'_>,
        ts: &TransferSyntax,
        original: &Original,
        risk: &Risk,
    ) -> Result<Cleaning, PixelError> {
        let big_endian = ts.encoding().big_endian;
        let mut frames = decode(ds, ts, big_endian, self.config.max_pixel_bytes)?;
        let mut cleaning = Cleaning { frames: frames.data.len(), ..Cleaning::default() };
        if let Some(regions) = self.rules.regions_for(ds, big_endian) {
            let g = &frames.geometry;
            for (frame, changed) in frames.data.iter_mut().zip(frames.changed.iter_mut()) {
                for region in regions {
                    if g.mask(frame, region.in_frame(g.cols, g.rows)) {
                        *changed = true;
                        cleaning.regions += 1;
                    }
                }
            }
        }
        match (&self.ocr_missing, risk) {
            (None, _) => {}
            (Some(why), Risk::AtRisk(_)) => return Err(PixelError::Ocr(why.clone())),
            // Without an engine, volumes pass as a node without this stage would pass them (the
            // start said so once); their region rules still apply.
            (Some(_), Risk::Volume) => {
                cleaning.decompressed = encode(ds, ts, frames)?;
                return Ok(cleaning);
            }
        }
        // Only an image read whole may say so: a volume is read by sample, and its images must
        // come out the same whichever of them the sample took.
        cleaning.read = matches!(risk, Risk::AtRisk(_));
        let needles = phi::Needles::of(original);
        let (cols, rows) = (frames.geometry.cols, frames.geometry.rows);
        let whole: Vec<Crop> = (0..frames.data.len())
            .map(|frame| Crop { frame, rect: Rect { x: 0, y: 0, w: cols, h: rows } })
            .collect();
        let found = self.read(&frames, &whole)?;
        // Around each masked word, the part of its frame that is read again.
        let mut reread = Vec::new();
        for (index, words) in found.into_iter().enumerate() {
            let phi = needles.find(&words);
            let g = &frames.geometry;
            for (i, word) in words.iter().enumerate() {
                if !self.masks(word, phi.contains(&i), g.rows) {
                    continue;
                }
                let rect = Rect { x: word.x, y: word.y, w: word.w, h: word.h }.padded(2 + word.h / 5);
                if g.mask(&mut frames.data[index], rect) {
                    frames.changed[index] = true;
                    cleaning.words += 1;
                    reread.push(Crop { frame: index, rect: rect.padded(rect.h.max(16)) });
                }
            }
        }
        if cleaning.words > 0 && *risk == Risk::Volume {
            self.sampler.found_text(&original.series_uid);
        }
        // What was masked is read again, with what surrounds it: the instance's own PHI must not
        // be readable any more. (The rest of each frame was read above and did not change.)
        if !reread.is_empty() && !needles.is_empty() {
            let still: usize = self.read(&frames, &reread)?.iter().map(|w| needles.find(w).len()).sum();
            if still > 0 {
                return Err(PixelError::StillReadable(still));
            }
        }
        cleaning.decompressed = encode(ds, ts, frames)?;
        Ok(cleaning)
    }

    /// Whether a word OCR found in a frame of `rows` is blacked out.
    fn masks(&self, word: &Word, is_phi: bool, rows: usize) -> bool {
        if is_phi {
            return true;
        }
        let norm = phi::normalize(&word.text);
        match self.config.text {
            TextMode::MaskPhi => false,
            // A "word" a quarter of the frame high is a shape read as letters; burned-in text
            // is a line of small print.
            // One character alone must be read surely: noise reads as single letters.
            TextMode::MaskAll => {
                let sure = if norm.chars().count() >= 2 { self.config.min_confidence } else { 85.0 };
                !norm.is_empty()
                    && word.confidence >= sure
                    && word.h * 4 <= rows
                    && !self.keep.contains(&norm)
            }
        }
    }

    /// OCR of each crop, in both polarities: its words in frame coordinates, by crop.
    fn read(&self, frames: &Frames, crops: &[Crop]) -> Result<Vec<Vec<Word>>, PixelError> {
        let g = &frames.geometry;
        // Small text needs about 20 px of height to be read: small images are read at twice
        // their size.
        let scale = if g.rows.max(g.cols) <= 1024 { 2 } else { 1 };
        const GAP: usize = 16;
        // About this many pixels go to one OCR process, in fewer rows than Tesseract takes
        // (32,767; an image higher than that fails, and so would every image in it).
        const PER_CALL: usize = 12_000_000;
        const MAX_ROWS: usize = 30_000;
        let crops: Vec<Crop> = crops.iter().map(|c| c.clipped(g.cols, g.rows)).collect();
        let mut out = vec![Vec::new(); crops.len()];
        let mut next = 0;
        while next < crops.len() {
            let mut batch = vec![next];
            let mut area = crops[next].area(scale, GAP);
            let mut rows = crops[next].rows(scale, GAP);
            while let Some(more) = crops.get(next + batch.len()) {
                if area + more.area(scale, GAP) > PER_CALL || rows + more.rows(scale, GAP) > MAX_ROWS {
                    break;
                }
                area += more.area(scale, GAP);
                rows += more.rows(scale, GAP);
                batch.push(next + batch.len());
            }
            next += batch.len();
            let width = batch.iter().map(|&i| crops[i].rect.w * scale).max().unwrap_or(0).max(64);
            let mut pixels = Vec::with_capacity(area);
            // (first row, crop) of each tile; two tiles a crop.
            let mut tiles = Vec::new();
            let mut grey: Option<(usize, Vec<u8>)> = None;
            for &i in &batch {
                let Crop { frame, rect } = crops[i];
                if grey.as_ref().is_none_or(|(f, _)| *f != frame) {
                    grey = Some((frame, g.grey(&frames.data[frame])));
                }
                let Some((_, grey)) = &grey else { continue };
                for invert in [false, true] {
                    tiles.push((pixels.len() / width, i));
                    for y in 0..rect.h * scale {
                        let row = (rect.y + y / scale) * g.cols;
                        let start = pixels.len();
                        pixels.extend((0..rect.w * scale).map(|x| {
                            let v = grey[row + rect.x + x / scale];
                            if invert {
                                255 - v
                            } else {
                                v
                            }
                        }));
                        pixels.resize(start + width, 128);
                    }
                    pixels.resize(pixels.len() + GAP * width, 128);
                }
            }
            let image = Grey { width, height: pixels.len() / width, pixels };
            for word in self.ocr.read(&image)? {
                let centre = word.y + word.h / 2;
                let Some(tile) = tiles.iter().rposition(|&(top, _)| top <= centre) else { continue };
                let (top, i) = tiles[tile];
                let rect = crops[i].rect;
                // A "word" that runs over the gap between two tiles is a pattern read as text
                // (stripes, a gradient), never text drawn in one frame.
                if word.y < top || word.y + word.h > top + rect.h * scale || word.x + word.w > rect.w * scale
                {
                    continue;
                }
                out[i].push(Word {
                    x: rect.x + word.x / scale,
                    y: rect.y + (word.y - top) / scale,
                    w: word.w.div_ceil(scale),
                    h: word.h.div_ceil(scale),
                    ..word
                });
            }
        }
        Ok(out)
    }
}

/// A part of a frame to read.
#[derive(Debug, Clone, Copy)]
struct Crop {
    frame: usize,
    rect: Rect,
}

impl Crop {
    fn clipped(self, cols: usize, rows: usize) -> Crop {
        let x = self.rect.x.min(cols);
        let y = self.rect.y.min(rows);
        let w = self.rect.w.min(cols - x);
        let h = self.rect.h.min(rows - y);
        Crop { frame: self.frame, rect: Rect { x, y, w, h } }
    }

    /// Rows its two tiles take in an OCR image.
    fn rows(&self, scale: usize, gap: usize) -> usize {
        2 * (self.rect.h * scale + gap)
    }

    /// Pixels its two tiles take in an OCR image.
    fn area(&self, scale: usize, gap: usize) -> usize {
        self.rows(scale, gap) * (self.rect.w * scale).max(64)
    }
}

/// The frames of `ds`'s pixel data, as native samples; at most `max_bytes` of them, whatever the
/// header claims (a few KB of compressed data can claim gigabytes decoded).
fn decode(
    ds: &DataSet<'_>,
    ts: &TransferSyntax,
    big_endian: bool,
    max_bytes: u64,
) -> Result<Frames, PixelError> {
    let element = ds.get(PIXEL_DATA).ok_or(PixelError::Geometry("no pixel data".into()))?;
    let mut geometry = Geometry::read(ds, big_endian)?;
    let frame_len = geometry.frame_len();
    let total = geometry.total_len().ok_or(PixelError::Geometry("pixel data size overflows".into()))?;
    if total as u64 > max_bytes {
        return Err(PixelError::Unsupported(format!(
            "pixel data of {total} bytes decoded is more than project.pixels.max_pixel_bytes ({max_bytes}) lets the stage read"
        )));
    }
    let (data, codec): (Vec<Vec<u8>>, Codec) = match &element.value {
        Value::Bytes(b) if is_ybr_422(&geometry) => {
            let packed = ybr422::packed_len(geometry.rows, geometry.cols);
            if geometry.cols % 2 == 1 || b.len() < packed * geometry.frames {
                return Err(PixelError::Geometry(format!(
                    "YBR_FULL_422 pixel data of {} bytes for {} frames of {}x{}",
                    b.len(),
                    geometry.frames,
                    geometry.cols,
                    geometry.rows
                )));
            }
            let frames = b.chunks_exact(packed).take(geometry.frames).map(ybr422::expand).collect();
            geometry.photometric = "YBR_FULL".into();
            geometry.planar = false;
            (frames, Codec::Ybr422)
        }
        Value::Bytes(b) => {
            if b.len() < total {
                return Err(PixelError::Geometry(format!(
                    "pixel data holds {} bytes, its frames need {total}",
                    b.len()
                )));
            }
            (b[..total].chunks(frame_len).map(<[u8]>::to_vec).collect(), Codec::Native)
        }
        Value::Fragments(fragments) if ts.uid == RLE_LOSSLESS => {
            let bytes = geometry.bits_allocated / 8;
            let decoded = frame_fragments(fragments, geometry.frames)?
                .iter()
                .map(|f| rle::decode(f, geometry.rows, geometry.cols, geometry.samples, bytes))
                .collect::<Result<_, _>>()?;
            // RLE frames decode colour-by-plane, little endian.
            geometry.planar = geometry.samples > 1;
            geometry.big_endian = false;
            (decoded, Codec::Rle)
        }
        Value::Fragments(fragments)
            if jpeg::SYNTAXES.contains(&ts.uid.as_str()) || jpeg2000::SYNTAXES.contains(&ts.uid.as_str()) =>
        {
            (decode_jpeg(fragments, ts, &mut geometry)?, Codec::Decoded)
        }
        Value::Fragments(_) => {
            return Err(PixelError::Unsupported(format!(
                "pixel data in transfer syntax {} is not decoded here (native, RLE Lossless, JPEG 8-bit and lossless, and JPEG 2000 are)",
                ts.uid
            )))
        }
        Value::Items(_) => return Err(PixelError::Geometry("pixel data is a sequence".into())),
    };
    let changed = vec![false; data.len()];
    Ok(Frames { geometry, data, changed, codec })
}

/// JPEG or JPEG 2000 frames decoded, and `geometry` made to say what they are now: colour by
/// pixel, little endian, RGB where the codec undid a colour transform.
fn decode_jpeg(
    fragments: &[std::borrow::Cow<'_, [u8]>],
    ts: &TransferSyntax,
    geometry: &mut Geometry,
) -> Result<Vec<Vec<u8>>, PixelError> {
    let is_jpeg = jpeg::SYNTAXES.contains(&ts.uid.as_str());
    let decode: Decoder = if is_jpeg { jpeg::decode } else { jpeg2000::decode };
    let decoded = frame_fragments(fragments, geometry.frames)?
        .iter()
        .map(|f| decode(f, geometry))
        .collect::<Result<_, _>>()?;
    // Colour comes out by pixel: RGB from JPEG (the decoder undoes YCbCr) and from JPEG
    // 2000's component transforms (YBR_ICT, YBR_RCT); anything else as it was coded.
    geometry.planar = false;
    geometry.big_endian = false;
    let transformed = matches!(geometry.photometric.as_str(), "YBR_ICT" | "YBR_RCT");
    if geometry.samples == 3 && (is_jpeg || transformed) {
        geometry.photometric = "RGB".into();
    } else if geometry.photometric.starts_with("YBR_FULL_42") {
        // Decoded to a sample per pixel: written native, 422/420 would say two bytes a pixel.
        geometry.photometric = "YBR_FULL".into();
    }
    Ok(decoded)
}

/// Native 8-bit colour in YBR_FULL_422: two bytes per pixel, not three.
fn is_ybr_422(g: &Geometry) -> bool {
    g.photometric == "YBR_FULL_422" && g.samples == 3 && g.bits_allocated == 8
}

/// Each frame's compressed bytes: one fragment per frame, all fragments for a single frame, or
/// the frames the basic offset table marks. Anything else cannot be laid out for sure.
fn frame_fragments(fragments: &[Cow<'_, [u8]>], frames: usize) -> Result<Vec<Vec<u8>>, PixelError> {
    let (table, items) = fragments.split_first().ok_or(PixelError::Codec("no basic offset table".into()))?;
    if items.len() == frames {
        return Ok(items.iter().map(|f| f.to_vec()).collect());
    }
    if frames == 1 {
        return Ok(vec![items.concat()]);
    }
    let starts: Vec<usize> =
        table.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    if starts.len() != frames || starts.first() != Some(&0) {
        return Err(PixelError::Codec(format!(
            "{} fragments for {frames} frames, and no offset table to tell them apart",
            items.len()
        )));
    }
    let mut out = vec![Vec::new(); frames];
    let mut at = 0usize;
    for item in items {
        let frame = starts.iter().rposition(|&s| s <= at).unwrap_or(0);
        out[frame].extend_from_slice(item);
        at += 8 + item.len();
    }
    if out.iter().any(Vec::is_empty) {
        return Err(PixelError::Codec("the offset table points between fragments".into()));
    }
    Ok(out)
}

/// Put changed frames back into `ds`: native bytes in place, RLE frames encoded again, JPEG and
/// JPEG 2000 frames written native. Returns `true` when the pixel data is no longer in `ts` (it was
/// decompressed), so the instance is written in Explicit VR Little Endian.
fn encode(ds: &mut DataSet<'_>, ts: &TransferSyntax, frames: Frames) -> Result<bool, PixelError> {
    if !frames.changed.iter().any(|&c| c) {
        return Ok(false);
    }
    let g = &frames.geometry;
    if frames.codec == Codec::Decoded {
        let mut bytes = frames.data.concat();
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let vr = if g.bits_allocated == 16 { VR::OW } else { VR::OB };
        ds.put(Element { tag: PIXEL_DATA, vr, value: Value::Bytes(Cow::Owned(bytes)) });
        ds.put_text(PHOTOMETRIC, VR::CS, &g.photometric);
        if g.samples == 3 {
            ds.put(Element {
                tag: PLANAR_CONFIGURATION,
                vr: VR::US,
                value: Value::Bytes(Cow::Owned(vec![0, 0])),
            });
        }
        return Ok(true);
    }
    let Some(element) = ds.elements.iter_mut().find(|e| e.tag == PIXEL_DATA) else { return Ok(false) };
    match &mut element.value {
        Value::Bytes(b) if frames.codec == Codec::Ybr422 => {
            let bytes = b.to_mut();
            let packed = ybr422::packed_len(g.rows, g.cols);
            for (i, frame) in frames.data.iter().enumerate().filter(|(i, _)| frames.changed[*i]) {
                ybr422::pack(frame, &mut bytes[i * packed..(i + 1) * packed]);
            }
        }
        Value::Bytes(b) => {
            let bytes = b.to_mut();
            for (i, frame) in frames.data.iter().enumerate().filter(|(i, _)| frames.changed[*i]) {
                bytes[i * g.frame_len()..(i + 1) * g.frame_len()].copy_from_slice(frame);
            }
        }
        Value::Fragments(fragments) if ts.uid == RLE_LOSSLESS && fragments.len() == frames.data.len() + 1 => {
            let bytes = g.bits_allocated / 8;
            for (i, frame) in frames.data.iter().enumerate().filter(|(i, _)| frames.changed[*i]) {
                fragments[i + 1] = Cow::Owned(rle::encode(frame, g.rows, g.cols, g.samples, bytes));
            }
            // A basic offset table, when there is one, must point at the frames' new places.
            if !fragments[0].is_empty() {
                let mut offset = 0u32;
                let mut table = Vec::with_capacity(4 * (fragments.len() - 1));
                for f in &fragments[1..] {
                    table.extend_from_slice(&offset.to_le_bytes());
                    offset = offset.saturating_add(8 + f.len() as u32);
                }
                fragments[0] = Cow::Owned(table);
            }
        }
        Value::Fragments(fragments) if ts.uid == RLE_LOSSLESS => {
            // Frames split over several fragments: one fragment per frame from now on.
            let bytes = g.bits_allocated / 8;
            let encoded: Vec<Cow<'_, [u8]>> = frames
                .data
                .iter()
                .map(|frame| Cow::Owned(rle::encode(frame, g.rows, g.cols, g.samples, bytes)))
                .collect();
            *fragments = std::iter::once(Cow::Owned(Vec::new())).chain(encoded).collect();
        }
        _ => return Err(PixelError::Unsupported("pixel data changed form while it was cleaned".into())),
    }
    Ok(false)
}

/// After the header is anonymized: say what was done to the pixels. BurnedInAnnotation NO only
/// for an image whose every frame was read; 113101 (Clean Pixel Data) only when pixels changed.
pub fn mark(ds: &mut DataSet<'_>, cleaning: &Cleaning) {
    if cleaning.read {
        ds.put_text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    }
    if !cleaning.changed() {
        return;
    }
    let mut item = DataSet::default();
    item.put_text(tags::CODE_VALUE, VR::SH, "113101");
    item.put_text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM");
    item.put_text(tags::CODE_MEANING, VR::LO, "Clean Pixel Data Option");
    match ds.elements.iter_mut().find(|e| e.tag == tags::DEIDENTIFICATION_METHOD_CODES) {
        Some(Element { value: Value::Items(items), .. }) => items.push(item),
        _ => ds.put(Element {
            tag: tags::DEIDENTIFICATION_METHOD_CODES,
            vr: VR::SQ,
            value: Value::Items(vec![item]),
        }),
    }
}
