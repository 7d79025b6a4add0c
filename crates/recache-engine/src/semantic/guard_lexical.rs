//! The lexical guards (`[semantic] guards = "lexical"`, the default; "The
//! decision" and "The lexical guards" in `docs/semantic.md`), measured with
//! `recache semantic eval --guards lexical`. They keep the strict guards'
//! literal rule and add:
//!
//! - spelling normalisation first (`normalise`: an acronym and its words,
//!   unit abbreviations);
//! - with a lexicon (WordNet), a substituted word that shares a sense with
//!   the word it replaces, in the part of speech its place gives it, is a
//!   synonym, not another question; a capitalised dictionary word that
//!   starts a sentence is not a name;
//! - swapped terms when the same terms exchange places around the same
//!   relation, or when the same words come in an order no paraphrase makes
//!   (`reordered`); directions reversed (`to` / `from`, `on` / `off`);
//! - question words by what they ask (`which` is `what`, `what … way` is
//!   `how`), in any order; a yes-or-no question is not a wh-question;
//! - `avoid` and `refrain` count as a negation.
//!
//! Measured (2026-12-06, all-MiniLM-L6-v2 int8, 0.90, third round): tuning
//! half 80.8 % of paraphrases served and no near-miss; held-out test half
//! 70.4 % and no near-miss (71.2 % through the gateway).

use super::guard::{
    common_at_start, counts, difference, is_code_like, is_negation, is_quote, stem, without_question_words, Refusal,
    QUESTION_WORDS, STOPWORDS,
};
use super::lexicon::{Lexicon, NOUN, VERB};
use super::normalise;
use std::collections::HashMap;

/// The near-miss guards the gateway runs (`[semantic] guards`).
#[derive(Clone)]
pub enum Guards {
    Strict,
    /// With the lexicon, if it loaded.
    Lexical(Option<std::sync::Arc<Lexicon>>),
}

impl Guards {
    /// The configured guards; the lexical ones load WordNet (about a second, off the runtime's threads).
    pub async fn open(cfg: &crate::config::SemanticConfig) -> Self {
        match cfg.guards.as_str() {
            "lexical" => {
                let dir = cfg.lexicon.clone();
                let lex = tokio::task::spawn_blocking(move || super::lexicon::open(&dir, 1, false))
                    .await
                    .ok()
                    .flatten();
                Guards::Lexical(lex)
            }
            _ => Guards::Strict,
        }
    }

    /// Whether a candidate below the threshold may be scored again on the
    /// normalised texts (the lexical guards normalise; the strict ones do not).
    pub fn normalises(&self) -> bool {
        matches!(self, Guards::Lexical(_))
    }

    /// `Ok(())`: the guards allow `stored`'s answer for `new`.
    pub fn check(&self, new: &str, stored: &str) -> Result<(), Refusal> {
        match self {
            Guards::Strict => super::guard::check(new, stored),
            Guards::Lexical(lex) => check(new, stored, lex.as_deref()),
        }
    }
}

