//! WordNet 3.0, read from its database files (Debian's `wordnet-base`:
//! `/usr/share/wordnet`), for the near-miss guard ("The decision" in
//! `docs/semantic.md`): which words are dictionary words, their base forms
//! (WordNet's own `morphy`: the exception lists, then the suffix rules), and
//! whether two words share a sense (a synset), which is what makes a
//! substitution a synonym rather than an antonym, a sister term or another
//! entity. Only the index files (lemma to synsets) and the adjectives'
//! "similar to" links are kept: about 150,000 lemmas, some 10 MB.

use std::collections::HashMap;
use std::path::Path;

/// Part of speech, as WordNet's files name them.
const POS: [(char, &str); 4] = [('n', "noun"), ('v', "verb"), ('a', "adj"), ('r', "adv")];
/// Indexes into [`POS`].
pub const NOUN: usize = 0;
pub const VERB: usize = 1;

/// A synset: its part of speech (index into [`POS`]) in the top byte, its
/// byte offset in `data.<pos>` below (offsets are under 2^24).
type SynsetId = u32;

fn synset_id(pos: usize, offset: u32) -> SynsetId {
    ((pos as u32) << 24) | offset
}

pub struct Lexicon {
    /// Lemma (lowercase, `_` for spaces) to its synsets per part of speech, most frequent sense first.
    lemmas: HashMap<String, [Vec<SynsetId>; 4]>,
    /// Inflected form to its base forms (`noun.exc`, `verb.exc`, `adj.exc`, `adv.exc`).
    exceptions: HashMap<String, Vec<(usize, String)>>,
    /// An adjective synset to the synsets it is "similar to" (`&`: a head and its satellites).
    similar: HashMap<SynsetId, Vec<SynsetId>>,
    /// A verb synset to its hypernyms (`@`: `delete` is a way to `remove`).
    hypernyms: HashMap<SynsetId, Vec<SynsetId>>,
    /// Senses of a word compared (the most frequent first); 0: all.
    senses: usize,
    verb_hypernyms: bool,
}

