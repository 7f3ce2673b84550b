//! What a STOW-RS request hears (PS3.18 §10.5.3): the HTTP status for the request as a whole,
//! and a data set with a Referenced SOP Sequence of the stored instances and a Failed SOP
//! Sequence of the others, each with its failure reason, in `application/dicom+json` or, when
//! the client asks for it, `application/dicom+xml` (the PS3.19 Native DICOM Model).
//!
//! The UIDs named are the sender's own, as it sent them: the anonymized ones never leave
//! through this door, and neither does any other value of the instances.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::queue::Reason;

/// Why one instance was not stored.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The Failure Reason (0008,1197): a C-STORE status code.
    pub code: u16,
    /// What the node says about it: the instance error, in our words (no value of the instance).
    pub comment: String,
    /// Where it was quarantined, when it was.
    pub reason: Option<Reason>,
    /// The instance is not what the request is for (another study than the URL names).
    pub conflict: bool,
    /// The node's fault, not the instance's: sending it again later may work.
    pub environment: bool,
}

impl Failure {
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    pub const NOT_AUTHORIZED: u16 = 0x0124;
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;

    pub fn new(code: u16, comment: &str) -> Failure {
        Failure { code, comment: comment.to_string(), reason: None, conflict: false, environment: false }
    }

    /// `0xA700`, as the audit trail and the metrics write statuses.
    pub fn code_text(&self) -> String {
        Failure::text(self.code)
    }

    /// A status `code` as the audit trail and the metrics write it.
    pub fn text(code: u16) -> String {
        format!("0x{code:04X}")
    }
}

/// The outcome of a request whose body was read (in whole or until it proved malformed).
#[derive(Debug, Default)]
pub struct Stow {
    /// SOP class and instance UIDs of the stored parts, as sent.
    pub stored: Vec<(String, String)>,
    pub failed: Vec<(String, String, Failure)>,
    /// The request was cut short: its status and why (what was stored before stays stored).
    pub refusal: Option<(StatusCode, String)>,
}

impl Stow {
    /// PS3.18 Table 10.5.3-1: 200 when every instance was stored, 202 when some were, 409 when
    /// none was for the instances' own reasons, 503 when none was for the node's; a request cut
    /// short keeps the status that cut it.
    pub fn status(&self) -> StatusCode {
        if let Some((code, _)) = &self.refusal {
            return *code;
        }
        match (self.stored.is_empty(), self.failed.is_empty()) {
            (false, true) => StatusCode::OK,
            (false, false) => StatusCode::ACCEPTED,
            (true, true) => StatusCode::BAD_REQUEST,
            (true, false) if self.failed.iter().all(|(_, _, f)| f.environment) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            (true, false) => StatusCode::CONFLICT,
        }
    }

    /// The Error Comment of the response as a whole: why the request was cut short, or that it
    /// held no part.
    fn comment(&self) -> Option<&str> {
        let empty = self.stored.is_empty() && self.failed.is_empty();
        self.refusal.as_ref().map(|(_, why)| why.as_str()).or(empty.then_some("the request holds no part"))
    }

    /// The response data set in DICOM JSON (PS3.18 Annex F).
    pub fn json(&self) -> Value {
        let mut top = Map::new();
        if let Some(why) = self.comment() {
            top.insert("00000902".into(), text("LO", why));
        }
        let failed = self.failed.iter().map(|(class, instance, f)| {
            let mut item = reference(class, instance);
            item.insert("00081197".into(), json!({ "vr": "US", "Value": [f.code] }));
            item.insert("00000902".into(), text("LO", &f.comment));
            Value::Object(item)
        });
        top.insert("00081198".into(), sequence(failed.collect()));
        let stored = self.stored.iter().map(|(class, instance)| Value::Object(reference(class, instance)));
        top.insert("00081199".into(), sequence(stored.collect()));
        Value::Object(top)
    }

