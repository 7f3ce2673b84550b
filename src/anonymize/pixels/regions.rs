//! Region rules: rectangles to black out, chosen by what the header says about the device.
//!
//! Two formats that communities already maintain, loaded as they are (the project ships neither
//! library's text; the README says where they live):
//! - CTP's `DicomPixelAnonymizer.script`: `{ condition }` in CTP's filter language, then regions
//!   `(x,y,w,h)`; a negative x or y counts from the far edge; the first signature that matches wins.
//! - pydicom/deid's `%filter` sections: `LABEL` blocks of criteria (`contains`, `notcontains`,
//!   `equals`, `notequals`, `present`, `missing`, `empty`; `+` and, `||` or) with `coordinates
//!   x0,y0,x1,y1` or `ctpcoordinates x,y,w,h`; the first label that matches wins.

use std::path::Path;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;

use crate::dicom::{DataSet, Tag, Value, VR};

use super::image::Rect;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
}

/// A rectangle as a rule writes it; negative x or y counts from the right or bottom edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
}

impl Region {
    /// Where it falls in a frame of `cols` × `rows`.
    pub fn in_frame(self, cols: usize, rows: usize) -> Rect {
        let from_edge = |v: i64, size: usize| if v < 0 { (size as i64 + v).max(0) } else { v };
        let x = from_edge(self.x, cols) as usize;
        let y = from_edge(self.y, rows) as usize;
        Rect { x, y, w: self.w.max(0) as usize, h: self.h.max(0) as usize }
    }
}

/// A condition on the data set.
#[derive(Debug, Clone)]
enum Condition {
    Const(bool),
    Not(Box<Condition>),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Test { tag: Tag, test: Test },
}

#[derive(Debug, Clone)]
enum Test {
    Equals(String, bool),
    Contains(String, bool),
    StartsWith(String, bool),
    EndsWith(String, bool),
    Matches(regex::Regex),
    LessThan(f64),
    GreaterThan(f64),
    Present,
    Empty,
}

/// Signatures in the order they were written; the first match gives the regions.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    signatures: Vec<(Condition, Vec<Region>)>,
}

impl Rules {
    /// Load a CTP pixel script, or a deid recipe when the file has a `%filter` section.
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RulesError::Io { path: path.display().to_string(), source })?;
        let syntax = |message: String| RulesError::Syntax { path: path.display().to_string(), message };
        if text.lines().any(|l| l.trim_start().starts_with("%filter")) {
            parse_deid(&text).map_err(syntax)
        } else {
            parse_ctp(&text).map_err(syntax)
        }
    }

    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }

    /// The regions of the first signature `ds` matches.
    pub fn regions_for(&self, ds: &DataSet<'_>, big_endian: bool) -> Option<&[Region]> {
        self.signatures.iter().find(|(c, _)| eval(c, ds, big_endian)).map(|(_, r)| r.as_slice())
    }
}

fn eval(c: &Condition, ds: &DataSet<'_>, big_endian: bool) -> bool {
    match c {
        Condition::Const(b) => *b,
        Condition::Not(c) => !eval(c, ds, big_endian),
        Condition::And(cs) => cs.iter().all(|c| eval(c, ds, big_endian)),
        Condition::Or(cs) => cs.iter().any(|c| eval(c, ds, big_endian)),
        Condition::Test { tag, test } => {
            let value = value_text(ds, *tag, big_endian);
            let v = value.as_deref().unwrap_or("");
            let cmp = |s: &str, ignore_case: bool, f: fn(&str, &str) -> bool| {
                if ignore_case {
                    f(&v.to_lowercase(), &s.to_lowercase())
                } else {
                    f(v, s)
                }
            };
            match test {
                Test::Equals(s, i) => cmp(s, *i, |a, b| a == b),
                Test::Contains(s, i) => cmp(s, *i, |a, b| a.contains(b)),
                Test::StartsWith(s, i) => cmp(s, *i, |a, b| a.starts_with(b)),
                Test::EndsWith(s, i) => cmp(s, *i, |a, b| a.ends_with(b)),
                Test::Matches(re) => re.is_match(v),
                Test::LessThan(n) => v.trim().parse::<f64>().is_ok_and(|x| x < *n),
                Test::GreaterThan(n) => v.trim().parse::<f64>().is_ok_and(|x| x > *n),
                Test::Present => value.is_some(),
                Test::Empty => v.is_empty(),
            }
        }
    }
}

