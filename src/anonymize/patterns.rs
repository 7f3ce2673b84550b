//! What a careful reader removes from prose whoever it belongs to, by its shape: telephone
//! numbers written in groups, e-mail addresses, and dates in the common numeric forms and in
//! words, in the languages of the character sets we read. The instance's own names and
//! identifiers are the scrubber's; these are the identifiers the instance does not state.

use std::sync::LazyLock;

use regex::bytes::Regex;

/// Month names and their usual abbreviations in English, French, German, Dutch, Spanish,
/// Italian and Portuguese, accented letters in UTF-8 or Latin-1 (or typed without the accent).
const MONTHS: &str = concat!(
    r"(?:jan(?:uary|vier|uar|uari|v)?|ene(?:ro)?|genn(?:aio)?|janeiro|",
    r"feb(?:ruary|ruar|ruari|rero|braio)?|f(?:\xC3\xA9|\xE9|e)v(?:rier)?|fevereiro|",
    r"mar(?:ch|s|zo|(?:\xC3\xA7|\xE7|c)o)?|m(?:\xC3\xA4|\xE4|a)rz|maart|",
    r"apr(?:il|ile)?|avr(?:il)?|abr(?:il)?|",
    r"may|mai|mei|mayo|maggio|maio|",
    r"jun(?:e|i|io|ho)?|juin|giu(?:gno)?|",
    r"jul(?:y|i|io|ho)?|juil(?:let)?|lug(?:lio)?|",
    r"aug(?:ust|ustus)?|ao(?:\xC3\xBB|\xFB|u)t|ago(?:sto)?|",
    r"sep(?:t|tember|tiembre|tembre|tembro)?|set(?:tembre|embro)?|",
    r"oct(?:ober|obre|ubre)?|okt(?:ober)?|ott(?:obre)?|out(?:ubro)?|",
    r"nov(?:ember|embre|iembre|embro)?|",
    r"dec(?:ember)?|d(?:\xC3\xA9|\xE9|e)c(?:embre)?|dez(?:ember|embro)?|dic(?:iembre|embre)?)"
);

/// Each alternative is one shape; `regex` finds the leftmost-first match of all of them in one
/// pass. ASCII only outside the month names (`(?-u)`): the text is in the instance's character
/// set, and digits, `@` and `+` are the same bytes in every set we read.
static SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    let email = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";
    // Groups of digits joined by single spaces, hyphens or dots, after an optional +country
    // code or (area code); how many digits it takes to be a number is decided in `spans`.
    let phone = r"(?:\+\d{1,3}[ .-]?|\(\d{1,5}\)[ .-]?|\b)\d{2,6}(?:[ .-]\d{2,6}){1,5}";
    let numeric_date = r"\d{1,4}[./-]\d{1,2}[./-]\d{2,4}";
    let month_first = format!(r"{MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}");
    let day_first =
        format!(r"\d{{1,2}}(?:st|nd|rd|th|er|\.)?\s+(?:of\s+|de\s+)?{MONTHS}\.?,?\s+(?:de\s+)?\d{{4}}");
    let month_year = format!(r"{MONTHS}\.?\s+\d{{4}}");
    let pattern = format!(
        r"(?i-u)\b(?P<email>{email})\b|\b(?P<date>{numeric_date}|{month_first}|{day_first}|{month_year})\b|(?P<phone>{phone})\b"
    );
    Regex::new(&pattern).expect("the shapes are a valid pattern")
});

/// A telephone number has at least this many digits (a country code and a subscriber number);
/// fewer, written with a leading `+`.
const PHONE_DIGITS: usize = 9;
const PLUS_PHONE_DIGITS: usize = 7;

/// The spans of `text` that have one of the shapes, ascending and disjoint.
pub fn spans(text: &[u8]) -> Vec<(usize, usize)> {
    SHAPES
        .captures_iter(text)
        .filter_map(|c| {
            let m = c.get(0)?;
            let keep = if c.name("phone").is_some() {
                let digits = m.as_bytes().iter().filter(|b| b.is_ascii_digit()).count();
                // Decimals in a list ("10.25 12.50") are numbers, not a telephone's groups.
                let decimal = m.as_bytes().windows(3).any(|w| w[1] == b'.' && w[0].is_ascii_digit());
                let plus = m.as_bytes()[0] == b'+';
                (plus && digits >= PLUS_PHONE_DIGITS) || (!decimal && digits >= PHONE_DIGITS)
            } else if c.name("date").is_some() {
                is_date(m.as_bytes())
            } else {
                true
            };
            keep.then(|| (m.start(), m.end()))
        })
        .collect()
}

/// A numeric match is a date only if its parts are a day, a month and a year in some order
/// (ISO, day first or month first): "1.5.10" of a version or "3-4-12" of a list is not. Dates in
/// words are dates.
fn is_date(m: &[u8]) -> bool {
    if !m.iter().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'/' | b'-')) {
        return true;
    }
    let parts: Vec<&[u8]> = m.split(|b| !b.is_ascii_digit()).collect();
    let n = |p: &[u8]| std::str::from_utf8(p).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let [a, b, c] = parts[..] else { return false };
    // The year is first (ISO) or last, of four digits or two.
    let (x, y) = match (a.len(), c.len()) {
        (4, 1 | 2) => (n(b), n(c)),
        (1 | 2, 2 | 4) => (n(a), n(b)),
        _ => return false,
    };
    let day_month_ok = |d: u32, m: u32| (1..=31).contains(&d) && (1..=12).contains(&m);
    day_month_ok(x, y) || day_month_ok(y, x)
}

#[cfg(test)]
mod tests {
    use super::spans;

    fn masked(text: &str) -> String {
        let mut out = text.to_string();
        for (start, end) in spans(text.as_bytes()).into_iter().rev() {
            out.replace_range(start..end, "#");
        }
        out
    }

    #[test]
    fn telephone_numbers_in_groups_and_e_mail_addresses_go() {
        assert_eq!(masked("call +1 555 0147 2291 or +44 1632 960418"), "call # or #");
        assert_eq!(masked("tel (020) 7946 0958, fax 020-7946-0959"), "tel #, fax #");
        assert_eq!(masked("mail j.doe@example-hospital.org now"), "mail # now");
    }

    #[test]
    fn dates_in_prose_go_in_every_common_form() {
        for (text, want) in [
            ("seen 13/03/2019 and 05/21/2019", "seen # and #"),
            ("on 2019-03-13, 13.03.2019, 3-4-19", "on #, #, #"),
            ("since April 2, 2019 and 2 avril 2019", "since # and #"),
            ("am 2. März 2019, le 1er février 2020, 5 de mayo de 2018", "am #, le #, #"),
            ("in March 2019", "in #"),
            ("2 f\u{e9}v 2020", "#"),
        ] {
            assert_eq!(masked(text), want, "{text}");
        }
    }

    #[test]
    fn measurements_versions_and_codes_stay() {
        for text in [
            "CT 120 kV 0.5 mm 512 x 512",
            "software 3.10.2",
            "window 40 400, slices 1-2-3",
            "b-values 0 500 1000",
            "values 10.25 12.50 13.75 14.00",
            "T-D3000 51185008",
            "May contain artefacts",
            "series 2 of 3",
        ] {
            assert_eq!(masked(text), text);
        }
    }
}
