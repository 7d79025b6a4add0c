//! The guards a semantic candidate must pass, however high its similarity.
//!
//! Sentence embeddings score a question and its one-word twist higher than
//! many true paraphrases, so no threshold alone separates them. Two rules run
//! on the texts themselves:
//!
//! - **Literal guard.** The literals of the two messages must be identical, in
//!   the same order: numbers (anywhere, `8080` in `port 8080`), quoted strings,
//!   URLs, code-like tokens (anything with `_ = + * / < > ^ % ( ) [ ] { }`, a
//!   dot or `::` between word characters, camelCase, letters mixed with
//!   digits, single-letter variables), proper names (capitalised words;
//!   compared case-insensitively, possessive dropped) and negations (`not`,
//!   `never`, `no`, `without`, `don't`, …: each counts as one `NOT`).
//! - **Near-miss guard.** When two messages keep the same wording except for
//!   one or two substituted content words (`enable` / `disable`), for the same
//!   content words in another order (`dog bites man` / `man bites dog`), or
//!   for another question word (`why` / `how`), they are different questions.
//!   Words that carry no content (articles, pronouns, auxiliaries, `please`)
//!   are ignored, so `How do I…` and `How can I…` still match.
//!
//! Limits: a paraphrase that swaps one content word for a synonym (`reset` /
//! `change`) is refused too (a miss, never a wrong answer); a twist hidden in
//! a thorough rewording (different words throughout) is not caught here and
//! is left to the threshold and to the measured false-hit rate.

use std::collections::HashMap;

/// Why a candidate was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Literals,
    SubstitutedWords,
    SwappedTerms,
    QuestionWord,
    /// The candidate's answer asks the client to run a tool.
    ToolAnswer,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Literals => "literals",
            Refusal::SubstitutedWords => "substituted_words",
            Refusal::SwappedTerms => "swapped_terms",
            Refusal::QuestionWord => "question_word",
            Refusal::ToolAnswer => "tool_answer",
        }
    }
}

/// Checks a new question against a stored one. `Ok(())` means the guards allow the match.
pub fn check(new: &str, stored: &str) -> Result<(), Refusal> {
    if new == stored {
        return Ok(());
    }
    let (a, b) = (Analysed::of(new), Analysed::of(stored));
    if a.literals != b.literals {
        return Err(Refusal::Literals);
    }
    let (qa, qb) = (question_words(&a.content), question_words(&b.content));
    if !qa.is_empty() && !qb.is_empty() && qa != qb {
        return Err(Refusal::QuestionWord);
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
    let (ca, cb) = (counts(&wa), counts(&wb));
    if ca == cb {
        return Err(Refusal::SwappedTerms);
    }
    let (removed, added) = difference(&ca, &cb);
    let (removed, added) = (removed.len(), added.len());
    let shared = wa.len() - removed;
    if removed > 0 && added > 0 && removed <= 2 && added <= 2 && shared >= 1 {
        return Err(Refusal::SubstitutedWords);
    }
    Ok(())
}

pub(super) fn without_question_words(content: &[String]) -> Vec<String> {
    content
        .iter()
        .filter(|w| !QUESTION_WORDS.contains(&w.as_str()))
        .cloned()
        .collect()
}

/// The words `a` has more often than `b` (removed) and `b` more often than
/// `a` (added), each as many times as it is missing: the substitution
/// between two questions' content words.
pub(super) fn difference<'a>(a: &HashMap<&'a str, usize>, b: &HashMap<&'a str, usize>) -> (Vec<&'a str>, Vec<&'a str>) {
    let missing = |x: &HashMap<&'a str, usize>, y: &HashMap<&'a str, usize>| {
        x.iter()
            .flat_map(|(w, n)| std::iter::repeat_n(*w, n.saturating_sub(*y.get(w).unwrap_or(&0))))
            .collect::<Vec<&'a str>>()
    };
    (missing(a, b), missing(b, a))
}

pub(super) fn counts(words: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for w in words {
        *m.entry(w.as_str()).or_insert(0) += 1;
    }
    m
}

pub(super) const QUESTION_WORDS: &[&str] = &["what", "why", "how", "when", "where", "who", "whom", "whose", "which"];

fn question_words(content: &[String]) -> Vec<&str> {
    content
        .iter()
        .map(String::as_str)
        .filter(|w| QUESTION_WORDS.contains(w))
        .collect()
}

/// Words that carry no content for the near-miss guard.
pub(super) const STOPWORDS: &[&str] = &[
    "a", "an", "the", "i", "me", "my", "mine", "we", "us", "our", "you", "your", "yours", "it", "its", "this", "that",
    "these", "those", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "can", "could",
    "would", "should", "will", "shall", "may", "might", "must", "have", "has", "had", "to", "of", "in", "on", "at",
    "for", "with", "by", "from", "as", "about", "into", "and", "or", "so", "if", "then", "there", "here", "please",
    "kindly", "tell", "explain", "show", "give", "let", "know", "some", "any", "just", "really", "way", "ways", "s",
    "what's", "how's", "it's", "i'm", "im", "go", "get",
];

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "nor", "neither", "without", "cannot",
];

pub(super) fn is_negation(word: &str) -> bool {
    NEGATIONS.contains(&word) || word.ends_with("n't") || word.ends_with("n’t")
}

/// Words that may start a sentence without being a name.
pub(super) fn common_at_start(lower: &str) -> bool {
    STOPWORDS.contains(&lower)
        || QUESTION_WORDS.contains(&lower)
        || NEGATIONS.contains(&lower)
        || matches!(
            lower,
            "tell"
                | "explain"
                | "describe"
                | "list"
                | "write"
                | "summarize"
                | "summarise"
                | "translate"
                | "find"
                | "make"
                | "create"
                | "help"
                | "compare"
                | "define"
                | "give"
                | "name"
                | "is"
                | "are"
                | "should"
                | "why"
                | "in"
                | "on"
                | "for"
                | "hi"
                | "hello"
                | "hey"
                | "ok"
                | "okay"
                | "yes"
                | "now"
                | "also"
        )
}

