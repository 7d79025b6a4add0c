//! Evaluation of semantic matching on labelled pairs (`recache semantic
//! eval`; "Semantic matching" in `docs/operations.md`): for each pair, the
//! similarity of its two questions and the guards' verdict; from those, at
//! each threshold, how many paraphrases would be served (recall) and how many
//! near-misses (false hits), with and without the guards, and why the guards
//! refused what they refused. This is the curve a team reads to choose a
//! threshold for its own traffic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::guard::{self, Refusal};

/// What a pair is: two questions with one answer, or two that look alike
/// and need different answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Paraphrase,
    #[serde(alias = "near-miss")]
    NearMiss,
}

/// One line of a pairs file (JSON Lines): `a` is stored first, `b` asked after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pair {
    pub label: Label,
    /// The form of the pair (`synonym`, `antonym`, …): reported per kind.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub domain: String,
    pub a: String,
    pub b: String,
}

/// Reads a pairs file; an error names the line.
pub fn parse_pairs(text: &str) -> Result<Vec<Pair>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p: Pair = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if p.a.trim().is_empty() || p.b.trim().is_empty() {
            return Err(format!("line {}: a and b must both be questions", i + 1));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err("no pairs in the file".into());
    }
    Ok(out)
}

/// A pair as the gateway would judge it.
#[derive(Clone, Debug)]
pub struct Scored {
    pub pair: Pair,
    pub similarity: f32,
    /// The guards' verdict on `b` asked after `a` was stored.
    pub guard: Result<(), Refusal>,
}

/// `lexical`: the lexical guards (with `lexicon`, if any) instead of the strict ones.
pub fn score(pair: Pair, similarity: f32, lexical: bool, lexicon: Option<&super::lexicon::Lexicon>) -> Scored {
    let guard = match lexical {
        true => super::guard_lexical::check(&pair.b, &pair.a, lexicon),
        false => guard::check(&pair.b, &pair.a),
    };
    Scored {
        pair,
        similarity,
        guard,
    }
}

/// The thresholds of the curve: 0.70 to 0.98 by 0.01.
pub fn thresholds() -> Vec<f32> {
    (70..=98).map(|t| t as f32 / 100.0).collect()
}

fn served(s: &Scored, t: f32, guards: bool) -> bool {
    s.similarity >= t && (!guards || s.guard.is_ok())
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        (n as f64 * 1000.0 / of as f64).round() / 10.0
    }
}

