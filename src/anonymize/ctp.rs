//! The function language of RSNA/CTP anonymizer scripts: the text of one `<e>` rule to an [`Op`].
//!
//! RSNA's Anonymizer has a handful of functions (`@uid`, `@ptid`, `@acc`, `@hashdate`, `@round`);
//! CTP's DicomAnonymizer has many more. The CTP functions its own PS3.15 profile scripts use are
//! mapped onto the same operations, so a CTP script and an RSNA script give the same pseudonyms:
//! `@hashuid(root,this)` is our UID pseudonym, `@date`/`@incrementdate` our per-patient date shift,
//! `@hash(this,n)` on PatientName/PatientID/AccessionNumber our patient and accession pseudonyms.
//! Anything else is refused (the caller reports it with its line), because a function we guess
//! at is a value we may pass on unchecked.
//!
//! Lookups (`lookup.rs` has the table): RSNA 19 writes `@lookup(this,ptid)` where 18 wrote
//! `@ptid`, and `@lookup(this,dateoffset)` where it wrote `@hashdate`. Both key on the instance's
//! PatientID wherever they stand (as `@ptid` and `@hashdate` do), so PatientName gets the same
//! subject ID as PatientID and every date the same offset. CTP's own forms of the same,
//! `@lookup(PatientID,ptid)` and `@incrementdate(this,PatientID,KEYTYPE)`, mean the same. Any
//! other key type, `@lookup(this,KEYTYPE)`, replaces the element's value by its entry (CTP).

use std::collections::HashMap;

use dicom_core::Tag;

use super::lookup::{DATE_OFFSET, PATIENT_ID as PTID};
use super::rules::{Lookup, Op};

use dicom_dictionary_std::tags::{ACCESSION_NUMBER, PATIENT_ID, PATIENT_NAME};

/// The instance's identity: their pseudonyms are the index's keys (and the upload's), so a value
/// lookup may not change them behind the index's back.
const KEY_TAGS: [Tag; 5] =
    [PATIENT_ID, ACCESSION_NUMBER, Tag(0x0020, 0x000D), Tag(0x0020, 0x000E), Tag(0x0008, 0x0018)];

/// An operation, whether only CTP (not RSNA's Anonymizer) has the function that gave it, and
/// what it takes from the lookup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub op: Op,
    pub ctp_only: bool,
    pub lookup: Option<Lookup>,
}

/// `text` is the rule's text, `tag` its attribute, `params` the script's `<p t="NAME">value</p>`.
pub fn parse(text: &str, tag: Tag, params: &HashMap<String, String>) -> Result<Parsed, ()> {
    let text = text.trim();
    let rsna = |op| Ok(Parsed { op, ctp_only: false, lookup: None });
    let ctp = |op| Ok(Parsed { op, ctp_only: true, lookup: None });
    let Some((name, args, rest)) = call(text) else {
        if text.contains('@') {
            return Err(());
        }
        // Blank text keeps the value (both tools); other text is a literal value.
        return rsna(if text.is_empty() { Op::Keep } else { Op::Set(text.to_string()) });
    };
    let no_args = args.trim().is_empty() && rest.is_empty();
    match name {
        "keep" if no_args => rsna(Op::Keep),
        "remove" if no_args => rsna(Op::Remove),
        "empty" if no_args => rsna(Op::Empty),
        "uid" if no_args => rsna(Op::Uid),
        "ptid" if no_args => rsna(Op::PatientId),
        "acc" if no_args => rsna(Op::Accession),
        "hashdate" if no_args => rsna(Op::HashDate),
        "round" if rest.is_empty() => {
            let (this, width) = args.split_once(',').ok_or(())?;
            let width: u32 = width.trim().parse().map_err(|_| ())?;
            if this.trim() != "this" || width == 0 || width > 999 {
                return Err(());
            }
            rsna(Op::Round(width))
        }
        // Our own: a dummy value valid for the element's VR (PS3.15 action D).
        "dummy" if no_args => ctp(Op::Dummy),
        // A sequence CTP walks into: its items get the rules.
        "process" if no_args => ctp(Op::Keep),
        "blank" if rest.is_empty() => ctp(Op::Empty),
        "hashuid" if rest.is_empty() && args.split(',').nth(1).map(str::trim) == Some("this") => ctp(Op::Uid),
        "lookup" if rest.is_empty() => parse_lookup(args, tag),
        // CTP's lookup form: the offset is the table's entry for the PatientID.
        "incrementdate" if rest.is_empty() && args.split(',').count() == 3 => {
            let mut a = args.split(',').map(str::trim);
            let (this, key, keytype) = (a.next(), a.next().unwrap_or_default(), a.next().unwrap_or_default());
            let keytype = match keytype.strip_prefix('@') {
                Some(param) => params.get(param).ok_or(())?.trim(),
                None => keytype,
            };
            if this != Some("this") || !names_patient_id(key) || !valid_keytype(keytype) {
                return Err(());
            }
            let lookup = Some(Lookup::DateOffset(keytype.to_string()));
            Ok(Parsed { op: Op::HashDate, ctp_only: true, lookup })
        }
        // CTP's @date() is today's date and @incrementdate a fixed offset; both become our shift,
        // which keeps one patient's intervals and agrees with the index.
        "date" | "incrementdate" if rest.is_empty() => ctp(Op::HashDate),
        // A time of day identifies no one once the date is shifted by whole days.
        "time" if rest.is_empty() => ctp(Op::Keep),
        "hash" if rest.is_empty() && args.split(',').next().map(str::trim) == Some("this") => match tag {
            PATIENT_NAME | PATIENT_ID => ctp(Op::PatientId),
            ACCESSION_NUMBER => ctp(Op::Accession),
            _ => Err(()),
        },
        "param" if rest.is_empty() => {
            let key = args.trim().strip_prefix('@').ok_or(())?;
            ctp(Op::Set(params.get(key).ok_or(())?.clone()))
        }
        "if" => parse_if(args, rest, tag, params),
        _ => Err(()),
    }
}

