//! A `multipart/related` body (RFC 2046 §5.1, RFC 2387), read as it streams: each part's
//! headers, then its bytes in chunks, never the whole body nor a whole part in memory.
//!
//! Written here rather than taken from `multer` (the crate axum uses for forms): `multer` keeps
//! the preamble and a part's header section in memory until it finds their end, bounded only by
//! the limit on the whole body, so a body without a boundary, or a header line of gigabytes, is
//! held in memory whole. Here every stretch that is not part data has a small bound of its own,
//! and part data is handed on as it arrives, keeping back only what may be the start of the next
//! delimiter.
//!
//! The parser is sans-IO ([`Parser`]: bytes in, [`Event`]s out), so it is tested on every split
//! of a body; [`Multipart`] drives it from an HTTP body stream.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// The preamble before the first delimiter (clients send none; RFC 2046 allows some).
const MAX_PREAMBLE: usize = 64 << 10;
/// One part's header section.
const MAX_HEADERS: usize = 16 << 10;
/// A boundary's length (see [`related`]).
const MAX_BOUNDARY: usize = 200;
/// Whitespace after a delimiter, before its line ends (RFC 2046's transport padding).
const MAX_PADDING: usize = 1 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("the body ends before its closing delimiter")]
    Truncated,
    #[error(
        "no delimiter in the first {MAX_PREAMBLE} bytes of the body: the boundary is not the one announced"
    )]
    NoDelimiter,
    #[error("a delimiter line does not end after it (bytes follow the boundary)")]
    BadDelimiter,
    #[error("a part's header section is longer than {MAX_HEADERS} bytes")]
    HeadersTooLong,
    #[error("a part's header line is not `Name: value`")]
    BadHeader,
    #[error("the body could not be read: {0}")]
    Body(String),
}

/// What a part's header section says. Only `Content-Type` matters to STOW-RS; parts without one
/// take the type the request announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartHeaders {
    pub content_type: Option<String>,
}

/// What the parser found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A part begins; its data follows.
    Part(PartHeaders),
    /// Some of the current part's bytes.
    Data(Bytes),
    /// The current part is complete.
    PartEnd,
    /// The closing delimiter: the body is complete (an epilogue after it is ignored).
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble {
        seen: usize,
    },
    /// Just after a delimiter: `--` closes the body, otherwise padding and CRLF start a part.
    AfterDelimiter,
    Headers,
    Data,
    Epilogue,
}

/// Bytes in, events out.
pub struct Parser {
    /// `CRLF--boundary`: a delimiter, with the line break before it that belongs to it.
    delimiter: Vec<u8>,
    buf: BytesMut,
    state: State,
    finder: memchr::memmem::Finder<'static>,
}

impl Parser {
    pub fn new(boundary: &str) -> Parser {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        let finder = memchr::memmem::Finder::new(&delimiter).into_owned();
        // The first delimiter may open the body with no line break before it: one is supplied.
        let mut buf = BytesMut::with_capacity(64 << 10);
        buf.extend_from_slice(b"\r\n");
        Parser { delimiter, buf, state: State::Preamble { seen: 0 }, finder }
    }

    /// Take more of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.state != State::Epilogue {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next event, or `None` when more bytes are needed. With `eof` (nothing more will
    /// come), a body that has not closed is [`MultipartError::Truncated`].
    pub fn next(&mut self, eof: bool) -> Result<Option<Event>, MultipartError> {
        loop {
            let step = match self.state {
                State::Preamble { seen } => self.preamble(seen)?,
                State::AfterDelimiter => self.after_delimiter()?,
                State::Headers => self.headers()?,
                State::Data => self.data(),
                State::Epilogue => Step::Event(Event::End),
            };
            match step {
                Step::Event(e) => return Ok(Some(e)),
                Step::Again => continue,
                Step::More if eof => return Err(MultipartError::Truncated),
                Step::More => return Ok(None),
            }
        }
    }

