//! The Prometheus text exposition format 0.0.4, written into a caller's buffer.

use std::fmt::Write;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonic counter; the family name ends in `_total`.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
    /// A summary (quantile samples, `_sum`, `_count`).
    Summary,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }
}

/// Writes families and samples. The caller keeps the buffer between scrapes.
#[derive(Debug)]
pub struct Encoder<'b> {
    out: &'b mut String,
}

impl<'b> Encoder<'b> {
    /// An encoder appending to `out`.
    pub fn new(out: &'b mut String) -> Self {
        Self { out }
    }

    /// Writes the `# HELP` and `# TYPE` lines of a family. In the 0.0.4 text format a
    /// counter's family name is its sample name, `_total` included (only OpenMetrics
    /// drops the suffix), which is what `promtool check metrics` expects.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let family = name;
        self.out.push_str("# HELP ");
        self.out.push_str(family);
        self.out.push(' ');
        escape_help(help, self.out);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(family);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// Writes one sample line with an integer value.
    pub fn sample_u64(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.head(name, labels);
        let _ = writeln!(self.out, "{value}");
    }

    /// Writes one sample line with a float value (`+Inf`, `-Inf` and `NaN` spelled as
    /// the format wants).
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.head(name, labels);
        write_f64(value, self.out);
        self.out.push('\n');
    }

    fn head(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_label(value, self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
    }
}

/// Writes a float in the shortest form that reads back exactly.
pub fn write_f64(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

fn escape_label(value: &str, out: &mut String) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_render_in_text_format() {
        let mut out = String::new();
        let mut enc = Encoder::new(&mut out);
        enc.family("x_total", MetricType::Counter, "a \\ help\nline");
        enc.sample_u64("x_total", &[("a", "q\"u\\o\nte"), ("b", "ok")], 7);
        enc.family("g", MetricType::Gauge, "gauge");
        enc.sample_f64("g", &[], f64::INFINITY);
        enc.sample_f64("g", &[], 0.25);
        assert_eq!(
            out,
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"u\\\\o\\nte\",b=\"ok\"} 7\n\
             # HELP g gauge\n# TYPE g gauge\ng +Inf\ng 0.25\n"
        );
    }
}