/// A top-level value as text: text VRs trimmed, binary numbers in decimal (`Rows.equals("480")`).
fn value_text(ds: &DataSet<'_>, tag: Tag, big_endian: bool) -> Option<String> {
    let e = ds.get(tag)?;
    let Value::Bytes(b) = &e.value else { return Some(String::new()) };
    let num = |n: usize| -> Vec<[u8; 8]> {
        b.chunks_exact(n)
            .map(|c| {
                let mut a = [0u8; 8];
                if big_endian {
                    a[8 - n..].copy_from_slice(c);
                    a.reverse();
                } else {
                    a[..n].copy_from_slice(c);
                }
                a
            })
            .collect()
    };
    let join = |v: Vec<String>| v.join("\\");
    Some(match e.vr {
        VR::US => join(num(2).iter().map(|a| u16::from_le_bytes([a[0], a[1]]).to_string()).collect()),
        VR::SS => join(num(2).iter().map(|a| i16::from_le_bytes([a[0], a[1]]).to_string()).collect()),
        VR::UL => {
            join(num(4).iter().map(|a| u32::from_le_bytes([a[0], a[1], a[2], a[3]]).to_string()).collect())
        }
        VR::SL => {
            join(num(4).iter().map(|a| i32::from_le_bytes([a[0], a[1], a[2], a[3]]).to_string()).collect())
        }
        _ => String::from_utf8_lossy(crate::dicom::trim_padding(b)).into_owned(),
    })
}

/// `Keyword`, `[gggg,eeee]` or `gggg,eeee`.
fn tag_of(name: &str) -> Result<Tag, String> {
    let inner = name.trim().trim_start_matches('[').trim_end_matches(']');
    if let Some((g, e)) = inner.split_once(',') {
        let hex = |s: &str| u16::from_str_radix(s.trim(), 16).map_err(|_| format!("bad tag {name:?}"));
        return Ok(Tag(hex(g)?, hex(e)?));
    }
    StandardDataDictionary
        .by_name(inner)
        .map(|e| e.tag())
        .ok_or_else(|| format!("unknown attribute {name:?}"))
}

fn parse_ctp(text: &str) -> Result<Rules, String> {
    let mut rules = Rules::default();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or("a { without its }")? + open;
        let condition = CtpParser::new(&rest[open + 1..close]).parse().map_err(|e| {
            let line = text[..text.len() - rest.len() + open].matches('\n').count() + 1;
            format!("line {line}: {e}")
        })?;
        rest = &rest[close + 1..];
        let until = rest.find('{').unwrap_or(rest.len());
        let regions = ctp_regions(&rest[..until]);
        rules.signatures.push((condition, regions));
        rest = &rest[until..];
    }
    Ok(rules)
}

/// Every `(a,b,c,d)` of four integers; other parentheses are comments, as CTP reads them.
fn ctp_regions(text: &str) -> Vec<Region> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('(') {
        let Some(len) = rest[open..].find(')') else { break };
        let inner = &rest[open + 1..open + len];
        let nums: Vec<i64> = inner.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        if nums.len() == 4 && inner.split(',').count() == 4 {
            out.push(Region { x: nums[0], y: nums[1], w: nums[2], h: nums[3] });
        }
        rest = &rest[open + len + 1..];
    }
    out
}

