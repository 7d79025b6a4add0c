//! Spelling-level normalisation of two questions before the guards compare
//! them ("The decision" in `docs/semantic.md`): an acronym in one and its
//! spelled-out words in the other (`TTL` / `time to live`, `API` /
//! `application programming interface`) become the acronym in both, and
//! common unit and Latin abbreviations (`tbsp`, `oz`, `mins`, `e.g.`) become
//! their words. Nothing else is rewritten, so the literal guard still sees
//! every number, name and quote.

/// Words an acronym's letters may skip (`return on investment`, `ROI`; `CEFR`).
const SMALL: &[&str] = &["of", "on", "to", "as", "a", "the", "and", "for", "in", "at", "by"];

/// Abbreviations and their words (lowercase, as whole tokens).
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("tsp", "teaspoon"),
    ("tsps", "teaspoons"),
    ("tbsp", "tablespoon"),
    ("tbsps", "tablespoons"),
    ("oz", "ounces"),
    ("lb", "pound"),
    ("lbs", "pounds"),
    ("kg", "kilograms"),
    ("g", "grams"),
    ("mg", "milligrams"),
    ("ml", "milliliters"),
    ("km", "kilometers"),
    ("cm", "centimeters"),
    ("mm", "millimeters"),
    ("min", "minute"),
    ("mins", "minutes"),
    ("hr", "hour"),
    ("hrs", "hours"),
    ("sec", "second"),
    ("secs", "seconds"),
    ("°f", "degrees Fahrenheit"),
    ("°c", "degrees Celsius"),
    ("e.g.", "for example"),
    ("i.e.", "that is"),
    ("approx.", "approximately"),
    ("vs", "versus"),
    ("vs.", "versus"),
];

/// Both texts, each acronym spelled out in the other replaced by the
/// acronym, and abbreviations expanded.
pub fn pair(a: &str, b: &str) -> (String, String) {
    let (a, b) = (expand(a), expand(b));
    let b2 = contract(&b, &acronyms(&a));
    let a2 = contract(&a, &acronyms(&b2));
    (a2, b2)
}

/// Candidates scored below this are never scored again on their normalised
/// texts (the gateway does it for one candidate per lookup, the best).
pub const RESCORE_FLOOR: f32 = 0.4;

/// The normalised pair ([`pair`]) when normalisation changed either text
/// (beyond spacing): the gateway then compares the two normalised texts'
/// embeddings too, since a small model scores `API` far from `application
/// programming interface`.
pub fn changed(a: &str, b: &str) -> Option<(String, String)> {
    let (na, nb) = pair(a, b);
    let same = |x: &str, y: &str| x.split_whitespace().eq(y.split_whitespace());
    (!same(&na, a) || !same(&nb, b)).then_some((na, nb))
}

fn expand(text: &str) -> String {
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let (core, tail) = split_tail(raw);
        let lower = core.to_lowercase();
        match ABBREVIATIONS.iter().find(|(k, _)| *k == lower) {
            Some((_, words)) => out.push(format!("{words}{tail}")),
            None => out.push(raw.to_string()),
        }
    }
    out.join(" ")
}

/// A word without its trailing punctuation, and that punctuation (`e.g.` keeps its dots).
fn split_tail(raw: &str) -> (&str, &str) {
    let lower = raw.to_lowercase();
    if ABBREVIATIONS
        .iter()
        .any(|(k, _)| k.ends_with('.') && lower.starts_with(k))
    {
        let n = ABBREVIATIONS
            .iter()
            .filter(|(k, _)| k.ends_with('.') && lower.starts_with(k))
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0);
        return raw.split_at(n.min(raw.len()));
    }
    let end = raw.trim_end_matches([',', '.', '?', '!', ':', ';', ')']).len();
    raw.split_at(end)
}

/// The acronyms of a text: all-capital words of 2 to 6 letters.
fn acronyms(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|raw| split_tail(raw).0.trim_start_matches('('))
        .filter(|w| (2..=6).contains(&w.len()) && w.chars().all(|c| c.is_ascii_uppercase()))
        .map(str::to_string)
        .collect()
}

