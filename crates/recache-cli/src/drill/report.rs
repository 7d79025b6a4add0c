//! The drill report: Markdown following the DR runbook's template (summary,
//! results table with target, actual and pass/fail, timeline, issues found,
//! runbook updates, action items), the same data as JSON, and an SVG chart of
//! hit rate, p99 latency and provider spend with the fault and recovery marked.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::measure::Bucket;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub measure: String,
    pub definition: String,
    pub target: String,
    pub actual: String,
    /// The number behind `actual` (seconds, share, count, USD), when there is one.
    pub value: Option<f64>,
    /// `None`: reported, not judged.
    pub pass: Option<bool>,
}

impl Row {
    pub fn result(&self) -> &'static str {
        match self.pass {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "info",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Seconds since the drill's clock started.
    pub t: f64,
    pub at: String,
    pub what: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Marks {
    pub fault: f64,
    pub repair: Option<f64>,
    pub recovered: Option<f64>,
    pub end: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub id: String,
    pub scenario: String,
    pub mode: String,
    pub started_at: String,
    pub started_at_ms: i64,
    /// `pass`, `fail` or `aborted`.
    pub verdict: String,
    pub summary: String,
    pub settings: Value,
    pub results: Vec<Row>,
    /// Every figure, by name (seconds, shares, counts, USD).
    pub measures: Value,
    pub timeline: Vec<Event>,
    pub issues: Vec<String>,
    pub runbook_updates: Vec<String>,
    pub action_items: Vec<String>,
    pub marks: Marks,
    pub buckets: Vec<Bucket>,
}

impl Report {
    pub fn rto_seconds(&self) -> Option<f64> {
        self.measures["rto_seconds"].as_f64()
    }
    pub fn rpo_seconds(&self) -> Option<f64> {
        self.measures["rpo_seconds"].as_f64()
    }

    pub(crate) fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# DR drill: {} ({})\n", self.scenario, self.verdict.to_uppercase());
        let _ = writeln!(m, "## Summary\n\n{}\n", self.summary);
        let _ = writeln!(
            m,
            "- Drill: `{}`, started {} (UTC), {} gateway\n- Settings: `{}`\n",
            self.id, self.started_at, self.mode, self.settings
        );
        let _ = writeln!(
            m,
            "## Results\n\n| Measure | Target | Actual | Result |\n|---|---|---|---|"
        );
        for r in &self.results {
            let _ = writeln!(m, "| {} | {} | {} | {} |", r.measure, r.target, r.actual, r.result());
        }
        let _ = writeln!(m, "\n### Definitions\n");
        for r in &self.results {
            let _ = writeln!(m, "- **{}**: {}", r.measure, r.definition);
        }
        let _ = writeln!(m, "\n![hit rate, p99 latency and provider spend](chart.svg)\n");
        let _ = writeln!(m, "## Timeline\n\n| t (s) | UTC | Event |\n|---|---|---|");
        for e in &self.timeline {
            let _ = writeln!(m, "| {:.1} | {} | {} |", e.t, e.at, e.what.replace('|', "\\|"));
        }
        for (title, items) in [
            ("Issues found", &self.issues),
            ("Runbook updates", &self.runbook_updates),
            ("Action items", &self.action_items),
        ] {
            let _ = writeln!(m, "\n## {title}\n");
            if items.is_empty() {
                let _ = writeln!(m, "- None.");
            }
            for i in items {
                let _ = writeln!(m, "- {i}");
            }
        }
        m
    }

    /// Three panels sharing the time axis: hit rate (%), p99 (ms), provider spend (USD/s).
    pub fn svg(&self) -> String {
        let (w, panel_h, left, top) = (900.0, 160.0, 70.0, 40.0);
        let gap = 40.0;
        let h = top + 3.0 * panel_h + 2.0 * gap + 50.0;
        let end = self.marks.end.max(1.0);
        let plot_w = w - left - 20.0;
        let x = |t: f64| left + plot_w * (t / end).clamp(0.0, 1.0);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = write!(
            s,
            r#"<text x="{left}" y="22" font-size="15" font-weight="bold">recache drill {}: {} ({})</text>"#,
            esc(&self.id),
            esc(&self.scenario),
            esc(&self.verdict)
        );
        type Get = fn(&Bucket) -> f64;
        let panels: [(&str, Get, &str); 3] = [
            ("hit rate (%)", |b| b.hit_rate * 100.0, "#2b7bb9"),
            ("p99 latency (ms)", |b| b.p99_ms, "#8e44ad"),
            ("provider spend (USD/s)", |b| b.spend_usd, "#d35400"),
        ];
        for (i, (label, get, color)) in panels.iter().enumerate() {
            let y0 = top + i as f64 * (panel_h + gap);
            let values: Vec<(f64, f64)> = self
                .buckets
                .iter()
                .filter(|b| b.requests > 0)
                .map(|b| (b.t as f64 + 0.5, get(b)))
                .collect();
            let max = if i == 0 {
                100.0
            } else {
                values.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-9) * 1.1
            };
            let y = |v: f64| y0 + panel_h - panel_h * (v / max).clamp(0.0, 1.0);
            let _ = write!(
                s,
                r##"<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="#f7f7f7" stroke="#999"/>"##
            );
            let _ = write!(s, r#"<text x="{left}" y="{}">{label}</text>"#, y0 - 6.0);
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
                left - 6.0,
                y0 + 10.0,
                fmt_axis(max),
                left - 6.0,
                y0 + panel_h
            );
            if !values.is_empty() {
                let pts: Vec<String> = values
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                    .collect();
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    pts.join(" ")
                );
            }
            for (t, c, name) in [
                (Some(self.marks.fault), "#c0392b", "fault"),
                (self.marks.repair, "#e67e22", "repair"),
                (self.marks.recovered, "#27ae60", "recovered"),
            ] {
                if let Some(t) = t {
                    let _ = write!(
                        s,
                        r#"<line x1="{0:.1}" x2="{0:.1}" y1="{y0}" y2="{1}" stroke="{c}" stroke-width="2" stroke-dasharray="5,3"/>"#,
                        x(t),
                        y0 + panel_h
                    );
                    if i == 0 {
                        let _ = write!(
                            s,
                            r#"<text x="{:.1}" y="{}" fill="{c}">{name}</text>"#,
                            x(t) + 3.0,
                            y0 + 14.0
                        );
                    }
                }
            }
        }
        let axis_y = top + 3.0 * panel_h + 2.0 * gap + 20.0;
        let step = (end / 10.0).ceil().max(1.0);
        let mut t = 0.0;
        while t <= end {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{axis_y}" text-anchor="middle">{t:.0}s</text>"#,
                x(t)
            );
            t += step;
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes `report.md`, `report.json` and `chart.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(dir.join("chart.svg"), self.svg())?;
        Ok(())
    }
}

fn fmt_axis(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