/// CTP's filter language: `*` and, `+` or, `!` not, parentheses, `true.`/`false.`, and
/// `Element.method("value")`.
struct CtpParser<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> CtpParser<'a> {
    fn new(s: &'a str) -> Self {
        CtpParser { s, i: 0 }
    }

    fn parse(mut self) -> Result<Condition, String> {
        let c = self.or()?;
        self.ws();
        if self.i < self.s.len() {
            return Err(format!("unexpected {:?}", &self.s[self.i..]));
        }
        Ok(c)
    }

    fn ws(&mut self) {
        while self.s[self.i..].starts_with(char::is_whitespace) {
            self.i += self.s[self.i..].chars().next().map_or(1, char::len_utf8);
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(token) {
            self.i += token.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Condition, String> {
        let mut terms = vec![self.and()?];
        while self.eat("+") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Condition::Or(terms) })
    }

    fn and(&mut self) -> Result<Condition, String> {
        let mut factors = vec![self.factor()?];
        while self.eat("*") {
            factors.push(self.factor()?);
        }
        Ok(if factors.len() == 1 { factors.remove(0) } else { Condition::And(factors) })
    }

    fn factor(&mut self) -> Result<Condition, String> {
        if self.eat("!") {
            return Ok(Condition::Not(Box::new(self.factor()?)));
        }
        if self.eat("(") {
            let c = self.or()?;
            if !self.eat(")") {
                return Err("a ( without its )".into());
            }
            return Ok(c);
        }
        if self.eat("true.") {
            return Ok(Condition::Const(true));
        }
        if self.eat("false.") {
            return Ok(Condition::Const(false));
        }
        self.ws();
        let start = self.i;
        let rest = &self.s[start..];
        let end = if rest.starts_with('[') {
            rest.find(']').map(|e| e + 1).ok_or("a [ without its ]")?
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == ',')).unwrap_or(rest.len())
        };
        if end == 0 {
            return Err(format!("expected an attribute at {:?}", rest));
        }
        let tag = tag_of(&rest[..end])?;
        self.i += end;
        if !self.eat(".") {
            return Err(format!("expected .method after {:?}", &rest[..end]));
        }
        self.ws();
        let rest = &self.s[self.i..];
        let name_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let method = &rest[..name_len];
        self.i += name_len;
        if !self.eat("(") {
            return Err(format!("expected ( after {method}"));
        }
        self.ws();
        let arg = if self.s[self.i..].starts_with('"') {
            let body = &self.s[self.i + 1..];
            let close = body.find('"').ok_or("an unterminated string")?;
            self.i += close + 2;
            Some(body[..close].to_string())
        } else {
            None
        };
        if !self.eat(")") {
            return Err(format!("expected ) after {method}("));
        }
        let arg = |what: &str| arg.clone().ok_or_else(|| format!("{what} needs a quoted value"));
        let number = |what: &str| -> Result<f64, String> {
            arg(what)?.trim().parse().map_err(|_| format!("{what} needs a number"))
        };
        let test = match method {
            "equals" => Test::Equals(arg(method)?, false),
            "equalsIgnoreCase" => Test::Equals(arg(method)?, true),
            "contains" => Test::Contains(arg(method)?, false),
            "containsIgnoreCase" => Test::Contains(arg(method)?, true),
            "startsWith" => Test::StartsWith(arg(method)?, false),
            "startsWithIgnoreCase" => Test::StartsWith(arg(method)?, true),
            "endsWith" => Test::EndsWith(arg(method)?, false),
            "endsWithIgnoreCase" => Test::EndsWith(arg(method)?, true),
            "matches" => Test::Matches(
                regex::Regex::new(&format!("^(?:{})$", arg(method)?)).map_err(|e| format!("matches: {e}"))?,
            ),
            "isLessThan" => Test::LessThan(number(method)?),
            "isGreaterThan" => Test::GreaterThan(number(method)?),
            other => return Err(format!("unknown method {other:?}")),
        };
        Ok(Condition::Test { tag, test })
    }
}

/// deid's `%filter` sections: each `LABEL` starts a signature; its criteria lines combine with
/// `+` (and) and `||` (or), left to right; `coordinates` lines give its regions.
fn parse_deid(text: &str) -> Result<Rules, String> {
    let mut rules = Rules::default();
    let mut in_filter = false;
    let mut current: Option<(Condition, Vec<Region>)> = None;
    let finish = |current: &mut Option<(Condition, Vec<Region>)>, rules: &mut Rules| {
        if let Some(sig) = current.take() {
            rules.signatures.push(sig);
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let at = |e: String| format!("line {}: {e}", n + 1);
        if line.is_empty() {
            continue;
        }
        if line.starts_with('%') {
            finish(&mut current, &mut rules);
            in_filter = line.starts_with("%filter");
            continue;
        }
        if !in_filter {
            continue;
        }
        if line.starts_with("LABEL") {
            finish(&mut current, &mut rules);
            current = Some((Condition::Const(true), Vec::new()));
            continue;
        }
        let Some((condition, regions)) = current.as_mut() else {
            return Err(at("a criterion before any LABEL".into()));
        };
        if let Some(spec) = line.strip_prefix("ctpcoordinates") {
            let r = four(spec).map_err(at)?;
            regions.push(Region { x: r[0], y: r[1], w: r[2], h: r[3] });
            continue;
        }
        if let Some(spec) = line.strip_prefix("coordinates") {
            if spec.trim().starts_with("from:") {
                return Err(at("coordinates from: (regions read from the header) is not supported".into()));
            }
            let r = four(spec).map_err(at)?;
            regions.push(Region { x: r[0], y: r[1], w: r[2] - r[0], h: r[3] - r[1] });
            continue;
        }
        let (join_or, criterion) = if let Some(c) = line.strip_prefix("||") {
            (true, c.trim())
        } else if let Some(c) = line.strip_prefix('+') {
            (false, c.trim())
        } else {
            (false, line)
        };
        let c = deid_criterion(criterion).map_err(at)?;
        let prev = std::mem::replace(condition, Condition::Const(true));
        *condition = match (prev, join_or) {
            (Condition::Const(true), false) => c,
            (prev, true) => Condition::Or(vec![prev, c]),
            (prev, false) => Condition::And(vec![prev, c]),
        };
    }
    finish(&mut current, &mut rules);
    Ok(rules)
}

fn four(spec: &str) -> Result<[i64; 4], String> {
    let nums: Vec<i64> = spec
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("coordinates need four integers, found {:?}", spec.trim()))?;
    nums.try_into().map_err(|_| format!("coordinates need four integers, found {:?}", spec.trim()))
}

