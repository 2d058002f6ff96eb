//! The Prometheus text exposition format 0.0.4, and OpenMetrics 1.0 (the same lines,
//! plus exemplars on histogram buckets and a closing `# EOF`), written into a caller's
//! buffer.

use std::fmt::Write;

use crate::aggregate::series::Exemplar;
use crate::families::{Metric, MetricType};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which exposition format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The Prometheus text format 0.0.4: what a scraper gets unless it asks otherwise.
    #[default]
    Text,
    /// OpenMetrics 1.0, with exemplars.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (without `q=0`), as Prometheus does when it may
    /// store exemplars; the text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Text;
        };
        let wanted = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        });
        if wanted {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Writes families and samples. The caller keeps the buffer between scrapes.
#[derive(Debug)]
pub struct Encoder<'b> {
    out: &'b mut String,
    format: Format,
}

impl<'b> Encoder<'b> {
    /// An encoder of the text format appending to `out`.
    pub fn new(out: &'b mut String) -> Self {
        Self::with_format(out, Format::Text)
    }

    /// An encoder of `format` appending to `out`.
    pub fn with_format(out: &'b mut String, format: Format) -> Self {
        Self { out, format }
    }

    /// The format it writes.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Writes the `# HELP` and `# TYPE` lines of a family. In the 0.0.4 text format a
    /// counter's family name is its sample name, `_total` included, which is what
    /// `promtool check metrics` expects; OpenMetrics names the family without it.
    pub fn family(&mut self, metric: &Metric) {
        let name = match (self.format, metric.kind) {
            (Format::OpenMetrics, MetricType::Counter) => {
                metric.name.strip_suffix("_total").unwrap_or(metric.name)
            }
            _ => metric.name,
        };
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(metric.help, self.format == Format::OpenMetrics, self.out);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(metric.kind.as_str());
        self.out.push('\n');
    }

    /// Ends the exposition: OpenMetrics' `# EOF`; nothing in the text format.
    pub fn finish(&mut self) {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
    }

    /// Writes one `_bucket` sample of `metric`, with `exemplar` after it in OpenMetrics
    /// (trace and span id in hex, the duration in seconds, the end time in Unix
    /// seconds); the text format has no exemplars.
    pub fn bucket(
        &mut self,
        metric: &Metric,
        labels: &[(&str, &str)],
        value: u64,
        exemplar: Option<&Exemplar>,
    ) {
        self.head(metric.name, "_bucket", labels);
        let _ = write!(self.out, "{value}");
        if let (Format::OpenMetrics, Some(e)) = (self.format, exemplar) {
            self.out.push_str(" # {trace_id=\"");
            hex(&e.trace_id, self.out);
            self.out.push_str("\",span_id=\"");
            hex(&e.span_id, self.out);
            self.out.push_str("\"} ");
            write_f64(e.duration_nanos as f64 / 1e9, self.out);
            let _ = write!(
                self.out,
                " {}.{:03}",
                e.end_nanos / 1_000_000_000,
                e.end_nanos % 1_000_000_000 / 1_000_000
            );
        }
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

/// Escapes a `# HELP` text: backslashes and line feeds, and in OpenMetrics double
/// quotes too.
fn escape_help(value: &str, quotes: bool, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Lower-case hex, as OTLP/JSON and tracing back ends spell ids.
fn hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_served_to_scrapers_that_name_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        for classic in [
            None,
            Some("text/plain;version=0.0.4"),
            Some("*/*"),
            Some("application/openmetrics-text; q=0"),
            Some("application/openmetrics-text-other"),
            Some(""),
        ] {
            assert_eq!(Format::negotiate(classic), Format::Text, "{classic:?}");
        }
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_writes_exemplars() {
        let mut out = String::new();
        let mut enc = Encoder::with_format(&mut out, Format::OpenMetrics);
        let c = Metric {
            name: "c_total",
            kind: MetricType::Counter,
            help: "a \"quoted\" help",
        };
        let h = Metric {
            name: "h_seconds",
            kind: MetricType::Histogram,
            help: "h",
        };
        enc.family(&c);
        enc.sample_u64(&c, &[], 3);
        enc.family(&h);
        let exemplar = Exemplar {
            trace_id: [0xab; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            duration_nanos: 180_000_000,
            end_nanos: 1_700_000_000_123_456_789,
        };
        enc.bucket(&h, &[("le", "0.25")], 5, Some(&exemplar));
        enc.bucket(&h, &[("le", "+Inf")], 5, None);
        enc.finish();
        assert_eq!(
            out,
            "# HELP c a \\\"quoted\\\" help\n# TYPE c counter\nc_total 3\n\
             # HELP h_seconds h\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.25\"} 5 # {trace_id=\"abababababababababababababababab\",span_id=\"0102030405060708\"} 0.18 1700000000.123\n\
             h_seconds_bucket{le=\"+Inf\"} 5\n# EOF\n"
        );
        // The text format writes the same bucket without its exemplar.
        let mut text = String::new();
        let mut enc = Encoder::new(&mut text);
        enc.bucket(&h, &[("le", "0.25")], 5, Some(&exemplar));
        enc.finish();
        assert_eq!(text, "h_seconds_bucket{le=\"0.25\"} 5\n");
    }

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