/// `@lookup(KEY,KEYTYPE)`: `ptid` and `dateoffset` (keyed on PatientID, as RSNA 19 uses them),
/// or any other key type on the element's own value. CTP's third argument (what to do on a miss)
/// is refused: a miss is always quarantined.
fn parse_lookup(args: &str, tag: Tag) -> Result<Parsed, ()> {
    let (key, keytype) = args.split_once(',').ok_or(())?;
    let (key, keytype) = (key.trim(), keytype.trim());
    if !valid_keytype(keytype) {
        return Err(());
    }
    let (op, lookup) = match keytype {
        PTID if key == "this" || names_patient_id(key) => (Op::PatientId, Lookup::PatientId),
        DATE_OFFSET if key == "this" || names_patient_id(key) => {
            (Op::HashDate, Lookup::DateOffset(keytype.to_string()))
        }
        _ if key == "this" && !KEY_TAGS.contains(&tag) => {
            (Op::Lookup(keytype.to_string()), Lookup::Value(keytype.to_string()))
        }
        _ => return Err(()),
    };
    Ok(Parsed { op, ctp_only: false, lookup: Some(lookup) })
}

/// PatientID as CTP lets a script name an element (the forms with a comma cannot stand in an
/// argument list split at commas).
fn names_patient_id(name: &str) -> bool {
    matches!(name, "PatientID" | "00100020" | "[00100020]")
}

/// A key type as CTP's lookup table editor allows it: no separator or space.
fn valid_keytype(k: &str) -> bool {
    !k.is_empty() && !k.contains(['/', '=', ':', ' ', '\t', '(', ')', ',', '@'])
}

/// `@if(this,exists){A}{B}` and `@if(this,isblank){A}{B}`. Rules only ever see elements that are
/// present, so `exists` is A; a blank value carries nothing, so `isblank` applies B to the rest.
fn parse_if(args: &str, rest: &str, tag: Tag, params: &HashMap<String, String>) -> Result<Parsed, ()> {
    let (this, test) = args.split_once(',').ok_or(())?;
    if this.trim() != "this" {
        return Err(());
    }
    let (first, rest) = braced(rest).ok_or(())?;
    let (second, rest) = braced(rest).ok_or(())?;
    if !rest.trim().is_empty() {
        return Err(());
    }
    let branch = match test.trim() {
        "exists" => first,
        "isblank" => second,
        _ => return Err(()),
    };
    let parsed = parse(branch, tag, params)?;
    Ok(Parsed { ctp_only: true, ..parsed })
}

/// `@name(args)rest` with balanced parentheses; `None` if `text` is not a call.
fn call(text: &str) -> Option<(&str, &str, &str)> {
    let body = text.strip_prefix('@')?;
    let open = body.find('(');
    let Some(open) = open else {
        // RSNA writes some functions without parentheses (`@uid`).
        return body.bytes().all(|b| b.is_ascii_alphanumeric()).then_some((body, "", ""));
    };
    let mut depth = 0usize;
    for (i, c) in body[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    let close = open + i;
                    return Some((&body[..open], &body[open + 1..close], body[close + 1..].trim()));
                }
            }
            _ => {}
        }
    }
    None
}

