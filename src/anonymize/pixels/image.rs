//! Native pixel data as frames of samples: the geometry the Image Pixel module declares, a frame
//! rendered to 8-bit grey for OCR, and a rectangle blacked out in place.
//!
//! Only the samples inside a masked rectangle change; every other byte of the pixel data (the
//! bits above BitsStored included) is left as it came.

use crate::dicom::{DataSet, Tag};

use super::PixelError;

use dicom_dictionary_std::tags::{
    BITS_ALLOCATED, BITS_STORED, COLUMNS, NUMBER_OF_FRAMES, PIXEL_REPRESENTATION, PLANAR_CONFIGURATION, ROWS,
    SAMPLES_PER_PIXEL, WINDOW_CENTER, WINDOW_WIDTH,
};

const PHOTOMETRIC: Tag = Tag(0x0028, 0x0004);
/// Red, green and blue palette descriptors; their data is 0x100 further on.
const PALETTE_DESCRIPTORS: [Tag; 3] = [Tag(0x0028, 0x1101), Tag(0x0028, 0x1102), Tag(0x0028, 0x1103)];

/// How the samples of one frame are laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub rows: usize,
    pub cols: usize,
    pub samples: usize,
    /// 8 or 16: other depths are held.
    pub bits_allocated: usize,
    pub bits_stored: usize,
    pub signed: bool,
    /// Colour by plane (RRR...GGG...BBB) rather than by pixel (RGBRGB...).
    pub planar: bool,
    pub photometric: String,
    pub frames: usize,
    pub big_endian: bool,
    /// The first window of the instance, for rendering monochrome frames as a reader sees them.
    pub window: Option<(f64, f64)>,
    /// PALETTE COLOR: how bright each stored value is displayed.
    pub palette: Option<Palette>,
}

/// A palette colour image's lookup tables, reduced to what OCR and masking need: the displayed
/// brightness (0-255) of each stored value from `first` on.
#[derive(Debug, Clone, PartialEq)]
pub struct Palette {
    pub first: i32,
    pub luma: Vec<u8>,
}

impl Palette {
    fn read(ds: &DataSet<'_>, big_endian: bool) -> Result<Palette, PixelError> {
        let bad = |why: &str| PixelError::Geometry(format!("PALETTE COLOR: {why}"));
        let words = |b: &[u8]| -> Vec<u16> {
            b.chunks_exact(2)
                .map(|c| {
                    if big_endian {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    }
                })
                .collect()
        };
        let mut channels = Vec::with_capacity(3);
        let mut first = 0;
        for tag in PALETTE_DESCRIPTORS {
            let descriptor = words(ds.bytes(tag).ok_or_else(|| bad("a lookup table descriptor is missing"))?);
            let [entries, start, bits] = descriptor[..] else {
                return Err(bad("a descriptor is not three numbers"));
            };
            let entries = if entries == 0 { 65536 } else { usize::from(entries) };
            first = i32::from(start);
            let data =
                ds.bytes(Tag(tag.0, tag.1 + 0x100)).ok_or_else(|| bad("a lookup table's data is missing"))?;
            let values: Vec<u8> = if bits == 8 && data.len() == entries {
                data.to_vec()
            } else {
                let w = words(data);
                if w.len() < entries {
                    return Err(bad("a lookup table is shorter than its descriptor"));
                }
                // 8-bit entries may also come packed two to a word, low byte first.
                w[..entries].iter().map(|&v| if bits == 8 { v as u8 } else { (v >> 8) as u8 }).collect()
            };
            channels.push(values);
        }
        let n = channels.iter().map(Vec::len).min().unwrap_or(0);
        let luma = (0..n)
            .map(|i| {
                let (r, g, b) =
                    (u32::from(channels[0][i]), u32::from(channels[1][i]), u32::from(channels[2][i]));
                ((299 * r + 587 * g + 114 * b) / 1000) as u8
            })
            .collect();
        Ok(Palette { first, luma })
    }

    fn luma(&self, v: i32) -> u8 {
        let i = (v - self.first).clamp(0, self.luma.len() as i32 - 1);
        self.luma.get(i as usize).copied().unwrap_or(0)
    }

    /// The stored value displayed darkest.
    fn darkest(&self) -> i32 {
        let i = self.luma.iter().enumerate().min_by_key(|(_, &l)| l).map_or(0, |(i, _)| i);
        self.first + i as i32
    }
}

/// A rectangle in frame coordinates, clipped to the frame when applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

