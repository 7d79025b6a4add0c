//! Are two answers the same? Used by shadow mode and verification sampling.
//!
//! The answer text is `choices[0].message.content` (chat) or `choices[0].text`
//! (completions). Two answers agree when their **normalised** texts are equal
//! (Unicode lower case, whitespace collapsed, surrounding punctuation and
//! quotes trimmed), or else when the embeddings of the two texts have a cosine
//! similarity of at least `semantic.answer_similarity` (0.95 by default).
//!
//! What it misses: the embedding sees only the first `max_tokens` tokens of
//! each answer, so two long answers that differ only near the end count as
//! the same; and two answers that say the same thing in very different words
//! (or in another language) count as different, which makes the measured
//! false-hit rate err on the high side (a safe error: the threshold rises).

use serde_json::Value;

/// The answer text of a stored or fresh completion body.
pub fn answer_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choice = v.get("choices")?.get(0)?;
    choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .or_else(|| choice.get("text").and_then(Value::as_str))
        .map(str::to_string)
}

/// Lower case, whitespace collapsed, surrounding punctuation trimmed.
pub fn normalise(text: &str) -> String {
    let lower = text.to_lowercase();
    let collapsed = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed
        .trim_matches(|c: char| c.is_ascii_punctuation() || c == '“' || c == '”' || c == '‘' || c == '’')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_chat_and_completion_text() {
        let chat = br#"{"choices":[{"message":{"role":"assistant","content":"Paris."}}]}"#;
        assert_eq!(answer_text(chat).as_deref(), Some("Paris."));
        let comp = br#"{"choices":[{"text":" 42"}]}"#;
        assert_eq!(answer_text(comp).as_deref(), Some(" 42"));
        assert_eq!(answer_text(b"{}"), None);
        assert_eq!(answer_text(b"not json"), None);
    }

    #[test]
    fn normalisation_ignores_case_spacing_and_end_punctuation() {
        assert_eq!(
            normalise("  The answer is\n  Paris. "),
            normalise("the answer is paris")
        );
        assert_ne!(normalise("x = 6"), normalise("x = 7"));
    }
}
