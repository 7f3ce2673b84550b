//! Loads RSNA/CTP anonymizer scripts: `<e en=".." t="GGGGEEEE" n="..">OP</e>` rules, `<k>` groups
//! kept whole, `<r>` removals and `<p>` parameters.
//!
//! Two semantics (see [`Semantics`]): RSNA's whitelist, and CTP's DicomAnonymizer, where an
//! attribute without a rule is kept. Both differ from their tools in the same deliberate ways:
//! `en="F"` switches a rule off, an operation we do not implement is an error instead of a silent
//! keep (a silent keep passes PHI), private groups are always removed, and the engine's safety net
//! checks every kept value.

use std::collections::HashMap;
use std::path::Path;

use dicom_core::Tag;

use super::ctp;
use super::options::ProfileOptions;
use super::rules::{DateDirection, Lookup, Lookups, Op, Semantics, UnsupportedOps};
use super::unverifiable::Unverifiable;

/// Everything from the config that shapes how a script is applied.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub unsupported: UnsupportedOps,
    /// `None`: read from the script.
    pub semantics: Option<Semantics>,
    /// Applied only to profile scripts (root `profile="ps3.15-basic"`).
    pub options: ProfileOptions,
    pub unverifiable: Unverifiable,
    /// `None`: backward for a profile script, forward otherwise (see [`DateDirection`]).
    pub date_shift: Option<DateDirection>,
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

/// The `<r>` rules of a CTP script (meaningless under RSNA semantics, which removes all of these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removals {
    /// Repeating groups 50xx.
    pub curves: bool,
    /// Repeating groups 60xx.
    pub overlays: bool,
    /// Attributes without a rule: CTP's own whitelist switch.
    pub unspecified: bool,
}

/// The root attribute that marks a PS3.15 profile script: options apply to it.
const PROFILE_MARK: &str = "ps3.15-basic";

/// Attributes the engine writes from what it applied; a script's rules for them are not used
/// (CTP scripts set them with `@always()` and list their option codes in (0012,0064)).
const ENGINE_OWNED: [Tag; 4] =
    [Tag(0x0012, 0x0062), Tag(0x0012, 0x0063), Tag(0x0012, 0x0064), Tag(0x0028, 0x0303)];

const METHOD_CODES_TAG: Tag = Tag(0x0012, 0x0064);

/// A compiled script: one operation per tag, plus groups kept whole by `<k>` rules.
#[derive(Debug, Clone)]
pub struct Script {
    /// The file name, recorded in DeidentificationMethod.
    pub name: String,
    pub semantics: Semantics,
    /// A PS3.15 profile script: `options` apply and (0012,0064) lists them.
    pub profile: bool,
    pub options: ProfileOptions,
    pub removals: Removals,
    pub unverifiable: Unverifiable,
    /// Which way the date offsets of `Engine::keys` move dates.
    pub date_shift: DateDirection,
    pub lookups: Lookups,
    rules: HashMap<Tag, Op>,
    keep_groups: Vec<u16>,
}

impl Script {
    pub fn load(path: &Path, settings: &Settings) -> Result<Script, ScriptError> {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let text = match (std::fs::read_to_string(path), super::shipped::script(&name)) {
            (Ok(text), _) => text,
            (Err(e), Some(built_in)) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(script = %path.display(), "no such file; using the copy of {name} built into this binary");
                built_in.to_string()
            }
            (Err(source), _) => return Err(ScriptError::Read { path: path.display().to_string(), source }),
        };
        Script::parse(&text, &name, settings).map_err(|e| match e {
            ScriptError::Xml { source, .. } => ScriptError::Xml { path: path.display().to_string(), source },
            ScriptError::Invalid { problems, .. } => {
                ScriptError::Invalid { path: path.display().to_string(), problems }
            }
            other => other,
        })
    }

    pub fn parse(text: &str, name: &str, settings: &Settings) -> Result<Script, ScriptError> {
        let doc = roxmltree::Document::parse(text)
            .map_err(|source| ScriptError::Xml { path: name.to_string(), source })?;
        let root = doc.root_element();
        let mut parts = Parts::default();
        let declared = match root.attribute("semantics") {
            None => None,
            Some("rsna") => Some(Semantics::Rsna),
            Some("ctp") => Some(Semantics::Ctp),
            Some(other) => {
                parts.problems.push(format!("<script semantics=\"{other}\">: expected rsna or ctp"));
                None
            }
        };
        let elements = || root.children().filter(|n| n.is_element() && n.attribute("en") != Some("F"));
        let params: HashMap<String, String> = elements()
            .filter(|n| n.tag_name().name() == "p")
            .filter_map(|n| {
                Some((n.attribute("t")?.to_string(), n.text().unwrap_or_default().trim().to_string()))
            })
            .collect();
        parts.ctp_only = !params.is_empty();
        for node in elements() {
            // Finding a line scans the text from the start: only do it for a message.
            parts.element(node, || doc.text_pos_at(node.range().start).row, &params, settings.unsupported);
        }
        let Parts { rules, keep_groups, removals, ctp_only, keeps_private, lookups, problems } = parts;
        if !problems.is_empty() {
            return Err(ScriptError::Invalid { path: name.to_string(), problems });
        }
        let private_removal_off = root.children().any(|n| {
            n.tag_name().name() == "r"
                && n.attribute("t") == Some("privategroups")
                && n.attribute("en") == Some("F")
        });
        if keeps_private || private_removal_off {
            tracing::warn!(
                script = name,
                "the script keeps private groups; they are removed anyway (their values cannot be checked)"
            );
        }
        let inferred = if ctp_only { Semantics::Ctp } else { Semantics::Rsna };
        let profile = root.attribute("profile") == Some(PROFILE_MARK);
        let by_script = if profile { DateDirection::Backward } else { DateDirection::Forward };
        Ok(Script {
            name: name.to_string(),
            semantics: settings.semantics.or(declared).unwrap_or(inferred),
            date_shift: settings.date_shift.unwrap_or(by_script),
            profile,
            options: settings.options,
            removals,
            unverifiable: settings.unverifiable,
            lookups,
            rules,
            keep_groups,
        })
    }

    /// The script's own operation for a tag; `None` when it has no rule.
    pub fn op(&self, tag: Tag) -> Option<&Op> {
        self.rules.get(&tag).or_else(|| self.keep_groups.contains(&tag.0).then_some(&Op::Keep))
    }
}

