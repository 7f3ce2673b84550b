//! Pseudonyms: the same original value always gives the same replacement.
//!
//! `rsna` reproduces the RSNA DICOM Anonymizer 18.x byte for byte (so a site that switches keeps one
//! consistent archive); `keyed` uses HMAC-SHA256 with a project secret, so several nodes agree with
//! no shared state and nobody without the secret can confirm a guessed MRN.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// RSNA's date window: offsets are 0..3651 days, always forward.
const DATE_OFFSET_DAYS: u128 = 3652;
/// Patient numbers are zero-padded to six digits (`<site>-000001`).
const PATIENT_DIGITS: usize = 6;
/// Longest UID (PS3.5 §9.1).
const UID_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessionFormat {
    /// 16 hex digits: a valid SH.
    #[default]
    Hex16,
    /// RSNA's 8-4-4 form with dashes (18 characters, longer than SH allows).
    Rsna,
}

#[derive(Debug, thiserror::Error)]
pub enum PseudonymError {
    #[error("project.uid_root and project.site_id make the UID prefix {prefix:?} {len} characters long; it must leave room for digits within 64")]
    PrefixTooLong { prefix: String, len: usize },
}

/// How originals map to pseudonyms. Everything but patient numbering is a pure function.
pub trait Pseudonyms: Send + Sync {
    fn uid(&self, original: &str) -> String;
    /// Days to add to this patient's dates (`patient_id` already stripped, never empty).
    fn date_offset(&self, patient_id: &str) -> u32;
    fn accession(&self, original: &str) -> String;
    /// A stateless patient pseudonym, or `None` when the index numbers patients (rsna mode).
    fn patient_id(&self, patient_id: &str) -> Option<String>;
    /// The pseudonym of the patient with no (or a blank) PatientID.
    fn default_patient_id(&self) -> String;
}

/// RSNA Anonymizer 18.x: md5 UIDs and date offsets, salted sha256 accessions, numbered patients.
pub struct Rsna {
    site_id: String,
    uid_prefix: String,
    accession_salt: String,
    accession_format: AccessionFormat,
}

impl Rsna {
    pub fn new(
        site_id: &str,
        uid_root: &str,
        accession_format: AccessionFormat,
    ) -> Result<Rsna, PseudonymError> {
        let root = uid_root.trim();
        Ok(Rsna {
            site_id: site_id.to_string(),
            uid_prefix: uid_prefix(root, site_id, 2)?,
            accession_salt: format!("anonymizer::{site_id}::{root}.{site_id}"),
            accession_format,
        })
    }

    /// The n-th patient pseudonym: `<site>-NNNNNN`.
    pub fn numbered_patient_id(site_id: &str, n: u64) -> String {
        format!("{site_id}-{n:0PATIENT_DIGITS$}")
    }
}

impl Pseudonyms for Rsna {
    fn uid(&self, original: &str) -> String {
        uid_from_digest(&self.uid_prefix, md5_int(original.as_bytes()))
    }

    fn date_offset(&self, patient_id: &str) -> u32 {
        (md5_int(patient_id.as_bytes()) % DATE_OFFSET_DAYS) as u32
    }

    fn accession(&self, original: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.accession_salt.as_bytes());
        h.update(original.as_bytes());
        format_accession(&hex::encode(h.finalize())[..16], self.accession_format)
    }

    fn patient_id(&self, _: &str) -> Option<String> {
        None
    }

    fn default_patient_id(&self) -> String {
        Rsna::numbered_patient_id(&self.site_id, 0)
    }
}

/// HMAC-SHA256 pseudonyms under a project secret. Each kind of value has its own label, so a UID
/// and a patient ID with the same text never share a pseudonym.
pub struct Keyed {
    site_id: String,
    uid_prefix: String,
    mac: Hmac<Sha256>,
    accession_format: AccessionFormat,
}

impl Keyed {
    pub fn new(
        site_id: &str,
        uid_root: &str,
        secret: &[u8],
        accession_format: AccessionFormat,
    ) -> Result<Keyed, PseudonymError> {
        Ok(Keyed {
            site_id: site_id.to_string(),
            // `.3.` keeps keyed UIDs apart from RSNA's `.2.` ones under the same root.
            uid_prefix: uid_prefix(uid_root.trim(), site_id, 3)?,
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length"),
            accession_format,
        })
    }

    /// What the index keeps of the secret, to notice at start that it changed: the MAC of a label
    /// no value uses, 64 bits of it. It names the secret without revealing it.
    pub fn fingerprint(secret: &[u8]) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
        m.update(b"dicom-anon-gateway secret fingerprint");
        hex::encode(&m.finalize().into_bytes()[..8])
    }

    fn tag(&self, label: &str, value: &str) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        m.finalize().into_bytes().into()
    }
}

impl Pseudonyms for Keyed {
    fn uid(&self, original: &str) -> String {
        let t = self.tag("uid", original);
        uid_from_digest(&self.uid_prefix, u128::from_be_bytes(t[..16].try_into().expect("16 of 32 bytes")))
    }

