//! The Prometheus text exposition format 0.0.4, written into a caller's buffer.

use std::fmt::Write;

use crate::families::Metric;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    pub fn family(&mut self, metric: &Metric) {
        self.out.push_str("# HELP ");
        self.out.push_str(metric.name);
        self.out.push(' ');
        escape_help(metric.help, self.out);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(metric.name);
        self.out.push(' ');
        self.out.push_str(metric.kind.as_str());
        self.out.push('\n');
    }

    /// Writes one sample line of `metric` with an integer value.
    pub fn sample_u64(&mut self, metric: &Metric, labels: &[(&str, &str)], value: u64) {
        self.series_u64(metric, "", labels, value);
    }

    /// Writes one sample line of `metric` with a float value (`+Inf`, `-Inf` and `NaN`
    /// spelled as the format wants).
    pub fn sample_f64(&mut self, metric: &Metric, labels: &[(&str, &str)], value: f64) {
        self.series_f64(metric, "", labels, value);
    }

    /// Writes one sample line of `metric`'s series `suffix` (`_bucket`, `_sum`,
    /// `_count`) with an integer value.
    pub fn series_u64(
        &mut self,
        metric: &Metric,
        suffix: &str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.head(metric.name, suffix, labels);
        let _ = writeln!(self.out, "{value}");
    }

    /// Writes one sample line of `metric`'s series `suffix` with a float value.
    pub fn series_f64(
        &mut self,
        metric: &Metric,
        suffix: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.head(metric.name, suffix, labels);
        write_f64(value, self.out);
        self.out.push('\n');
    }

    fn head(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)]) {
        self.out.push_str(name);
        self.out.push_str(suffix);
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
    use crate::families::MetricType;

    #[test]
    fn families_and_samples_render_in_text_format() {
        let mut out = String::new();
        let mut enc = Encoder::new(&mut out);
        let x = Metric {
            name: "x_total",
            kind: MetricType::Counter,
            help: "a \\ help\nline",
        };
        let g = Metric {
            name: "g",
            kind: MetricType::Gauge,
            help: "gauge",
        };
        enc.family(&x);
        enc.sample_u64(&x, &[("a", "q\"u\\o\nte"), ("b", "ok")], 7);
        enc.family(&g);
        enc.sample_f64(&g, &[], f64::INFINITY);
        enc.series_f64(&g, "_sum", &[], 0.25);
        assert_eq!(
            out,
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"u\\\\o\\nte\",b=\"ok\"} 7\n\
             # HELP g gauge\n# TYPE g gauge\ng +Inf\ng_sum 0.25\n"
        );
    }
}