/// Checks a new question against a stored one. `Ok(())` means the guards allow the match.
pub fn check(new: &str, stored: &str, lex: Option<&Lexicon>) -> Result<(), Refusal> {
    if new == stored {
        return Ok(());
    }
    let (new, stored) = normalise::pair(new, stored);
    let (a, b) = (Analysed::of(&new, lex), Analysed::of(&stored, lex));
    if a.literals != b.literals {
        return Err(Refusal::Literals);
    }
    let (mut qa, mut qb) = (a.question_words(), b.question_words());
    // A clause that moves takes its question word along: compared in any order.
    qa.sort_unstable();
    qb.sort_unstable();
    if !qa.is_empty() && !qb.is_empty() && qa != qb {
        return Err(Refusal::QuestionWord);
    }
    // A yes-or-no question asks another thing than a wh-question (`What is
    // CRISPR?` / `Is CRISPR safe?`); a request ("Explain …") may be either.
    if (a.yes_no && !qb.is_empty() && qa.is_empty()) || (b.yes_no && !qa.is_empty() && qb.is_empty()) {
        return Err(Refusal::QuestionWord);
    }
    if swapped(&a, &b) {
        return Err(Refusal::SwappedTerms);
    }
    // One way in one question and the other way in the other (`send money
    // to Mexico` / `from Mexico`, `get a refund` / `give a refund`).
    let (fa, fb) = (counts(&a.flows), counts(&b.flows));
    let (gone, came) = difference(&fa, &fb);
    if gone.iter().any(|g| came.iter().any(|c| opposite(g, c))) {
        return Err(Refusal::SwappedTerms);
    }
    if a.content == b.content {
        return Ok(());
    }
    // Question words were judged above; a question turned into a request
    // ("What is X?" / "Tell me X") is not a substitution.
    let (wa, wb) = (without_question_words(&a.content), without_question_words(&b.content));
    if wa == wb {
        return Ok(());
    }
    // The same words in another order are another question unless the
    // order is one a paraphrase makes (`reordered`).
    let (ca, cb) = (counts(&wa), counts(&wb));
    if ca == cb && !reordered(&new, &stored, &a, &b) {
        return Err(Refusal::SwappedTerms);
    }
    let (mut removed, mut added) = difference(&ca, &cb);
    let shared = wa.len() - removed.len();
    if let Some(lex) = lex {
        // A word and its synonym are one word.
        let (pa, pb) = (
            |w: &str| a.pos.get(w).copied().flatten(),
            |w: &str| b.pos.get(w).copied().flatten(),
        );
        removed.retain(
            |r| match added.iter().position(|x| lex.synonyms_as(r, pa(r), x, pb(x))) {
                Some(i) => {
                    added.remove(i);
                    false
                }
                None => true,
            },
        );
    }
    let (removed, added) = (removed.len(), added.len());
    // With a lexicon, a short question whose one content word changes is
    // another question too (`a synonym for 'happy'` / `an antonym for 'happy'`).
    if removed > 0 && added > 0 && removed <= 2 && added <= 2 && (shared >= 1 || lex.is_some()) {
        return Err(Refusal::SubstitutedWords);
    }
    Ok(())
}

/// Whether two questions with the same words in another order differ only
/// as paraphrases do: a clause moved (a comma sets it off) or a
/// prepositional phrase moved whole, a possessive or a preposition turned
/// around (`X's Y` / `the Y of X`), or the passive voice turned active.
fn reordered(x: &str, y: &str, a: &Analysed, b: &Analysed) -> bool {
    let clause = |t: &str| t.contains([',', ';']);
    let possessive = |t: &str| t.contains("'s ") || t.contains("’s ") || t.contains("s' ");
    let (wx, wy) = (plain_words(x), plain_words(y));
    let preps = |w: &[String]| w.iter().filter(|w| PREPOSITIONS.contains(&w.as_str())).count();
    clause(x)
        || clause(y)
        || possessive(x) != possessive(y)
        || preps(&wx) != preps(&wy)
        || a.passive.is_some() != b.passive.is_some()
        || moved_phrase(&wx, &wy)
}

/// Prepositions: one more or fewer turns a phrase around (`a recipe for
/// pancakes` / `a pancake recipe`, `garbage collection in Java` / `Java
/// garbage collection`).
const PREPOSITIONS: &[&str] = &[
    "of", "for", "in", "on", "at", "from", "to", "into", "with", "by", "about",
];

