//! DIMSE command sets (PS3.7 §9.3, §E.1): the few we speak, each parsed and built in one place,
//! and the statuses we answer with.

use std::borrow::Cow;

use crate::dicom::command_tags::{
    AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID, COMMAND_DATA_SET_TYPE, COMMAND_FIELD, ERROR_COMMENT,
    MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, NO_DATA_SET, STATUS,
};
use crate::dicom::{
    command_us, encode_command, pad_text, read_command, CommandSetError, DataSet, Element, Tag, Value, VR,
};

const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
const C_ECHO_RQ: u16 = 0x0030;
const C_ECHO_RSP: u16 = 0x8030;
const C_CANCEL_RQ: u16 = 0x0FFF;
/// C-STORE and C-ECHO statuses (PS3.4 §B.2.3, PS3.7 §C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0x0000);
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    /// Refused: not authorized (here: a Modality this node does not accept).
    pub const NOT_AUTHORIZED: Status = Status(0x0124);
    /// Refused: out of resources (disk, size limit, storage failure).
    pub const OUT_OF_RESOURCES: Status = Status(0xA700);
    /// Error: data set does not match SOP class (missing or mismatched UIDs).
    pub const DATA_SET_MISMATCH: Status = Status(0xA900);
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: Status = Status(0xC000);
    /// Failure: unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: Status = Status(0x0211);
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:04X}", self.0)
    }
}

/// A request command, as far as we act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Echo {
        message_id: u16,
    },
    Store {
        message_id: u16,
        sop_class_uid: String,
        sop_instance_uid: String,
    },
    /// C-CANCEL-RQ: it has no MessageID and gets no response; a C-STORE cannot be cancelled
    /// (PS3.7 §9.3.2.3), so it is ignored.
    Cancel,
    /// Anything else: answered with "unrecognized operation".
    Other {
        command_field: u16,
        message_id: u16,
        has_data_set: bool,
    },
}

impl Command {
    /// Parse a command set (always Implicit VR Little Endian, PS3.7 §6.3.1).
    pub fn parse(bytes: &[u8]) -> Result<Command, CommandSetError> {
        let ds = read_command(bytes)?;
        let field =
            command_us(&ds, COMMAND_FIELD).ok_or(CommandSetError::Missing("CommandField (0000,0100)"))?;
        if field == C_CANCEL_RQ {
            return Ok(Command::Cancel);
        }
        let message_id =
            command_us(&ds, MESSAGE_ID).ok_or(CommandSetError::Missing("MessageID (0000,0110)"))?;
        let has_data_set = command_us(&ds, COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET);
        let uid = |tag, name| {
            ds.text(tag).filter(|v| !v.is_empty()).map(str::to_string).ok_or(CommandSetError::Missing(name))
        };
        Ok(match field {
            C_ECHO_RQ => Command::Echo { message_id },
            C_STORE_RQ => Command::Store {
                message_id,
                sop_class_uid: uid(AFFECTED_SOP_CLASS_UID, "AffectedSOPClassUID (0000,0002)")?,
                sop_instance_uid: uid(AFFECTED_SOP_INSTANCE_UID, "AffectedSOPInstanceUID (0000,1000)")?,
            },
            command_field => Command::Other { command_field, message_id, has_data_set },
        })
    }

    /// Whether a data set follows this command.
    pub fn has_data_set(&self) -> bool {
        match self {
            Command::Echo { .. } | Command::Cancel => false,
            Command::Store { .. } => true,
            Command::Other { has_data_set, .. } => *has_data_set,
        }
    }
}

/// The response to `request` with `status`; `comment` (no PHI, at most 64 characters) explains a
/// failure.
pub fn response(request: &Command, status: Status, comment: Option<&str>) -> Vec<u8> {
    let (field, message_id, class, instance) = match request {
        Command::Echo { message_id } => (C_ECHO_RSP, *message_id, Some("1.2.840.10008.1.1"), None),
        Command::Store { message_id, sop_class_uid, sop_instance_uid } => {
            (C_STORE_RSP, *message_id, Some(sop_class_uid.as_str()), Some(sop_instance_uid.as_str()))
        }
        Command::Other { command_field, message_id, .. } => (command_field | 0x8000, *message_id, None, None),
        Command::Cancel => (C_CANCEL_RQ, 0, None, None),
    };
    let mut ds = DataSet::default();
    let mut put = |tag: Tag, vr: VR, value: Vec<u8>| {
        ds.put(Element { tag, vr, value: Value::Bytes(Cow::Owned(value)) })
    };
    if let Some(class) = class {
        put(AFFECTED_SOP_CLASS_UID, VR::UI, pad_text(VR::UI, class.as_bytes().to_vec()));
    }
    put(COMMAND_FIELD, VR::US, field.to_le_bytes().to_vec());
    put(MESSAGE_ID_BEING_RESPONDED_TO, VR::US, message_id.to_le_bytes().to_vec());
    put(COMMAND_DATA_SET_TYPE, VR::US, NO_DATA_SET.to_le_bytes().to_vec());
    put(STATUS, VR::US, status.0.to_le_bytes().to_vec());
    if let Some(comment) = comment.filter(|_| status != Status::SUCCESS) {
        let cut: String = comment
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
            .take(64)
            .collect();
        put(ERROR_COMMENT, VR::LO, pad_text(VR::LO, cut.into_bytes()));
    }
    if let Some(instance) = instance {
        put(AFFECTED_SOP_INSTANCE_UID, VR::UI, pad_text(VR::UI, instance.as_bytes().to_vec()));
    }
    encode_command(&ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_response_echoes_the_request_and_parses_back() {
        let request =
            Command::Store { message_id: 7, sop_class_uid: "1.2.3".into(), sop_instance_uid: "4.5.6".into() };
        let rsp = response(&request, Status::DATA_SET_MISMATCH, Some("SOPInstanceUID differs"));
        let ds = read_command(&rsp).unwrap();
        assert_eq!(command_us(&ds, COMMAND_FIELD), Some(C_STORE_RSP));
        assert_eq!(command_us(&ds, MESSAGE_ID_BEING_RESPONDED_TO), Some(7));
        assert_eq!(command_us(&ds, STATUS), Some(0xA900));
        assert_eq!(ds.text(AFFECTED_SOP_INSTANCE_UID), Some("4.5.6"));
        assert_eq!(ds.text(ERROR_COMMENT), Some("SOPInstanceUID differs"));
        let group_length = u32::from_le_bytes(rsp[8..12].try_into().unwrap()) as usize;
        assert_eq!(group_length, rsp.len() - 12);
    }

    #[test]
    fn an_echo_request_parses_with_its_message_id() {
        let echo = Command::Echo { message_id: 42 };
        let mut rq = response(&echo, Status::SUCCESS, None);
        // Turn the response into a request: CommandField 0x0030.
        let pos = rq.windows(4).position(|w| w == [0x00, 0x00, 0x00, 0x01]).unwrap();
        rq[pos + 8..pos + 10].copy_from_slice(&C_ECHO_RQ.to_le_bytes());
        let pos = rq.windows(4).position(|w| w == [0x00, 0x00, 0x20, 0x01]).unwrap();
        rq[pos + 2] = 0x10; // (0000,0120) -> (0000,0110) MessageID
        assert_eq!(Command::parse(&rq).unwrap(), Command::Echo { message_id: 42 });
    }
}
