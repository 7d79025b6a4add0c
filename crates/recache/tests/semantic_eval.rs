//! `recache semantic eval` (issue 27) on a small labelled file whose outcome
//! is known with all-MiniLM-L6-v2: an auxiliary-verb paraphrase is served at
//! every threshold of the curve; an antonym and a changed number both score
//! above 0.90 (false hits without the guards) and are refused, one as a
//! substituted word, one as a literal; a bad file exits 2 with the line named.

mod common;

use serde_json::Value;

fn recache(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recache"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn eval_prints_the_curve_of_a_labelled_file() {
    let Some(model) = common::engines::model_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("recache.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstreams]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [semantic]\nthreshold = 0.9\n[semantic.embedders.local]\nkind = \"local\"\npath = \"{}\"\n",
            model.display()
        ),
    )
    .unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        [
            r#"{"label":"paraphrase","kind":"auxiliary","a":"How do I reset my password?","b":"How can I reset my password?"}"#,
            r#"{"label":"near_miss","kind":"antonym","a":"How do I increase the font size in VS Code?","b":"How do I decrease the font size in VS Code?"}"#,
            r#"{"label":"near_miss","kind":"number","a":"What is 17 times 23?","b":"What is 17 times 24?"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let file = pairs.to_str().unwrap();
    let (code, out, err) = recache(&[
        "semantic", "eval", "--config", cfg, "--pairs", file, "--guards", "strict", "--format", "json",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pairs"]["paraphrases"], 1);
    assert_eq!(v["pairs"]["near_misses"], 2);
    assert_eq!(v["at"]["threshold"], 0.9);
    assert_eq!(v["at"]["paraphrases_served"], 1, "{v}");
    assert_eq!(v["at"]["near_misses_served"], 0, "{v}");
    let curve = v["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 29, "0.70 to 0.98 by 0.01");
    for row in curve {
        assert_eq!(row["paraphrases_served"]["with_guards"], 1, "{row}");
        assert_eq!(row["near_misses_served"]["with_guards"], 0, "{row}");
    }
    assert_eq!(
        curve[20]["near_misses_served"]["without_guards"], 2,
        "at 0.90 both near-misses score high enough to be served without the guards: {v}"
    );
    assert_eq!(v["refusals_at_threshold"]["near_miss"]["substituted_words"], 1, "{v}");
    assert_eq!(v["refusals_at_threshold"]["near_miss"]["literals"], 1, "{v}");
    assert_eq!(v["best_with_guards"]["threshold"], 0.7);
    assert_eq!(v["embedding"]["texts"], 6);
    let scored = v["scored"].as_array().unwrap();
    assert_eq!(scored[1]["guard"], "substituted_words");
    assert!(scored[1]["similarity"].as_f64().unwrap() > 0.9, "{v}");

    // Text: the summary and the curve; --threshold moves the summary.
    let (code, out, _) = recache(&[
        "semantic",
        "eval",
        "--config",
        cfg,
        "--pairs",
        file,
        "--threshold",
        "0.995",
        "--guards",
        "strict",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("at threshold 0.99"), "{out}");
    assert!(out.contains("0 paraphrases served"), "{out}");
    assert!(out.contains("threshold  recall"), "{out}");

    // Without --guards, the config's ([semantic] guards, lexical by default):
    // the lexical guards, with WordNet (required when RECACHE_TEST_WORDNET=1).
    let (code, out, err) = recache(&["semantic", "eval", "--config", cfg, "--pairs", file, "--format", "json"]);
    assert_eq!(code, 0, "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["guards"], "lexical");
    let wordnet = std::path::Path::new("/usr/share/wordnet/index.noun").exists();
    assert!(
        wordnet || std::env::var("RECACHE_TEST_WORDNET").as_deref() != Ok("1"),
        "RECACHE_TEST_WORDNET=1 but no WordNet (bash scripts/fetch-wordnet.sh)"
    );
    if wordnet {
        assert_eq!(v["lexicon"], "/usr/share/wordnet", "{v}");
    }
    assert_eq!(v["at"]["paraphrases_served"], 1, "{v}");
    assert_eq!(v["at"]["near_misses_served"], 0, "{v}");

    // A bad file: exit 2, its line named.
    std::fs::write(
        &pairs,
        "{\"label\":\"paraphrase\",\"a\":\"x\",\"b\":\"y\"}\n{\"label\":\"perhaps\"}\n",
    )
    .unwrap();
    let (code, _, err) = recache(&["semantic", "eval", "--config", cfg, "--pairs", file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2"), "{err}");
    let (code, _, err) = recache(&[
        "semantic",
        "eval",
        "--config",
        cfg,
        "--pairs",
        file,
        "--embedder",
        "nope",
    ]);
    assert_eq!(code, 2, "{err}");
}