    /// Skip to the first delimiter, keeping only what may be its beginning.
    fn preamble(&mut self, seen: usize) -> Result<Step, MultipartError> {
        if let Some(at) = self.finder.find(&self.buf) {
            self.buf.advance(at + self.delimiter.len());
            self.state = State::AfterDelimiter;
            return Ok(Step::Again);
        }
        let drop = self.buf.len().saturating_sub(self.delimiter.len() - 1);
        let seen = seen + drop;
        if seen > MAX_PREAMBLE {
            return Err(MultipartError::NoDelimiter);
        }
        self.buf.advance(drop);
        self.state = State::Preamble { seen };
        Ok(Step::More)
    }

    /// `--` closes the body; otherwise optional padding and a line break open a part.
    fn after_delimiter(&mut self) -> Result<Step, MultipartError> {
        if self.buf.len() < 2 {
            return Ok(Step::More);
        }
        if self.buf.starts_with(b"--") {
            self.buf.clear();
            self.state = State::Epilogue;
            return Ok(Step::Again);
        }
        let padding = self.buf.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
        if padding > MAX_PADDING {
            return Err(MultipartError::BadDelimiter);
        }
        match self.buf.get(padding..padding + 2) {
            None => Ok(Step::More),
            Some(b"\r\n") => {
                self.buf.advance(padding + 2);
                self.state = State::Headers;
                Ok(Step::Again)
            }
            Some(_) => Err(MultipartError::BadDelimiter),
        }
    }

    /// The header section, up to the empty line that ends it (at once, for a part without
    /// headers).
    fn headers(&mut self) -> Result<Step, MultipartError> {
        let end = if self.buf.starts_with(b"\r\n") {
            Some(0)
        } else {
            memchr::memmem::find(&self.buf, b"\r\n\r\n").map(|at| at + 2)
        };
        let Some(end) = end else {
            if self.buf.len() > MAX_HEADERS {
                return Err(MultipartError::HeadersTooLong);
            }
            return Ok(Step::More);
        };
        if end > MAX_HEADERS {
            return Err(MultipartError::HeadersTooLong);
        }
        let section = self.buf.split_to(end + 2);
        let headers = parse_headers(&section[..end])?;
        self.state = State::Data;
        Ok(Step::Event(Event::Part(headers)))
    }

    /// Part data up to the next delimiter; without one in sight, all but what may begin it.
    fn data(&mut self) -> Step {
        if let Some(at) = self.finder.find(&self.buf) {
            if at > 0 {
                return Step::Event(Event::Data(self.buf.split_to(at).freeze()));
            }
            self.buf.advance(self.delimiter.len());
            self.state = State::AfterDelimiter;
            return Step::Event(Event::PartEnd);
        }
        let safe = self.buf.len().saturating_sub(self.delimiter.len() - 1);
        if safe == 0 {
            return Step::More;
        }
        Step::Event(Event::Data(self.buf.split_to(safe).freeze()))
    }
}

/// What a state did: found an event, moved on (look again), or needs more bytes.
enum Step {
    Event(Event),
    Again,
    More,
}

/// `Name: value` lines (RFC 5322 §2.2; folded lines are not allowed in MIME part headers that
/// HTTP clients write, and none of ours need them).
fn parse_headers(section: &[u8]) -> Result<PartHeaders, MultipartError> {
    let mut headers = PartHeaders::default();
    let text = std::str::from_utf8(section).map_err(|_| MultipartError::BadHeader)?;
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(MultipartError::BadHeader)?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(MultipartError::BadHeader);
        }
        if name.eq_ignore_ascii_case("content-type") {
            headers.content_type = Some(value.trim().to_string());
        }
    }
    Ok(headers)
}

/// A body stream read as parts.
pub struct Multipart<S> {
    stream: S,
    parser: Parser,
    eof: bool,
    /// Set between a part's `Part` and `PartEnd`.
    in_part: bool,
}

