//! The Prometheus text format (version 0.0.4), written in one place: every
//! `/metrics` family of the gateway goes through [`Family`], which writes the
//! `# HELP` and `# TYPE` lines once and escapes every label value, so a tenant
//! or namespace named with `"`, `\` or a line break cannot break the page
//! (ARCHITECTURE.md, "Metrics").

use std::borrow::Cow;
use std::fmt::{Display, Write as _};

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One family being written: its header is out, its samples follow.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl<'a> Family<'a> {
    /// Writes the family's `# HELP` and `# TYPE` lines.
    pub fn new(out: &'a mut String, name: &'a str, kind: Kind, help: &str) -> Self {
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} {}",
            help_text(help),
            kind.as_str()
        );
        Family { out, name }
    }

    pub fn counter(out: &'a mut String, name: &'a str, help: &str) -> Self {
        Self::new(out, name, Kind::Counter, help)
    }

    pub fn gauge(out: &'a mut String, name: &'a str, help: &str) -> Self {
        Self::new(out, name, Kind::Gauge, help)
    }

    pub fn histogram(out: &'a mut String, name: &'a str, help: &str) -> Self {
        Self::new(out, name, Kind::Histogram, help)
    }

    /// One sample of the family; label values are escaped.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        self.out.push_str(self.name);
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// One histogram series: `bounds` are the upper bounds of the buckets,
    /// `cumulative` their cumulative counts (the `+Inf` bucket is `count`).
    pub fn series(&mut self, labels: &[(&str, &str)], bounds: &[f64], cumulative: &[u64], sum: f64, count: u64) {
        let name = self.name;
        for (b, n) in bounds.iter().zip(cumulative) {
            let _ = write!(self.out, "{name}_bucket");
            write_labels(self.out, labels, Some(("le", &b.to_string())));
            let _ = writeln!(self.out, " {n}");
        }
        let _ = write!(self.out, "{name}_bucket");
        write_labels(self.out, labels, Some(("le", "+Inf")));
        let _ = writeln!(self.out, " {count}");
        let _ = write!(self.out, "{name}_sum");
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {sum}");
        let _ = write!(self.out, "{name}_count");
        write_labels(self.out, labels, None);
        let _ = writeln!(self.out, " {count}");
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], last: Option<(&str, &str)>) {
    if labels.is_empty() && last.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().chain(last.as_ref()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", label(v));
    }
    out.push('}');
}

/// A label value as the text format needs it: `\`, `"` and line breaks escaped.
pub fn label(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Help text escapes `\` and line breaks (quotes stay).
fn help_text(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '\n']) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(v.replace('\\', "\\\\").replace('\n', "\\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_headers_written_once() {
        let mut out = String::new();
        let mut f = Family::gauge(&mut out, "t_gauge", "A gauge\\with a backslash.");
        f.sample(&[("tenant", "a\"b\\c\nd")], 1);
        f.sample(&[], 2.5);
        assert_eq!(
            out,
            "# HELP t_gauge A gauge\\\\with a backslash.\n# TYPE t_gauge gauge\n\
             t_gauge{tenant=\"a\\\"b\\\\c\\nd\"} 1\nt_gauge 2.5\n"
        );
    }

    #[test]
    fn histogram_series_end_with_inf_sum_and_count() {
        let mut out = String::new();
        Family::histogram(&mut out, "h", "H.").series(&[("x", "y")], &[0.5, 1.0], &[1, 2], 1.25, 3);
        assert!(out.contains("h_bucket{x=\"y\",le=\"0.5\"} 1\n"), "{out}");
        assert!(
            out.contains("h_bucket{x=\"y\",le=\"+Inf\"} 3\nh_sum{x=\"y\"} 1.25\nh_count{x=\"y\"} 3\n"),
            "{out}"
        );
        let mut bare = String::new();
        Family::histogram(&mut bare, "h", "H.").series(&[], &[1.0], &[0], 0.0, 0);
        assert!(
            bare.contains("h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"),
            "{bare}"
        );
    }
}
