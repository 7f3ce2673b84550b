//! Value transforms the engine applies: date shifts, age rounding, free-text scrubbing.
//! Pure functions over the raw value bytes.

use chrono::{Duration, NaiveDate};

/// RSNA's stand-in date when a patient has no ID to derive an offset from.
pub const DEFAULT_DATE: &str = "20000101";

/// How to move this instance's dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateShift {
    /// Add this many days.
    Days(u32),
    /// No PatientID: every date becomes 20000101 (RSNA's rule).
    Default,
}

/// Shift one DA value (`YYYYMMDD`). `None`: not a valid date, so the caller empties it.
pub fn shift_date(value: &str, shift: DateShift) -> Option<String> {
    let date = NaiveDate::parse_from_str(value, "%Y%m%d").ok().filter(|_| value.len() == 8)?;
    Some(match shift {
        DateShift::Default => DEFAULT_DATE.to_string(),
        DateShift::Days(d) => (date + Duration::days(d as i64)).format("%Y%m%d").to_string(),
    })
}

/// Shift the date part of a DT value and keep its time and offset (`YYYYMMDDHHMMSS.F&ZZXX`). The
/// part kept must be a time and an offset, nothing else: `None` (emptied) otherwise, so no text can
/// ride along behind a valid date.
pub fn shift_datetime(value: &str) -> impl Fn(DateShift) -> Option<String> + '_ {
    move |shift| {
        let date = value.get(..8)?;
        let rest = &value[8..];
        if !is_dt_time_and_offset(rest) {
            return None;
        }
        Some(format!("{}{}", shift_date(date, shift)?, rest))
    }
}