impl Rect {
    /// Grow by `pad` on every side (never below 0).
    pub fn padded(self, pad: usize) -> Rect {
        let x = self.x.saturating_sub(pad);
        let y = self.y.saturating_sub(pad);
        Rect { x, y, w: self.w + (self.x - x) + pad, h: self.h + (self.y - y) + pad }
    }
}

impl Geometry {
    /// Read the Image Pixel module. Anything we cannot lay out for sure is an error, so the
    /// instance is held instead of half-cleaned.
    pub fn read(ds: &DataSet<'_>, big_endian: bool) -> Result<Geometry, PixelError> {
        let us = |tag: Tag, name: &'static str| -> Result<usize, PixelError> {
            let b = ds.bytes(tag).ok_or(PixelError::Geometry(format!("{name} is missing")))?;
            let v: [u8; 2] = b
                .get(..2)
                .and_then(|b| b.try_into().ok())
                .ok_or(PixelError::Geometry(format!("{name} is not a US value")))?;
            Ok(usize::from(if big_endian { u16::from_be_bytes(v) } else { u16::from_le_bytes(v) }))
        };
        let rows = us(ROWS, "Rows")?;
        let cols = us(COLUMNS, "Columns")?;
        let samples = us(SAMPLES_PER_PIXEL, "SamplesPerPixel").unwrap_or(1);
        let bits_allocated = us(BITS_ALLOCATED, "BitsAllocated")?;
        let bits_stored = us(BITS_STORED, "BitsStored").unwrap_or(bits_allocated);
        let signed = us(PIXEL_REPRESENTATION, "PixelRepresentation").unwrap_or(0) == 1;
        let planar = samples > 1 && us(PLANAR_CONFIGURATION, "PlanarConfiguration").unwrap_or(0) == 1;
        let photometric = ds.text(PHOTOMETRIC).unwrap_or("MONOCHROME2").trim().to_ascii_uppercase();
        let frames = match ds.text(NUMBER_OF_FRAMES).map(str::trim) {
            None | Some("") => 1,
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(PixelError::Geometry("NumberOfFrames is not a positive number".into()))?,
        };
        if rows == 0 || cols == 0 {
            return Err(PixelError::Geometry("Rows or Columns is 0".into()));
        }
        if !matches!(bits_allocated, 8 | 16) || bits_stored == 0 || bits_stored > bits_allocated {
            return Err(PixelError::Geometry(format!(
                "BitsAllocated {bits_allocated} / BitsStored {bits_stored} is not a depth we clean"
            )));
        }
        if !matches!(samples, 1 | 3) {
            return Err(PixelError::Geometry(format!("SamplesPerPixel {samples} is not 1 or 3")));
        }
        let window = first_number(ds.text(WINDOW_CENTER)).zip(first_number(ds.text(WINDOW_WIDTH)));
        let palette = match photometric.as_str() {
            "PALETTE COLOR" => Some(Palette::read(ds, big_endian)?),
            _ => None,
        };
        Ok(Geometry {
            rows,
            cols,
            samples,
            bits_allocated,
            bits_stored,
            signed,
            planar,
            photometric,
            frames,
            big_endian,
            window: window.filter(|&(_, w)| w >= 1.0),
            palette,
        })
    }

    fn bytes_per_sample(&self) -> usize {
        self.bits_allocated / 8
    }

    /// Bytes of one native frame.
    pub fn frame_len(&self) -> usize {
        self.rows * self.cols * self.samples * self.bytes_per_sample()
    }

    /// Bytes of every frame; the pixel data may be one byte longer (padding to even length).
    pub fn total_len(&self) -> Option<usize> {
        self.frame_len().checked_mul(self.frames)
    }

    /// Where sample `s` of pixel (x, y) starts in a frame.
    fn offset(&self, x: usize, y: usize, s: usize) -> usize {
        let pixel = y * self.cols + x;
        let index = if self.planar { s * self.rows * self.cols + pixel } else { pixel * self.samples + s };
        index * self.bytes_per_sample()
    }

    /// The stored value of a sample, sign-extended from BitsStored.
    fn sample(&self, frame: &[u8], x: usize, y: usize, s: usize) -> i32 {
        let o = self.offset(x, y, s);
        let raw = if self.bits_allocated == 8 {
            u32::from(frame[o])
        } else if self.big_endian {
            u32::from(u16::from_be_bytes([frame[o], frame[o + 1]]))
        } else {
            u32::from(u16::from_le_bytes([frame[o], frame[o + 1]]))
        };
        let mask = if self.bits_stored >= 32 { u32::MAX } else { (1u32 << self.bits_stored) - 1 };
        let v = raw & mask;
        if self.signed && v & (1 << (self.bits_stored - 1)) != 0 {
            (v | !mask) as i32
        } else {
            v as i32
        }
    }

    /// The value displayed as black: the lowest stored value, or the highest for MONOCHROME1;
    /// 0 for colour (for YBR, luminance 0 and neutral chroma).
    fn black(&self, s: usize) -> i32 {
        let max = (1i32 << self.bits_stored) - 1;
        if let Some(palette) = &self.palette {
            return palette.darkest();
        }
        match self.photometric.as_str() {
            "MONOCHROME1" if self.signed => max / 2,
            "MONOCHROME1" => max,
            p if p.starts_with("YBR") && s > 0 => (max + 1) / 2,
            _ if self.signed => -(max + 1) / 2,
            _ => 0,
        }
    }

    fn put_sample(&self, frame: &mut [u8], x: usize, y: usize, s: usize, v: i32) {
        let o = self.offset(x, y, s);
        let mask = (1u32 << self.bits_stored) - 1;
        if self.bits_allocated == 8 {
            frame[o] = (frame[o] & !(mask as u8)) | (v as u32 & mask) as u8;
            return;
        }
        let old = if self.big_endian {
            u16::from_be_bytes([frame[o], frame[o + 1]])
        } else {
            u16::from_le_bytes([frame[o], frame[o + 1]])
        };
        let new = (old & !(mask as u16)) | (v as u32 & mask) as u16;
        let bytes = if self.big_endian { new.to_be_bytes() } else { new.to_le_bytes() };
        frame[o..o + 2].copy_from_slice(&bytes);
    }

    /// Black out `rect` (clipped to the frame) in every sample; `true` if any pixel was in it.
    pub fn mask(&self, frame: &mut [u8], rect: Rect) -> bool {
        let x_end = (rect.x + rect.w).min(self.cols);
        let y_end = (rect.y + rect.h).min(self.rows);
        if rect.x >= x_end || rect.y >= y_end {
            return false;
        }
        for y in rect.y..y_end {
            for x in rect.x..x_end {
                for s in 0..self.samples {
                    self.put_sample(frame, x, y, s, self.black(s));
                }
            }
        }
        true
    }

    /// The frame as a reader sees it, in 8-bit grey: monochrome through its window (or the
    /// frame's own range), MONOCHROME1 inverted, colour and palette colour as luminance.
    pub fn grey(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        if let Some(palette) = &self.palette {
            for y in 0..self.rows {
                for x in 0..self.cols {
                    out.push(palette.luma(self.sample(frame, x, y, 0)));
                }
            }
            return out;
        }
        if self.samples == 3 {
            let ybr = self.photometric.starts_with("YBR");
            for y in 0..self.rows {
                for x in 0..self.cols {
                    let (a, b, c) = (
                        self.sample(frame, x, y, 0),
                        self.sample(frame, x, y, 1),
                        self.sample(frame, x, y, 2),
                    );
                    let luma = if ybr { a } else { (299 * a + 587 * b + 114 * c) / 1000 };
                    out.push(scale_to_byte(luma, self.bits_stored));
                }
            }
            return out;
        }
        let (lo, hi) = match self.window {
            Some((c, w)) => (c - w / 2.0, c + w / 2.0),
            _ => {
                let (mut lo, mut hi) = (i32::MAX, i32::MIN);
                for y in 0..self.rows {
                    for x in 0..self.cols {
                        let v = self.sample(frame, x, y, 0);
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
                (f64::from(lo), f64::from(hi.max(lo + 1)))
            }
        };
        let invert = self.photometric == "MONOCHROME1";
        for y in 0..self.rows {
            for x in 0..self.cols {
                let v = f64::from(self.sample(frame, x, y, 0));
                let g = ((v - lo) / (hi - lo) * 255.0).clamp(0.0, 255.0) as u8;
                out.push(if invert { 255 - g } else { g });
            }
        }
        out
    }
}

fn scale_to_byte(v: i32, bits: usize) -> u8 {
    if bits <= 8 {
        v.clamp(0, 255) as u8
    } else {
        (v >> (bits - 8)).clamp(0, 255) as u8
    }
}

fn first_number(text: Option<&str>) -> Option<f64> {
    text?.split('\\').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mono(bits: usize, signed: bool, photometric: &str) -> Geometry {
        Geometry {
            rows: 4,
            cols: 5,
            samples: 1,
            bits_allocated: if bits > 8 { 16 } else { 8 },
            bits_stored: bits,
            signed,
            planar: false,
            photometric: photometric.into(),
            frames: 1,
            big_endian: false,
            window: None,
            palette: None,
        }
    }

    #[test]
    fn masking_changes_only_the_rectangle_and_keeps_the_bits_above_bits_stored() {
        let g = mono(12, false, "MONOCHROME2");
        let mut frame: Vec<u8> = (0..g.frame_len()).map(|i| (i * 7) as u8 | 0xF0).collect();
        let before = frame.clone();
        assert!(g.mask(&mut frame, Rect { x: 1, y: 1, w: 2, h: 2 }));
        for y in 0..4 {
            for x in 0..5 {
                let o = (y * 5 + x) * 2;
                let inside = (1..3).contains(&x) && (1..3).contains(&y);
                if inside {
                    assert_eq!(g.sample(&frame, x, y, 0), 0);
                    // The four bits above BitsStored are not ours to change.
                    assert_eq!(frame[o + 1] & 0xF0, before[o + 1] & 0xF0);
                } else {
                    assert_eq!(frame[o..o + 2], before[o..o + 2], "({x},{y}) changed");
                }
            }
        }
    }

    #[test]
    fn black_is_what_the_photometric_interpretation_displays_as_black() {
        assert_eq!(mono(12, false, "MONOCHROME2").black(0), 0);
        assert_eq!(mono(12, false, "MONOCHROME1").black(0), 4095);
        assert_eq!(mono(16, true, "MONOCHROME2").black(0), -32768);
        let mut frame = vec![0u8; 40];
        let g = mono(16, true, "MONOCHROME2");
        g.mask(&mut frame, Rect { x: 0, y: 0, w: 1, h: 1 });
        assert_eq!(g.sample(&frame, 0, 0, 0), -32768);
    }

    #[test]
    fn palette_images_are_rendered_through_their_tables_and_masked_with_their_darkest_entry() {
        let mut ds = DataSet::default();
        for (n, tint) in [(0x1101u16, 0u16), (0x1102, 0), (0x1103, 0)] {
            let us = |v: &[u16]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
            let put = |ds: &mut DataSet<'static>, tag, vr, bytes: Vec<u8>| {
                ds.put(crate::dicom::Element { tag, vr, value: crate::dicom::Value::Bytes(bytes.into()) })
            };
            put(&mut ds, Tag(0x0028, n), crate::dicom::VR::US, us(&[4, 10, 16]));
            let lut: Vec<u16> = [65535u16, 30000, 0, 20000].iter().map(|v| v.saturating_sub(tint)).collect();
            put(&mut ds, Tag(0x0028, n + 0x100), crate::dicom::VR::OW, us(&lut));
        }
        let palette = Palette::read(&ds, false).unwrap();
        let mut g = mono(8, false, "PALETTE COLOR");
        g.palette = Some(palette);
        // Stored 10..13 map to entries 0..3; below and above clamp to the ends.
        let mut frame = vec![10u8, 11, 12, 13, 200];
        frame.resize(g.frame_len(), 10);
        assert_eq!(&g.grey(&frame)[..5], &[255, 117, 0, 78, 78]);
        g.mask(&mut frame, Rect { x: 0, y: 0, w: 2, h: 1 });
        assert_eq!(&frame[..2], &[12, 12], "the darkest entry, not index 0");
        assert!(Palette::read(&DataSet::default(), false).is_err(), "no tables: cannot be rendered");
    }

    #[test]
    fn a_rectangle_outside_the_frame_changes_nothing() {
        let g = mono(8, false, "MONOCHROME2");
        let mut frame = vec![9u8; g.frame_len()];
        assert!(!g.mask(&mut frame, Rect { x: 5, y: 0, w: 3, h: 3 }));
        assert!(frame.iter().all(|&b| b == 9));
    }

    #[test]
    fn grey_inverts_monochrome1_and_uses_the_frames_range() {
        let g = mono(8, false, "MONOCHROME1");
        let frame: Vec<u8> = (0..20).collect();
        let grey = g.grey(&frame);
        assert_eq!(grey[0], 255);
        assert_eq!(grey[19], 0);
    }
}