    fn date_offset(&self, patient_id: &str) -> u32 {
        let t = self.tag("date", patient_id);
        (u128::from_be_bytes(t[..16].try_into().expect("16 of 32 bytes")) % DATE_OFFSET_DAYS) as u32
    }

    fn accession(&self, original: &str) -> String {
        format_accession(&hex::encode(self.tag("accession", original))[..16], self.accession_format)
    }

    fn patient_id(&self, patient_id: &str) -> Option<String> {
        Some(format!("{}-{}", self.site_id, hex::encode_upper(&self.tag("patient", patient_id)[..6])))
    }

    fn default_patient_id(&self) -> String {
        Rsna::numbered_patient_id(&self.site_id, 0)
    }
}

fn uid_prefix(root: &str, site_id: &str, scheme: u8) -> Result<String, PseudonymError> {
    let prefix = format!("{root}.{site_id}.{scheme}.");
    if prefix.len() >= UID_MAX {
        return Err(PseudonymError::PrefixTooLong { len: prefix.len(), prefix });
    }
    Ok(prefix)
}

/// `prefix` + decimal(digest mod 10^(64 − prefix length)), as RSNA does (no zero padding).
fn uid_from_digest(prefix: &str, digest: u128) -> String {
    let room = (UID_MAX - prefix.len()) as u32;
    // 10^39 exceeds u128::MAX, so with that much room the modulus changes nothing.
    let n = if room >= 39 { digest } else { digest % 10u128.pow(room) };
    format!("{prefix}{n}")
}

fn md5_int(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(bytes).into())
}

fn format_accession(hex16: &str, format: AccessionFormat) -> String {
    match format {
        AccessionFormat::Hex16 => hex16.to_string(),
        AccessionFormat::Rsna => format!("{}-{}-{}", &hex16[..8], &hex16[8..12], &hex16[12..16]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "1.2.826.0.1.3680043.10.474";

    #[test]
    fn rsna_golden_values_match_rsna_anonymizer_18() {
        let r = Rsna::new("99.99", ROOT, AccessionFormat::Rsna).unwrap();
        assert_eq!(r.uid("1.2.3.4.5"), "1.2.826.0.1.3680043.10.474.99.99.2.75336036203084014467748397925");
        assert_eq!(r.accession("2"), "f7f69c29-67d4-4fd3");
        assert_eq!(r.accession("ACC999"), "37a9837f-64cd-b57b");
        assert_eq!(r.date_offset("12345"), 263);
        assert_eq!(r.date_offset("67890"), 1322);
        assert_eq!(r.date_offset("123456789"), 3147);
        assert_eq!(r.date_offset("1234567890"), 3023);
        assert_eq!(r.default_patient_id(), "99.99-000000");
        assert_eq!(Rsna::numbered_patient_id("99.99", 1), "99.99-000001");
    }

    #[test]
    fn hex16_accessions_fit_sh() {
        let r = Rsna::new("99.99", ROOT, AccessionFormat::Hex16).unwrap();
        assert_eq!(r.accession("2"), "f7f69c2967d44fd3");
    }

    #[test]
    fn uids_never_exceed_64_characters() {
        let r = Rsna::new("972149", "1.2.826.0.1.3680043.10.474.2", AccessionFormat::Hex16).unwrap();
        for i in 0..1000 {
            let u = r.uid(&format!("1.2.3.{i}"));
            assert!(u.len() <= 64, "{u}");
        }
        assert!(Rsna::new("1".repeat(40).as_str(), ROOT, AccessionFormat::Hex16).is_err());
    }

    #[test]
    fn keyed_pseudonyms_depend_on_the_secret_only() {
        let a = Keyed::new("972149", ROOT, b"secret-one", AccessionFormat::Hex16).unwrap();
        let b = Keyed::new("972149", ROOT, b"secret-one", AccessionFormat::Hex16).unwrap();
        let c = Keyed::new("972149", ROOT, b"secret-two", AccessionFormat::Hex16).unwrap();
        assert_eq!(a.uid("1.2.3"), b.uid("1.2.3"));
        assert_eq!(a.patient_id("MRN1"), b.patient_id("MRN1"));
        assert_ne!(a.uid("1.2.3"), c.uid("1.2.3"));
        assert_ne!(a.patient_id("MRN1"), c.patient_id("MRN1"));
        assert!(a.uid("1.2.3").starts_with("1.2.826.0.1.3680043.10.474.972149.3."));
        // Offsets spread over the ten years for different patients, and follow the secret.
        let offsets: std::collections::HashSet<u32> =
            (0..1000).map(|i| a.date_offset(&format!("MRN{i}"))).collect();
        assert!(offsets.len() > 800, "1000 patients share {} offsets", offsets.len());
        assert!(offsets.iter().any(|&o| o < 365) && offsets.iter().any(|&o| o > 3287));
        assert_eq!(a.date_offset("MRN1"), b.date_offset("MRN1"));
        let moved =
            (0..20).filter(|i| a.date_offset(&format!("MRN{i}")) != c.date_offset(&format!("MRN{i}")));
        assert!(moved.count() >= 19, "another secret gives other offsets");
        assert_eq!(a.accession("A1").len(), 16);
    }
}
