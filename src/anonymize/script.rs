//! Loads RSNA/CTP anonymizer scripts: `<e en=".." t="GGGGEEEE" n="..">OP</e>` rules.
//!
//! Semantics follow the RSNA Anonymizer (a whitelist: a tag without a rule is removed at every
//! depth) with two deliberate differences: `en="F"` switches a rule off, and an operation we do not
//! implement is an error instead of a silent keep, because a silent keep passes PHI.

use std::collections::HashMap;
use std::path::Path;

use dicom_core::Tag;

/// What to do with one attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Blank text or `@keep`: keep the value (the safety net still checks it).
    Keep,
    Remove,
    /// Zero length: how PS3.15 treats Type 2 attributes that carry PHI.
    Empty,
    /// Map through the UID pseudonym.
    Uid,
    /// Replace with the patient's pseudonym (PatientID and PatientName).
    PatientId,
    /// Replace a non-empty accession number with its hash.
    Accession,
    /// Shift dates by the patient's offset.
    HashDate,
    /// Round an age (AS) to a multiple of this many units.
    Round(u32),
    /// Set this literal value.
    Set(String),
}

/// What to do with an operation this engine does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsupportedOps {
    /// Refuse to load the script.
    #[default]
    Fail,
    /// Treat each as `@remove()`, with one warning each.
    Remove,
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read anonymizer script {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("anonymizer script {path} is not valid XML: {source}")]
    Xml { path: String, source: roxmltree::Error },
    #[error("anonymizer script {path}:\n{}", problems.join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

/// A compiled script: one operation per tag, plus groups kept whole by `<k>` rules.
#[derive(Debug, Clone)]
pub struct Script {
    /// The file name, recorded in DeidentificationMethod.
    pub name: String,
    rules: HashMap<Tag, Op>,
    keep_groups: Vec<u16>,
}

impl Script {
    pub fn load(path: &Path, unsupported: UnsupportedOps) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScriptError::Read { path: path.display().to_string(), source })?;
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Script::parse(&text, &name, unsupported).map_err(|e| match e {
            ScriptError::Xml { source, .. } => ScriptError::Xml { path: path.display().to_string(), source },
            ScriptError::Invalid { problems, .. } => {
                ScriptError::Invalid { path: path.display().to_string(), problems }
            }
            other => other,
        })
    }

    pub fn parse(text: &str, name: &str, unsupported: UnsupportedOps) -> Result<Script, ScriptError> {
        let doc = roxmltree::Document::parse(text)
            .map_err(|source| ScriptError::Xml { path: name.to_string(), source })?;
        let mut rules = HashMap::new();
        let mut keep_groups = Vec::new();
        let mut problems = Vec::new();
        for node in doc.root_element().children().filter(|n| n.is_element()) {
            // Finding a line scans the text from the start: only do it for a message.
            let line = || doc.text_pos_at(node.range().start).row;
            if node.attribute("en") == Some("F") {
                continue;
            }
            let t = node.attribute("t").unwrap_or_default();
            match node.tag_name().name() {
                "e" => {
                    let Some(tag) = parse_tag(t) else {
                        problems.push(format!("line {}: t=\"{t}\" is not an 8-digit hex tag", line()));
                        continue;
                    };
                    let op_text = node.text().unwrap_or_default().trim();
                    let op = match parse_op(op_text) {
                        Ok(op) => op,
                        Err(()) if unsupported == UnsupportedOps::Remove => {
                            tracing::warn!(line = line(), op = op_text, tag = %t, "unsupported script operation treated as @remove()");
                            Op::Remove
                        }
                        Err(()) => {
                            problems.push(format!("line {}: {t}: unsupported operation {op_text:?} (set project.unsupported_ops: remove to treat it as @remove())", line()));
                            continue;
                        }
                    };
                    rules.insert(tag, op);
                }
                "k" => match u16::from_str_radix(t, 16) {
                    Ok(group) if t.len() == 4 => keep_groups.push(group),
                    _ => problems.push(format!("line {}: <k t=\"{t}\"> is not a 4-digit hex group", line())),
                },
                // <r> (private groups, curves, overlays, unspecified elements) only ever removes, and
                // the whitelist already removes all of these; <p> parameters feed CTP functions we
                // reject above.
                "r" | "p" => {}
                other => problems.push(format!("line {}: unknown element <{other}>", line())),
            }
        }
        if !problems.is_empty() {
            return Err(ScriptError::Invalid { path: name.to_string(), problems });
        }
        Ok(Script { name: name.to_string(), rules, keep_groups })
    }

    /// The operation for a tag; `None` means the whitelist removes it.
    pub fn op(&self, tag: Tag) -> Option<&Op> {
        self.rules.get(&tag).or_else(|| self.keep_groups.contains(&tag.0).then_some(&Op::Keep))
    }
}

