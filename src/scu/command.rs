//! DIMSE requests this node sends as an SCU (C-FIND, C-MOVE, C-STORE; PS3.7 §9.3) and the
//! responses it reads back. Command sets are always Implicit VR Little Endian (PS3.7 §6.3.1).

use std::borrow::Cow;

use crate::dicom::command_tags::{
    AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID, COMMAND_DATA_SET_TYPE, COMMAND_FIELD, ERROR_COMMENT,
    MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, NO_DATA_SET, STATUS,
};
use crate::dicom::{
    command_us, encode_command, pad_text, put_command_us, read_command, write_dataset, CommandSetError,
    DataSet, Element, Encoding, Tag, Value, VR,
};

use dicom_dictionary_std::tags::{MOVE_DESTINATION, PRIORITY};

const REMAINING: Tag = Tag(0x0000, 0x1020);
const COMPLETED: Tag = Tag(0x0000, 0x1021);
const FAILED: Tag = Tag(0x0000, 0x1022);
const WARNING: Tag = Tag(0x0000, 0x1023);

/// The request kinds we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Store = 0x0001,
    Echo = 0x0030,
    Find = 0x0020,
    Move = 0x0021,
}

/// A request command set, ready for the wire.
pub fn request(
    kind: Kind,
    message_id: u16,
    sop_class: &str,
    sop_instance: Option<&str>,
    move_destination: Option<&str>,
) -> Vec<u8> {
    let mut ds = DataSet::default();
    ds.put_text(AFFECTED_SOP_CLASS_UID, VR::UI, sop_class);
    put_command_us(&mut ds, COMMAND_FIELD, kind as u16);
    put_command_us(&mut ds, MESSAGE_ID, message_id);
    if let Some(ae) = move_destination {
        ds.put_text(MOVE_DESTINATION, VR::AE, ae);
    }
    put_command_us(&mut ds, PRIORITY, 0);
    // Every request but C-ECHO carries a data set (the identifier or the instance).
    put_command_us(&mut ds, COMMAND_DATA_SET_TYPE, if kind == Kind::Echo { NO_DATA_SET } else { 0x0000 });
    if let Some(uid) = sop_instance {
        ds.put_text(AFFECTED_SOP_INSTANCE_UID, VR::UI, uid);
    }
    encode_command(&ds)
}

/// A response command as far as we act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub command_field: u16,
    pub message_id: u16,
    pub status: u16,
    pub has_data_set: bool,
    /// Error Comment (0000,0902), when the peer gave one.
    pub comment: Option<String>,
    /// C-MOVE sub-operation counts, when present.
    pub counts: SubOperations,
}

/// Sub-operation counts of a C-MOVE response (PS3.4 §C.4.2.1.6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    pub remaining: Option<u16>,
    pub completed: Option<u16>,
    pub failed: Option<u16>,
    pub warning: Option<u16>,
}

impl Response {
    pub fn parse(bytes: &[u8]) -> Result<Response, CommandSetError> {
        let ds = read_command(bytes)?;
        let us = |tag| command_us(&ds, tag);
        Ok(Response {
            command_field: us(COMMAND_FIELD).ok_or(CommandSetError::Missing("CommandField (0000,0100)"))?,
            message_id: us(MESSAGE_ID_BEING_RESPONDED_TO).unwrap_or(0),
            status: us(STATUS).ok_or(CommandSetError::Missing("Status (0000,0900)"))?,
            has_data_set: us(COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET),
            comment: ds.text(ERROR_COMMENT).filter(|c| !c.is_empty()).map(printable),
            counts: SubOperations {
                remaining: us(REMAINING),
                completed: us(COMPLETED),
                failed: us(FAILED),
                warning: us(WARNING),
            },
        })
    }

    /// Pending (0xFF00, 0xFF01): more responses follow.
    pub fn is_pending(&self) -> bool {
        matches!(self.status, 0xFF00 | 0xFF01)
    }
}

/// A peer's comment as we may log it: printable ASCII, at most 64 characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect()
}

/// What a status means (PS3.4 §B.2.3, §C.4.1.1.4, §C.4.2.1.5, PS3.7 §C), for reports and logs.
pub fn status_meaning(status: u16) -> &'static str {
    match status {
        0x0000 => "success",
        0xFF00 | 0xFF01 => "pending",
        0xFE00 => "cancelled",
        0x0001 | 0xB000 | 0xB007 | 0xB006 => "warning: some sub-operations failed or were coerced",
        0x0122 => "refused: SOP class not supported",
        0x0124 => "refused: not authorized",
        0xA701 => "refused: out of resources (cannot calculate the number of matches)",
        0xA702 => "refused: out of resources (cannot perform sub-operations)",
        0xA801 => "refused: move destination unknown",
        0xA900 => "error: identifier does not match SOP class",
        s if s & 0xF000 == 0xA000 => "refused: out of resources",
        s if s & 0xF000 == 0xC000 => "failed: unable to process",
        _ => "failed",
    }
}

/// An identifier (query keys) in `encoding`: each `(tag, vr, value)`, an empty value asking the
/// peer to return that attribute.
pub fn identifier(keys: &[(Tag, VR, &str)], encoding: Encoding) -> Vec<u8> {
    let mut ds = DataSet::default();
    for (tag, vr, value) in keys {
        ds.put(Element {
            tag: *tag,
            vr: *vr,
            value: Value::Bytes(Cow::Owned(pad_text(*vr, value.as_bytes().to_vec()))),
        });
    }
    let mut out = Vec::with_capacity(256);
    write_dataset(&ds, encoding, &mut out).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_request_carries_its_destination_and_a_correct_group_length() {
        let rq = request(Kind::Move, 9, "1.2.840.10008.5.1.4.1.2.2.2", None, Some("ANONYMIZER"));
        let ds = read_command(&rq).unwrap();
        assert_eq!(command_us(&ds, COMMAND_FIELD), Some(0x0021));
        assert_eq!(command_us(&ds, MESSAGE_ID), Some(9));
        assert_eq!(ds.text(MOVE_DESTINATION), Some("ANONYMIZER"));
        assert_eq!(command_us(&ds, COMMAND_DATA_SET_TYPE), Some(0));
        let group_length = u32::from_le_bytes(rq[8..12].try_into().unwrap()) as usize;
        assert_eq!(group_length, rq.len() - 12);
    }

    #[test]
    fn a_pending_move_response_yields_its_counts() {
        let mut ds = DataSet::default();
        put_command_us(&mut ds, COMMAND_FIELD, 0x8021);
        put_command_us(&mut ds, MESSAGE_ID_BEING_RESPONDED_TO, 9);
        put_command_us(&mut ds, COMMAND_DATA_SET_TYPE, NO_DATA_SET);
        put_command_us(&mut ds, STATUS, 0xFF00);
        put_command_us(&mut ds, REMAINING, 3);
        put_command_us(&mut ds, COMPLETED, 2);
        let rsp = Response::parse(&encode_command(&ds)).unwrap();
        assert!(rsp.is_pending() && !rsp.has_data_set);
        assert_eq!(rsp.counts.remaining, Some(3));
        assert_eq!(rsp.counts.completed, Some(2));
        assert_eq!(rsp.counts.failed, None);
        assert_eq!(status_meaning(0xA801), "refused: move destination unknown");
    }
}
