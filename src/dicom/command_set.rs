//! DIMSE command sets as data sets (PS3.7 §6.3.1, §E.1): always Implicit VR Little Endian, with
//! (0000,0000) CommandGroupLength first. Shared by the SCP's responses and the SCU's requests.

use std::borrow::Cow;

use dicom_core::{Tag, VR};

use super::element::{DataSet, Element, Value};
use super::read::{read_dataset, ReadError};
use super::syntax::Encoding;
use super::write::write_dataset;

/// Command set attributes both sides of an association read or write (PS3.7 §E.1).
pub mod command_tags {

    pub use dicom_dictionary_std::tags::{
        AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID, COMMAND_DATA_SET_TYPE, COMMAND_FIELD,
        ERROR_COMMENT, MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, STATUS,
    };

    /// CommandDataSetType's value for "no data set follows".
    pub const NO_DATA_SET: u16 = 0x0101;
}

#[derive(Debug, thiserror::Error)]
pub enum CommandSetError {
    #[error("command set does not parse: {0}")]
    Unreadable(#[from] ReadError),
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// Read a command set's bytes.
pub fn read_command(bytes: &[u8]) -> Result<DataSet<'_>, CommandSetError> {
    Ok(read_dataset(bytes, Encoding::IMPLICIT_LE)?)
}

/// The value of a US element of a command set.
pub fn command_us(ds: &DataSet<'_>, tag: Tag) -> Option<u16> {
    ds.bytes(tag).and_then(|b| b.get(..2)).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

/// Set a US element of a command set.
pub fn put_command_us(ds: &mut DataSet<'_>, tag: Tag, v: u16) {
    ds.put(Element { tag, vr: VR::US, value: Value::Bytes(Cow::Owned(v.to_le_bytes().to_vec())) });
}

/// The command set's bytes: CommandGroupLength (UL) first, counting the rest.
pub fn encode_command(ds: &DataSet<'_>) -> Vec<u8> {
    let mut body = Vec::with_capacity(192);
    write_dataset(ds, Encoding::IMPLICIT_LE, &mut body).expect("writing to a Vec cannot fail");
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend([0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00]);
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}
