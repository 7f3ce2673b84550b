//! DICOM Part 10 files (PS3.10 §7.1): preamble, `DICM`, the file meta group, then the data set.

use std::borrow::Cow;
use std::io::{Read, Write};

use dicom_core::{Tag, VR};

use super::element::{pad_text, trim_padding, DataSet, Element, Value};
use super::read::{read_prefix, ReadError};
use super::syntax::{Encoding, TransferSyntax};
use super::write::{write_dataset, WriteError};

/// Our implementation class UID: a UUID-derived UID (PS3.5 §B.2), so it needs no registered root.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.130914155589001076100974887412066083568";
/// At most 16 characters (SH).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("DAG_", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum Part10Error {
    #[error("not a DICOM Part 10 file (no DICM prefix)")]
    NotDicom,
    #[error("file meta information is unreadable: {0}")]
    Meta(ReadError),
    #[error("file meta information lacks {0}")]
    MetaMissing(&'static str),
    #[error("data set is unreadable: {0}")]
    DataSet(#[from] ReadError),
}

/// Why a Deflated data set could not be inflated.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    /// The stream is not valid deflate: the sender's fault.
    #[error("deflated data set does not inflate: {0}")]
    Corrupt(std::io::Error),
    /// It inflates to more than this node accepts.
    #[error("deflated data set inflates to more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// Reading the input or writing the output failed: the node's fault.
    #[error("cannot inflate the data set: {0}")]
    Io(std::io::Error),
}

/// What the file meta says about the data set that follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub transfer_syntax: TransferSyntax,
}

/// A parsed file: its meta and the (still encoded, possibly Deflated) data set bytes.
pub struct Part10<'a> {
    pub meta: FileMeta,
    pub body: &'a [u8],
}

impl<'a> Part10<'a> {
    /// Split a Part 10 file (or its beginning, when the whole meta group is there) into meta and
    /// data set bytes.
    pub fn parse(buf: &'a [u8]) -> Result<Part10<'a>, Part10Error> {
        if !is_part10(buf) {
            return Err(Part10Error::NotDicom);
        }
        let rest = &buf[132..];
        let (meta, used) =
            read_prefix(rest, Encoding::EXPLICIT_LE, |t| t.0 == 0x0002).map_err(Part10Error::Meta)?;
        let ts = meta
            .text(Tag(0x0002, 0x0010))
            .filter(|t| !t.is_empty())
            .ok_or(Part10Error::MetaMissing("TransferSyntaxUID (0002,0010)"))?;
        let meta = FileMeta { transfer_syntax: TransferSyntax::new(ts) };
        Ok(Part10 { meta, body: &rest[used..] })
    }

    /// Where the data set starts in the file.
    pub fn body_offset(&self, file: &[u8]) -> usize {
        file.len() - self.body.len()
    }
}

/// Whether `buf` starts like a Part 10 file: a 128-byte preamble, then `DICM`.
pub fn is_part10(buf: &[u8]) -> bool {
    buf.len() >= 132 && &buf[128..132] == b"DICM"
}

/// The Media Storage SOP Class UID of a DICOMDIR (PS3.10 §8.6): a directory of a medium's
/// files, not an instance.
pub const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// The MediaStorageSOPClassUID (0002,0002) of a Part 10 file, from its beginning `buf` when the
/// meta group is there: what the file is, without reading its data set.
pub fn media_storage_sop_class(buf: &[u8]) -> Option<String> {
    if !is_part10(buf) {
        return None;
    }
    let (meta, _) = read_prefix(&buf[132..], Encoding::EXPLICIT_LE, |t| t.0 == 0x0002).ok()?;
    meta.text(Tag(0x0002, 0x0002)).map(str::to_string)
}

/// Write `ds` as a Part 10 file. The media storage UIDs come from the data set itself, so they can
/// never disagree with it (or carry an original UID the data set no longer has).
pub fn write_part10(ds: &DataSet<'_>, ts: &TransferSyntax, out: &mut impl Write) -> Result<(), WriteError> {
    let text =
        |tag: Tag| String::from_utf8_lossy(trim_padding(ds.bytes(tag).unwrap_or_default())).into_owned();
    let ts = ts.for_output();
    write_meta(&text(Tag(0x0008, 0x0016)), &text(Tag(0x0008, 0x0018)), &ts, out)?;
    write_dataset(ds, ts.encoding(), out)
}

/// Write the preamble, `DICM` and the file meta group for a data set in `ts` (written as is: the
/// caller chooses whether to inflate).
pub fn write_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    ts: &TransferSyntax,
    out: &mut impl Write,
) -> Result<(), WriteError> {
    let mut meta = DataSet::default();
    let mut put = |tag: Tag, vr: VR, v: &[u8]| {
        meta.elements.push(Element { tag, vr, value: Value::Bytes(Cow::Owned(pad_text(vr, v.to_vec()))) })
    };
    put(Tag(0x0002, 0x0001), VR::OB, &[0, 1]);
    put(Tag(0x0002, 0x0002), VR::UI, sop_class_uid.as_bytes());
    put(Tag(0x0002, 0x0003), VR::UI, sop_instance_uid.as_bytes());
    put(Tag(0x0002, 0x0010), VR::UI, ts.uid.as_bytes());
    put(Tag(0x0002, 0x0012), VR::UI, IMPLEMENTATION_CLASS_UID.as_bytes());
    put(Tag(0x0002, 0x0013), VR::SH, IMPLEMENTATION_VERSION_NAME.as_bytes());
    let mut meta_bytes = Vec::with_capacity(256);
    write_dataset(&meta, Encoding::EXPLICIT_LE, &mut meta_bytes)?;

    out.write_all(&[0u8; 128])?;
    out.write_all(b"DICM")?;
    // (0002,0000) FileMetaInformationGroupLength UL: the byte count of the rest of the group.
    out.write_all(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00])?;
    out.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&meta_bytes)?;
    Ok(())
}

/// Inflate a Deflated Explicit VR Little Endian data set (PS3.5 §A.5) as a stream into `out`, at
/// most `limit` bytes of it, so a zip bomb costs a bounded buffer and is refused at the limit.
/// Returns the inflated size.
pub fn inflate_into(input: impl Read, limit: u64, out: &mut impl Write) -> Result<u64, InflateError> {
    let mut decoder = flate2::read::DeflateDecoder::new(input);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidInput
                        | std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(InflateError::Corrupt(e))
            }
            Err(e) => return Err(InflateError::Io(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(InflateError::TooLarge { limit });
        }
        out.write_all(&buf[..n]).map_err(InflateError::Io)?;
    }
}