/// Replaces, in `text`, a run of words whose initials spell one of
/// `acronyms` by the acronym.
fn contract(text: &str, acronyms: &[String]) -> String {
    let raws: Vec<&str> = text.split_whitespace().collect();
    // Each part of each raw word (hyphens split): (raw index, part).
    let mut parts: Vec<(usize, String)> = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        for p in split_tail(raw).0.split('-').filter(|p| !p.is_empty()) {
            parts.push((i, p.to_lowercase()));
        }
    }
    for acr in acronyms {
        let letters: Vec<char> = acr.to_lowercase().chars().collect();
        for start in 0..parts.len() {
            if let Some(end) = spells(&parts[start..], &letters) {
                let (first, last) = (parts[start].0, parts[start + end].0);
                // Whole words only: the run starts a word and ends one.
                let starts = start == 0 || parts[start - 1].0 != first;
                let ends = start + end + 1 == parts.len() || parts[start + end + 1].0 != last;
                if !starts || !ends || first == last && parts[start].1.len() <= letters.len() {
                    continue;
                }
                // Common words spell an acronym only when hyphenated into one (`do-it-yourself`).
                if first != last && too_common(&parts[start..=start + end], letters.len()) {
                    continue;
                }
                let tail = split_tail(raws[last]).1;
                let mut out: Vec<String> = raws[..first].iter().map(|s| s.to_string()).collect();
                out.push(format!("{acr}{tail}"));
                out.extend(raws[last + 1..].iter().map(|s| s.to_string()));
                return contract(&out.join(" "), acronyms);
            }
        }
    }
    text.to_string()
}

/// Words too common to spell an acronym (`Is it` is not `IT`).
const COMMON: &[&str] = &[
    "is", "it", "i", "do", "does", "to", "be", "we", "you", "my", "me", "us", "or", "and", "if", "so", "a", "an",
    "the", "at", "on", "in", "of", "for", "how", "what", "can", "are", "was", "he", "she", "they", "this", "that",
];

/// Whether more than half of a run's words are common ones.
fn too_common(run: &[(usize, String)], letters: usize) -> bool {
    run.iter().filter(|(_, p)| COMMON.contains(&p.as_str())).count() * 2 > letters
}

/// Whether the parts from the first spell `letters` by their initials
/// (small words may be skipped, never the first or last); the index of the
/// last part used.
fn spells(parts: &[(usize, String)], letters: &[char]) -> Option<usize> {
    let mut li = 0;
    for (pi, (_, part)) in parts.iter().enumerate() {
        let initial = part.chars().next()?;
        if li < letters.len() && initial == letters[li] {
            li += 1;
            if li == letters.len() {
                return Some(pi);
            }
        } else if pi == 0 || !SMALL.contains(&part.as_str()) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acronyms_meet_their_words() {
        for (a, b, want_a) in [
            (
                "What is a time to live in DNS?",
                "What is a TTL in DNS?",
                "What is a TTL in DNS?",
            ),
            (
                "What does an application programming interface gateway do?",
                "What does an API gateway do?",
                "What does an API gateway do?",
            ),
            (
                "What is the return on investment of a rental property?",
                "What is the ROI of a rental property?",
                "What is the ROI of a rental property?",
            ),
            ("What is an exchange-traded fund?", "What is an ETF?", "What is an ETF?"),
            (
                "Do I need a visa to visit the United States?",
                "Do I need a visa to visit the US?",
                "Do I need a visa to visit the US?",
            ),
        ] {
            let (na, nb) = pair(a, b);
            assert_eq!((na.as_str(), nb.as_str()), (want_a, b), "{a} | {b}");
            let (nb, na) = pair(b, a);
            assert_eq!((na.as_str(), nb.as_str()), (want_a, b), "the other way: {a} | {b}");
        }
        // Initials that happen to match a short word, or common words, are left alone.
        assert_eq!(pair("Is it OK?", "Is it okay?").1, "Is it okay?");
        assert_eq!(
            pair("Is IT a good career?", "Is it a good career?").1,
            "Is it a good career?"
        );
    }

    #[test]
    fn a_changed_pair_is_told() {
        let (a, b) = changed("What is an ETF?", "What is an exchange-traded fund?").unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("What is an ETF?", "What is an ETF?"));
        assert!(
            changed("What is an ETF?", "What is an  ETF?").is_none(),
            "spacing is no change"
        );
        assert!(changed("How do I bake bread?", "How do I bake rolls?").is_none());
        assert!(changed("How many tsp in a tbsp?", "x").is_some());
    }

    #[test]
    fn abbreviations_become_words() {
        assert_eq!(
            pair("How many tsp are in a tbsp?", "x").0,
            "How many teaspoon are in a tablespoon?"
        );
        assert_eq!(pair("Bake at 350 °F.", "x").0, "Bake at 350 degrees Fahrenheit.");
        assert_eq!(pair("Is 2 kg a lot?", "x").0, "Is 2 kilograms a lot?");
    }
}