/// A text's words, lowercase, without punctuation.
fn plain_words(t: &str) -> Vec<String> {
    t.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether `y` is `x` with one prepositional phrase (a preposition and at
/// least one word after it) moved elsewhere, whole (`get from the airport to
/// Lisbon` / `get to Lisbon from the airport`).
fn moved_phrase(x: &[String], y: &[String]) -> bool {
    if x.len() != y.len() || x.len() > 40 {
        return false;
    }
    for i in 0..x.len() {
        if !PREPOSITIONS.contains(&x[i].as_str()) {
            continue;
        }
        for j in i + 2..=x.len() {
            let block = &x[i..j];
            let rest: Vec<&String> = x[..i].iter().chain(&x[j..]).collect();
            for k in 0..=rest.len() {
                if k == i {
                    continue;
                }
                let moved = rest[..k].iter().copied().chain(block).chain(rest[k..].iter().copied());
                if moved.eq(y.iter()) {
                    return true;
                }
            }
        }
    }
    false
}

/// Words between two terms that do not change the relation between them.
const FILLERS: &[&str] = &[
    "a", "an", "the", "my", "your", "his", "her", "its", "our", "their", "this", "that", "these", "those", "some",
    "any", "s",
];

/// Whether two terms that both questions hold exchange places around the
/// same relation: `A to B` / `B to A`, `X bites Y` / `Y bites X` (the words
/// between them, fillers aside, are the same). A clause that moves (`In Go,
/// how do I …` / `How do I … in Go`) or a possessive turned around
/// (`PostgreSQL's port` / `the port of PostgreSQL`) changes what lies between
/// them, and is not a swap. Two terms side by side in both are a swap unless
/// one of them is the verb of a question in the passive voice (`How is
/// memory freed` / `How does … free memory`; `How is milk chocolate made` /
/// `How is chocolate milk made` is a swap).
fn swapped(a: &Analysed, b: &Analysed) -> bool {
    let once = |s: &[(String, bool)], k: &str| s.iter().filter(|(x, _)| x == k).count() == 1;
    let ends: Vec<&str> = a
        .sequence
        .iter()
        .filter(|(k, end)| *end && once(&a.sequence, k) && once(&b.sequence, k))
        .map(|(k, _)| k.as_str())
        .collect();
    if ends.len() < 2 {
        return false;
    }
    let pos = |s: &[(String, bool)], k: &str| s.iter().position(|(x, _)| x == k).unwrap_or(0);
    let between = |s: &[(String, bool)], from: usize, to: usize| -> Vec<String> {
        s[from + 1..to]
            .iter()
            .filter(|(k, _)| !FILLERS.contains(&k.as_str()))
            .map(|(k, _)| direction(k).to_string())
            .collect()
    };
    // The verb of a passive question, which its active twin puts beside its object.
    let passive = |k: &str| a.passive.as_deref() == Some(k) || b.passive.as_deref() == Some(k);
    for i in 0..ends.len() {
        for j in i + 1..ends.len() {
            let (x, y) = (ends[i], ends[j]);
            let (bx, by) = (pos(&b.sequence, x), pos(&b.sequence, y));
            if bx < by {
                continue;
            }
            let (ax, ay) = (pos(&a.sequence, x), pos(&a.sequence, y));
            let (ma, mb) = (between(&a.sequence, ax, ay), between(&b.sequence, by, bx));
            if ma == mb && !(ma.is_empty() && (passive(x) || passive(y))) {
                return true;
            }
        }
    }
    false
}

/// A preposition by the direction it gives (`into` the container is `to` it).
fn direction(w: &str) -> &str {
    match w {
        "into" | "onto" | "toward" | "towards" | "unto" => "to",
        "out" | "off" => "from",
        other => other,
    }
}

/// A question word by what it asks: `which` asks what `what` asks, `whom` what `who` asks.
fn question_kind(w: &str) -> &str {
    match w {
        "which" => "what",
        "whom" => "who",
        other => other,
    }
}

/// Words after which the next word, unless another word follows it before
/// the noun, is a noun (`the charge`).
const DETERMINERS: &[&str] = &[
    "a", "an", "the", "my", "your", "his", "her", "its", "our", "their", "this", "these", "those", "some", "any",
    "each", "every", "another",
];
/// Words after which the next word is a verb (`I charge`, `to store`, `please list`).
const VERB_CUES: &[&str] = &[
    "i", "you", "we", "they", "to", "please", "not", "don't", "never", "let's",
];

/// The part of speech of each word of a sentence that its place tells:
/// `tokens` are (lowercase word, is a content word); a content word after a
/// determiner is a noun unless another content word follows it (then it may
/// qualify that one), a word after a subject pronoun, `to`, `please` or a
/// negation is a verb.
fn parts_of_speech(tokens: &[(String, bool)]) -> Vec<Option<usize>> {
    (0..tokens.len())
        .map(|i| {
            let prev = i.checked_sub(1).map(|j| tokens[j].0.as_str());
            let next_content = tokens.get(i + 1).is_some_and(|(_, c)| *c);
            match prev {
                Some(p) if DETERMINERS.contains(&p) && !next_content => Some(NOUN),
                Some(p) if VERB_CUES.contains(&p) => Some(VERB),
                _ => None,
            }
        })
        .collect()
}

fn opposite(a: &str, b: &str) -> bool {
    let pair = |x: &str, y: &str| (a == x && b == y) || (a == y && b == x);
    pair("to", "from") || pair("give", "get") || pair("on", "off") || pair("in", "out") || pair("up", "down")
}

/// Which way a thing goes: `to` or `from` (`into` is `to`), `give` or
/// `get`, `on` or `off` (`turn on` / `turn off`), `in` or `out` (`log in` /
/// `log out`), `up` or `down`.
fn flow(lower: &str) -> Option<&'static str> {
    match lower {
        "to" | "into" | "onto" | "toward" | "towards" => Some("to"),
        "from" => Some("from"),
        "give" | "gives" | "gave" | "given" | "giving" => Some("give"),
        "get" | "gets" | "got" | "gotten" | "getting" | "receive" | "receives" | "received" => Some("get"),
        "on" => Some("on"),
        "off" => Some("off"),
        "in" => Some("in"),
        "out" => Some("out"),
        "up" => Some("up"),
        "down" => Some("down"),
        _ => None,
    }
}

struct Analysed {
    literals: Vec<String>,
    /// The ways things go ([`flow`]), in order.
    flows: Vec<String>,
    /// A content word's part of speech where its place tells (`None`: the
    /// places disagree or tell nothing).
    pos: HashMap<String, Option<usize>>,
    content: Vec<String>,
    /// Every word in order (its key), and whether it is a term (a content word or a literal).
    sequence: Vec<(String, bool)>,
    /// A form of `be` followed by a past participle (the passive voice): the participle's key.
    passive: Option<String>,
    /// `what … way` asks how.
    what_way: bool,
    /// A yes-or-no question: it opens with an auxiliary (not `Can you …`, a
    /// request), or asks `whether`.
    yes_no: bool,
}

impl Analysed {
    /// The question words, by what they ask (`what … way` asks how).
    fn question_words(&self) -> Vec<&str> {
        self.content
            .iter()
            .map(String::as_str)
            .filter(|w| QUESTION_WORDS.contains(w))
            .map(|w| {
                if w == "what" && self.what_way {
                    "how"
                } else {
                    question_kind(w)
                }
            })
            .collect()
    }
}

impl Analysed {
    fn of(text: &str, lex: Option<&Lexicon>) -> Self {
        let mut out = Analysed {
            literals: Vec::new(),
            flows: Vec::new(),
            pos: HashMap::new(),
            content: Vec::new(),
            sequence: Vec::new(),
            passive: None,
            what_way: false,
            yes_no: false,
        };
        let mut plain = String::new();
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let prev_word = i > 0 && chars[i - 1].is_alphanumeric();
            if let Some(close) = is_quote(c).filter(|_| !(c == '\'' && prev_word)) {
                if let Some(end) = (i + 1..chars.len()).find(|&j| chars[j] == close) {
                    let inner: String = chars[i + 1..end].iter().collect();
                    let next_ok = end + 1 >= chars.len() || !chars[end + 1].is_alphanumeric();
                    if !inner.trim().is_empty() && next_ok {
                        out.words(&plain, lex);
                        plain.clear();
                        out.literals.push(format!("Q:{inner}"));
                        out.sequence.push((format!("Q:{inner}"), true));
                        i = end + 1;
                        continue;
                    }
                }
            }
            plain.push(c);
            i += 1;
        }
        out.words(&plain, lex);
        let words: Vec<&str> = out.sequence.iter().map(|(k, _)| k.as_str()).collect();
        out.what_way = words.contains(&"what") && words.iter().any(|w| matches!(*w, "way" | "ways" | "manner"));
        let aux = |w: &str| {
            matches!(
                w,
                "is" | "are"
                    | "was"
                    | "were"
                    | "do"
                    | "does"
                    | "did"
                    | "can"
                    | "could"
                    | "should"
                    | "would"
                    | "will"
                    | "has"
                    | "have"
                    | "may"
                    | "might"
                    | "must"
                    | "shall"
            )
        };
        out.yes_no = (words.first().is_some_and(|w| aux(w)) && words.get(1).is_none_or(|w| *w != "you"))
            || words.contains(&"whether");
        out
    }

    fn words(&mut self, text: &str, lex: Option<&Lexicon>) {
        let mut sentence_start = true;
        let mut be_at: Option<usize> = None;
        // The sentence's words so far (lowercase, a content word?) and the content words' keys.
        let mut tokens: Vec<(String, bool)> = Vec::new();
        let mut keys: Vec<Option<String>> = Vec::new();
        for raw in text.split_whitespace() {
            let ends_sentence = raw.ends_with(['.', '?', '!', ':', ';']);
            let token = raw.trim_matches(|c: char| {
                matches!(
                    c,
                    ',' | '.' | '?' | '!' | ':' | ';' | '"' | '\'' | '(' | ')' | '[' | ']' | '«' | '»'
                )
            });
            if token.is_empty() {
                sentence_start = ends_sentence || sentence_start;
                if ends_sentence {
                    self.tag(&mut tokens, &mut keys);
                }
                continue;
            }
            // A possessive names what it is attached to (`PostgreSQL's` is `PostgreSQL`).
            let token = token
                .strip_suffix("'s")
                .or_else(|| token.strip_suffix("’s"))
                .filter(|t| !t.is_empty())
                .unwrap_or(token);
            let lower = token.to_lowercase();
            let at = self.sequence.len();
            let mut key_here: Option<String> = None;
            if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("www.") {
                self.literal(format!("U:{token}"));
            } else if is_code_like(token) {
                self.literal(format!("C:{token}"));
            } else if token.chars().any(|c| c.is_ascii_digit()) {
                // Numbers, with their separators ("1,000", "3.5", "v2").
                self.literal(format!("N:{}", token.to_lowercase()));
            } else if is_negation(&lower) || lower.starts_with("avoid") || lower.starts_with("refrain") {
                self.literals.push("NOT".into());
                self.sequence.push(("NOT".into(), true));
            } else {
                let first_upper = token.chars().next().is_some_and(char::is_uppercase);
                let acronym = token.len() >= 2 && token.chars().all(|c| c.is_uppercase() || !c.is_alphabetic());
                let name = lower.trim_end_matches("'s").trim_end_matches("’s").to_string();
                // A capitalised first word is a name only if it is no dictionary word.
                let common = match lex {
                    Some(l) => sentence_start && !acronym && (common_at_start(&lower) || l.knows(&name)),
                    None => sentence_start && common_at_start(&lower),
                };
                let pronoun_i = matches!(lower.as_str(), "i" | "i'd" | "i'm" | "i've" | "i'll" | "i’d" | "i’m");
                let literal = (first_upper && !pronoun_i && !common) || acronym;
                if literal {
                    self.literals.push(format!("P:{name}"));
                }
                let stop = STOPWORDS.contains(&lower.as_str());
                let key = if stop {
                    lower.clone()
                } else {
                    match lex {
                        Some(l) => l.lemma(&name),
                        None => stem(&name),
                    }
                };
                if !stop {
                    self.content.push(key.clone());
                    key_here = Some(key.clone());
                }
                if let Some(f) = flow(&lower) {
                    self.flows.push(f.to_string());
                }
                let question = QUESTION_WORDS.contains(&lower.as_str());
                // The passive voice: a form of `be`, then (soon) a past participle.
                if matches!(lower.as_str(), "is" | "are" | "was" | "were" | "be" | "been" | "being") {
                    be_at = Some(at);
                } else if be_at.is_some_and(|b| at - b <= 3) && participle(&lower, lex) {
                    self.passive = Some(key.clone());
                }
                self.sequence.push((key, (literal || !stop) && !question));
            }
            tokens.push((lower, key_here.is_some()));
            keys.push(key_here);
            if ends_sentence {
                self.tag(&mut tokens, &mut keys);
            }
            sentence_start = ends_sentence;
        }
        self.tag(&mut tokens, &mut keys);
    }

    /// Records the parts of speech of a sentence's content words (see
    /// [`parts_of_speech`]), then clears it.
    fn tag(&mut self, tokens: &mut Vec<(String, bool)>, keys: &mut Vec<Option<String>>) {
        for (key, pos) in keys.drain(..).zip(parts_of_speech(tokens)) {
            if let Some(key) = key {
                self.pos
                    .entry(key)
                    .and_modify(|p| {
                        if *p != pos {
                            *p = None
                        }
                    })
                    .or_insert(pos);
            }
        }
        tokens.clear();
    }

    fn literal(&mut self, l: String) {
        self.literals.push(l.clone());
        self.sequence.push((l, true));
    }
}

