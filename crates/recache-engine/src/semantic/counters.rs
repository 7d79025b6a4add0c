//! The semantic layer's counters and their `/metrics` families: lookups by
//! result, ineligible requests, guard refusals, embedding times, and the
//! per-scope threshold and false-hit gauges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::budget::ScopeStats;
use super::guard::Refusal;
use super::scope::Ineligible;
use crate::metrics::{write_histogram, Histogram};
use recache_core::prom::Family;

/// How one semantic lookup ended (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A candidate passed: served (live) or recorded (shadow).
    Hit,
    ShadowHit,
    /// Nothing in the scope at or above the threshold.
    Miss,
    /// Candidates above the threshold, all refused by the guards.
    Refused,
    /// The embedder or the vector store failed or was skipped by its breaker.
    Unavailable,
}

pub(super) const LOOKUPS: [Lookup; 5] = [
    Lookup::Hit,
    Lookup::ShadowHit,
    Lookup::Miss,
    Lookup::Refused,
    Lookup::Unavailable,
];

impl Lookup {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::ShadowHit => "shadow_hit",
            Lookup::Miss => "miss",
            Lookup::Refused => "refused",
            Lookup::Unavailable => "unavailable",
        }
    }
}

pub(super) const INELIGIBLE: [Ineligible; 5] = [
    Ineligible::Endpoint,
    Ineligible::NoFinalUserText,
    Ineligible::ManyChoices,
    Ineligible::Temperature,
    Ineligible::TextSize,
];
pub(super) const REFUSALS: [Refusal; 5] = [
    Refusal::Literals,
    Refusal::SubstitutedWords,
    Refusal::SwappedTerms,
    Refusal::QuestionWord,
    Refusal::ToolAnswer,
];

#[derive(Default)]
pub struct SemanticMetrics {
    pub(super) lookups: [AtomicU64; 5],
    pub(super) ineligible: [AtomicU64; 5],
    pub(super) refusals: [AtomicU64; 5],
    /// shadow agreed, shadow disagreed, verification agreed, verification disagreed.
    pub(super) checks: [AtomicU64; 4],
    pub embed_errors: AtomicU64,
    pub embed_cache_hits: AtomicU64,
    /// Candidates scored again on their normalised texts (lexical guards).
    pub rescored: AtomicU64,
    pub vectors_stored: AtomicU64,
    pub vector_store_errors: AtomicU64,
    pub threshold_raises: AtomicU64,
    pub(super) embed_seconds: Histogram,
    pub(super) search_seconds: Histogram,
}

impl SemanticMetrics {
    pub(super) fn lookup(&self, l: Lookup) {
        if let Some(i) = LOOKUPS.iter().position(|x| *x == l) {
            self.lookups[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn lookups(&self, l: Lookup) -> u64 {
        LOOKUPS
            .iter()
            .position(|x| *x == l)
            .map(|i| self.lookups[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Appends the `cache_semantic_*` families in the Prometheus text format.
    pub fn render(&self, out: &mut String, scopes: &[ScopeStats]) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Family::counter(
            out,
            "cache_semantic_hits_total",
            "Requests answered by a semantic (near-duplicate) match.",
        )
        .sample(&[], self.lookups(Lookup::Hit));
        // (family, help, label, label values, counters)
        type Labelled<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], &'a [AtomicU64]);
        let labelled: [Labelled; 3] = [
            (
                "cache_semantic_lookups_total",
                "Semantic lookups by result.",
                "result",
                &LOOKUPS.map(Lookup::as_str),
                &self.lookups,
            ),
            (
                "cache_semantic_ineligible_total",
                "Requests of a semantic tenant not matched semantically, by reason.",
                "reason",
                &INELIGIBLE.map(Ineligible::as_str),
                &self.ineligible,
            ),
            (
                "cache_semantic_guard_refusals_total",
                "Candidates above the threshold refused by the literal and near-miss guards.",
                "reason",
                &REFUSALS.map(Refusal::as_str),
                &self.refusals,
            ),
        ];
        for (name, help, label, values, counters) in labelled {
            let mut f = Family::counter(out, name, help);
            for (v, n) in values.iter().zip(counters) {
                f.sample(&[(label, v)], l(n));
            }
        }
        let mut f = Family::counter(
            out,
            "cache_semantic_checks_total",
            "Semantic answers compared with the provider's fresh answer (shadow mode, verification sampling).",
        );
        for (i, (kind, agreed)) in [
            ("shadow", "true"),
            ("shadow", "false"),
            ("verification", "true"),
            ("verification", "false"),
        ]
        .iter()
        .enumerate()
        {
            f.sample(&[("kind", kind), ("agreed", agreed)], l(&self.checks[i]));
        }
        for (name, help, v) in [
            (
                "cache_semantic_embed_errors_total",
                "Embeddings that failed, timed out or were skipped by the embedder's breaker.",
                &self.embed_errors,
            ),
            (
                "cache_semantic_vectors_stored_total",
                "Vectors written for new entries.",
                &self.vectors_stored,
            ),
            (
                "cache_semantic_embed_cache_hits_total",
                "Embeddings answered from the recent-text cache (no inference).",
                &self.embed_cache_hits,
            ),
            (
                "cache_semantic_rescored_total",
                "Candidates below the threshold scored again on their normalised texts (an acronym and its words; lexical guards).",
                &self.rescored,
            ),
            (
                "cache_semantic_vector_store_errors_total",
                "Vectors that could not be written (the entry is still cached exactly).",
                &self.vector_store_errors,
            ),
            (
                "cache_semantic_threshold_raises_total",
                "Times a scope's threshold was raised because its false-hit rate went over the error budget.",
                &self.threshold_raises,
            ),
        ] {
            Family::counter(out, name, help).sample(&[], l(v));
        }
        let mut f = Family::histogram(out, "cache_semantic_embed_seconds", "Time to embed one request text.");
        write_histogram(&mut f, &[], &self.embed_seconds);
        let mut f = Family::histogram(out, "cache_semantic_search_seconds", "Time of one vector search.");
        write_histogram(&mut f, &[], &self.search_seconds);
        // Per tenant and namespace: the strictest threshold in force and the measured false-hit rate.
        let mut by_tn: BTreeMap<(&str, &str), (f32, u64, u64)> = BTreeMap::new();
        for s in scopes {
            let e = by_tn.entry((&s.tenant, &s.namespace)).or_insert((0.0, 0, 0));
            e.0 = e.0.max(s.threshold);
            e.1 += s.counts.checks();
            e.2 += s.counts.disagreements();
        }
        let mut f = Family::gauge(
            out,
            "cache_semantic_threshold",
            "Highest similarity threshold in force among a tenant's scopes.",
        );
        for ((t, n), (th, _, _)) in &by_tn {
            f.sample(&[("tenant", t), ("namespace", n)], th);
        }
        let mut f = Family::gauge(
            out,
            "cache_semantic_false_hit_ratio",
            "Measured share of compared semantic answers that disagreed with the provider.",
        );
        for ((t, n), (_, checks, bad)) in &by_tn {
            if *checks > 0 {
                f.sample(&[("tenant", t), ("namespace", n)], *bad as f64 / *checks as f64);
            }
        }
    }
}