impl<S, E> Multipart<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(stream: S, boundary: &str) -> Multipart<S> {
        Multipart { stream, parser: Parser::new(boundary), eof: false, in_part: false }
    }

    /// The next part's headers; `None` after the closing delimiter. The rest of an unread part
    /// is skipped.
    pub async fn next_part(&mut self) -> Result<Option<PartHeaders>, MultipartError> {
        loop {
            match self.event().await? {
                Event::Part(h) => {
                    self.in_part = true;
                    return Ok(Some(h));
                }
                Event::End => return Ok(None),
                Event::Data(_) | Event::PartEnd => {}
            }
        }
    }

    /// The current part's next bytes; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, MultipartError> {
        if !self.in_part {
            return Ok(None);
        }
        match self.event().await? {
            Event::Data(b) => Ok(Some(b)),
            Event::PartEnd => {
                self.in_part = false;
                Ok(None)
            }
            // The parser yields a part's end before anything else.
            Event::Part(_) | Event::End => Err(MultipartError::Truncated),
        }
    }

    async fn event(&mut self) -> Result<Event, MultipartError> {
        loop {
            if let Some(e) = self.parser.next(self.eof)? {
                return Ok(e);
            }
            match self.stream.next().await {
                Some(Ok(bytes)) => self.parser.push(&bytes),
                Some(Err(e)) => return Err(MultipartError::Body(e.to_string())),
                None => self.eof = true,
            }
        }
    }
}