    /// The same data set in the Native DICOM Model (PS3.19 §A.1).
    pub fn xml(&self) -> String {
        let mut x = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<NativeDicomModel xmlns=\"http://dicom.nema.org/PS3.19/models/NativeDICOM\">\n",
        );
        if let Some(why) = self.comment() {
            x += &xml_text("00000902", "LO", "ErrorComment", why);
        }
        let mut failed = String::new();
        for (i, (class, instance, f)) in self.failed.iter().enumerate() {
            let mut item = xml_reference(class, instance);
            item += &xml_text("00081197", "US", "FailureReason", &f.code.to_string());
            item += &xml_text("00000902", "LO", "ErrorComment", &f.comment);
            failed += &format!("<Item number=\"{}\">{item}</Item>", i + 1);
        }
        x += &format!("<DicomAttribute tag=\"00081198\" vr=\"SQ\" keyword=\"FailedSOPSequence\">{failed}</DicomAttribute>\n");
        let mut stored = String::new();
        for (i, (class, instance)) in self.stored.iter().enumerate() {
            stored += &format!("<Item number=\"{}\">{}</Item>", i + 1, xml_reference(class, instance));
        }
        x += &format!("<DicomAttribute tag=\"00081199\" vr=\"SQ\" keyword=\"ReferencedSOPSequence\">{stored}</DicomAttribute>\n");
        x + "</NativeDicomModel>\n"
    }
}

/// What the endpoint answers.
#[derive(Debug)]
pub enum Reply {
    /// Refused before any part was read (media type, path): a status and our words.
    Refused(StatusCode, String),
    Stow(Stow),
}

impl Reply {
    pub fn refused(code: StatusCode, why: &str) -> Reply {
        Reply::Refused(code, why.to_string())
    }

    /// The HTTP response, in XML when `accept` prefers `application/dicom+xml`.
    pub fn into_response(self, request: &HeaderMap) -> Response {
        let stow = match self {
            Reply::Refused(code, why) => return (code, format!("{why}\n")).into_response(),
            Reply::Stow(stow) => stow,
        };
        let (body, media) = if wants_xml(request) {
            (stow.xml(), "application/dicom+xml")
        } else {
            (format!("{}\n", stow.json()), "application/dicom+json")
        };
        let mut rsp = (stow.status(), body).into_response();
        rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
        rsp
    }
}

/// Whether the client's Accept names `application/dicom+xml` and not the JSON form (JSON is
/// the default, as PS3.18 makes it for STOW-RS responses).
fn wants_xml(request: &HeaderMap) -> bool {
    let accept =
        request.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let types: Vec<&str> = accept.split(',').filter_map(|t| t.split(';').next()).map(str::trim).collect();
    types.iter().any(|t| t.eq_ignore_ascii_case("application/dicom+xml"))
        && !types.iter().any(|t| t.eq_ignore_ascii_case("application/dicom+json"))
}

fn text(vr: &str, value: &str) -> Value {
    json!({ "vr": vr, "Value": [value] })
}

/// An SQ attribute; an empty one has no Value (PS3.18 §F.2.5).
fn sequence(items: Vec<Value>) -> Value {
    if items.is_empty() {
        json!({ "vr": "SQ" })
    } else {
        json!({ "vr": "SQ", "Value": items })
    }
}

/// An item naming one instance; a UID the part did not announce is left out.
fn reference(class: &str, instance: &str) -> Map<String, Value> {
    let mut item = Map::new();
    if !class.is_empty() {
        item.insert("00081150".into(), text("UI", class));
    }
    if !instance.is_empty() {
        item.insert("00081155".into(), text("UI", instance));
    }
    item
}

fn xml_reference(class: &str, instance: &str) -> String {
    let mut x = String::new();
    if !class.is_empty() {
        x += &xml_text("00081150", "UI", "ReferencedSOPClassUID", class);
    }
    if !instance.is_empty() {
        x += &xml_text("00081155", "UI", "ReferencedSOPInstanceUID", instance);
    }
    x
}

fn xml_text(tag: &str, vr: &str, keyword: &str, value: &str) -> String {
    format!(
        "<DicomAttribute tag=\"{tag}\" vr=\"{vr}\" keyword=\"{keyword}\"><Value number=\"1\">{}</Value></DicomAttribute>",
        escape(value)
    )
}

