//! RLE Lossless (PS3.5 Annex G): one frame's fragment decoded to native samples and encoded back.
//!
//! A decoded frame is laid out colour-by-plane, little endian (RLE's own order of segments), so
//! that the caller can mask it with a [`Geometry`](super::image::Geometry) saying so and encode it
//! again without reordering.

use super::PixelError;

const HEADER: usize = 64;

/// Decode one RLE frame of `rows * cols` pixels with `samples` samples of `bytes` bytes each into
/// planar little-endian samples.
pub fn decode(
    fragment: &[u8],
    rows: usize,
    cols: usize,
    samples: usize,
    bytes: usize,
) -> Result<Vec<u8>, PixelError> {
    let bad = |why: &str| PixelError::Codec(format!("RLE: {why}"));
    let header = fragment.get(..HEADER).ok_or_else(|| bad("fragment shorter than its header"))?;
    let word = |i: usize| {
        u32::from_le_bytes([header[i * 4], header[i * 4 + 1], header[i * 4 + 2], header[i * 4 + 3]]) as usize
    };
    let segments = word(0);
    if segments != samples * bytes {
        return Err(bad(&format!("{segments} segments where {} are needed", samples * bytes)));
    }
    let pixels = rows * cols;
    let mut out = vec![0u8; pixels * samples * bytes];
    for seg in 0..segments {
        let start = word(seg + 1);
        let end = if seg + 1 < segments { word(seg + 2) } else { fragment.len() };
        if start < HEADER || start > end || end > fragment.len() {
            return Err(bad("a segment offset is outside the fragment"));
        }
        let plane = unpack(&fragment[start..end], pixels)
            .ok_or_else(|| bad("a segment does not decode to one plane"))?;
        // Segment order: for each sample, most significant byte first.
        let (sample, byte_from_top) = (seg / bytes, seg % bytes);
        let byte_in_le = bytes - 1 - byte_from_top;
        for (p, v) in plane.into_iter().enumerate() {
            out[(sample * pixels + p) * bytes + byte_in_le] = v;
        }
    }
    Ok(out)
}

/// PackBits: `n` in 0..=127 copies n+1 bytes, -127..=-1 repeats the next byte 1-n times, -128
/// does nothing. The plane must come out exactly `len` bytes long (a trailing pad byte allowed).
fn unpack(src: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len && i < src.len() {
        let n = src[i] as i8;
        i += 1;
        match n {
            0..=127 => {
                let run = src.get(i..i + n as usize + 1)?;
                out.extend_from_slice(run);
                i += run.len();
            }
            -127..=-1 => {
                let v = *src.get(i)?;
                i += 1;
                out.extend(std::iter::repeat_n(v, (1 - i32::from(n)) as usize));
            }
            -128 => {}
        }
    }
    (out.len() == len).then_some(out)
}

/// Encode planar little-endian samples as one RLE frame (each row packed on its own, as
/// PS3.5 G.3.1 asks).
pub fn encode(planes: &[u8], rows: usize, cols: usize, samples: usize, bytes: usize) -> Vec<u8> {
    let pixels = rows * cols;
    let segments = samples * bytes;
    let mut body = Vec::new();
    let mut offsets = Vec::with_capacity(segments);
    for seg in 0..segments {
        offsets.push((HEADER + body.len()) as u32);
        let (sample, byte_in_le) = (seg / bytes, bytes - 1 - seg % bytes);
        let plane: Vec<u8> =
            (0..pixels).map(|p| planes[(sample * pixels + p) * bytes + byte_in_le]).collect();
        for row in plane.chunks(cols) {
            pack(row, &mut body);
        }
        if body.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(segments as u32).to_le_bytes());
    for i in 0..15 {
        out.extend_from_slice(&offsets.get(i).copied().unwrap_or(0).to_le_bytes());
    }
    out.extend_from_slice(&body);
    out
}

fn pack(row: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < row.len() {
        let mut run = 1;
        while i + run < row.len() && run < 128 && row[i + run] == row[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((1 - run as i32) as i8 as u8);
            out.push(row[i]);
            i += run;
            continue;
        }
        // A literal run: up to the next pair of equal bytes.
        let start = i;
        while i < row.len() && i - start < 128 && !(i + 1 < row.len() && row[i] == row[i + 1]) {
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&row[start..i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_gives_the_samples_back() {
        let (rows, cols) = (7, 300);
        for (samples, bytes) in [(1, 1), (1, 2), (3, 1)] {
            let n = rows * cols * samples * bytes;
            let planes: Vec<u8> =
                (0..n).map(|i| if (i / 5) % 3 == 0 { 42 } else { (i * 31 % 251) as u8 }).collect();
            let frame = encode(&planes, rows, cols, samples, bytes);
            assert_eq!(decode(&frame, rows, cols, samples, bytes).unwrap(), planes);
        }
    }

    #[test]
    fn a_segment_that_decodes_short_or_long_is_refused() {
        let planes = vec![1u8; 16];
        let mut frame = encode(&planes, 4, 4, 1, 1);
        assert!(decode(&frame, 4, 5, 1, 1).is_err(), "plane too short for 4 x 5");
        frame[0] = 2;
        assert!(decode(&frame, 4, 4, 1, 1).is_err(), "segment count");
        assert!(decode(&frame[..10], 4, 4, 1, 1).is_err(), "truncated header");
    }

    #[test]
    fn a_known_packbits_stream_decodes() {
        // Literal 3 bytes, then 4 × 0x09, then no-op.
        assert_eq!(unpack(&[2, 1, 2, 3, 0xFD, 9, 0x80], 7).unwrap(), vec![1, 2, 3, 9, 9, 9, 9]);
    }
}