/// Whether a word reads as a past participle (`freed`, `handled`, `written`).
fn participle(w: &str, lex: Option<&Lexicon>) -> bool {
    match lex {
        // An inflected verb form (`freed`, `written`), not a word that ends so (`speed`).
        Some(l) => {
            (w.ends_with("ed") || w.ends_with("en") || w.ends_with('t'))
                && l.bases(w).iter().any(|(p, b)| *p == 1 && b != w)
        }
        None => w.len() > 4 && w.ends_with("ed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_not_clauses() {
        // A moved clause and a turned possessive are the same question.
        for (a, b) in [
            (
                "In Go, how do I read a file line by line?",
                "How do I read a file line by line in Go?",
            ),
            (
                "What is the default port of PostgreSQL?",
                "What is PostgreSQL's default port?",
            ),
            ("What is a time to live in DNS?", "What is a TTL in DNS?"),
            (
                "When buying a house, what costs should I expect?",
                "What costs should I expect when buying a house?",
            ),
        ] {
            assert_eq!(check(a, b, None), Ok(()), "{a} | {b}");
            assert_eq!(check(b, a, None), Ok(()), "{b} | {a}");
        }
        // Terms exchanged around one relation are another question.
        for (a, b) in [
            (
                "How do I sync files from S3 to my server?",
                "How do I sync files from my server to S3?",
            ),
            (
                "Can a mother pass a cold to her baby?",
                "Can a baby pass a cold to its mother?",
            ),
            ("Who does the dog chase?", "Who chases the dog?"),
            ("What is CRISPR?", "Is CRISPR safe?"),
            (
                "When should I use inheritance?",
                "When should I avoid using inheritance?",
            ),
        ] {
            assert!(check(a, b, None).is_err(), "{a} | {b}");
            assert!(check(b, a, None).is_err(), "{b} | {a}");
        }
    }

    #[test]
    fn directions_and_orders() {
        // One way in one question, the other way in the other.
        for (a, b) in [
            ("How do I send money to Mexico?", "How do I send money from Mexico?"),
            (
                "How do I get a refund for an order?",
                "How do I give a refund for an order?",
            ),
            ("How do I turn on dark mode?", "How do I turn off dark mode?"),
            ("How do I log in to the console?", "How do I log out of the console?"),
            (
                "How do I copy a file from the container to the host?",
                "How do I copy a file from the host into the container?",
            ),
        ] {
            assert_eq!(check(a, b, None), Err(Refusal::SwappedTerms), "{a} | {b}");
            assert_eq!(check(b, a, None), Err(Refusal::SwappedTerms), "{b} | {a}");
        }
        // The same words in another order: a swap unless a paraphrase's reordering.
        for (a, b) in [
            ("How is milk chocolate made?", "How is chocolate milk made?"),
            (
                "Why is engineering software expensive?",
                "Why is software engineering expensive?",
            ),
        ] {
            assert_eq!(check(a, b, None), Err(Refusal::SwappedTerms), "{a} | {b}");
        }
        for (a, b) in [
            (
                "How do I get from the airport to downtown Lisbon?",
                "How do I get to downtown Lisbon from the airport?",
            ),
            (
                "How does garbage collection work in Java?",
                "How does Java garbage collection work?",
            ),
            ("Give me a recipe for bread.", "Give me a bread recipe."),
        ] {
            assert_eq!(check(a, b, None), Ok(()), "{a} | {b}");
            assert_eq!(check(b, a, None), Ok(()), "{b} | {a}");
        }
        assert!(moved_phrase(
            &plain_words("get from the airport to Lisbon"),
            &plain_words("get to Lisbon from the airport")
        ));
        assert!(!moved_phrase(
            &plain_words("copy files from the server to my laptop"),
            &plain_words("copy files to the server from my laptop")
        ));
    }
}
