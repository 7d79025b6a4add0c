//! The scenarios a drill can run, and what each one predicts.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    IndexDown,
    ArtifactsDown,
    VectorsDown,
    MetadataDown,
    AllDown,
    ProviderDown,
    IndexLoss,
    ArtifactsLoss,
    MetadataLoss,
    FullRestore,
}

/// What kind of fault a scenario makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Backends unreachable for `--fault-seconds`, then back.
    Outage,
    /// Data destroyed, then recovered by the rebuild and the repairs.
    Loss,
    /// Every store wiped, then restored from the latest verified backup.
    Restore,
}

pub const ALL: [Scenario; 10] = [
    Scenario::IndexDown,
    Scenario::ArtifactsDown,
    Scenario::VectorsDown,
    Scenario::MetadataDown,
    Scenario::AllDown,
    Scenario::ProviderDown,
    Scenario::IndexLoss,
    Scenario::ArtifactsLoss,
    Scenario::MetadataLoss,
    Scenario::FullRestore,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::IndexDown => "index-down",
            Scenario::ArtifactsDown => "artifacts-down",
            Scenario::VectorsDown => "vectors-down",
            Scenario::MetadataDown => "metadata-down",
            Scenario::AllDown => "all-down",
            Scenario::ProviderDown => "provider-down",
            Scenario::IndexLoss => "index-loss",
            Scenario::ArtifactsLoss => "artifacts-loss",
            Scenario::MetadataLoss => "metadata-loss",
            Scenario::FullRestore => "full-restore",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn kind(self) -> Kind {
        match self {
            Scenario::IndexLoss | Scenario::ArtifactsLoss | Scenario::MetadataLoss => Kind::Loss,
            Scenario::FullRestore => Kind::Restore,
            _ => Kind::Outage,
        }
    }

    /// The backend whose targets apply (`[drill.targets.<backend>]`).
    pub fn backend(self) -> &'static str {
        match self {
            Scenario::IndexDown | Scenario::IndexLoss => "index",
            Scenario::ArtifactsDown | Scenario::ArtifactsLoss => "artifacts",
            Scenario::VectorsDown => "vectors",
            Scenario::MetadataDown | Scenario::MetadataLoss => "metadata",
            Scenario::ProviderDown => "provider",
            Scenario::AllDown | Scenario::FullRestore => "all",
        }
    }

    /// The backends the fault touches.
    pub fn faulted(self) -> &'static [&'static str] {
        match self {
            Scenario::AllDown | Scenario::FullRestore => &["index", "artifacts", "vectors", "metadata"],
            Scenario::IndexDown | Scenario::IndexLoss => &["index"],
            Scenario::ArtifactsDown | Scenario::ArtifactsLoss => &["artifacts"],
            Scenario::VectorsDown => &["vectors"],
            Scenario::MetadataDown | Scenario::MetadataLoss => &["metadata"],
            Scenario::ProviderDown => &["provider"],
        }
    }

    /// The share of requests the provider answers while the fault lasts,
    /// predicted from the steady state's miss share (the degradation matrix,
    /// ARCHITECTURE.md, "Failure behaviour"): without the index or the artifacts nothing is served
    /// from the cache; without vectors or metadata exact hits go on; with the
    /// provider down nothing is bought; a loss turns the lost share into misses.
    pub fn predicted_miss_share(self, steady_miss_share: f64, lost_fraction: f64) -> f64 {
        let hit = 1.0 - steady_miss_share;
        match self {
            Scenario::IndexDown | Scenario::ArtifactsDown | Scenario::AllDown | Scenario::IndexLoss => 1.0,
            Scenario::FullRestore => 1.0,
            Scenario::VectorsDown | Scenario::MetadataDown | Scenario::MetadataLoss => steady_miss_share,
            Scenario::ProviderDown => 0.0,
            Scenario::ArtifactsLoss => steady_miss_share + hit * lost_fraction,
        }
    }

    /// How often the runbook's calendar wants it run, in days.
    pub fn cadence_days(self) -> u32 {
        match self {
            Scenario::FullRestore => 182,
            _ => 91,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_predictions_follow_the_matrix() {
        for s in ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
        }
        assert_eq!(Scenario::parse("nope"), None);
        assert_eq!(Scenario::IndexDown.predicted_miss_share(0.2, 0.0), 1.0);
        assert_eq!(Scenario::MetadataDown.predicted_miss_share(0.2, 0.0), 0.2);
        assert_eq!(Scenario::ProviderDown.predicted_miss_share(0.2, 0.0), 0.0);
        assert!((Scenario::ArtifactsLoss.predicted_miss_share(0.2, 0.5) - 0.6).abs() < 1e-9);
        assert_eq!(Scenario::FullRestore.cadence_days(), 182);
    }
}
