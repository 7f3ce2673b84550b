//! Value transforms the engine applies: date shifts, age rounding, free-text scrubbing.
//! Pure functions over the raw value bytes.

use aho_corasick::{AhoCorasick, MatchKind};
use chrono::{Datelike, Duration, NaiveDate};
use std::sync::{Arc, Mutex};

/// RSNA's stand-in date when a patient has no ID to derive an offset from.
pub const DEFAULT_DATE: &str = "20000101";

/// How to move this instance's dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateShift {
    /// Add this many days (negative: earlier).
    Days(i32),
    /// No PatientID: every date becomes 20000101 (RSNA's rule).
    Default,
}

/// Shift one DA value (`YYYYMMDD`). `None`: not a valid date, or shifted out of the years a DA
/// can hold (0001-9999), so the caller empties it.
pub fn shift_date(value: &str, shift: DateShift) -> Option<String> {
    let date = NaiveDate::parse_from_str(value, "%Y%m%d").ok().filter(|_| value.len() == 8)?;
    Some(match shift {
        DateShift::Default => DEFAULT_DATE.to_string(),
        DateShift::Days(d) => {
            let shifted = date.checked_add_signed(Duration::days(d.into()))?;
            (1..=9999).contains(&shifted.year()).then(|| shifted.format("%Y%m%d").to_string())?
        }
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
    let offset_ok = offset.is_none_or(|o| {
        o.len() == 4 && o.bytes().all(|b| b.is_ascii_digit()) && o[..2] <= *"14" && o[2..] <= *"59"
    });
    clock(whole) && fraction_ok(fraction, whole.len()) && offset_ok
}

/// `HH`, `HHMM` or `HHMMSS` with each part in range (seconds up to 60, for a leap second).
fn clock(hhmmss: &str) -> bool {
    let digits = hhmmss.bytes().all(|b| b.is_ascii_digit());
    let part = |i: usize, max: &str| hhmmss.get(i..i + 2).is_none_or(|p| p <= max);
    digits && matches!(hhmmss.len(), 0 | 2 | 4 | 6) && part(0, "23") && part(2, "59") && part(4, "60")
}

/// A fraction of a second: up to six digits, only after whole seconds.
fn fraction_ok(fraction: &str, whole_len: usize) -> bool {
    fraction.is_empty()
        || (whole_len == 6 && fraction.len() <= 6 && fraction.bytes().all(|b| b.is_ascii_digit()))
}

/// A TM value: `HHMMSS.FFFFFF` (parts optional from the right), or the older `HH:MM:SS.FFFFFF`,
/// each part in range; values separated by `\`.
pub fn is_time(value: &str) -> bool {
    value.split('\\').all(|v| {
        let v = v.trim_matches(' ');
        let (whole, fraction) = v.split_once('.').unwrap_or((v, ""));
        let whole = match whole.len() {
            5 | 8 if whole.as_bytes()[2] == b':' && whole.as_bytes().get(5).is_none_or(|&c| c == b':') => {
                // Only the two separators are colons; clock() then wants the digits.
                let digits = whole.replace(':', "");
                if digits.len() + whole.len() / 3 != whole.len() {
                    return false;
                }
                digits
            }
            _ => whole.to_string(),
        };
        clock(&whole) && fraction_ok(fraction, whole.len())
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
///
/// Each kind of needle is one Aho-Corasick automaton, built once per instance, so scrubbing a
/// text costs one pass per kind over it however many names and identifiers the instance holds
/// (one pass per needle made an SR tree of thousands of names a denial of service). Within a
/// pass the leftmost match wins, and of those the longest ("Smithson" before "Smith").
///
/// Building the automata costs more than scrubbing a typical instance, and the instances of a
/// series all bring the same needles: the automata of the last [`RECENT_PASSES`] needle sets are
/// kept and shared.
#[derive(Debug, Clone)]
pub struct Scrubber {
    /// `None` if a name part or identifier is longer than [`MAX_NEEDLE`] or an automaton could
    /// not be built: every kept text is then replaced whole, failing closed.
    passes: Option<Arc<Passes>>,
}

/// The sorted, deduplicated needles of a [`Passes`]: identifiers, digit runs, marked words.
type Needles = [Vec<Vec<u8>>; 3];

/// How many recently built needle sets keep their automata: more than the patients that
/// concurrent associations send at once.
const RECENT_PASSES: usize = 32;
/// Needle sets larger than this (an SR naming hundreds of people) are built for their instance
/// only, so the memory of recent automata stays small.
const MAX_SHARED_NEEDLES: usize = 256;

static RECENT: Mutex<Vec<(Needles, Arc<Passes>)>> = Mutex::new(Vec::new());

/// The automata for `needles`, from the recent ones or built (and remembered if small).
fn passes_for(needles: Needles) -> Option<Arc<Passes>> {
    let shared = needles.iter().map(Vec::len).sum::<usize>() <= MAX_SHARED_NEEDLES;
    if shared {
        let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = recent.iter().position(|(n, _)| *n == needles) {
            // Most recently used last.
            let hit = recent.remove(at);
            let passes = hit.1.clone();
            recent.push(hit);
            return Some(passes);
        }
    }
    let [ids, digits, words] = &needles;
    let passes = Arc::new(Passes::build(ids, digits, words)?);
    if shared {
        let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_PASSES {
            recent.remove(0);
        }
        recent.push((needles, passes.clone()));
    }
    Some(passes)
}

#[derive(Debug, Clone)]
struct Passes {
    /// Identifiers long enough not to occur by chance, matched anywhere.
    ids: AhoCorasick,
    /// The digit runs of identifiers, matched anywhere and also with separators between the
    /// digits ("00482913" also finds "004-829-13"), because people retype numbers that way.
    digits: AhoCorasick,
    /// Name parts and short identifiers, matched as whole words only (a name part inside
    /// another word is left alone): see [`mark_words`].
    words: AhoCorasick,
}

impl Passes {
    fn build(ids: &[Vec<u8>], digits: &[Vec<u8>], words: &[Vec<u8>]) -> Option<Passes> {
        Some(Passes { ids: automaton(ids)?, digits: automaton(digits)?, words: automaton(words)? })
    }
}

/// Words too common to be scrub targets, though a name part or an institution may be spelled
/// so ("Here", "Test", "OB"): masking them corrupts ordinary text and codes (a modality, a
/// vendor's "TEST" scheme) and hides nobody. Lowercase, sorted.
const COMMON_WORDS: &[&[u8]] = &[
    b"a",
    b"an",
    b"and",
    b"anon",
    b"anonymous",
    b"are",
    b"as",
    b"at",
    b"au",
    b"be",
    b"body",
    b"brain",
    b"by",
    b"chest",
    b"cr",
    b"ct",
    b"da",
    b"de",
    b"del",
    b"den",
    b"der",
    b"di",
    b"do",
    b"doctor",
    b"dr",
    b"du",
    b"dx",
    b"ecg",
    b"el",
    b"es",
    b"female",
    b"for",
    b"from",
    b"general",
    b"hand",
    b"head",
    b"here",
    b"in",
    b"is",
    b"it",
    b"la",
    b"le",
    b"left",
    b"male",
    b"mg",
    b"mr",
    b"mrs",
    b"ms",
    b"name",
    b"neck",
    b"new",
    b"nm",
    b"no",
    b"none",
    b"not",
    b"ob",
    b"of",
    b"old",
    b"on",
    b"or",
    b"ot",
    b"other",
    b"patient",
    b"pr",
    b"pt",
    b"rf",
    b"right",
    b"sc",
    b"seg",
    b"sr",
    b"study",
    b"test",
    b"the",
    b"there",
    b"this",
    b"to",
    b"unknown",
    b"us",
    b"van",
    b"von",
    b"with",
    b"xa",
    b"yes",
];

fn is_common_word(word: &[u8]) -> bool {
    COMMON_WORDS.binary_search(&word).is_ok()
}

/// Name parts shorter than this are too likely to be ordinary words or initials.
const MIN_NAME_PART: usize = 2;
/// Identifiers shorter than this are matched as words only; longer ones anywhere.
const MIN_EMBEDDED_ID: usize = 5;
/// Characters people put between the digits of a number they retype.
const DIGIT_SEPARATORS: &[u8] = b"-. /_";
/// The longest name part or identifier searched for: a PN component group holds 64 characters
/// of at most 4 bytes, an LO 64. After each match a leftmost-longest search may read on as far
/// as the longest needle to look for a longer match, so this bounds that work per match.
const MAX_NEEDLE: usize = 256;

impl Scrubber {
    /// `names` are raw PN values (components split on `^`, groups on `=`), `ids` raw identifiers.
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a [u8]>,
        ids: impl IntoIterator<Item = &'a [u8]>,
    ) -> Scrubber {
        Scrubber::with_phrases(names, ids, std::iter::empty())
    }

    /// [`Scrubber::new`], and `phrases` (institutions, addresses, telephone numbers) matched
    /// whole: each line of a value as whole words, a number also by all its digits. A line too
    /// long to look for is left out rather than failing the instance.
    pub fn with_phrases<'a>(
        names: impl IntoIterator<Item = &'a [u8]>,
        ids: impl IntoIterator<Item = &'a [u8]>,
        phrases: impl IntoIterator<Item = &'a [u8]>,
    ) -> Scrubber {
        let (mut words, mut long_ids, mut digits) = (Vec::new(), Vec::new(), Vec::new());
        for line in phrases.into_iter().flat_map(|p| p.split(|&b| matches!(b, b'\\' | b'\r' | b'\n'))) {
            let line = crate::dicom::trim_padding(line).trim_ascii();
            if line.len() < 3 || line.len() > MAX_NEEDLE {
                continue;
            }
            words.push(line.to_ascii_lowercase());
            digits.extend(all_digits(line));
        }
        let names: Vec<&[u8]> = names.into_iter().collect();
        // A family and a given name written as one word, either way round ("YamadaTaro" for
        // YAMADA^TARO): the whole-word match of either part does not see them there. (Ideographic
        // and other non-ASCII text has a word boundary at every byte, so 山田太郎 is seen.)
        for group in names.iter().flat_map(|name| name.split(|&b| b == b'=')) {
            let mut parts = group.split(|&b| b == b'^').map(crate::dicom::trim_padding);
            if let (Some(family), Some(given)) = (parts.next(), parts.next()) {
                if family.len() >= MIN_NAME_PART && given.len() >= MIN_NAME_PART {
                    words.push([family, given].concat().to_ascii_lowercase());
                    words.push([given, family].concat().to_ascii_lowercase());
                }
            }
        }
        // Family, given and middle names of every component group; prefixes and suffixes
        // ("DR", "MRS", "III") are titles that identify no one and occur in ordinary text.
        let parts = names.iter().flat_map(|name| {
            name.split(|&b| b == b'=').flat_map(|group| group.split(|&b| b == b'^').take(3))
        });
        for component in parts {
            for part in component.split(|&b| matches!(b, b' ' | b',')) {
                let part = crate::dicom::trim_padding(part);
                if part.len() >= MIN_NAME_PART {
                    words.push(part.to_ascii_lowercase());
                }
                // A double-barrelled name is written in full or by either half ("Jansen-Smit",
                // "Smit"); the halves are words of their own.
                if part.contains(&b'-') {
                    let halves = part.split(|&b| b == b'-').filter(|h| h.len() >= MIN_NAME_PART);
                    words.extend(halves.map(<[u8]>::to_ascii_lowercase));
                }
            }
        }
        for id in ids {
            let id = crate::dicom::trim_padding(id);
            if id.len() >= MIN_EMBEDDED_ID {
                long_ids.push(id.to_ascii_lowercase());
            } else if id.len() >= 3 {
                words.push(id.to_ascii_lowercase());
            }
            for run in id.split(|b| !b.is_ascii_digit()).filter(|r| r.len() >= MIN_EMBEDDED_ID) {
                digits.push(run.to_vec());
            }
            digits.extend(all_digits(id));
        }
        words.retain(|w| !is_common_word(w));
        let fits = [&words, &long_ids, &digits].into_iter().flatten().all(|n| n.len() <= MAX_NEEDLE);
        let words = words.iter().map(|w| {
            let marked = mark_words(w);
            // A needle starts at a word start and ends at a word end: drop the marks outside.
            let start = usize::from(marked[0] == WORD_END);
            let end = marked.len() - usize::from(marked[marked.len() - 1] == WORD_START);
            marked[start..end].to_vec()
        });
        let mut needles: Needles = [long_ids, digits, words.collect()];
        for n in &mut needles {
            n.sort_unstable();
            n.dedup();
        }
        Scrubber { passes: if fits { passes_for(needles) } else { None } }
    }

    /// The text with each match replaced by asterisks (at most three, never longer than the
    /// match, so the value still fits its VR). `None` when nothing matched. Identifiers first,
    /// then their digits, then names, each pass on what the one before left, then the words
    /// after titles. A name a reader sees but the bytes hide (full-width letters, a soft hyphen
    /// or a zero-width character inside it) is matched in the text as a reader sees it
    /// ([`reader_form`]), and the text is then written in that form.
    pub fn scrub(&self, text: &[u8]) -> Option<Vec<u8>> {
        let out = self.scrub_bytes(text);
        let current = out.as_deref().unwrap_or(text);
        reader_form(current).and_then(|plain| self.scrub_bytes(&plain)).or(out)
    }

    fn scrub_bytes(&self, text: &[u8]) -> Option<Vec<u8>> {
        let Some(p) = &self.passes else {
            return (!text.is_empty()).then(|| vec![b'*'; text.len().min(3)]);
        };
        let mut out: Option<Vec<u8>> = None;
        for (ac, pass) in [(&p.ids, anywhere as Pass), (&p.digits, digit_runs), (&p.words, whole_words)] {
            if ac.patterns_len() > 0 {
                if let Some(replaced) = pass(ac, out.as_deref().unwrap_or(text)) {
                    out = Some(replaced);
                }
            }
        }
        if let Some(replaced) = after_titles(out.as_deref().unwrap_or(text)) {
            out = Some(replaced);
        }
        out
    }

    /// [`Scrubber::scrub`] for prose (comments, descriptions, labels, report text), which also
    /// loses every long number, whoever it belongs to. Not for codes: a SNOMED CT code value has
    /// eight digits.
    pub fn scrub_prose(&self, text: &[u8]) -> Option<Vec<u8>> {
        // Shapes first: a name inside an e-mail address would otherwise break its shape.
        let shaped = replace(text, super::patterns::spans(text).into_iter());
        let scrubbed = self.scrub(shaped.as_deref().unwrap_or(text)).or(shaped);
        long_numbers(scrubbed.as_deref().unwrap_or(text)).or(scrubbed)
    }
}

/// `text` as a reader sees it, when those are other bytes: UTF-8 in NFKC (full-width Latin is
/// Latin) without the format characters that show as nothing (soft hyphen, zero-width space and
/// joiners, direction marks); in a single-byte set, without a soft hyphen (0xAD in the ISO 8859
/// sets) between two ASCII letters. `None` when the text reads as its bytes.
fn reader_form(text: &[u8]) -> Option<Vec<u8>> {
    use unicode_normalization::UnicodeNormalization;
    if text.is_ascii() {
        return None;
    }
    let plain: Vec<u8> = match std::str::from_utf8(text) {
        Ok(s) => s.chars().filter(|&c| !is_invisible(c)).nfkc().collect::<String>().into_bytes(),
        Err(_) => {
            let letter = |i: Option<&u8>| i.is_some_and(u8::is_ascii_alphabetic);
            let hidden =
                |i: usize| text[i] == 0xAD && i > 0 && letter(text.get(i - 1)) && letter(text.get(i + 1));
            (0..text.len()).filter(|&i| !hidden(i)).map(|i| text[i]).collect()
        }
    };
    (plain != text).then_some(plain)
}

/// Format characters a reader does not see.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// All the digits of a value together, when they are enough to look for: a number written in
/// groups ("555-0192-331") is retyped in other groups ("555 0192 331"), each too short to look
/// for on its own.
fn all_digits(value: &[u8]) -> Option<Vec<u8>> {
    let all: Vec<u8> = value.iter().copied().filter(u8::is_ascii_digit).collect();
    (all.len() >= MIN_EMBEDDED_ID).then_some(all)
}

/// One scrub pass: the text with one automaton's matches replaced, `None` if there were none.
type Pass = fn(&AhoCorasick, &[u8]) -> Option<Vec<u8>>;

/// One automaton for `needles`, ASCII case folded, leftmost-longest. `None` only past the
/// crate's limits on states and patterns.
fn automaton(needles: &[Vec<u8>]) -> Option<AhoCorasick> {
    let builder = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(needles);
    builder.ok()
}

/// `text` with the spans (ascending, disjoint) replaced; `None` if there are none.
fn replace(text: &[u8], spans: impl Iterator<Item = (usize, usize)>) -> Option<Vec<u8>> {
    let (mut out, mut at, mut found) = (Vec::with_capacity(text.len()), 0, false);
    for (start, end) in spans {
        out.extend_from_slice(&text[at..start]);
        out.extend(std::iter::repeat_n(b'*', (end - start).min(3)));
        (at, found) = (end, true);
    }
    out.extend_from_slice(&text[at..]);
    found.then_some(out)
}

/// Identifiers anywhere.
fn anywhere(ac: &AhoCorasick, text: &[u8]) -> Option<Vec<u8>> {
    replace(text, ac.find_iter(text).map(|m| (m.start(), m.end())))
}

/// Digit runs, with at most one separator between two digits: searched for in the text without
/// the separators that stand between two digits, and mapped back.
fn digit_runs(ac: &AhoCorasick, text: &[u8]) -> Option<Vec<u8>> {
    let dropped = |i: usize| {
        DIGIT_SEPARATORS.contains(&text[i])
            && i > 0
            && text[i - 1].is_ascii_digit()
            && text.get(i + 1).is_some_and(u8::is_ascii_digit)
    };
    let packed: Vec<u8> = (0..text.len()).filter(|&i| !dropped(i)).map(|i| text[i]).collect();
    // Where the `q`th kept byte is in `text`; asked in ascending order, so one walk in all.
    let (mut i, mut kept) = (0, 0);
    let mut original = |q: usize| {
        while kept < q || dropped(i) {
            kept += usize::from(!dropped(i));
            i += 1;
        }
        i
    };
    replace(text, ac.find_iter(&packed).map(|m| (original(m.start()), original(m.end() - 1) + 1)))
}

/// Marks [`mark_words`] puts where a word may start or end; a text byte of either value is
/// read as [`MARK_STAND_IN`] (not a letter or digit either, so no boundary moves).
const WORD_START: u8 = 0;
const WORD_END: u8 = 1;
const MARK_STAND_IN: u8 = 2;

/// `text` with [`WORD_END`] where a word may end (before a byte that is no ASCII letter or
/// digit, or at the end) and then [`WORD_START`] where one may start (after such a byte, or at
/// the start). Needles marked the same way, from their first start to their last end, match
/// only whole words, so the automaton's leftmost-longest match is already the leftmost-longest
/// whole word: a longer needle that is no whole word ("Jansen-Smit" in "Jansen-Smith") cannot
/// hide a shorter one that is ("Jansen"), nor a later one ("Smith" in "Hanna-Smith"), and no
/// search restarts inside a rejected match.
fn mark_words(text: &[u8]) -> Vec<u8> {
    let boundary = |b: Option<&u8>| b.is_none_or(|b| !b.is_ascii_alphanumeric());
    let mut out = Vec::with_capacity(text.len() + text.len() / 2 + 2);
    for p in 0..=text.len() {
        if boundary(text.get(p)) {
            out.push(WORD_END);
        }
        if p == 0 || boundary(text.get(p - 1)) {
            out.push(WORD_START);
        }
        if let Some(&b) = text.get(p) {
            out.push(if b == WORD_START || b == WORD_END { MARK_STAND_IN } else { b });
        }
    }
    out
}

/// Names and short identifiers as whole words.
fn whole_words(ac: &AhoCorasick, text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() {
        return None;
    }
    let marked = mark_words(text);
    // A position in `marked` less the marks before it is the position in `text`; asked in
    // ascending order, so one walk in all.
    let (mut seen, mut before) = (0, 0);
    let mut original = |q: usize| {
        before += marked[seen..q].iter().filter(|&&b| b == WORD_START || b == WORD_END).count();
        seen = q;
        q - before
    };
    // A match runs from a start mark (at the word's first byte) to an end mark (after its last).
    replace(text, ac.find_iter(&marked).map(|m| (original(m.start()), original(m.end() - 1))))
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

/// Digits in a row that make a number this long are an identifier until shown otherwise (a record
/// number, a telephone number, a date): no measurement or count in a description needs seven.
const LONG_NUMBER: usize = 7;

/// Numbers of [`LONG_NUMBER`] digits or more replaced: another patient's record number or a
/// telephone number typed into a description is not in the instance to be looked for.
fn long_numbers(text: &[u8]) -> Option<Vec<u8>> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let start = i;
        while i < text.len() && text[i].is_ascii_digit() {
            i += 1;
        }
        if i - start >= LONG_NUMBER {
            spans.push((start, i));
        }
        i += usize::from(i == start);
    }
    replace(text, spans.into_iter())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hidden_by_their_bytes_or_written_together_are_found() {
        let s = Scrubber::new([&b"DOE^JOHN"[..], "山田^太郎".as_bytes(), b"YAMADA^TARO"], []);
        let scrub = |t: &str| s.scrub(t.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(scrub("seen: ＪＯＨＮ ＤＯＥ").as_deref(), Some("seen: *** ***"), "full-width Latin");
        assert_eq!(scrub("for Do\u{AD}e").as_deref(), Some("for ***"), "a soft hyphen");
        assert_eq!(scrub("for J\u{200B}ohn").as_deref(), Some("for ***"), "a zero-width space");
        assert_eq!(scrub("patient YamadaTaro, TaroYamada").as_deref(), Some("patient ***, ***"));
        assert_eq!(scrub("患者山田太郎様").as_deref(), Some("患者***様"));
        assert_eq!(scrub("CT ＨＥＡＤ ½"), None, "what hides no name is left as it is");
        // Latin-1: a soft hyphen byte between letters.
        assert_eq!(s.scrub(b"for Do\xADe").as_deref(), Some(&b"for ***"[..]));
    }

    #[test]
    fn prose_loses_telephone_numbers_addresses_and_dates_by_their_shape() {
        let s = Scrubber::new([&b"DOE^JOHN"[..]], []);
        let prose = b"Call +44 1632 960418 or j.doe@example.org; seen 13/03/2019 and April 2, 2019.";
        assert_eq!(s.scrub_prose(prose).unwrap(), b"Call *** or ***; seen *** and ***.");
        let short = s.scrub(prose).unwrap();
        assert!(
            short.starts_with(b"Call +44 1632 960418 or j.***@"),
            "short text keeps its shapes: the name goes"
        );
    }

    #[test]
    fn common_words_are_sorted_for_the_binary_search_and_never_masked() {
        assert!(COMMON_WORDS.windows(2).all(|w| w[0] < w[1]));
        let s = Scrubber::new([&b"HERE^OB"[..], b"DOE^JOHN"], [&b"TEST"[..]]);
        assert_eq!(s.scrub(b"here OB test"), None);
        assert_eq!(s.scrub(b"here DOE").as_deref(), Some(&b"here ***"[..]));
    }

    #[test]
    fn dates_shift_like_rsna() {
        assert_eq!(shift_date("20220101", DateShift::Days(263)).as_deref(), Some("20220921"));
        assert_eq!(shift_date("20220101", DateShift::Days(1322)).as_deref(), Some("20250815"));
        assert_eq!(shift_date("19000101", DateShift::Days(3147)).as_deref(), Some("19080814"));
        assert_eq!(shift_date("20220101", DateShift::Default).as_deref(), Some("20000101"));
        assert_eq!(shift_date("2022011", DateShift::Days(1)), None);
        assert_eq!(shift_date("20221301", DateShift::Days(1)), None);
        assert_eq!(shift_date("20220101", DateShift::Days(-365)).as_deref(), Some("20210101"));
        assert_eq!(shift_date("99991231", DateShift::Days(1)), None, "year 10000 is no DA");
        assert_eq!(shift_date("00010101", DateShift::Days(-1)), None);
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
        assert!(is_time("101010.5") && is_time("10:10:10") && is_time("") && is_time("1010\\23"));
        assert!(!is_time("PLANTA 12 Main St"));
        assert!(!is_time("19800115\\778899"), "digits that are no time of day");
        assert!(!is_time("::::::::") && !is_time("246000") && !is_time("10.5"));
        assert_eq!(shift_values("20200115778899", true, DateShift::Days(1)), None, "77 is no hour");
        assert_eq!(
            shift_values("20200115101010.25+0100", true, DateShift::Days(1)).as_deref(),
            Some("20200116101010.25+0100")
        );
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
    fn long_numbers_go_from_prose_whoever_they_belong_to_and_codes_stay() {
        let s = Scrubber::new([&b"DOE^JOHN"[..]], []);
        let prose = b"compare MRN40517763, tel 5550192";
        assert_eq!(s.scrub_prose(prose).unwrap(), b"compare MRN***, tel ***");
        assert_eq!(s.scrub(prose), None, "codes and short text keep their numbers");
        assert_eq!(s.scrub(b"51185008"), None, "a SNOMED CT code value");
        assert_eq!(s.scrub_prose(b"DLP 1234.5 mGy*cm, 120 kV, 512x512, 250000 counts"), None);
        assert_eq!(s.scrub_prose(b"for John, MRN40517763").unwrap(), b"for ***, MRN***");
    }

    #[test]
    fn phrases_go_whole_and_line_by_line_and_a_long_one_fails_nothing() {
        let long = vec![b'x'; MAX_NEEDLE + 1];
        let address = b"12 Main Street\r\nSpringfield";
        let s = Scrubber::with_phrases(
            [&b"DOE^JOHN"[..]],
            [],
            [&b"Springfield General"[..], b"555-0192-331", address, &long],
        );
        assert_eq!(
            s.scrub(b"seen at springfield general, phone 555 0192 331").unwrap(),
            b"seen at ***, phone ***"
        );
        assert_eq!(s.scrub(b"lives at 12 main street").unwrap(), b"lives at ***");
        assert_eq!(s.scrub(b"Generalized edema"), None, "whole words only");
        assert_eq!(s.scrub(b"CT HEAD"), None, "a line too long to look for fails nothing");
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

    #[test]
    fn a_longer_name_that_is_no_whole_word_hides_no_other_name() {
        let s = Scrubber::new([&b"JANSEN-SMIT^P"[..], b"JANSEN^Q"], []);
        assert_eq!(s.scrub(b"Jansen-Smith").unwrap(), b"***-Smith", "a shorter name at the same place");
        assert_eq!(s.scrub(b"Jansen-Smit").unwrap(), b"***");
        assert_eq!(s.scrub(b"seen by Smit").unwrap(), b"seen by ***", "either half of a double name");
        let s = Scrubber::new([&b"ANNA-SMITH^P"[..], b"SMITH^Q", b"SMITHSONIAN^R"], []);
        assert_eq!(s.scrub(b"Hanna-Smith").unwrap(), b"Hanna-***", "a name inside a longer match");
        assert_eq!(s.scrub(b"Smithsonians Smith").unwrap(), b"Smithsonians ***");
        assert_eq!(s.scrub(b"Smithsonian, Anna-Smith").unwrap(), b"***, ***");
        assert_eq!(s.scrub(b"\x00Smith\x01smith\x02").unwrap(), b"\x00***\x01***\x02", "marks in the text");
    }

    #[test]
    fn a_name_longer_than_any_valid_one_fails_closed() {
        let long = [b'A'; MAX_NEEDLE + 1];
        let s = Scrubber::new([&long[..]], []);
        assert_eq!(s.scrub(b"CT HEAD").unwrap(), b"***");
        assert_eq!(s.scrub(b"CT").unwrap(), b"**");
        assert_eq!(s.scrub(b""), None);
        let s = Scrubber::new([&long[..MAX_NEEDLE]], []);
        assert_eq!(s.scrub(b"CT HEAD"), None);
    }

    #[test]
    fn thousands_of_names_and_ids_cost_one_pass_per_text() {
        let names: Vec<Vec<u8>> = (0..5000).map(|i| format!("FAMILY{i}^GIVEN{i}^^DR").into_bytes()).collect();
        let ids: Vec<Vec<u8>> = (0..5000).map(|i| format!("MRN{i:08}").into_bytes()).collect();
        let started = std::time::Instant::now();
        // Every name twice: duplicates must not multiply the work.
        let s = Scrubber::new(names.iter().chain(&names).map(Vec::as_slice), ids.iter().map(Vec::as_slice));
        for j in 0..2000 {
            let k = j * 7 % 5000;
            let digits = format!("{k:08}");
            let (a, b) = digits.split_at(4);
            let text = format!("Report {j}: Given{k} Family{k} (mrn{k:08}, ref {a}-{b}), not Family{k}x");
            let want = format!("Report {j}: *** *** (***, ref ***), not Family{k}x");
            assert_eq!(String::from_utf8(s.scrub(text.as_bytes()).unwrap()).unwrap(), want);
        }
        eprintln!(
            "5,000 names given twice and 5,000 IDs (20,000 distinct needles), 2,000 texts: {:?}",
            started.elapsed()
        );
    }
}