/// The report: counts, the curve, refusals by class and outcomes by kind at
/// `at` (the configured threshold), and the best threshold with the guards
/// (the lowest that serves no near-miss).
pub fn report(scored: &[Scored], at: f32) -> Value {
    let of = |l: Label| scored.iter().filter(|s| s.pair.label == l).count();
    let (np, nn) = (of(Label::Paraphrase), of(Label::NearMiss));
    let count = |l: Label, t: f32, g: bool| scored.iter().filter(|s| s.pair.label == l && served(s, t, g)).count();
    let curve: Vec<Value> = thresholds()
        .into_iter()
        .map(|t| {
            let (p_raw, p_g) = (count(Label::Paraphrase, t, false), count(Label::Paraphrase, t, true));
            let (n_raw, n_g) = (count(Label::NearMiss, t, false), count(Label::NearMiss, t, true));
            json!({
                "threshold": two_places(t),
                "paraphrases_served": {"without_guards": p_raw, "with_guards": p_g},
                "near_misses_served": {"without_guards": n_raw, "with_guards": n_g},
                "recall_pct": {"without_guards": pct(p_raw, np), "with_guards": pct(p_g, np)},
                "false_hit_pct": {"without_guards": pct(n_raw, nn), "with_guards": pct(n_g, nn)},
            })
        })
        .collect();
    // Refusals by class, of the candidates the threshold lets through.
    let mut refusals: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for s in scored.iter().filter(|s| s.similarity >= at) {
        if let Err(r) = s.guard {
            *refusals
                .entry(label_name(s.pair.label))
                .or_default()
                .entry(r.as_str())
                .or_default() += 1;
        }
    }
    // Outcomes by kind at the threshold.
    let mut kinds: BTreeMap<(&str, String), (usize, usize, usize)> = BTreeMap::new();
    for s in scored {
        let e = kinds
            .entry((label_name(s.pair.label), s.pair.kind.clone()))
            .or_default();
        e.0 += 1;
        e.1 += served(s, at, true) as usize;
        e.2 += (s.similarity < at) as usize;
    }
    let by_kind: Vec<Value> = kinds
        .into_iter()
        .map(|((label, kind), (pairs, served, below))| {
            json!({"label": label, "kind": kind, "pairs": pairs, "served": served, "below_threshold": below,
                   "refused_by_guards": pairs - served - below})
        })
        .collect();
    let best = thresholds()
        .into_iter()
        .find(|&t| count(Label::NearMiss, t, true) == 0)
        .map(|t| json!({"threshold": two_places(t), "recall_pct": pct(count(Label::Paraphrase, t, true), np)}));
    let at_row = json!({
        "threshold": (at as f64 * 1000.0).round() / 1000.0,
        "paraphrases_served": count(Label::Paraphrase, at, true),
        "near_misses_served": count(Label::NearMiss, at, true),
        "recall_pct": pct(count(Label::Paraphrase, at, true), np),
        "false_hit_pct": pct(count(Label::NearMiss, at, true), nn),
    });
    json!({
        "pairs": {"paraphrases": np, "near_misses": nn},
        "at": at_row,
        "best_with_guards": best,
        "refusals_at_threshold": refusals,
        "by_kind": by_kind,
        "curve": curve,
    })
}

fn two_places(t: f32) -> f64 {
    (t as f64 * 100.0).round() / 100.0
}

/// Every pair with its similarity and the guards' verdict (for tuning).
pub fn details(scored: &[Scored]) -> Vec<Value> {
    scored
        .iter()
        .map(|s| {
            json!({
                "label": label_name(s.pair.label), "kind": s.pair.kind, "domain": s.pair.domain,
                "a": s.pair.a, "b": s.pair.b,
                "similarity": (s.similarity as f64 * 10_000.0).round() / 10_000.0,
                "guard": match s.guard { Ok(()) => "pass", Err(r) => r.as_str() },
            })
        })
        .collect()
}

fn label_name(l: Label) -> &'static str {
    match l {
        Label::Paraphrase => "paraphrase",
        Label::NearMiss => "near_miss",
    }
}

