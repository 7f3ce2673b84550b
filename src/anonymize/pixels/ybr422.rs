//! Native YBR_FULL_422: two pixels share one chroma pair, stored Y1 Y2 Cb Cr (PS3.3 C.7.6.3.1.2).
//! The standard reserves it for JPEG, but devices write it uncompressed too. Frames are expanded
//! to one Y Cb Cr per pixel for reading and masking, and packed back in place afterwards.

/// Bytes of one packed 8-bit frame: two bytes per pixel.
pub fn packed_len(rows: usize, cols: usize) -> usize {
    rows * cols * 2
}

/// Y1 Y2 Cb Cr per pair of pixels → Y Cb Cr per pixel.
pub fn expand(packed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed.len() / 2 * 3);
    for q in packed.chunks_exact(4) {
        out.extend_from_slice(&[q[0], q[2], q[3], q[1], q[2], q[3]]);
    }
    out
}

/// Y Cb Cr per pixel → Y1 Y2 Cb Cr per pair. A pair whose two pixels' chroma now differ had one
/// of them masked: the pair takes the masked (neutral) chroma, a pixel beside the mask.
pub fn pack(expanded: &[u8], packed: &mut [u8]) {
    for (q, p) in packed.chunks_exact_mut(4).zip(expanded.chunks_exact(6)) {
        let (first, second) = ((p[1], p[2]), (p[4], p[5]));
        let neutral = (128, 128);
        let (cb, cr) = if first == second {
            first
        } else if first == neutral || second == neutral {
            neutral
        } else {
            first
        };
        q.copy_from_slice(&[p[0], p[3], cb, cr]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_expands_and_packs_back_to_its_bytes_and_a_masked_pixel_takes_its_pair() {
        let packed: Vec<u8> = (0..16).map(|i| i * 13 % 251).collect();
        let mut expanded = expand(&packed);
        assert_eq!(expanded.len(), 24);
        let mut again = vec![0; 16];
        pack(&expanded, &mut again);
        assert_eq!(again, packed);
        // The second pixel masked (luminance 0, neutral chroma): its pair's chroma goes neutral,
        // the first pixel's luminance stays.
        expanded[3..6].copy_from_slice(&[0, 128, 128]);
        pack(&expanded, &mut again);
        assert_eq!(&again[..4], &[packed[0], 0, 128, 128]);
        assert_eq!(&again[4..], &packed[4..]);
    }
}
