//! What a transfer syntax means for the byte layout of a data set.

/// How elements are laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    pub const IMPLICIT_LE: Encoding = Encoding { explicit_vr: false, big_endian: false };
    pub const EXPLICIT_LE: Encoding = Encoding { explicit_vr: true, big_endian: false };
    pub const EXPLICIT_BE: Encoding = Encoding { explicit_vr: true, big_endian: true };
}

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";

/// A transfer syntax UID and what it implies for parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSyntax {
    pub uid: String,
}

impl TransferSyntax {
    pub fn new(uid: &str) -> Self {
        TransferSyntax { uid: uid.trim_end_matches(['\0', ' ']).to_string() }
    }

    /// Every syntax other than the three native ones and Deflated is encapsulated Explicit VR Little
    /// Endian (PS3.5 §A.4): its pixel data is a fragment sequence we pass through untouched.
    pub fn encoding(&self) -> Encoding {
        match self.uid.as_str() {
            IMPLICIT_VR_LE => Encoding::IMPLICIT_LE,
            EXPLICIT_VR_BE => Encoding::EXPLICIT_BE,
            _ => Encoding::EXPLICIT_LE,
        }
    }

    pub fn is_deflated(&self) -> bool {
        self.uid == DEFLATED_EXPLICIT_VR_LE
    }

    /// The syntax we write: Deflated input is written inflated, as Explicit VR Little Endian, so that
    /// readers need no zlib and we need no second compression pass.
    pub fn for_output(&self) -> TransferSyntax {
        if self.is_deflated() {
            TransferSyntax::new(EXPLICIT_VR_LE)
        } else {
            self.clone()
        }
    }
}
