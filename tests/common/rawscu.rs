//! A minimal C-STORE SCU over dicom-ul's client, for what DCMTK's tools refuse to send: a data set
//! whose UIDs differ from its command, or bytes that do not parse.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use std::net::TcpStream;

use dicom_ul::association::client::{ClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

/// Send one C-STORE with the given command UIDs and raw data set bytes (Explicit VR LE); return
/// the response status.
pub fn store_raw(port: u16, called: &str, sop_class: &str, sop_instance: &str, data: &[u8]) -> u16 {
    store_raw_ts(port, called, sop_class, sop_instance, "1.2.840.10008.1.2.1", data)
}

/// An association proposing `sop_class` in `ts`, as `calling`.
pub fn associate(
    port: u16,
    calling: &str,
    called: &str,
    sop_class: &str,
    ts: &str,
) -> ClientAssociation<TcpStream> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling)
        .called_ae_title(called)
        .with_presentation_context(sop_class, vec![ts])
        .establish(("127.0.0.1", port))
        .expect("association")
}

/// [`store_raw`] in the transfer syntax `ts`.
pub fn store_raw_ts(
    port: u16,
    called: &str,
    sop_class: &str,
    sop_instance: &str,
    ts: &str,
    data: &[u8],
) -> u16 {
    store_raw_answer(port, called, sop_class, sop_instance, ts, data).0
}

/// [`store_raw_ts`], returning the status and the Error Comment (0000,0902) of the response.
pub fn store_raw_answer(
    port: u16,
    called: &str,
    sop_class: &str,
    sop_instance: &str,
    ts: &str,
    data: &[u8],
) -> (u16, Option<String>) {
    answer_in_context(port, called, sop_class, sop_class, sop_instance, ts, data)
}

/// [`store_raw_ts`] on a presentation context of `context_class`, which a correct SCU makes the
/// command's `sop_class` (the SCP answers 0x0122 when they differ).
pub fn store_in_context(
    port: u16,
    called: &str,
    context_class: &str,
    sop_class: &str,
    sop_instance: &str,
    ts: &str,
    data: &[u8],
) -> u16 {
    answer_in_context(port, called, context_class, sop_class, sop_instance, ts, data).0
}

fn answer_in_context(
    port: u16,
    called: &str,
    context_class: &str,
    sop_class: &str,
    sop_instance: &str,
    ts: &str,
    data: &[u8],
) -> (u16, Option<String>) {
    let mut scu = associate(port, "RAWSCU", called, context_class, ts);
    send_store(&mut scu, sop_class, sop_instance, data, true);
    let answer = response(scu.receive().unwrap());
    let _ = scu.release();
    answer
}

/// The C-STORE-RQ command and `data` in PDVs that fit any peer's maximum PDU length; with
/// `complete`, the last one says so, without it the data set stays open (the peer waits for more).
pub fn send_store(
    scu: &mut ClientAssociation<TcpStream>,
    sop_class: &str,
    sop_instance: &str,
    data: &[u8],
    complete: bool,
) {
    let pc = scu.presentation_contexts()[0].id;
    let us = |tag: Tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let ui = |tag: Tag, v: &str| DataElement::new(tag, VR::UI, PrimitiveValue::from(v));
    let command = InMemDicomObject::command_from_element_iter([
        ui(Tag(0x0000, 0x0002), sop_class),
        us(Tag(0x0000, 0x0100), 0x0001),
        us(Tag(0x0000, 0x0110), 1),
        us(Tag(0x0000, 0x0700), 0),
        us(Tag(0x0000, 0x0800), 0),
        ui(Tag(0x0000, 0x1000), sop_instance),
    ]);
    let mut command_bytes = Vec::new();
    command.write_dataset_with_ts(&mut command_bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
    let pdv = |value_type, data: Vec<u8>| PDataValue {
        presentation_context_id: pc,
        value_type,
        is_last: true,
        data,
    };
    scu.send(&Pdu::PData { data: vec![pdv(PDataValueType::Command, command_bytes)] }).unwrap();
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![data] } else { data.chunks(16_000).collect() };
    for (i, chunk) in chunks.iter().enumerate() {
        let mut value = pdv(PDataValueType::Data, chunk.to_vec());
        value.is_last = complete && i + 1 == chunks.len();
        scu.send(&Pdu::PData { data: vec![value] }).unwrap();
    }
}

/// The Status (0000,0900) of a DIMSE response PDU.
pub fn response_status(pdu: Pdu) -> u16 {
    response(pdu).0
}

/// The Status (0000,0900) and Error Comment (0000,0902) of a DIMSE response PDU.
pub fn response(pdu: Pdu) -> (u16, Option<String>) {
    match pdu {
        Pdu::PData { data } => {
            let rsp = InMemDicomObject::read_dataset_with_ts(
                &data[0].data[..],
                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
            )
            .unwrap();
            let status = rsp.element(Tag(0x0000, 0x0900)).unwrap().to_int::<u16>().unwrap();
            let comment =
                rsp.element(Tag(0x0000, 0x0902)).ok().and_then(|e| e.to_str().ok()).map(|c| c.to_string());
            (status, comment)
        }
        other => panic!("expected a DIMSE response, got {other:?}"),
    }
}