fn parse_tag(t: &str) -> Option<Tag> {
    if t.len() != 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(t, 16).ok()?;
    Some(Tag((v >> 16) as u16, (v & 0xFFFF) as u16))
}

fn parse_op(text: &str) -> Result<Op, ()> {
    let call = |name: &str| text == name || text == format!("{name}()");
    Ok(if text.is_empty() || call("@keep") {
        Op::Keep
    } else if call("@remove") {
        Op::Remove
    } else if call("@empty") {
        Op::Empty
    } else if call("@uid") {
        Op::Uid
    } else if call("@ptid") {
        Op::PatientId
    } else if call("@acc") {
        Op::Accession
    } else if call("@hashdate") {
        Op::HashDate
    } else if let Some(args) = text.strip_prefix("@round(").and_then(|r| r.strip_suffix(')')) {
        let (this, width) = args.split_once(',').ok_or(())?;
        let width: u32 = width.trim().parse().map_err(|_| ())?;
        if this.trim() != "this" || width == 0 || width > 999 {
            return Err(());
        }
        Op::Round(width)
    } else if text.contains('@') {
        return Err(());
    } else {
        Op::Set(text.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_rules_fall_back_to_the_whitelist() {
        let s = Script::parse(
            r#"<script><e en="F" t="00100010" n="PatientName">@keep</e><e en="T" t="00080060" n="Modality"></e></script>"#,
            "t",
            UnsupportedOps::Fail,
        )
        .unwrap();
        assert_eq!(s.op(Tag(0x0010, 0x0010)), None);
        assert_eq!(s.op(Tag(0x0008, 0x0060)), Some(&Op::Keep));
    }

    #[test]
    fn unsupported_ops_are_refused_with_their_line_or_removed_on_request() {
        let text = "<script>\n<e en=\"T\" t=\"0020000D\" n=\"x\">@hashuid(@UIDROOT,this)</e>\n<e en=\"T\" t=\"00100020\" n=\"y\">@lookup(this,ptid)</e>\n</script>";
        let err = Script::parse(text, "ctp.script", UnsupportedOps::Fail).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("@hashuid"), "{err}");
        assert!(err.contains("line 3") && err.contains("@lookup"), "{err}");
        let s = Script::parse(text, "ctp.script", UnsupportedOps::Remove).unwrap();
        assert_eq!(s.op(Tag(0x0020, 0x000D)), Some(&Op::Remove));
    }

    #[test]
    fn ops_parse_like_rsna() {
        assert_eq!(parse_op("@round(this,5)"), Ok(Op::Round(5)));
        assert_eq!(parse_op("@round(this,10)"), Ok(Op::Round(10)));
        assert_eq!(parse_op("YES"), Ok(Op::Set("YES".into())));
        assert_eq!(parse_op("@remove()"), Ok(Op::Remove));
        assert_eq!(parse_op("@empty()"), Ok(Op::Empty));
        assert!(parse_op("@date(this)").is_err());
    }

    #[test]
    fn keep_groups_keep_unlisted_tags_of_their_group() {
        let s = Script::parse(r#"<script><k en="T" t="0018">keep</k></script>"#, "k", UnsupportedOps::Fail)
            .unwrap();
        assert_eq!(s.op(Tag(0x0018, 0x0050)), Some(&Op::Keep));
        assert_eq!(s.op(Tag(0x0010, 0x0010)), None);
    }
}