/// The report as text: the summary, the curve every 0.02, refusals and kinds.
pub fn report_text(v: &Value) -> String {
    let mut out = format!(
        "{} paraphrases, {} near-misses\nat threshold {:.2}: {} paraphrases served ({}%), {} near-misses served ({}%)\n",
        v["pairs"]["paraphrases"],
        v["pairs"]["near_misses"],
        v["at"]["threshold"].as_f64().unwrap_or(0.0),
        v["at"]["paraphrases_served"],
        v["at"]["recall_pct"],
        v["at"]["near_misses_served"],
        v["at"]["false_hit_pct"],
    );
    match v["best_with_guards"].as_object() {
        Some(b) => out.push_str(&format!(
            "lowest threshold serving no near-miss (guards on): {:.2}, recall {}%\n",
            b["threshold"].as_f64().unwrap_or(0.0),
            b["recall_pct"]
        )),
        None => out.push_str("every threshold up to 0.98 serves a near-miss (guards on)\n"),
    }
    out.push_str("\nthreshold  recall (guards / none)  false hits (guards / none)\n");
    for row in v["curve"].as_array().into_iter().flatten() {
        let t = row["threshold"].as_f64().unwrap_or(0.0);
        if ((t * 100.0).round() as i64) % 2 != 0 {
            continue;
        }
        out.push_str(&format!(
            "  {:.2}     {:>5}% / {:>5}%        {:>5}% / {:>5}%\n",
            t,
            row["recall_pct"]["with_guards"],
            row["recall_pct"]["without_guards"],
            row["false_hit_pct"]["with_guards"],
            row["false_hit_pct"]["without_guards"],
        ));
    }
    if let Some(r) = v["refusals_at_threshold"].as_object().filter(|r| !r.is_empty()) {
        out.push_str("\nrefused by the guards above the threshold:\n");
        for (label, classes) in r {
            let list: Vec<String> = classes
                .as_object()
                .into_iter()
                .flatten()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            out.push_str(&format!("  {label}: {}\n", list.join(", ")));
        }
    }
    out.push_str("\nby kind (served / pairs; refused by the guards; below the threshold):\n");
    for k in v["by_kind"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<10} {:<22} {:>3} / {:<3} refused {:<3} below {}\n",
            k["label"].as_str().unwrap_or(""),
            k["kind"].as_str().unwrap_or(""),
            k["served"],
            k["pairs"],
            k["refused_by_guards"],
            k["below_threshold"]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(label: Label, kind: &str, a: &str, b: &str) -> Pair {
        Pair {
            label,
            kind: kind.into(),
            domain: String::new(),
            a: a.into(),
            b: b.into(),
        }
    }

    #[test]
    fn the_curve_counts_what_each_threshold_serves() {
        let scored = vec![
            score(
                pair(
                    Label::Paraphrase,
                    "auxiliary",
                    "How do I reset my password?",
                    "How can I reset my password?",
                ),
                0.97,
                false,
                None,
            ),
            score(
                pair(Label::Paraphrase, "politeness", "Explain DNS.", "Please explain DNS."),
                0.80,
                false,
                None,
            ),
            score(
                pair(
                    Label::NearMiss,
                    "antonym",
                    "How do I enable logging?",
                    "How do I disable logging?",
                ),
                0.95,
                false,
                None,
            ),
            score(
                pair(Label::NearMiss, "number", "Is port 8080 open?", "Is port 9090 open?"),
                0.75,
                false,
                None,
            ),
        ];
        assert!(scored[0].guard.is_ok());
        assert_eq!(scored[2].guard, Err(Refusal::SubstitutedWords));
        assert_eq!(scored[3].guard, Err(Refusal::Literals));
        let v = report(&scored, 0.90);
        assert_eq!(v["at"]["paraphrases_served"], 1);
        assert_eq!(v["at"]["near_misses_served"], 0);
        let row = |t: f64| {
            v["curve"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| (r["threshold"].as_f64().unwrap() - t).abs() < 1e-6)
                .unwrap()
                .clone()
        };
        assert_eq!(row(0.70)["paraphrases_served"]["with_guards"], 2);
        assert_eq!(row(0.70)["near_misses_served"]["without_guards"], 2);
        assert_eq!(row(0.70)["near_misses_served"]["with_guards"], 0);
        assert_eq!(row(0.96)["near_misses_served"]["without_guards"], 0);
        assert_eq!(row(0.98)["paraphrases_served"]["without_guards"], 0);
        assert_eq!(v["best_with_guards"]["threshold"], 0.7);
        assert_eq!(v["best_with_guards"]["recall_pct"], 100.0);
        assert_eq!(v["refusals_at_threshold"]["near_miss"]["substituted_words"], 1);
        let text = report_text(&v);
        assert!(text.contains("2 paraphrases, 2 near-misses"), "{text}");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse_pairs(
            "{\"label\":\"paraphrase\",\"a\":\"x\",\"b\":\"y\"}\n{\"label\":\"maybe\",\"a\":\"x\",\"b\":\"y\"}\n",
        )
        .unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
        assert!(parse_pairs("\n").is_err());
        let ok = parse_pairs("{\"label\":\"near-miss\",\"kind\":\"k\",\"a\":\"x\",\"b\":\"y\"}").unwrap();
        assert_eq!(ok[0].label, Label::NearMiss);
    }
}