/// `{inner}rest`, without nesting.
fn braced(text: &str) -> Option<(&str, &str)> {
    let body = text.trim_start().strip_prefix('{')?;
    let close = body.find('}')?;
    Some((&body[..close], &body[close + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(text: &str) -> Result<Op, ()> {
        let params = HashMap::from([("UIDROOT".to_string(), "1.2.3".to_string())]);
        parse(text, Tag(0x0008, 0x0018), &params).map(|p| p.op)
    }

    #[test]
    fn rsna_functions_parse_as_before() {
        assert_eq!(op("@round(this,5)"), Ok(Op::Round(5)));
        assert_eq!(op("@round(this,10)"), Ok(Op::Round(10)));
        assert_eq!(op("YES"), Ok(Op::Set("YES".into())));
        assert_eq!(op("@remove()"), Ok(Op::Remove));
        assert_eq!(op("@empty()"), Ok(Op::Empty));
        assert_eq!(op("@uid"), Ok(Op::Uid));
        assert_eq!(op(""), Ok(Op::Keep));
    }

    #[test]
    fn ctp_profile_functions_map_onto_our_pseudonyms() {
        assert_eq!(op("@hashuid(@UIDROOT,this)"), Ok(Op::Uid));
        assert_eq!(op("@date()"), Ok(Op::HashDate));
        assert_eq!(op("@incrementdate(this,@DATEINC)"), Ok(Op::HashDate));
        assert_eq!(op("@process()"), Ok(Op::Keep));
        assert_eq!(op("@param(@UIDROOT)"), Ok(Op::Set("1.2.3".into())));
        assert_eq!(op("@if(this,exists){@remove()}{@keep()}"), Ok(Op::Remove));
        assert_eq!(op("@if(this,isblank){@remove()}{@empty()}"), Ok(Op::Empty));
        let none = HashMap::new();
        assert_eq!(parse("@hash(this, 64)", PATIENT_ID, &none).map(|p| p.op), Ok(Op::PatientId));
        assert_eq!(parse("@hash(this,16)", ACCESSION_NUMBER, &none).map(|p| p.op), Ok(Op::Accession));
    }

    #[test]
    fn lookups_parse_in_rsna_19_and_ctp_forms() {
        let none = HashMap::new();
        let lookup = |text: &str, tag| parse(text, tag, &none).map(|p| (p.op, p.lookup, p.ctp_only));
        let study_date = Tag(0x0008, 0x0020);
        let ptid = Some(Lookup::PatientId);
        let offset = Some(Lookup::DateOffset("dateoffset".into()));
        assert_eq!(lookup("@lookup(this,ptid)", PATIENT_NAME), Ok((Op::PatientId, ptid.clone(), false)));
        assert_eq!(lookup("@lookup(PatientID, ptid)", PATIENT_NAME), Ok((Op::PatientId, ptid, false)));
        assert_eq!(lookup("@lookup(this,dateoffset)", study_date), Ok((Op::HashDate, offset.clone(), false)));
        assert_eq!(
            lookup("@incrementdate(this,PatientID,dateoffset)", study_date),
            Ok((Op::HashDate, offset, true))
        );
        let params = HashMap::from([("KEY".to_string(), "shift".to_string())]);
        assert_eq!(
            parse("@incrementdate(this,00100020,@KEY)", study_date, &params).map(|p| p.lookup),
            Ok(Some(Lookup::DateOffset("shift".into())))
        );
        let site = lookup("@lookup(this,site)", Tag(0x0008, 0x0080));
        assert_eq!(site, Ok((Op::Lookup("site".into()), Some(Lookup::Value("site".into())), false)));
        assert!(
            lookup("@lookup(this,site)", PATIENT_ID).is_err(),
            "a key attribute's pseudonym is the index's"
        );
        assert!(lookup("@lookup(this,ptid,keep)", PATIENT_ID).is_err(), "a miss is never kept");
        assert!(lookup("@lookup(StudyDate,ptid)", PATIENT_NAME).is_err());
        assert!(lookup("@lookup(this,)", PATIENT_NAME).is_err());
    }

    #[test]
    fn what_we_cannot_do_faithfully_is_refused() {
        assert!(op("@lookup(this,ptid,default,X)").is_err());
        assert!(op("@hash(this,16)").is_err(), "hash of an arbitrary attribute");
        assert!(op("@param(@MISSING)").is_err());
        assert!(op("@if(this,contains,\"x\"){@remove()}{@keep()}").is_err());
        assert!(op("@always()YES").is_err());
        assert!(op("text @with at").is_err());
    }
}