/// `HHMMSS.FFFFFF&ZZXX` with every part after the first optional (PS3.5 Table 6.2-1, DT).
fn is_dt_time_and_offset(rest: &str) -> bool {
    let (time, offset) = match rest.find(['+', '-']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = time.split_once('.').unwrap_or((time, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    digits(whole)
        && whole.len() <= 6
        && whole.len() % 2 == 0
        && digits(fraction)
        && fraction.len() <= 6
        && (fraction.is_empty() || whole.len() == 6)
        && offset.is_none_or(|o| o.len() == 4 && digits(o))
}

/// A TM value: `HHMMSS.FFFFFF`, or the older `HH:MM:SS.FFFFFF`, values separated by `\`.
pub fn is_time(value: &str) -> bool {
    value.split('\\').all(|v| {
        let v = v.trim_matches(' ');
        let (whole, fraction) = v.split_once('.').unwrap_or((v, ""));
        whole.bytes().all(|b| b.is_ascii_digit() || b == b':')
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && whole.len() <= 8
            && fraction.len() <= 6
    })
}

/// Shift every value of a multi-valued DA or DT. Empty stays empty; `None` if any value is invalid.
pub fn shift_values(raw: &str, is_datetime: bool, shift: DateShift) -> Option<String> {
    if raw.is_empty() {
        return Some(String::new());
    }
    let shifted: Option<Vec<String>> = raw
        .split('\\')
        .map(|v| {
            let v = v.trim();
            if is_datetime {
                shift_datetime(v)(shift)
            } else {
                shift_date(v, shift)
            }
        })
        .collect();
    shifted.map(|v| v.join("\\"))
}

/// Round an age string (`nnnU`) to a multiple of `width` units and write it as a valid AS
/// (three digits and the unit). Python's round-half-even, as RSNA uses. `None`: not an age.
pub fn round_age(value: &str, width: u32) -> Option<String> {
    let unit = value.chars().last().filter(|c| matches!(c, 'D' | 'W' | 'M' | 'Y'))?;
    let digits = &value[..value.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let w = width as u64;
    let (q, r) = (n / w, n % w);
    let q = match (2 * r).cmp(&w) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal if q % 2 == 1 => q + 1,
        _ => q,
    };
    Some(format!("{:03}{unit}", (q * w).min(999)))
}

/// Words that must not survive in kept free text: every name part and identifier in the instance.
#[derive(Debug, Default, Clone)]
pub struct Scrubber {
    /// Matched as whole words (a name part inside another word is left alone).
    words: Vec<Vec<u8>>,
    /// Matched anywhere: identifiers long enough not to occur by chance.
    ids: Vec<Vec<u8>>,
    /// The digit runs of identifiers, matched anywhere and also with separators between the
    /// digits ("00482913" also finds "004-829-13"), because people retype numbers that way.
    digits: Vec<Vec<u8>>,
}

/// Name parts shorter than this are too likely to be ordinary words or initials.
const MIN_NAME_PART: usize = 2;
/// Identifiers shorter than this are matched as words only; longer ones anywhere.
const MIN_EMBEDDED_ID: usize = 5;
/// Characters people put between the digits of a number they retype.
const DIGIT_SEPARATORS: &[u8] = b"-. /_";

impl Scrubber {
    /// `names` are raw PN values (components split on `^`, groups on `=`), `ids` raw identifiers.
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a [u8]>,
        ids: impl IntoIterator<Item = &'a [u8]>,
    ) -> Scrubber {
        let mut s = Scrubber::default();
        // Family, given and middle names of every component group; prefixes and suffixes
        // ("DR", "MRS", "III") are titles that identify no one and occur in ordinary text.
        let parts = names.into_iter().flat_map(|name| {
            name.split(|&b| b == b'=').flat_map(|group| group.split(|&b| b == b'^').take(3))
        });
        for component in parts {
            for part in component.split(|&b| matches!(b, b' ' | b',')) {
                let part = crate::dicom::trim_padding(part);
                if part.len() >= MIN_NAME_PART {
                    s.words.push(part.to_ascii_lowercase());
                }
            }
        }
        for id in ids {
            let id = crate::dicom::trim_padding(id);
            if id.len() >= MIN_EMBEDDED_ID {
                s.ids.push(id.to_ascii_lowercase());
            } else if id.len() >= 3 {
                s.words.push(id.to_ascii_lowercase());
            }
            for run in id.split(|b| !b.is_ascii_digit()).filter(|r| r.len() >= MIN_EMBEDDED_ID) {
                s.digits.push(run.to_vec());
            }
        }
        for list in [&mut s.words, &mut s.ids, &mut s.digits] {
            // Longest first, so "Smithson" is replaced before "Smith" could split it.
            list.sort_by_key(|w| std::cmp::Reverse(w.len()));
            list.dedup();
        }
        s
    }

    /// The text with each match replaced by asterisks (at most three, never longer than the
    /// match, so the value still fits its VR). `None` when nothing matched.
    pub fn scrub(&self, text: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        let needles = self.ids.iter().map(|n| (n, Match::Anywhere));
        let needles = needles.chain(self.digits.iter().map(|n| (n, Match::Digits)));
        for (needle, how) in needles.chain(self.words.iter().map(|n| (n, Match::Word))) {
            let current = out.as_deref().unwrap_or(text);
            if let Some(replaced) = replace_all(current, needle, how) {
                out = Some(replaced);
            }
        }
        if let Some(replaced) = after_titles(out.as_deref().unwrap_or(text)) {
            out = Some(replaced);
        }
        out
    }
}

/// Titles people write before a surname in reports and descriptions (English, Dutch).
const TITLES: [&[u8]; 9] = [b"dr", b"drs", b"prof", b"mr", b"mrs", b"ms", b"dhr", b"mw", b"mevr"];
/// Titles that, lowercase and without a period, are more often something else ("ms" a unit).
const AMBIGUOUS_TITLES: [&[u8]; 3] = [b"mr", b"mrs", b"ms"];

/// Whether `word` is a title. Without a period an all-capitals word is more likely a modality or
/// an abbreviation ("MR knee", "DR chest", "MS lesion"), so it does not count.
fn is_title(word: &[u8], dotted: bool) -> bool {
    let lower = word.to_ascii_lowercase();
    if !TITLES.contains(&lower.as_slice()) {
        return false;
    }
    if dotted {
        return true;
    }
    let all_caps = word.iter().all(u8::is_ascii_uppercase);
    !all_caps && (word[0].is_ascii_uppercase() || !AMBIGUOUS_TITLES.contains(&lower.as_slice()))
}

/// Letters of a name: ASCII letters, any byte of a multi-byte or 8-bit character, '-' and '\''.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphabetic() || b >= 0x80 || b == b'-' || b == b'\''
}

/// The word after a title ("dr. Chase") replaced: a name that appears nowhere else in the
/// instance (a colleague consulted, a referrer from elsewhere) is still a name.
fn after_titles(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let (mut i, mut found) = (0, false);
    while i < text.len() {
        let start = i;
        while i < text.len() && is_name_byte(text[i]) {
            i += 1;
        }
        if i == start {
            out.push(text[i]);
            i += 1;
            continue;
        }
        out.extend_from_slice(&text[start..i]);
        let at_boundary = start == 0 || !text[start - 1].is_ascii_alphanumeric();
        let dotted = text.get(i) == Some(&b'.');
        if !at_boundary || !is_title(&text[start..i], dotted) {
            continue;
        }
        // The title, its period, the spaces, then the name (two letters at least).
        let mut j = i + usize::from(dotted);
        let spaces = text[j..].iter().take_while(|&&b| b == b' ').count();
        j += spaces;
        let name = text[j..].iter().take_while(|&&b| is_name_byte(b)).count();
        if (spaces == 0 && !dotted) || name < 2 {
            continue;
        }
        out.extend_from_slice(&text[i..j]);
        out.extend_from_slice(b"***");
        i = j + name;
        found = true;
    }
    found.then_some(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Anywhere,
    Word,
    Digits,
}

/// The length of the match of `needle` at the start of `text`, if any.
fn match_at(text: &[u8], needle: &[u8], how: Match) -> Option<usize> {
    match how {
        Match::Anywhere | Match::Word => {
            let n = needle.len();
            let hit = text.len() >= n && text[..n].eq_ignore_ascii_case(needle);
            hit.then_some(n)
        }
        Match::Digits => {
            let mut i = 0;
            for (k, &d) in needle.iter().enumerate() {
                if k > 0 && text.get(i).is_some_and(|c| DIGIT_SEPARATORS.contains(c)) {
                    i += 1;
                }
                if text.get(i) != Some(&d) {
                    return None;
                }
                i += 1;
            }
            Some(i)
        }
    }
}

fn replace_all(text: &[u8], needle: &[u8], how: Match) -> Option<Vec<u8>> {
    if needle.is_empty() || text.len() < needle.len() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    let mut found = false;
    while i < text.len() {
        let hit = match_at(&text[i..], needle, how).filter(|&n| {
            how != Match::Word
                || ((i == 0 || !text[i - 1].is_ascii_alphanumeric())
                    && (i + n == text.len() || !text[i + n].is_ascii_alphanumeric()))
        });
        if let Some(n) = hit {
            out.extend(std::iter::repeat_n(b'*', n.min(3)));
            i += n;
            found = true;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_like_rsna() {
        assert_eq!(shift_date("20220101", DateShift::Days(263)).as_deref(), Some("20220921"));
        assert_eq!(shift_date("20220101", DateShift::Days(1322)).as_deref(), Some("20250815"));
        assert_eq!(shift_date("19000101", DateShift::Days(3147)).as_deref(), Some("19080814"));
        assert_eq!(shift_date("20220101", DateShift::Default).as_deref(), Some("20000101"));
        assert_eq!(shift_date("2022011", DateShift::Days(1)), None);
        assert_eq!(shift_date("20221301", DateShift::Days(1)), None);
    }

    #[test]
    fn datetimes_keep_their_time() {
        assert_eq!(
            shift_values("20200229123000.5", true, DateShift::Days(1)).as_deref(),
            Some("20200301123000.5")
        );
        assert_eq!(
            shift_values("20200229123000+0100", true, DateShift::Default).as_deref(),
            Some("20000101123000+0100")
        );
        assert_eq!(shift_values("", true, DateShift::Days(5)).as_deref(), Some(""));
        assert_eq!(shift_values("2020", true, DateShift::Days(5)), None);
        assert_eq!(
            shift_values("20200101PLANTB^SMITH", true, DateShift::Days(1)),
            None,
            "no text behind a date"
        );
        assert_eq!(shift_values("20200101 1230", true, DateShift::Days(1)), None);
        assert_eq!(shift_values("20200101-0500", true, DateShift::Days(1)).as_deref(), Some("20200102-0500"));
        assert!(is_time("101010.5") && is_time("10:10:10") && is_time(""));
        assert!(!is_time("PLANTA 12 Main St"));
        assert_eq!(
            shift_values("20200101\\20200102", false, DateShift::Days(1)).as_deref(),
            Some("20200102\\20200103")
        );
    }

    #[test]
    fn ages_round_to_valid_as_values() {
        for (input, out) in [
            ("000Y", "000Y"),
            ("002Y", "000Y"),
            ("003Y", "005Y"),
            ("008Y", "010Y"),
            ("045Y", "045Y"),
            ("047Y", "045Y"),
            ("090D", "090D"),
            ("012M", "010M"),
        ] {
            assert_eq!(round_age(input, 5).as_deref(), Some(out), "{input}");
        }
        assert_eq!(round_age("45", 5), None);
        assert_eq!(round_age("045Y", 10).as_deref(), Some("040Y"), "half to even, like Python");
    }

    #[test]
    fn free_text_loses_the_name_and_keeps_its_meaning() {
        let s = Scrubber::new([&b"SMITH^ELIZABETH^^MRS"[..]], [&b"MRN12345"[..], b"A1"]);
        assert_eq!(s.scrub(b"CT CHEST for Elizabeth Smith").unwrap(), b"CT CHEST for *** ***");
        assert_eq!(s.scrub(b"follow-up of mrn12345/2").unwrap(), b"follow-up of ***/2");
        assert_eq!(s.scrub(b"Smithsonian protocol"), None, "name parts match whole words only");
        assert_eq!(s.scrub(b"CT HEAD"), None);
    }

    #[test]
    fn every_name_and_the_digits_of_an_id_are_scrubbed() {
        let s = Scrubber::new(
            [&b"DOE^JANE"[..], b"GELLEMEYER^P^^DR", b"COURTIER^A"],
            [&b"MRN00482913"[..], b"4711"],
        );
        assert_eq!(s.scrub(b"verwezen door dr. Gellemeyer").unwrap(), b"verwezen door dr. ***");
        assert_eq!(s.scrub(b"CT series 1 op Courtier").unwrap(), b"CT series 1 op ***");
        assert_eq!(s.scrub(b"Recon 2 (00482913)").unwrap(), b"Recon 2 (***)");
        assert_eq!(s.scrub(b"Recon 2 (004-829-13)").unwrap(), b"Recon 2 (***)");
        assert_eq!(s.scrub(b"ref 004 829 13").unwrap(), b"ref ***");
        assert_eq!(s.scrub(b"case 4711 done").unwrap(), b"case *** done");
        assert_eq!(s.scrub(b"CT 120 kV 0.5 mm"), None);
        assert_eq!(s.scrub(b"Dr. Chase reviewed").unwrap(), b"Dr. *** reviewed", "a name after a title");
        assert_eq!(s.scrub(b"besproken met dhr Jansen-Smit").unwrap(), b"besproken met dhr ***");
        assert_eq!(s.scrub(b"Address: 12 Drive"), None, "a title inside a word is no title");
        assert_eq!(s.scrub(b"Mr Jansen, MR. Pieters, dr.Smit").unwrap(), b"Mr ***, MR. ***, dr.***");
        for text in [&b"MR knee"[..], b"DR chest PA", b"TR 2000 ms TE 30", b"MS lesion load", b"mr brain"] {
            assert_eq!(s.scrub(text), None, "{}", String::from_utf8_lossy(text));
        }
    }
}