/// What the loader gathers from the script's elements.
#[derive(Default)]
struct Parts {
    rules: HashMap<Tag, Op>,
    keep_groups: Vec<u16>,
    removals: Removals,
    /// A function or convention only CTP has was used: the inferred semantics are `ctp`.
    ctp_only: bool,
    keeps_private: bool,
    lookups: Lookups,
    problems: Vec<String>,
}

impl Parts {
    /// One enabled `<e>`, `<k>`, `<r>` or `<p>` element; `line` is its line, for messages.
    fn element(
        &mut self,
        node: roxmltree::Node<'_, '_>,
        line: impl Fn() -> u32,
        params: &HashMap<String, String>,
        unsupported: UnsupportedOps,
    ) {
        let t = node.attribute("t").unwrap_or_default();
        match node.tag_name().name() {
            "e" => {
                let Some(tag) = parse_tag(t) else {
                    self.problems.push(format!("line {}: t=\"{t}\" is not an 8-digit hex tag", line()));
                    return;
                };
                let op_text = node.text().unwrap_or_default().trim();
                if ENGINE_OWNED.contains(&tag) {
                    // CTP's option scripts name themselves by the code they add here.
                    self.ctp_only |= tag == METHOD_CODES_TAG && op_text.bytes().all(|b| b.is_ascii_digit());
                    return;
                }
                let op = match ctp::parse(op_text, tag, params) {
                    Ok(parsed) => {
                        self.ctp_only |= parsed.ctp_only;
                        match parsed.lookup {
                            None => {}
                            Some(Lookup::PatientId) => self.lookups.patient_id = true,
                            Some(Lookup::Value(keytype)) => {
                                self.lookups.values.insert(keytype);
                            }
                            Some(Lookup::DateOffset(keytype)) => match &self.lookups.date_offset {
                                Some(other) if *other != keytype => self.problems.push(format!(
                                    "line {}: {t}: date offsets come from key type {keytype:?} here and {other:?} before; one patient has one offset",
                                    line()
                                )),
                                _ => self.lookups.date_offset = Some(keytype),
                            },
                        }
                        parsed.op
                    }
                    Err(()) if unsupported == UnsupportedOps::Remove => {
                        tracing::warn!(line = line(), op = op_text, tag = %t, "unsupported script operation treated as @remove()");
                        Op::Remove
                    }
                    Err(()) => {
                        self.problems.push(format!("line {}: {t}: unsupported operation {op_text:?} (set project.unsupported_ops: remove to treat it as @remove())", line()));
                        return;
                    }
                };
                self.rules.insert(tag, op);
            }
            "k" => match u16::from_str_radix(t, 16) {
                Ok(group) if t.len() == 4 && group % 2 == 1 => self.keeps_private = true,
                Ok(group) if t.len() == 4 => self.keep_groups.push(group),
                _ => self.problems.push(format!("line {}: <k t=\"{t}\"> is not a 4-digit hex group", line())),
            },
            "r" => match t {
                "curves" => self.removals.curves = true,
                "overlays" => self.removals.overlays = true,
                "unspecifiedelements" => self.removals.unspecified = true,
                "privategroups" => {}
                other => {
                    self.problems.push(format!("line {}: <r t=\"{other}\"> is not a removal we know", line()))
                }
            },
            "p" => {}
            other => self.problems.push(format!("line {}: unknown element <{other}>", line())),
        }
    }
}