fn deid_criterion(line: &str) -> Result<Condition, String> {
    let mut parts = line.splitn(3, char::is_whitespace);
    let action = parts.next().unwrap_or_default();
    let field = parts.next().ok_or_else(|| format!("{action} needs a field"))?;
    let value = parts.next().unwrap_or("").trim().to_string();
    let tag = tag_of(field)?;
    let test = |t| Condition::Test { tag, test: t };
    Ok(match action {
        "contains" => test(Test::Contains(value, true)),
        "notcontains" => Condition::Not(Box::new(test(Test::Contains(value, true)))),
        "equals" => test(Test::Equals(value, false)),
        "notequals" => Condition::Not(Box::new(test(Test::Equals(value, false)))),
        "present" => test(Test::Present),
        "missing" => Condition::Not(Box::new(test(Test::Present))),
        "empty" => test(Test::Empty),
        other => return Err(format!("unknown criterion {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(rows: u16, modality: &str, manufacturer: &str) -> DataSet<'static> {
        let mut ds = DataSet::default();
        ds.put_text(Tag(0x0008, 0x0060), VR::CS, modality);
        ds.put_text(Tag(0x0008, 0x0070), VR::LO, manufacturer);
        ds.put(crate::dicom::Element {
            tag: Tag(0x0028, 0x0010),
            vr: VR::US,
            value: Value::Bytes(rows.to_le_bytes().to_vec().into()),
        });
        ds
    }

    #[test]
    fn a_ctp_script_picks_the_first_matching_signature() {
        let script = r#"
            Burned-in Annotation Library (see the wiki)
            { Modality.equals("US") * Manufacturer.containsIgnoreCase("acme") * Rows.equals("480") }
              (0,0,640,60) (-100,-20,100,20)
            { Modality.equals("US") + [0008,0060].equals("XA") } (1,2,3,4)
            { !Modality.equals("CT") * (Manufacturer.startsWith("X") + true.) } (5,6,7,8)
        "#;
        let rules = parse_ctp(script).unwrap();
        assert_eq!(rules.len(), 3);
        let first = rules.regions_for(&us(480, "US", "ACME Medical"), false).unwrap();
        assert_eq!(first, [Region { x: 0, y: 0, w: 640, h: 60 }, Region { x: -100, y: -20, w: 100, h: 20 }]);
        assert_eq!(first[1].in_frame(640, 480), Rect { x: 540, y: 460, w: 100, h: 20 });
        assert_eq!(rules.regions_for(&us(600, "US", "ACME"), false).unwrap()[0].x, 1);
        assert_eq!(rules.regions_for(&us(600, "MR", "ACME"), false).unwrap()[0].x, 5);
        assert!(rules.regions_for(&us(600, "CT", "ACME"), false).is_none());
    }

    #[test]
    fn a_broken_ctp_condition_names_its_line() {
        let e = parse_ctp("\n\n{ Modality.looksLike(\"US\") } (0,0,1,1)").unwrap_err();
        assert!(e.contains("line 3") && e.contains("looksLike"), "{e}");
        assert!(parse_ctp("{ NoSuchKeyword.equals(\"x\") }").is_err());
    }

    #[test]
    fn a_deid_filter_loads_with_both_coordinate_forms() {
        let recipe = "FORMAT dicom\n%filter graylist\n\nLABEL Acme US # a site's note\n  contains Modality US\n  + contains Manufacturer acme\n  coordinates 0,0,640,60\n  ctpcoordinates 10,400,100,20\n\nLABEL Other\n  equals Modality XA\n  || equals Modality RF\n  coordinates 0,0,10,10\n%header\nREMOVE PatientName\n";
        let rules = parse_deid(recipe).unwrap();
        assert_eq!(rules.len(), 2);
        let r = rules.regions_for(&us(480, "US", "Acme"), false).unwrap();
        assert_eq!(r, [Region { x: 0, y: 0, w: 640, h: 60 }, Region { x: 10, y: 400, w: 100, h: 20 }]);
        assert!(rules.regions_for(&us(480, "US", "Other"), false).is_none());
        assert!(rules.regions_for(&us(480, "RF", "Other"), false).is_some());
        assert!(parse_deid("%filter graylist\nLABEL x\n contains Modality US\n coordinates from:SequenceOfUltrasoundRegions\n").is_err());
    }
}