struct Analysed {
    literals: Vec<String>,
    content: Vec<String>,
}

pub(super) fn is_quote(c: char) -> Option<char> {
    match c {
        '"' => Some('"'),
        '`' => Some('`'),
        '“' => Some('”'),
        '‘' => Some('’'),
        '\'' => Some('\''),
        _ => None,
    }
}

impl Analysed {
    fn of(text: &str) -> Self {
        let mut literals = Vec::new();
        let mut content = Vec::new();
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
                        Self::words(&plain, &mut literals, &mut content);
                        plain.clear();
                        literals.push(format!("Q:{inner}"));
                        i = end + 1;
                        continue;
                    }
                }
            }
            plain.push(c);
            i += 1;
        }
        Self::words(&plain, &mut literals, &mut content);
        Self { literals, content }
    }

    fn words(text: &str, literals: &mut Vec<String>, content: &mut Vec<String>) {
        let mut sentence_start = true;
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
                continue;
            }
            let lower = token.to_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("www.") {
                literals.push(format!("U:{token}"));
            } else if is_code_like(token) {
                literals.push(format!("C:{token}"));
            } else if token.chars().any(|c| c.is_ascii_digit()) {
                // Numbers, with their separators ("1,000", "3.5", "v2").
                literals.push(format!("N:{}", token.to_lowercase()));
            } else if is_negation(&lower) {
                literals.push("NOT".into());
            } else {
                let first_upper = token.chars().next().is_some_and(char::is_uppercase);
                let acronym = token.len() >= 2 && token.chars().all(|c| c.is_uppercase() || !c.is_alphabetic());
                let name = lower.trim_end_matches("'s").trim_end_matches("’s").to_string();
                if (first_upper && lower != "i" && !(sentence_start && common_at_start(&lower))) || acronym {
                    literals.push(format!("P:{name}"));
                }
                if !STOPWORDS.contains(&lower.as_str()) {
                    content.push(stem(&name));
                }
            }
            sentence_start = ends_sentence;
        }
    }
}

/// A light plural/tense fold, so `passwords` and `password` are one word.
pub(super) fn stem(w: &str) -> String {
    for suffix in ["ing", "ed", "es", "s"] {
        if w.len() > suffix.len() + 3 && w.ends_with(suffix) {
            return w[..w.len() - suffix.len()].to_string();
        }
    }
    w.to_string()
}

pub(super) fn is_code_like(token: &str) -> bool {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() == 1 {
        // Single-letter variables: anything but the words "a" and "I" ("i" in lowercase text).
        return chars[0].is_ascii_alphabetic() && !matches!(chars[0], 'a' | 'A' | 'i' | 'I');
    }
    if token.chars().any(|c| {
        matches!(
            c,
            '_' | '='
                | '+'
                | '*'
                | '/'
                | '<'
                | '>'
                | '^'
                | '%'
                | '('
                | ')'
                | '['
                | ']'
                | '{'
                | '}'
                | '\\'
                | '$'
                | '#'
                | '@'
                | '|'
                | '&'
                | '~'
        )
    }) {
        return true;
    }
    if token.contains("::") || token.contains("->") {
        return true;
    }
    // A dot between word characters: file.txt, foo.bar(), 3.5 is a number (caught later).
    let dotted = chars
        .windows(3)
        .any(|w| w[1] == '.' && w[0].is_alphabetic() && w[2].is_alphanumeric());
    let camel = chars.windows(2).any(|w| w[0].is_lowercase() && w[1].is_uppercase());
    let mixed = chars.iter().any(|c| c.is_alphabetic()) && chars.iter().any(|c| c.is_ascii_digit());
    dotted || camel || mixed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paraphrases_pass() {
        for (a, b) in [
            ("How do I reset my password?", "How can I reset my password?"),
            ("What is the capital of France?", "What's the capital of France?"),
            ("How do I reset my password?", "how do i reset my password"),
            ("Please explain how to reset my password", "How to reset my password?"),
            ("What is the capital of France?", "Tell me the capital city of France"),
        ] {
            assert_eq!(check(a, b), Ok(()), "{a} | {b}");
            assert_eq!(check(b, a), Ok(()), "symmetric: {b} | {a}");
        }
    }

    #[test]
    fn near_misses_are_refused() {
        for (a, b) in [
            ("x+2=8", "a+2=8"),
            ("Solve x + 2 = 8", "Solve a + 2 = 8"),
            ("enable the firewall", "do not enable the firewall"),
            ("How do I open port 8080?", "How do I open port 8081?"),
            ("How do I enable the firewall?", "How do I disable the firewall?"),
            ("Does the dog bite the man?", "Does the man bite the dog?"),
            ("Why is the sky blue?", "How is the sky blue?"),
            ("What is the capital of France?", "What is the capital of Spain?"),
            ("Translate 'good morning' to French", "Translate 'good night' to French"),
            ("Open https://a.example/x", "Open https://a.example/y"),
            ("What does getUser return?", "What does getUsers return?"),
            ("Convert 5 miles to km", "Convert 50 miles to km"),
            ("Is it safe to eat raw eggs?", "Is it unsafe to eat raw eggs?"),
        ] {
            assert!(check(a, b).is_err(), "{a} | {b} must be refused");
            assert!(check(b, a).is_err(), "symmetric: {b} | {a}");
        }
    }
}