fn parse_tag(t: &str) -> Option<Tag> {
    if t.len() != 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(t, 16).ok()?;
    Some(Tag((v >> 16) as u16, (v & 0xFFFF) as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, unsupported: UnsupportedOps) -> Result<Script, ScriptError> {
        Script::parse(text, "t.script", &Settings { unsupported, ..Settings::default() })
    }

    #[test]
    fn disabled_rules_fall_back_to_the_whitelist() {
        let s = parse(
            r#"<script><e en="F" t="00100010" n="PatientName">@keep</e><e en="T" t="00080060" n="Modality"></e></script>"#,
            UnsupportedOps::Fail,
        )
        .unwrap();
        assert_eq!(s.semantics, Semantics::Rsna);
        assert_eq!(s.op(Tag(0x0010, 0x0010)), None);
        assert_eq!(s.op(Tag(0x0008, 0x0060)), Some(&Op::Keep));
    }

    #[test]
    fn unsupported_ops_are_refused_with_their_line_or_removed_on_request() {
        let text = "<script>\n<e en=\"T\" t=\"0020000D\" n=\"x\">@hashuid(@UIDROOT,this)</e>\n<e en=\"T\" t=\"00100020\" n=\"y\">@hashname(this,6)</e>\n</script>";
        let err = parse(text, UnsupportedOps::Fail).unwrap_err().to_string();
        assert!(!err.contains("line 2"), "{err}");
        assert!(err.contains("line 3") && err.contains("@hashname"), "{err}");
        let s = parse(text, UnsupportedOps::Remove).unwrap();
        assert_eq!(s.op(Tag(0x0020, 0x000D)), Some(&Op::Uid));
        assert_eq!(s.op(Tag(0x0010, 0x0020)), Some(&Op::Remove));
    }

    #[test]
    fn semantics_come_from_config_then_the_root_then_the_functions_used() {
        let ctp_text = r#"<script><p t="UIDROOT">1.2.3</p><e en="T" t="0020000D" n="x">@hashuid(@UIDROOT,this)</e><r en="T" t="curves">x</r></script>"#;
        let s = parse(ctp_text, UnsupportedOps::Fail).unwrap();
        assert_eq!((s.semantics, s.removals.curves, s.removals.overlays), (Semantics::Ctp, true, false));
        let s = parse(
            r#"<script semantics="ctp"><e en="T" t="00080060" n="M"></e></script>"#,
            UnsupportedOps::Fail,
        )
        .unwrap();
        assert_eq!(s.semantics, Semantics::Ctp);
        let forced = Settings { semantics: Some(Semantics::Rsna), ..Settings::default() };
        assert_eq!(Script::parse(ctp_text, "t", &forced).unwrap().semantics, Semantics::Rsna);
        assert!(parse(r#"<script semantics="dicognito"/>"#, UnsupportedOps::Fail).is_err());
    }

    #[test]
    fn rules_for_what_the_engine_writes_are_not_used() {
        let s = parse(
            r#"<script><e en="T" t="00120064" n="DeIdentificationMethodCodeSequence">113105</e><e en="T" t="00280303" n="L">@always()MODIFIED</e></script>"#,
            UnsupportedOps::Fail,
        )
        .unwrap();
        assert_eq!(s.op(Tag(0x0012, 0x0064)), None);
        assert_eq!(s.semantics, Semantics::Ctp, "a CTP option script names its code in (0012,0064)");
        assert_eq!(s.op(Tag(0x0028, 0x0303)), None);
    }

    #[test]
    fn rsna_19_lookups_keep_rsna_semantics_and_are_collected() {
        let s = parse(
            r#"<script><e en="T" t="00100010" n="PatientName">@lookup(this,ptid)</e><e en="T" t="00080020" n="StudyDate">@lookup(this,dateoffset)</e><e en="T" t="00080080" n="Inst">@lookup(this,site)</e></script>"#,
            UnsupportedOps::Fail,
        )
        .unwrap();
        assert_eq!(s.semantics, Semantics::Rsna);
        assert_eq!(s.op(Tag(0x0010, 0x0010)), Some(&Op::PatientId));
        assert_eq!(s.op(Tag(0x0008, 0x0020)), Some(&Op::HashDate));
        assert_eq!(s.op(Tag(0x0008, 0x0080)), Some(&Op::Lookup("site".into())));
        let keytypes: Vec<String> = s.lookups.keytypes().into_iter().collect();
        assert_eq!(keytypes, ["dateoffset", "ptid", "site"]);
        let err = parse(
            "<script>\n<e en=\"T\" t=\"00080020\" n=\"a\">@lookup(this,dateoffset)</e>\n<e en=\"T\" t=\"00080021\" n=\"b\">@incrementdate(this,PatientID,shift)</e>\n</script>",
            UnsupportedOps::Fail,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3") && err.contains("one offset"), "{err}");
    }

    #[test]
    fn keep_groups_keep_unlisted_tags_of_their_group() {
        let s = parse(r#"<script><k en="T" t="0018">keep</k></script>"#, UnsupportedOps::Fail).unwrap();
        assert_eq!(s.op(Tag(0x0018, 0x0050)), Some(&Op::Keep));
        assert_eq!(s.op(Tag(0x0010, 0x0010)), None);
    }
}
