//! JPEG 2000 frames (Lossless Only and lossy) decoded to native samples with `openjp2`, the
//! pure-Rust port of OpenJPEG (through `jpeg2k`), so their burned-in text can be read and masked.
//! As with JPEG, a masked image is written uncompressed and keeps LossyImageCompression as it was.
//!
//! The codestream's size is compared with the header's before the decoder runs: a stream that
//! claims a larger image than the header never gets to allocate it.

use super::image::Geometry;
use super::PixelError;

/// JPEG 2000 Image Compression (Lossless Only), and JPEG 2000 Image Compression.
pub const SYNTAXES: &[&str] = &["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

/// Decode one frame; `geometry` is the header's, and the result must match it. Returns the
/// frame's native bytes (colour by pixel, little endian, signed values in two's complement).
pub fn decode(frame: &[u8], geometry: &Geometry) -> Result<Vec<u8>, PixelError> {
    let bad = |why: String| PixelError::Codec(format!("JPEG 2000: {why}"));
    let (cols, rows, samples) =
        size(frame).ok_or_else(|| bad("no codestream size (SIZ) at its start".into()))?;
    if (cols, rows, samples) != (geometry.cols, geometry.rows, geometry.samples) {
        return Err(bad(format!(
            "a {cols}x{rows} codestream of {samples} components where the header says {}x{} of {}",
            geometry.cols, geometry.rows, geometry.samples
        )));
    }
    let bytes = geometry.bits_allocated / 8;
    if !matches!(bytes, 1 | 2) {
        return Err(PixelError::Unsupported(format!(
            "JPEG 2000 with {} bits allocated",
            geometry.bits_allocated
        )));
    }
    let image = jpeg2k::Image::from_bytes(frame).map_err(|e| bad(e.to_string()))?;
    let components = image.components();
    let pixels = rows * cols;
    if components.len() != samples
        || components.iter().any(|c| c.data().len() != pixels || c.precision() as usize > 8 * bytes)
    {
        return Err(bad(
            "the decoded components do not match the header (subsampled, or deeper than allocated)".into(),
        ));
    }
    let mut out = Vec::with_capacity(pixels * samples * bytes);
    for i in 0..pixels {
        for c in components {
            // Two's complement in the allocated width: what DICOM stores for signed pixels.
            let v = c.data()[i] as u16;
            match bytes {
                1 => out.push(v as u8),
                _ => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
    }
    Ok(out)
}

/// Width, height and component count from the SIZ segment that follows SOC (ISO 15444-1 A.5.1).
/// PS3.5 A.4.4 asks for a bare codestream, but some writers (GDCM among them) wrap it in the JP2
/// file format: its header boxes come first, and the codestream is in the `jp2c` box after them.
fn size(frame: &[u8]) -> Option<(usize, usize, usize)> {
    const SOC_SIZ: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    const JP2_SIGNATURE: [u8; 8] = [0, 0, 0, 0x0C, b'j', b'P', b' ', b' '];
    let start = if frame.starts_with(&SOC_SIZ) {
        0
    } else if frame.starts_with(&JP2_SIGNATURE) {
        let header = &frame[..frame.len().min(64 << 10)];
        header.windows(8).position(|w| w[..4] == *b"jp2c" && w[4..] == SOC_SIZ)? + 4
    } else {
        return None;
    };
    let frame = &frame[start..];
    let u32_at = |at: usize| frame.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let (x, y, x0, y0) = (u32_at(8)?, u32_at(12)?, u32_at(16)?, u32_at(20)?);
    let c = frame.get(40..42).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    Some((x.checked_sub(x0)? as usize, y.checked_sub(y0)? as usize, usize::from(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_codestream_without_siz_or_larger_than_the_header_is_refused_before_decoding() {
        assert_eq!(size(b"\xFF\xD8\xFF\xE0"), None);
        // Bare, and inside a JP2 file's jp2c box.
        let mut siz = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [60_000u32, 60_000, 0, 0, 60_000, 60_000, 0, 0] {
            siz.extend_from_slice(&v.to_be_bytes());
        }
        siz.extend_from_slice(&1u16.to_be_bytes());
        assert_eq!(size(&siz), Some((60_000, 60_000, 1)));
        let mut jp2 = vec![0, 0, 0, 0x0C, b'j', b'P', b' ', b' ', 0x0D, 0x0A, 0x87, 0x0A, 0, 0, 0, 0x2D];
        jp2.extend_from_slice(b"jp2c");
        jp2.extend_from_slice(&siz);
        assert_eq!(size(&jp2), Some((60_000, 60_000, 1)));
        let geometry = Geometry {
            rows: 64,
            cols: 64,
            samples: 1,
            bits_allocated: 16,
            bits_stored: 12,
            signed: false,
            planar: false,
            photometric: "MONOCHROME2".into(),
            frames: 1,
            big_endian: false,
            window: None,
            palette: None,
        };
        let e = decode(&siz, &geometry).unwrap_err().to_string();
        assert!(e.contains("60000x60000"), "{e}");
    }
}
