//! The instance's own identifying values, as OCR might read them back from its pixels.
//!
//! OCR text is matched loosely: letters and digits only, upper case (`SMITH^JOHN` reads back as
//! `SMITH*JOHN.:`, a date `1961-02-03` as `1961-02-03,`), and a value may be split over the words
//! of one line (`1961 02 03`).

use super::super::Original;
use super::ocr::Word;

/// How sure OCR must be of a short word before it counts as a short value.
const SURE: f32 = 60.0;

/// Letters and digits, upper case.
pub fn normalize(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_uppercase).collect()
}

/// What must not be readable in an image of this instance.
#[derive(Debug, Clone, Default)]
pub struct Needles {
    targets: Vec<String>,
}

impl Needles {
    pub fn of(original: &Original) -> Needles {
        let mut targets = Vec::new();
        if let Some(name) = &original.patient_name {
            targets.extend(
                name.split(['^', '=', ' ', ',', '-']).map(normalize).filter(|p| p.chars().count() >= 2),
            );
        }
        for id in [Some(&original.patient_id), original.accession.as_ref()].into_iter().flatten() {
            targets.push(normalize(id));
        }
        for date in [&original.birth_date, &original.study_date].into_iter().flatten() {
            let d = normalize(date);
            if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
                let (y, m, day) = (&d[..4], &d[4..6], &d[6..]);
                targets.extend([d.clone(), format!("{day}{m}{y}"), format!("{m}{day}{y}")]);
            }
        }
        targets.retain(|t| t.chars().count() >= 2);
        targets.sort();
        targets.dedup();
        Needles { targets }
    }

    /// Whether a normalized word, read with `confidence`, is, holds, or is a large part of one
    /// of the values. A short value (two or three characters) counts only when read surely:
    /// noise reads as short words.
    fn hit(&self, word: &str, confidence: f32) -> bool {
        let n = word.chars().count();
        n >= 2
            && self.targets.iter().any(|t| {
                let long = t.chars().count() >= 4;
                (t == word && (long || confidence >= SURE))
                    || (long && word.contains(t.as_str()))
                    || (n >= 4 && t.contains(word))
            })
    }

    /// Indexes of the words that spell a value, alone or with the other words of their line.
    pub fn find(&self, words: &[Word]) -> Vec<usize> {
        let norms: Vec<String> = words.iter().map(|w| normalize(&w.text)).collect();
        let mut out: Vec<usize> =
            (0..words.len()).filter(|&i| self.hit(&norms[i], words[i].confidence)).collect();
        // A value split over a line: the line's words joined contain it.
        let mut lines: Vec<(u32, u32, u32)> = words.iter().map(|w| w.line).collect();
        lines.sort_unstable();
        lines.dedup();
        for line in lines {
            let members: Vec<usize> = (0..words.len()).filter(|&i| words[i].line == line).collect();
            let joined: String = members.iter().map(|&i| norms[i].as_str()).collect();
            for t in self.targets.iter().filter(|t| t.chars().count() >= 4 && joined.contains(t.as_str())) {
                out.extend(
                    members
                        .iter()
                        .copied()
                        .filter(|&i| !norms[i].is_empty() && t.contains(norms[i].as_str())),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str, line: u32) -> Word {
        Word { x: 0, y: 0, w: 1, h: 1, confidence: 90.0, text: text.into(), line: (1, 1, line) }
    }

    fn needles() -> Needles {
        let mut targets: Vec<String> = ["SMITH", "JOHN", "MRN12345", "19610203", "03021961", "02031961"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        targets.sort();
        Needles { targets }
    }

    #[test]
    fn names_ids_and_dates_are_found_as_ocr_reads_them() {
        let n = needles();
        let words = [
            word("SMITH*JOHN.:", 1),
            word("1961", 2),
            word("02", 2),
            word("03", 2),
            word("Abdomen", 3),
            word("mrn12345", 4),
            word("L", 5),
        ];
        assert_eq!(n.find(&words), vec![0, 1, 2, 3, 5]);
    }

    #[test]
    fn short_and_unrelated_words_are_not_phi() {
        let n = needles();
        assert!(n.find(&[word("JO", 1), word("cm", 1), word("1.5", 1), word("SMI", 2)]).is_empty());
        // A short name part counts only when read surely.
        let short = Needles { targets: vec!["LI".into()] };
        let mut unsure = word("li", 1);
        unsure.confidence = 30.0;
        assert!(short.find(&[unsure]).is_empty());
        assert_eq!(short.find(&[word("LI", 1)]), vec![0]);
    }
}
