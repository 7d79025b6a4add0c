//! `recache audit --gaps`: entries created per hour over a window, the
//! first and last record, and the empty hours: after a failover, the gap
//! window tells which writes never reached metadata (and what to reconcile).

use serde::Serialize;

use recache_storage::roles::{now_ms, Metadata, Result};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HourCount {
    pub hour_start_ms: i64,
    pub entries: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GapReport {
    pub hours: u64,
    pub from_ms: i64,
    pub to_ms: i64,
    pub total_entries: u64,
    pub first_record_ms: Option<i64>,
    pub last_record_ms: Option<i64>,
    /// Every hour of the window, empty ones included.
    pub per_hour: Vec<HourCount>,
    /// Runs of empty hours between the first and the last record: (start ms, end ms).
    pub gaps: Vec<(i64, i64)>,
    /// The longest such run, in hours.
    pub longest_gap_hours: u64,
}

pub async fn gaps(meta: &dyn Metadata, hours: u64) -> Result<GapReport> {
    const H: i64 = 3_600_000;
    let now = now_ms();
    let to = (now / H + 1) * H;
    let from = to - hours.max(1) as i64 * H;
    let counts = meta.hourly_counts(from).await?;
    let per_hour: Vec<HourCount> = (0..hours.max(1) as i64)
        .map(|i| {
            let h = from + i * H;
            HourCount {
                hour_start_ms: h,
                entries: counts.iter().find(|(s, _)| *s == h).map(|(_, n)| *n).unwrap_or(0),
            }
        })
        .collect();
    let first = per_hour.iter().position(|h| h.entries > 0);
    let last = per_hour.iter().rposition(|h| h.entries > 0);
    let mut gaps = Vec::new();
    if let (Some(a), Some(b)) = (first, last) {
        let mut start = None;
        for (i, h) in per_hour.iter().enumerate().take(b + 1).skip(a) {
            match (h.entries, start) {
                (0, None) => start = Some(i),
                (n, Some(s)) if n > 0 => {
                    gaps.push((per_hour[s].hour_start_ms, h.hour_start_ms));
                    start = None;
                }
                _ => {}
            }
        }
    }
    let longest = gaps.iter().map(|(a, b)| ((b - a) / H) as u64).max().unwrap_or(0);
    Ok(GapReport {
        hours,
        from_ms: from,
        to_ms: to,
        total_entries: per_hour.iter().map(|h| h.entries).sum(),
        first_record_ms: first.map(|i| per_hour[i].hour_start_ms),
        last_record_ms: last.map(|i| per_hour[i].hour_start_ms + H),
        per_hour,
        gaps,
        longest_gap_hours: longest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use recache_storage::roles::conformance::sample_entry;
    use recache_storage::roles::metadata_sqlite::SqliteMetadata;
    use recache_storage::roles::ArtifactId;

    #[tokio::test]
    async fn finds_the_empty_hours_between_records() {
        const H: i64 = 3_600_000;
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMetadata::open(&dir.path().join("m.db"), 2, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let now = now_ms();
        let at = |hours_ago: i64, i: u8| {
            let created = now - hours_ago * H;
            sample_entry(
                recache_core::key::CacheKey([i; 32]),
                ArtifactId([i; 32]),
                created,
                now + H,
            )
        };
        let rows = vec![at(6, 1), at(6, 2), at(5, 3), at(2, 4), at(0, 5)];
        assert_eq!(meta.insert_missing_entries(rows).await.unwrap(), 5);
        let g = gaps(&meta, 12).await.unwrap();
        assert_eq!(g.total_entries, 5);
        assert_eq!(g.per_hour.len(), 12);
        // Empty: 4 and 3 hours ago, and 1 hour ago.
        assert_eq!(g.gaps.len(), 2, "{:?}", g.gaps);
        assert_eq!(g.gaps[0].1 - g.gaps[0].0, 2 * H);
        assert_eq!(g.gaps[1].1 - g.gaps[1].0, H);
        assert_eq!(g.longest_gap_hours, 2);
        assert!(g.first_record_ms.unwrap() <= now - 6 * H);
        assert!(g.last_record_ms.unwrap() >= now);
    }
}
