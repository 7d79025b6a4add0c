//! `recache semantic eval --pairs F [--embedder NAME] [--threshold T]`: how
//! the semantic layer would judge a labelled file of question pairs, as a
//! curve over thresholds with and without the guards ("Semantic matching"
//! in `docs/operations.md`). Runs the configured embedder in this process; no
//! gateway or store is touched.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::ops::{print, Exit};
use super::{env_map, load_config, ConfigArgs, OutputFormat};
use recache_engine::semantic::embedder::{Embedder, LocalEmbedder, ProviderEmbedder};
use recache_engine::semantic::{eval, normalise};
use recache_engine::upstream::Upstreams;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A JSON Lines file of pairs: {"label": "paraphrase"|"near_miss", "kind": …, "a": …, "b": …}
    /// (`a` is stored first, `b` asked after).
    #[arg(long)]
    pub pairs: PathBuf,
    /// The embedder, a key of [semantic.embedders] (default: [semantic] embedder).
    #[arg(long)]
    pub embedder: Option<String>,
    /// The threshold the summary, refusals and kinds are given at (default: [semantic] threshold).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// The guards: `lexical` (with the WordNet lexicon of `[semantic]
    /// lexicon`) or `strict` (default: `[semantic] guards`, what the gateway runs).
    #[arg(long, value_enum)]
    pub guards: Option<Guards>,
    /// Senses of a word the lexicon compares, most frequent first (0: all).
    #[arg(long, default_value_t = 1, hide = true)]
    pub senses: usize,
    /// Count a verb and its direct hypernym as synonyms (measuring).
    #[arg(long, hide = true)]
    pub verb_hypernyms: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guards {
    Strict,
    Lexical,
}

pub async fn run(a: EvalArgs) -> i32 {
    super::ops::exit_code("semantic eval", eval_cmd(a).await)
}

async fn eval_cmd(a: EvalArgs) -> Result<i32, Exit> {
    let env = env_map();
    let config = load_config(&a.config, &env).map_err(|e| Exit::config(e.to_string()))?;
    super::init_logging(recache_core::config::LogFormat::Text, "warn");
    let text = std::fs::read_to_string(&a.pairs)
        .map_err(|e| Exit::config(format!("cannot read {}: {e}", a.pairs.display())))?;
    let pairs = eval::parse_pairs(&text).map_err(|e| Exit::config(format!("{}: {e}", a.pairs.display())))?;
    let name = a.embedder.clone().unwrap_or_else(|| config.semantic.embedder.clone());
    let threshold = a.threshold.unwrap_or(config.semantic.threshold);
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Exit::config("--threshold is a cosine similarity between 0 and 1"));
    }
    let cfg = config.semantic.embedders.get(&name).cloned().ok_or_else(|| {
        Exit::config(format!(
            "no embedder '{name}' in [semantic.embedders] (there: {})",
            config.semantic.embedders.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let embedder: Arc<dyn Embedder> = match cfg.kind.as_str() {
        "local" => {
            let c = cfg.clone();
            let loaded = tokio::task::spawn_blocking(move || LocalEmbedder::load(&c))
                .await
                .map_err(|e| Exit::problem(e.to_string()))?
                .map_err(|e| {
                    Exit::config(format!(
                        "semantic.embedders.{name}: cannot load the model at {} ({e:#}); \
                         `bash scripts/fetch-model.sh` fetches all-MiniLM-L6-v2 into models/",
                        cfg.path.as_deref().unwrap_or(std::path::Path::new("")).display()
                    ))
                })?;
            Arc::new(loaded)
        }
        _ => {
            let upstreams = Upstreams::from_config(&config, &env).map_err(|e| Exit::config(e.to_string()))?;
            Arc::new(ProviderEmbedder::new(&cfg, &upstreams).map_err(|e| Exit::config(format!("{e:#}")))?)
        }
    };
    let lexical = match a.guards {
        Some(g) => g == Guards::Lexical,
        None => config.semantic.guards == "lexical",
    };
    // With the lexical guards, a pair that spelling normalisation changes
    // (an acronym and its words, a unit's abbreviation) is also compared as
    // normalised, as the gateway does (`normalise::rescored`).
    let normalised: Vec<Option<(String, String)>> = pairs
        .iter()
        .map(|p| lexical.then(|| normalise::changed(&p.b, &p.a)).flatten())
        .collect();
    // Each distinct text once.
    let mut texts: Vec<&str> = pairs.iter().flat_map(|p| [p.a.as_str(), p.b.as_str()]).collect();
    texts.extend(normalised.iter().flatten().flat_map(|(x, y)| [x.as_str(), y.as_str()]));
    texts.sort_unstable();
    texts.dedup();
    let bar = (a.format == OutputFormat::Text).then(|| {
        let b = indicatif::ProgressBar::new(texts.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("embedding [{elapsed_precise}] {wide_bar} {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = std::time::Instant::now();
    let mut vectors: HashMap<&str, Vec<f32>> = HashMap::new();
    for t in &texts {
        let v = embedder
            .embed(t.to_string())
            .await
            .map_err(|e| Exit::problem(format!("embedding with '{name}': {e}")))?;
        vectors.insert(t, v);
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let embed_secs = started.elapsed().as_secs_f64();
    let lexicon = match lexical {
        true => recache_engine::semantic::lexicon::open(&config.semantic.lexicon, a.senses, a.verb_hypernyms),
        false => None,
    };
    let scored: Vec<eval::Scored> = pairs
        .iter()
        .zip(&normalised)
        .map(|(p, n)| {
            let raw = recache_embed::cosine(&vectors[p.a.as_str()], &vectors[p.b.as_str()]);
            let sim = match n {
                Some((x, y)) if raw >= normalise::RESCORE_FLOOR => {
                    raw.max(recache_embed::cosine(&vectors[x.as_str()], &vectors[y.as_str()]))
                }
                _ => raw,
            };
            eval::score(p.clone(), sim, lexical, lexicon.as_deref())
        })
        .collect();
    let mut v = eval::report(&scored, threshold);
    v["scored"] = json!(eval::details(&scored));
    v["file"] = json!(a.pairs.display().to_string());
    v["embedder"] = json!({"name": name, "fingerprint": embedder.fingerprint()});
    v["guards"] = json!(if lexical { "lexical" } else { "strict" });
    v["lexicon"] = json!(lexicon.as_ref().map(|_| config.semantic.lexicon.display().to_string()));
    v["embedding"] = json!({"texts": texts.len(), "seconds": embed_secs,
        "ms_per_text": if texts.is_empty() { 0.0 } else { embed_secs * 1000.0 / texts.len() as f64 }});
    print(a.format, &v, |v| {
        format!(
            "{} with embedder {} ({}), {} guards, lexicon {}\n{}",
            v["file"].as_str().unwrap_or(""),
            name,
            v["embedder"]["fingerprint"].as_str().unwrap_or(""),
            v["guards"].as_str().unwrap_or(""),
            v["lexicon"].as_str().unwrap_or("none"),
            eval::report_text(v)
        )
    });
    Ok(0)
}
