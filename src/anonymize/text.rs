//! Decoding the few PHI values the index stores as text, and spelling names the ways free text may
//! write them, by Specific Character Set.

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
    let decoded = code_extension(charset)
        .or_else(|| codes.iter().find_map(|c| SpecificCharacterSet::from_code(c)))
        .and_then(|cs| cs.decode(raw).ok());
    Ok(decoded.unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned()))
}

/// The multi-byte set an instance switches to with ISO 2022 escapes (Japanese kanji, Korean,
/// Chinese), if it declares one. Its text can only be read decoded: its two-byte codes are
/// ASCII bytes, and a name's bytes change with the escapes around it. Its codec decodes the
/// single-byte sets around it too.
pub fn code_extension(charset: &str) -> Option<SpecificCharacterSet> {
    charset
        .split('\\')
        .map(str::trim)
        .filter(|c| matches!(*c, "ISO 2022 IR 87" | "ISO 2022 IR 149" | "ISO 2022 IR 58"))
        .find_map(SpecificCharacterSet::from_code)
}

/// `raw` (a name in the data set's character set) in lower case, upper case and capitalised
/// words, encoded back into that character set: the scrub compares bytes and folds only ASCII
/// case, so "MÜLLER" must also be looked for as "Müller". Empty for ASCII names (nothing to add)
/// and for names the character set cannot round-trip (ISO 2022 code extensions).
pub fn case_variants(charset: &str, raw: &[u8]) -> Vec<Vec<u8>> {
    // A single-byte ISO 2022 set without an escape in the value is its plain set byte for byte
    // ("ISO 2022 IR 100" is Latin-1 until something switches).
    // "ISO 2022 IR 6\ISO 2022 IR 100" is the same: ASCII in G0, Latin-1 in G1.
    let single_byte = ["100", "101", "109", "110", "126", "127", "138", "144", "148", "166", "203"];
    let plain = charset
        .split('\\')
        .map(str::trim)
        .filter_map(|c| c.strip_prefix("ISO 2022 IR "))
        .find(|number| *number != "6")
        .filter(|number| single_byte.contains(number) && !raw.contains(&0x1B))
        .map(|number| format!("ISO_IR {number}"));
    let charset = plain.as_deref().unwrap_or(charset);
    if raw.is_ascii() || charset.contains("2022") {
        return Vec::new();
    }
    let Ok(name) = decode(charset, raw) else { return Vec::new() };
    let code = charset.split('\\').map(str::trim).find(|c| !c.is_empty()).unwrap_or("ISO_IR 192");
    let Some(cs) = SpecificCharacterSet::from_code(code) else { return Vec::new() };
    let capitalised: String = name
        .split_inclusive(['^', ' ', '=', '-'])
        .flat_map(|w| {
            let mut c = w.chars();
            c.next().into_iter().flat_map(char::to_uppercase).chain(c.flat_map(char::to_lowercase))
        })
        .collect();
    let mut spellings = vec![name.to_lowercase(), name.to_uppercase(), capitalised];
    if code == "ISO_IR 192" {
        use unicode_normalization::UnicodeNormalization;
        let forms: Vec<String> = std::iter::once(&name)
            .chain(&spellings)
            .flat_map(|v| [v.nfc().collect::<String>(), v.nfd().collect()])
            .collect();
        spellings.extend(forms);
    }
    let mut out: Vec<Vec<u8>> =
        spellings.iter().filter_map(|v| cs.encode(v).ok()).filter(|v| v.as_slice() != raw).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn utf8_names_are_looked_for_in_both_normal_forms() {
        let variants = super::case_variants("ISO_IR 192", "MÜLLER^HANS".as_bytes());
        assert!(variants.contains(&"Mu\u{308}ller^Hans".as_bytes().to_vec()), "NFD: {variants:?}");
        assert!(variants.contains(&"Müller^Hans".as_bytes().to_vec()), "NFC: {variants:?}");
    }

    #[test]
    fn single_byte_iso_2022_sets_get_their_case_variants_too() {
        let variants = super::case_variants("ISO 2022 IR 100", b"M\xdcLLER^HANS");
        assert!(variants.contains(&b"M\xfcller^Hans".to_vec()), "{variants:?}");
        assert!(
            super::case_variants("ISO 2022 IR 100", b"\x1b-AM\xdcLLER").is_empty(),
            "escapes: left alone"
        );
    }

    #[test]
    fn iso_2022_names_decode_with_the_multi_byte_set_declared_second() {
        let raw = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B";
        assert_eq!(super::decode("ISO 2022 IR 6\\ISO 2022 IR 87", raw).unwrap(), "Yamada^Tarou=山田^太郎");
    }

    #[test]
    fn latin1_names_decode_and_bad_utf8_is_refused() {
        assert_eq!(super::decode("ISO_IR 100", b"M\xfcller^J ").unwrap(), "Müller^J");
        assert!(super::decode("ISO_IR 192", b"M\xfcller").is_err());
        assert!(super::decode("", b"M\xfcller").is_err());
        assert_eq!(super::decode("", b"DOE^JOHN").unwrap(), "DOE^JOHN");
    }

    #[test]
    fn names_are_also_spelled_in_other_cases_in_their_character_set() {
        let v = super::case_variants("ISO_IR 100", b"M\xdcLLER^J\xdcRGEN");
        assert!(v.contains(&b"M\xfcller^J\xfcrgen".to_vec()), "{v:?}");
        let v = super::case_variants("ISO_IR 192", "MÜLLER".as_bytes());
        assert!(v.contains(&"Müller".as_bytes().to_vec()), "{v:?}");
        assert!(super::case_variants("", b"SMITH^JOHN").is_empty());
    }
}
