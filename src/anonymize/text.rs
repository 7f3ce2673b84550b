//! Decoding the few PHI values the index stores as text, by Specific Character Set.

use dicom_encoding::text::{SpecificCharacterSet, TextCodec};

use crate::dicom::trim_padding;

/// Decode a value for the index. Under UTF-8 or the default repertoire the bytes must be valid
/// UTF-8 (`Err` otherwise: the instance is quarantined rather than stored with a mangled name);
/// under other character sets the decoder does its best.
pub fn decode(charset: &str, raw: &[u8]) -> Result<String, std::str::Utf8Error> {
    let raw = trim_padding(raw);
    let codes: Vec<&str> = charset.split('\\').map(str::trim).filter(|c| !c.is_empty()).collect();
    if codes.is_empty() || codes.iter().all(|c| *c == "ISO_IR 192" || *c == "ISO_IR 6") {
        return std::str::from_utf8(raw).map(str::to_string);
    }
    let decoded =
        codes.iter().find_map(|c| SpecificCharacterSet::from_code(c)).and_then(|cs| cs.decode(raw).ok());
    Ok(decoded.unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn latin1_names_decode_and_bad_utf8_is_refused() {
        assert_eq!(super::decode("ISO_IR 100", b"M\xfcller^J ").unwrap(), "Müller^J");
        assert!(super::decode("ISO_IR 192", b"M\xfcller").is_err());
        assert!(super::decode("", b"M\xfcller").is_err());
        assert_eq!(super::decode("", b"DOE^JOHN").unwrap(), "DOE^JOHN");
    }
}
