//! Are two answers the same? Used by shadow mode and verification sampling.
//!
//! The answer text is `choices[0].message.content` (chat), `choices[0].text`
//! (completions), or the text blocks or parts of the other dialects. Two answers agree when their **normalised** texts are equal
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

/// The answer text of a stored or fresh answer body, in any dialect: OpenAI's
/// first choice, Anthropic's text blocks, a Responses output's text parts,
/// Gemini's first candidate's (non-thought) text parts.
pub fn answer_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
        return choice
            .pointer("/message/content")
            .and_then(Value::as_str)
            .or_else(|| choice.get("text").and_then(Value::as_str))
            .map(str::to_string);
    }
    let texts: Vec<&str> = if v.get("type").and_then(Value::as_str) == Some("message") {
        v.get("content")?
            .as_array()?
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect()
    } else if v.get("object").and_then(Value::as_str) == Some("response") {
        v.get("output")?
            .as_array()?
            .iter()
            .filter(|o| o["type"] == "message")
            .flat_map(|o| o["content"].as_array().into_iter().flatten())
            .filter(|p| p["type"] == "output_text")
            .filter_map(|p| p["text"].as_str())
            .collect()
    } else {
        v.pointer("/candidates/0/content/parts")?
            .as_array()?
            .iter()
            .filter(|p| p.get("thought").is_none())
            .filter_map(|p| p["text"].as_str())
            .collect()
    };
    (!texts.is_empty()).then(|| texts.join(""))
}

/// Whether an answer asks the client to run a tool (OpenAI `tool_calls` or
/// `function_call`, Anthropic `tool_use`, a Responses `function_call` item,
/// a Gemini `functionCall` part): such an answer belongs to its exact
/// request, and is never served for a near-duplicate.
pub fn asks_for_tool(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return true;
    };
    let chat = v.get("choices").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.pointer("/message/tool_calls").is_some_and(|t| !t.is_null())
                || c.pointer("/message/function_call").is_some_and(|t| !t.is_null())
        })
    });
    let anthropic = v["stop_reason"] == "tool_use"
        || v["content"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_use"));
    let responses = v["output"]
        .as_array()
        .is_some_and(|o| o.iter().any(|o| o["type"] != "message" && o["type"] != "reasoning"));
    let gemini = v["candidates"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c.pointer("/content/parts")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p.get("functionCall").is_some()))
        })
    });
    chat || anthropic || responses || gemini
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
