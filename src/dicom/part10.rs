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
    /// (0002,0002) and (0002,0003), empty when absent: what the file says it holds.
    pub media_storage_sop_class_uid: String,
    pub media_storage_sop_instance_uid: String,
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
        let uid = |e| meta.text(Tag(0x0002, e)).unwrap_or_default().to_string();
        let meta = FileMeta {
            transfer_syntax: TransferSyntax::new(ts),
            media_storage_sop_class_uid: uid(0x0002),
            media_storage_sop_instance_uid: uid(0x0003),
        };
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::dicom::read::tests::explicit;
    use crate::dicom::read_dataset;
    use crate::dicom::syntax::{DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE, IMPLICIT_VR_LE};

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn instance() -> DataSet<'static> {
        let mut ds = DataSet::default();
        ds.put_text(Tag(0x0008, 0x0016), VR::UI, CT);
        ds.put_text(Tag(0x0008, 0x0018), VR::UI, "1.2.3.4.5");
        ds.put_text(Tag(0x0010, 0x0020), VR::LO, "TRIAL-1");
        ds
    }

    fn part10(ds: &DataSet<'_>, ts: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_part10(ds, &TransferSyntax::new(ts), &mut out).unwrap();
        out
    }

    /// A file of 128 zeros, `DICM` and `meta` (explicit VR LE elements), then `body`.
    fn file(meta: &[Vec<u8>], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        meta.iter().for_each(|e| f.extend(e));
        f.extend(body);
        f
    }

    #[test]
    fn a_written_file_has_preamble_dicm_and_a_meta_group_that_parses_back() {
        let ds = instance();
        let out = part10(&ds, EXPLICIT_VR_LE);
        assert!(out[..128].iter().all(|&b| b == 0), "the preamble is zeros");
        assert_eq!(&out[128..132], b"DICM");
        assert!(is_part10(&out));
        // The group length counts the rest of the group: the data set starts right after it.
        assert_eq!(&out[132..140], &[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        let group_length = u32::from_le_bytes(out[140..144].try_into().unwrap()) as usize;
        let p = Part10::parse(&out).unwrap();
        assert_eq!(p.body_offset(&out), 144 + group_length);
        assert_eq!(p.meta.transfer_syntax, TransferSyntax::new(EXPLICIT_VR_LE));
        assert_eq!(read_dataset(p.body, Encoding::EXPLICIT_LE).unwrap(), ds);

        let (meta, used) = read_prefix(&out[132..], Encoding::EXPLICIT_LE, |t| t.0 == 0x0002).unwrap();
        assert_eq!(used, 12 + group_length);
        assert_eq!(meta.bytes(Tag(0x0002, 0x0001)), Some(&[0u8, 1][..]), "meta version 00 01");
        assert_eq!(meta.text(Tag(0x0002, 0x0002)), Some(CT), "media storage class from the data set");
        assert_eq!(meta.text(Tag(0x0002, 0x0003)), Some("1.2.3.4.5"), "and its instance");
        assert_eq!(meta.text(Tag(0x0002, 0x0012)), Some(IMPLEMENTATION_CLASS_UID));
        assert_eq!(meta.text(Tag(0x0002, 0x0013)), Some(IMPLEMENTATION_VERSION_NAME));
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16, "SH holds 16 characters");
        let even = |e: &Element<'_>| matches!(&e.value, Value::Bytes(b) if b.len() % 2 == 0);
        assert!(meta.elements.iter().all(even), "every value has even length");
        assert_eq!(media_storage_sop_class(&out).as_deref(), Some(CT));
    }

    #[test]
    fn the_data_set_is_written_in_the_files_syntax_and_deflated_input_is_written_plain() {
        let ds = instance();
        let implicit = part10(&ds, IMPLICIT_VR_LE);
        let p = Part10::parse(&implicit).unwrap();
        assert_eq!(p.meta.transfer_syntax.uid, IMPLICIT_VR_LE);
        assert_eq!(read_dataset(p.body, Encoding::IMPLICIT_LE).unwrap(), ds);

        let deflated = part10(&ds, DEFLATED_EXPLICIT_VR_LE);
        let p = Part10::parse(&deflated).unwrap();
        assert_eq!(p.meta.transfer_syntax.uid, EXPLICIT_VR_LE);
        assert_eq!(read_dataset(p.body, Encoding::EXPLICIT_LE).unwrap(), ds);
    }

    #[test]
    fn a_file_without_preamble_or_dicm_is_not_dicom() {
        let out = part10(&instance(), EXPLICIT_VR_LE);
        // The same bytes without the preamble: `DICM` comes first.
        assert!(matches!(Part10::parse(&out[128..]), Err(Part10Error::NotDicom)));
        // A bare data set, as some writers store it.
        assert!(matches!(Part10::parse(&out[144..]), Err(Part10Error::NotDicom)));
        let mut wrong = out.clone();
        wrong[128..132].copy_from_slice(b"DICN");
        assert!(matches!(Part10::parse(&wrong), Err(Part10Error::NotDicom)));
        assert!(!is_part10(&out[..131]), "too short to hold DICM");
        assert!(is_part10(&out[..132]));
        assert_eq!(media_storage_sop_class(&out[128..]), None);
    }

    #[test]
    fn a_meta_group_without_a_transfer_syntax_or_out_of_order_is_refused() {
        let body = explicit((0x0010, 0x0020), b"LO", b"TRIAL-1 ");
        let class = explicit((0x0002, 0x0002), b"UI", b"1.2\0");
        let ts = explicit((0x0002, 0x0010), b"UI", EXPLICIT_VR_LE.as_bytes());
        let empty_ts = explicit((0x0002, 0x0010), b"UI", b"");

        let f = file(&[class.clone(), ts.clone()], &body);
        let p = Part10::parse(&f).unwrap();
        assert_eq!(p.body, &body[..], "the data set starts where group 0002 ends");

        for meta in [vec![class.clone()], vec![class.clone(), empty_ts]] {
            match Part10::parse(&file(&meta, &body)) {
                Err(e @ Part10Error::MetaMissing(_)) => assert!(e.to_string().contains("(0002,0010)"), "{e}"),
                other => panic!("expected MetaMissing, got {:?}", other.map(|p| p.meta)),
            }
        }
        match Part10::parse(&file(&[ts, class], &body)) {
            Err(Part10Error::Meta(ReadError::Unexpected { expected, .. })) => {
                assert_eq!(expected, "ascending tags")
            }
            other => panic!("expected Meta(Unexpected), got {:?}", other.map(|p| p.meta)),
        }
        // A meta element whose length runs past the file.
        let mut cut = file(&[explicit((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1\0")], &[]);
        cut.truncate(cut.len() - 4);
        assert!(matches!(Part10::parse(&cut), Err(Part10Error::Meta(ReadError::Truncated { .. }))));
    }

    /// The meta group is found by its tags: (0002,0000) is written, never trusted when read, so a
    /// group length that is wrong neither cuts the group short nor swallows the data set.
    #[test]
    fn a_wrong_group_length_is_not_what_delimits_the_meta_group() {
        let body = explicit((0x0010, 0x0020), b"LO", b"TRIAL-1 ");
        let ts = explicit((0x0002, 0x0010), b"UI", EXPLICIT_VR_LE.as_bytes());
        for claimed in [0u32, 4, 1000] {
            let length = explicit((0x0002, 0x0000), b"UL", &claimed.to_le_bytes());
            let f = file(&[length, ts.clone()], &body);
            let p = Part10::parse(&f).unwrap();
            assert_eq!(p.body, &body[..], "group length {claimed}");
            assert_eq!(p.meta.transfer_syntax.uid, EXPLICIT_VR_LE);
        }
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn inflating_gives_the_data_set_back_and_stops_at_the_limit() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let z = deflate(&data);
        let mut out = Vec::new();
        assert_eq!(inflate_into(&z[..], data.len() as u64, &mut out).unwrap(), data.len() as u64);
        assert_eq!(out, data);

        // A bomb: a megabyte of zeros in about a kilobyte, refused at the limit.
        let bomb = deflate(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 4096);
        let mut out = Vec::new();
        match inflate_into(&bomb[..], 100_000, &mut out) {
            Err(InflateError::TooLarge { limit }) => assert_eq!(limit, 100_000),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(out.len() <= 100_000, "nothing past the limit is written: {}", out.len());
    }

    #[test]
    fn a_stream_that_is_not_deflate_is_corrupt_and_a_failing_output_is_io() {
        let garbage = [0xFFu8; 64];
        assert!(matches!(
            inflate_into(&garbage[..], 1 << 20, &mut Vec::new()),
            Err(InflateError::Corrupt(_))
        ));
        let z = deflate(b"0123456789");
        assert!(
            matches!(
                inflate_into(&z[..z.len() - 3], 1 << 20, &mut Vec::new()),
                Err(InflateError::Corrupt(_))
            ),
            "a truncated stream"
        );
        struct Full;
        impl std::io::Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(inflate_into(&z[..], 1 << 20, &mut Full), Err(InflateError::Io(_))));
    }
}