/// Adds the `symbol` pointers of a `data.<pos>` file (part of speech `pos`) to `out`.
fn pointers(text: &str, pos: usize, symbol: &str, out: &mut HashMap<SynsetId, Vec<SynsetId>>) {
    for line in text.lines() {
        if line.starts_with(' ') {
            continue; // the licence header
        }
        // offset lex_filenum ss_type w_cnt(hex) word lex_id … p_cnt ptr… | gloss
        let head = line.split(" | ").next().unwrap_or("");
        let f: Vec<&str> = head.split(' ').collect();
        let Some(offset) = f.first().and_then(|o| o.parse::<u32>().ok()) else {
            continue;
        };
        let Some(words) = f.get(3).and_then(|w| usize::from_str_radix(w, 16).ok()) else {
            continue;
        };
        let at = 4 + 2 * words;
        let Some(count) = f.get(at).and_then(|p| p.parse::<usize>().ok()) else {
            continue;
        };
        for i in 0..count {
            let ptr = &f[(at + 1 + 4 * i).min(f.len())..(at + 5 + 4 * i).min(f.len())];
            if let [sym, target, p, _] = ptr {
                let same_pos = POS[pos].0.to_string() == *p || (pos == 2 && *p == "s");
                if *sym == symbol && same_pos {
                    if let Ok(t) = target.parse::<u32>() {
                        out.entry(synset_id(pos, offset)).or_default().push(synset_id(pos, t));
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Lexicon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lexicon({} lemmas)", self.lemmas.len())
    }
}

/// Suffix rules of `morphy`, per part of speech: (suffix, replacement).
const RULES: [&[(&str, &str)]; 4] = [
    &[
        ("s", ""),
        ("ses", "s"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    &[
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    &[],
];

impl Lexicon {
    /// Reads the database at `dir` (`index.noun`, … and `*.exc`, `data.adj`).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let mut lemmas: HashMap<String, [Vec<SynsetId>; 4]> = HashMap::with_capacity(160_000);
        let mut exceptions: HashMap<String, Vec<(usize, String)>> = HashMap::new();
        for (p, (_, name)) in POS.iter().enumerate() {
            for line in read(&format!("index.{name}"))?.lines() {
                if line.starts_with(' ') {
                    continue; // the licence header
                }
                // lemma pos synset_cnt p_cnt [ptr_symbol…] sense_cnt tagsense_cnt offset…
                let f: Vec<&str> = line.split(' ').filter(|s| !s.is_empty()).collect();
                let (Some(lemma), Some(count)) = (f.first(), f.get(2).and_then(|c| c.parse::<usize>().ok())) else {
                    continue;
                };
                let offsets = f.iter().rev().take(count).rev();
                let ids: Vec<SynsetId> = offsets
                    .filter_map(|o| o.parse::<u32>().ok())
                    .map(|o| synset_id(p, o))
                    .collect();
                lemmas.entry(lemma.to_string()).or_default()[p] = ids;
            }
            for line in read(&format!("{name}.exc"))?.lines() {
                let mut f = line.split(' ');
                if let Some(inflected) = f.next() {
                    for base in f.filter(|b| !b.is_empty()) {
                        exceptions
                            .entry(inflected.to_string())
                            .or_default()
                            .push((p, base.to_string()));
                    }
                }
            }
        }
        if lemmas.len() < 1000 {
            return Err(format!(
                "{}: not a WordNet database ({} lemmas)",
                dir.display(),
                lemmas.len()
            ));
        }
        let mut similar: HashMap<SynsetId, Vec<SynsetId>> = HashMap::new();
        pointers(&read("data.adj")?, 2, "&", &mut similar);
        let mut hypernyms: HashMap<SynsetId, Vec<SynsetId>> = HashMap::new();
        pointers(&read("data.verb")?, 1, "@", &mut hypernyms);
        Ok(Self {
            lemmas,
            exceptions,
            similar,
            hypernyms,
            senses: 0,
            verb_hypernyms: false,
        })
    }

    /// Compares only the `n` most frequent senses of each word (0: all).
    pub fn with_senses(mut self, n: usize) -> Self {
        self.senses = n;
        self
    }

    pub fn lemma_count(&self) -> usize {
        self.lemmas.len()
    }

    /// The base forms of a word (lowercase) that WordNet knows, per part of speech.
    pub fn bases(&self, word: &str) -> Vec<(usize, String)> {
        let w = word.to_lowercase().replace(['’'], "'");
        let mut out: Vec<(usize, String)> = Vec::new();
        let push = |p: usize, base: String, out: &mut Vec<(usize, String)>| {
            if self.lemmas.get(&base).is_some_and(|s| !s[p].is_empty()) && !out.contains(&(p, base.clone())) {
                out.push((p, base));
            }
        };
        for p in 0..4 {
            push(p, w.clone(), &mut out);
        }
        if let Some(ex) = self.exceptions.get(&w) {
            for (p, b) in ex {
                push(*p, b.clone(), &mut out);
            }
        }
        for (p, rules) in RULES.iter().enumerate() {
            for (suffix, repl) in rules.iter() {
                if let Some(stem) = w.strip_suffix(suffix) {
                    if !stem.is_empty() {
                        push(p, format!("{stem}{repl}"), &mut out);
                    }
                }
            }
        }
        out
    }

    /// Whether WordNet knows the word (in any part of speech, any form).
    pub fn knows(&self, word: &str) -> bool {
        !self.bases(word).is_empty()
    }

    /// One canonical form of the word: the base of a noun or verb inflection
    /// (`passwords`, `frozen`, `thawed`), else the word itself. An adjective's
    /// comparative keeps its own form (`better` is not `good`).
    pub fn lemma(&self, word: &str) -> String {
        let w = word.to_lowercase();
        self.bases(&w)
            .into_iter()
            .find(|(p, b)| *p <= 1 && *b != w)
            .map(|(_, b)| b)
            .unwrap_or(w)
    }

    /// The senses compared for a word: with a part of speech (`pos`, an index
    /// into [`POS`]) in which the word has senses, only those; else every
    /// part of speech's.
    fn synsets(&self, word: &str, pos: Option<usize>) -> Vec<SynsetId> {
        let bases = self.bases(word);
        let only = pos.filter(|p| bases.iter().any(|(q, _)| q == p));
        let mut out = Vec::new();
        for (p, base) in bases {
            if only.is_some_and(|o| o != p) {
                continue;
            }
            if let Some(s) = self.lemmas.get(&base) {
                let take = if self.senses == 0 { s[p].len() } else { self.senses };
                out.extend(s[p].iter().take(take).copied());
            }
        }
        out
    }

    /// Whether two words can mean the same: they share a sense, or (for
    /// adjectives) one sense is "similar to" the other's.
    pub fn synonyms(&self, a: &str, b: &str) -> bool {
        self.synonyms_as(a, None, b, None)
    }

    /// [`Lexicon::synonyms`], each word read in its part of speech where one is
    /// known (`NOUN`, `VERB`: from its place in the question).
    pub fn synonyms_as(&self, a: &str, pa: Option<usize>, b: &str, pb: Option<usize>) -> bool {
        let (sa, sb) = (self.synsets(a, pa), self.synsets(b, pb));
        if sa.iter().any(|s| sb.contains(s)) {
            return true;
        }
        let linked = |from: &[SynsetId], to: &[SynsetId], links: &HashMap<SynsetId, Vec<SynsetId>>| {
            from.iter()
                .filter_map(|s| links.get(s))
                .flatten()
                .any(|s| to.contains(s))
        };
        linked(&sa, &sb, &self.similar)
            || (self.verb_hypernyms && (linked(&sa, &sb, &self.hypernyms) || linked(&sb, &sa, &self.hypernyms)))
    }

    /// Counts a verb and its direct hypernym (`delete` / `remove`) as one.
    pub fn with_verb_hypernyms(mut self, on: bool) -> Self {
        self.verb_hypernyms = on;
        self
    }
}

/// The database's usual place (Debian's `wordnet-base`).
pub const DEFAULT_DIR: &str = "/usr/share/wordnet";

/// The lexicon `[semantic] lexicon` names, or `None` (empty path: off; a
/// path without the database: a warning, and the guards work without it).
pub fn open(dir: &Path, senses: usize, verb_hypernyms: bool) -> Option<std::sync::Arc<Lexicon>> {
    if dir.as_os_str().is_empty() {
        return None;
    }
    let started = std::time::Instant::now();
    match Lexicon::load(dir) {
        Ok(l) => {
            tracing::info!(
                path = %dir.display(),
                lemmas = l.lemma_count(),
                ms = started.elapsed().as_millis() as u64,
                "semantic matching: lexicon loaded"
            );
            Some(std::sync::Arc::new(
                l.with_senses(senses).with_verb_hypernyms(verb_hypernyms),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "semantic matching: no lexicon (apt-get install wordnet-base); a substituted word counts as another question");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `RECACHE_TEST_WORDNET=1` (CI) a missing database fails the test.
    fn lexicon() -> Option<Lexicon> {
        match Lexicon::load(Path::new(DEFAULT_DIR)) {
            Ok(l) => Some(l),
            Err(e) => {
                assert!(
                    std::env::var("RECACHE_TEST_WORDNET").as_deref() != Ok("1"),
                    "RECACHE_TEST_WORDNET=1 but WordNet is missing: {e} (apt-get install wordnet-base)"
                );
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn synonyms_share_a_sense_and_antonyms_do_not() {
        let Some(l) = lexicon() else {
            return;
        };
        assert!(l.lemma_count() > 100_000);
        for (a, b) in [
            ("purchase", "buy"),
            ("enlarge", "expand"),
            ("begin", "start"),
            ("erase", "delete"),
            ("big", "large"),
            ("purchases", "buying"),
        ] {
            assert!(l.synonyms(a, b), "{a} / {b}");
        }
        for (a, b) in [
            ("enlarge", "shrink"),
            ("enable", "disable"),
            ("french", "italian"),
            ("ascending", "descending"),
            ("increase", "decrease"),
            ("mutex", "semaphore"),
        ] {
            assert!(!l.synonyms(a, b), "{a} / {b}");
        }
    }

    #[test]
    fn the_part_of_speech_a_place_gives_decides() {
        let Some(l) = lexicon() else {
            return;
        };
        let l = l.with_senses(1);
        // `a store` is `a shop`; to store beans is not to shop for them.
        assert!(l.synonyms_as("store", Some(NOUN), "shop", Some(NOUN)));
        assert!(!l.synonyms_as("store", Some(VERB), "shop", Some(VERB)));
        // A part of speech the word lacks is no restriction.
        assert!(l.synonyms_as("purchase", Some(VERB), "buy", Some(VERB)));
        assert!(l.synonyms_as("big", Some(NOUN), "large", None));
    }

    #[test]
    fn base_forms_follow_morphy() {
        let Some(l) = lexicon() else {
            return;
        };
        assert_eq!(l.lemma("passwords"), "password");
        assert!(l.bases("ran").iter().any(|(p, b)| *p == 1 && b == "run"));
        assert!(l.bases("children").iter().any(|(_, b)| b == "child"));
        assert!(l.knows("Draft"));
        assert!(!l.knows("kubectl"));
    }
}