/// The boundary of a `multipart/related` content type, and its `type` parameter (the parts'
/// media type, which STOW-RS requires).
///
/// Parameters are read leniently: RFC 2045 wants `type="application/dicom"` quoted (a `/` is
/// special), but common senders (Orthanc's DICOMweb plugin among them) leave it bare.
pub fn related(content_type: &str) -> Option<(String, Option<String>)> {
    let mut fields = content_type.split(';');
    let essence = fields.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/related") {
        return None;
    }
    let (mut boundary, mut part_type) = (None, None);
    for field in fields {
        let Some((name, value)) = field.split_once('=') else { continue };
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        match name.trim().to_ascii_lowercase().as_str() {
            "boundary" => boundary = Some(value.to_string()),
            "type" => part_type = Some(value.to_string()),
            _ => {}
        }
    }
    // RFC 2046 §5.1.1 says 1 to 70 characters, but Orthanc's DICOMweb plugin sends 73 (two
    // UUIDs and a dash): a longer bound, still small enough for the delimiter search.
    let boundary = boundary.filter(|b| !b.is_empty() && b.len() <= MAX_BOUNDARY)?;
    Some((boundary, part_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ-boundary";

    fn body(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (ct, data) in parts {
            b.extend_from_slice(format!("--{B}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        b
    }

    /// A part's Content-Type and bytes.
    type Part = (Option<String>, Vec<u8>);

    /// Every part, feeding `bytes` in pieces of `step`.
    fn parse(bytes: &[u8], step: usize) -> Result<Vec<Part>, MultipartError> {
        let mut p = Parser::new(B);
        let mut parts: Vec<Part> = Vec::new();
        let mut chunks = bytes.chunks(step);
        loop {
            let eof = chunks.len() == 0;
            match p.next(eof)? {
                Some(Event::Part(h)) => parts.push((h.content_type, Vec::new())),
                Some(Event::Data(d)) => parts.last_mut().expect("data inside a part").1.extend_from_slice(&d),
                Some(Event::PartEnd) => {}
                Some(Event::End) => return Ok(parts),
                None => p.push(chunks.next().expect("more wanted only before eof")),
            }
        }
    }

    #[test]
    fn parts_come_out_whole_whatever_the_chunking() {
        // Data that holds the boundary's text without the CRLF before it, and CRLFs.
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let second = format!("x--{B} not a delimiter\r\n\r\n\n--{B}x\r\n-").into_bytes();
        let bytes =
            body(&[("application/dicom", &first), ("application/dicom", &second), ("text/plain", b"")]);
        for step in [1, 2, 3, 7, 13, 64, 1000, bytes.len()] {
            let parts = parse(&bytes, step).unwrap();
            assert_eq!(parts.len(), 3, "step {step}");
            assert_eq!(parts[0], (Some("application/dicom".into()), first.clone()), "step {step}");
            assert_eq!(parts[1].1, second, "step {step}");
            assert_eq!(parts[2], (Some("text/plain".into()), vec![]), "step {step}");
        }
    }

    #[test]
    fn a_preamble_padding_no_headers_and_an_epilogue_are_allowed() {
        let bytes = format!(
            "this is a preamble\r\n--{B}  \t\r\n\r\npart one\r\n--{B}\r\ncontent-TYPE:application/dicom\r\nX-Other: y\r\n\r\ntwo\r\n--{B}--  epilogue, ignored"
        );
        let parts = parse(bytes.as_bytes(), 5).unwrap();
        assert_eq!(
            parts,
            [(None, b"part one".to_vec()), (Some("application/dicom".into()), b"two".to_vec())]
        );
    }

    #[test]
    fn a_body_that_stops_anywhere_before_its_close_is_truncated() {
        let bytes = body(&[("application/dicom", b"0123456789")]);
        let close = bytes.len() - format!("--{B}--\r\n").len() + format!("--{B}--").len();
        for cut in 0..close {
            assert_eq!(parse(&bytes[..cut], 3), Err(MultipartError::Truncated), "cut at {cut}");
        }
        assert!(parse(&bytes[..close], 3).is_ok());
    }

    #[test]
    fn the_wrong_boundary_is_found_out_within_the_preamble_bound() {
        let mut bytes = body(&[("application/dicom", b"x")]).repeat(1);
        bytes = String::from_utf8(bytes).unwrap().replace(B, "other").into_bytes();
        assert_eq!(parse(&bytes, 100), Err(MultipartError::Truncated), "a short body ends first");
        // A long body without the delimiter is refused once the bound is passed, not read whole.
        let mut p = Parser::new(B);
        let mut fed = 0;
        let err = loop {
            match p.next(false) {
                Ok(None) => {
                    p.push(&[b'a'; 4096]);
                    fed += 4096;
                }
                Ok(Some(e)) => panic!("{e:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, MultipartError::NoDelimiter);
        assert!(fed <= MAX_PREAMBLE + 8192, "{fed}");
        assert!(p.buf.len() < 2 * 4096, "the preamble is not kept: {}", p.buf.len());
    }

    #[test]
    fn endless_headers_and_bad_lines_are_refused() {
        let mut p = Parser::new(B);
        p.push(format!("--{B}\r\nContent-Type: ").as_bytes());
        let err = loop {
            match p.next(false) {
                Ok(None) => p.push(&[b'a'; 1024]),
                Ok(Some(e)) => panic!("{e:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, MultipartError::HeadersTooLong);
        let bad = format!("--{B}\r\nno colon here\r\n\r\nx\r\n--{B}--");
        assert_eq!(parse(bad.as_bytes(), 4), Err(MultipartError::BadHeader));
        let glued = format!("--{B}garbage\r\n\r\nx\r\n--{B}--");
        assert_eq!(parse(glued.as_bytes(), 4), Err(MultipartError::BadDelimiter));
    }

    #[test]
    fn data_is_handed_on_as_it_arrives() {
        let mut p = Parser::new(B);
        p.push(format!("--{B}\r\n\r\n").as_bytes());
        assert!(matches!(p.next(false), Ok(Some(Event::Part(_)))));
        let mut out = 0;
        for _ in 0..100 {
            p.push(&[7u8; 10_000]);
            while let Some(Event::Data(d)) = p.next(false).unwrap() {
                out += d.len();
            }
            assert!(p.buf.len() < B.len() + 4, "kept back only a delimiter's length: {}", p.buf.len());
        }
        assert!(out > 999_000, "{out}");
    }

    #[test]
    fn the_content_type_must_be_multipart_related_with_a_boundary() {
        let (b, t) = related(r#"multipart/related; type="application/dicom"; boundary=abc"#).unwrap();
        assert_eq!((b.as_str(), t.as_deref()), ("abc", Some("application/dicom")));
        assert_eq!(related("multipart/related; boundary=\"a b\"").unwrap(), ("a b".into(), None));
        let bare = related("Multipart/Related; type=application/dicom; boundary=xyz").unwrap();
        assert_eq!(bare, ("xyz".into(), Some("application/dicom".into())), "as Orthanc sends it");
        assert!(related("multipart/form-data; boundary=abc").is_none());
        assert!(related("multipart/related").is_none());
        assert!(related("application/dicom").is_none());
        assert!(related(&format!("multipart/related; boundary={}", "a".repeat(73))).is_some());
        assert!(related(&format!("multipart/related; boundary={}", "a".repeat(MAX_BOUNDARY + 1))).is_none());
        assert!(related("multipart/related; boundary=").is_none());
    }
}