/// XML character data: the five predefined entities, and no control character (XML 1.0 allows
/// none but tab, CR and LF; a sender's UID may hold anything).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: u16, environment: bool) -> Failure {
        Failure { environment, ..Failure::new(code, "why") }
    }

    #[test]
    fn the_status_follows_ps3_18() {
        let stored = vec![("1.2".to_string(), "1.2.3".to_string())];
        let failed = vec![("1.2".to_string(), "1.2.4".to_string(), failure(0xC000, false))];
        let down = vec![("1.2".to_string(), "1.2.5".to_string(), failure(0xA700, true))];
        let s = |stored: &Vec<_>, failed: &Vec<_>| Stow {
            stored: stored.clone(),
            failed: failed.clone(),
            refusal: None,
        };
        assert_eq!(s(&stored, &vec![]).status(), StatusCode::OK);
        assert_eq!(s(&stored, &failed).status(), StatusCode::ACCEPTED);
        assert_eq!(s(&vec![], &failed).status(), StatusCode::CONFLICT);
        assert_eq!(s(&vec![], &down).status(), StatusCode::SERVICE_UNAVAILABLE);
        let mixed = [failed.clone(), down.clone()].concat();
        assert_eq!(s(&vec![], &mixed).status(), StatusCode::CONFLICT, "the instances' own faults decide");
        assert_eq!(s(&vec![], &vec![]).status(), StatusCode::BAD_REQUEST);
        let cut =
            Stow { refusal: Some((StatusCode::PAYLOAD_TOO_LARGE, "big".into())), ..s(&stored, &vec![]) };
        assert_eq!(cut.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn the_json_names_each_instance_with_its_failure_reason() {
        let stow = Stow {
            stored: vec![("1.2.840.10008.5.1.4.1.1.2".into(), "1.2.3".into())],
            failed: vec![("1.2.840.10008.5.1.4.1.1.2".into(), "1.2.4".into(), failure(0xA900, false))],
            refusal: None,
        };
        let j = stow.json();
        assert_eq!(j["00081199"]["vr"], "SQ");
        assert_eq!(j["00081199"]["Value"][0]["00081155"]["Value"][0], "1.2.3");
        assert_eq!(j["00081198"]["Value"][0]["00081155"]["Value"][0], "1.2.4");
        assert_eq!(j["00081198"]["Value"][0]["00081197"], json!({"vr": "US", "Value": [0xA900]}));
        let empty = Stow { stored: stow.stored.clone(), ..Stow::default() }.json();
        assert_eq!(empty["00081198"], json!({"vr": "SQ"}), "an empty sequence has no Value");
    }

    #[test]
    fn the_xml_is_well_formed_and_escaped() {
        let stow = Stow {
            stored: vec![("1.2".into(), "1.2.3".into())],
            failed: vec![("<&>\"'\u{1}".into(), String::new(), failure(0xC000, false))],
            refusal: None,
        };
        let x = stow.xml();
        let doc = roxmltree::Document::parse(&x).expect("well-formed XML");
        let failed = doc.descendants().find(|n| n.attribute("tag") == Some("00081150")).unwrap();
        assert_eq!(
            failed.descendants().find(|n| n.has_tag_name("Value")).unwrap().text(),
            Some("<&>\"'\u{FFFD}")
        );
        assert!(x.contains("<Value number=\"1\">1.2.3</Value>"));
        assert!(x.contains("<Value number=\"1\">49152</Value>"), "FailureReason 0xC000 in decimal");
    }

    #[test]
    fn xml_only_when_asked_for_and_json_not_preferred() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(wants_xml(&h("application/dicom+xml")));
        assert!(wants_xml(&h("application/dicom+xml; q=0.9, text/plain")));
        assert!(!wants_xml(&h("application/dicom+json, application/dicom+xml")));
        assert!(!wants_xml(&h("*/*")));
        assert!(!wants_xml(&HeaderMap::new()));
    }
}
