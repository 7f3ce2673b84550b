//! JPEG frames (Baseline, Extended 8-bit, Lossless) decoded to native samples with the image-rs
//! decoder, so that their burned-in text can be read and masked.
//!
//! A masked JPEG image is written uncompressed: re-encoding lossy data would lose more, and a
//! lossless re-encoding is a codec of its own to maintain. LossyImageCompression and its ratio
//! and method stay as they came, so the output still says it was lossy once.

use jpeg_decoder::{ColorTransform, Decoder, PixelFormat};

use super::image::Geometry;
use super::PixelError;

/// The transfer syntaxes decoded here: Baseline, Extended (8-bit), Lossless and Lossless SV1.
pub const SYNTAXES: &[&str] =
    &["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"];

/// Decode one frame; `geometry` is the header's, and the result must match it. Returns the
/// frame's native bytes (colour by pixel, little endian).
pub fn decode(frame: &[u8], geometry: &Geometry) -> Result<Vec<u8>, PixelError> {
    let bad = |why: String| PixelError::Codec(format!("JPEG: {why}"));
    let mut decoder = Decoder::new(frame);
    // A stream that claims a larger image than the header never gets to allocate it.
    decoder.set_max_decoding_buffer_size(geometry.frame_len());
    // The header says what the components are; the JPEG stream often does not.
    let transform = match geometry.photometric.as_str() {
        p if p.starts_with("YBR") => ColorTransform::YCbCr,
        "RGB" => ColorTransform::RGB,
        _ => ColorTransform::Grayscale,
    };
    if geometry.samples == 3 {
        decoder.set_color_transform(transform);
    }
    let pixels = decoder.decode().map_err(|e| bad(e.to_string()))?;
    let info = decoder.info().ok_or_else(|| bad("no frame header".into()))?;
    let (samples, bytes) = match info.pixel_format {
        PixelFormat::L8 => (1, 1),
        PixelFormat::L16 => (1, 2),
        PixelFormat::RGB24 => (3, 1),
        PixelFormat::CMYK32 => return Err(bad("four components".into())),
    };
    if usize::from(info.width) != geometry.cols
        || usize::from(info.height) != geometry.rows
        || samples != geometry.samples
        || bytes * 8 != geometry.bits_allocated
    {
        return Err(bad(format!(
            "a {}x{} frame of {samples} x {} bits where the header says {}x{} of {} x {}",
            info.width,
            info.height,
            bytes * 8,
            geometry.cols,
            geometry.rows,
            geometry.samples,
            geometry.bits_allocated
        )));
    }
    if pixels.len() != geometry.frame_len() {
        return Err(bad(format!("{} bytes decoded for a frame of {}", pixels.len(), geometry.frame_len())));
    }
    // 16-bit samples come out in the machine's order; ours are little endian.
    Ok(if bytes == 2 && cfg!(target_endian = "big") {
        pixels.chunks(2).flat_map(|c| [c[1], c[0]]).collect()
    } else {
        pixels
    })
}
